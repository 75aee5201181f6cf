"""runtime.control: the status socket over a real Unix socket."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from kloros_orchestrator import errors
from kloros_orchestrator.runtime.control import MAX_LINE_BYTES, query, query_waiting, serve_control


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes and pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="kc"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def handler(request: dict[str, Any]) -> dict[str, Any]:
    cmd = request["cmd"]
    if cmd == "status":
        return {"ok": True, "status": {"state": "evolving", "pid": os.getpid()}}
    if cmd == "boom":
        raise RuntimeError("handler exploded")
    if cmd == "whoami":
        return {"ok": True, "uid": request.get("peer_uid")}
    if cmd == "slow":
        await anyio.sleep(0.05)
        return {"ok": True, "n": request.get("n")}
    return {"ok": False, "error": f"unknown command {cmd!r}"}


@contextlib.asynccontextmanager
async def running_server(sock_dir: Path) -> AsyncIterator[Path]:
    # A context manager, not an async fixture: a task group must be left in the task that entered it.
    path = sock_dir / "ctl.sock"
    async with anyio.create_task_group() as tg:
        await tg.start(serve_control, path, handler)
        yield path
        tg.cancel_scope.cancel()


async def exchange(stream: anyio.abc.ByteStream, line: bytes) -> dict[str, Any]:
    await stream.send(line)
    buf = b""
    while not buf.endswith(b"\n"):
        buf += await stream.receive()
    result: dict[str, Any] = json.loads(buf)
    return result


async def test_status_round_trip_and_mode(sock_dir: Path) -> None:
    with anyio.fail_after(5):
        async with running_server(sock_dir) as server:
            response = await anyio.to_thread.run_sync(query, server, {"cmd": "status"})
            st = os.stat(server)
            assert [p.name for p in sock_dir.iterdir()] == ["ctl.sock"]  # staging directory removed
    assert response == {"ok": True, "status": {"state": "evolving", "pid": os.getpid()}}
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660


async def test_bad_requests_get_errors_and_the_connection_stays_usable(sock_dir: Path) -> None:
    with anyio.fail_after(5):
        async with running_server(sock_dir) as server, await anyio.connect_unix(server) as stream:
            for bad, expected in [
                (b"{not json\n", "malformed JSON"),
                (b"[1, 2]\n", "JSON object"),
                (b'{"x": 1}\n', '"cmd"'),
                (b'{"cmd": "boom"}\n', "handler exploded"),
                (b'{"cmd": "nope"}\n', "unknown command"),
                (b"\xff\xfe\n", "malformed JSON"),
            ]:
                answer = await exchange(stream, bad)
                assert answer["ok"] is False and expected in answer["error"]
            assert (await exchange(stream, b'{"cmd": "status"}\n'))["ok"] is True
            # Two requests in one write get two answers, in order.
            await stream.send(b'{"cmd": "slow", "n": 1}\n{"cmd": "slow", "n": 2}\n')
            buf = b""
            while buf.count(b"\n") < 2:
                buf += await stream.receive()
            assert [json.loads(x)["n"] for x in buf.splitlines()] == [1, 2]


async def test_overlong_line_is_refused_and_other_clients_are_unaffected(sock_dir: Path) -> None:
    with anyio.fail_after(5):
        async with running_server(sock_dir) as server:
            async with await anyio.connect_unix(server) as hung, await anyio.connect_unix(server) as big:
                await hung.send(b'{"cmd": "sta')  # never finishes its line
                await big.send(b"x" * (MAX_LINE_BYTES + 10))
                answer = json.loads(await big.receive())
                assert answer["ok"] is False and "longer than" in answer["error"]
                response = await anyio.to_thread.run_sync(query, server, {"cmd": "status"})
                assert response["ok"] is True
            # Clients that disconnected mid-line did not take the server down.
            assert (await anyio.to_thread.run_sync(query, server, {"cmd": "status"}))["ok"] is True


async def test_fifty_concurrent_clients_are_all_answered(sock_dir: Path) -> None:
    answers: dict[int, Any] = {}

    async def client(server: Path, i: int) -> None:
        async with await anyio.connect_unix(server) as stream:
            answers[i] = (await exchange(stream, json.dumps({"cmd": "slow", "n": i}).encode() + b"\n"))["n"]

    with anyio.fail_after(10):
        async with running_server(sock_dir) as server, anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(client, server, i)
    assert answers == {i: i for i in range(50)}


async def test_stale_socket_is_replaced_and_a_live_one_is_refused(sock_dir: Path) -> None:
    path = sock_dir / "ctl.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nothing accepts: what a crashed daemon leaves behind
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(serve_control, path, handler)
            assert (await anyio.to_thread.run_sync(query, path, {"cmd": "status"}))["ok"] is True
            with pytest.raises(errors.DaemonAlreadyRunning, match="another daemon is listening"):
                await serve_control(path, handler)
            assert (await anyio.to_thread.run_sync(query, path, {"cmd": "status"}))["ok"] is True
            tg.cancel_scope.cancel()
    assert not path.exists()


async def test_regular_file_at_the_socket_path_is_not_replaced(sock_dir: Path) -> None:
    path = sock_dir / "ctl.sock"
    path.write_text("precious")
    with anyio.fail_after(5), pytest.raises(errors.ControlError, match="not a socket"):
        await serve_control(path, handler)
    assert path.read_text() == "precious"


async def test_socket_is_removed_when_the_server_is_cancelled(sock_dir: Path) -> None:
    path = sock_dir / "ctl.sock"
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(serve_control, path, handler)
            assert path.exists()
            tg.cancel_scope.cancel()
    assert not path.exists()
    with pytest.raises(errors.DaemonNotRunning):
        query(path, {"cmd": "status"})


def test_query_without_a_daemon_raises_daemon_not_running(sock_dir: Path) -> None:
    with pytest.raises(errors.DaemonNotRunning, match="no daemon is listening"):
        query(sock_dir / "missing.sock", {"cmd": "status"})
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(sock_dir / "stale.sock"))
    leftover.close()
    with pytest.raises(errors.DaemonNotRunning):
        query(sock_dir / "stale.sock", {"cmd": "status"})


async def test_overlong_socket_path_is_a_clear_error(sock_dir: Path) -> None:
    with pytest.raises(errors.ControlError, match="at most 107"):
        await serve_control(sock_dir / ("x" * 120), handler)


def test_waiting_for_a_daemon_that_never_comes_gives_up_with_not_running(sock_dir: Path) -> None:
    with pytest.raises(errors.DaemonNotRunning):
        query_waiting(sock_dir / "none.sock", {"cmd": "status"}, wait_s=0.0)
    started = time.monotonic()
    with pytest.raises(errors.DaemonNotRunning):
        query_waiting(sock_dir / "none.sock", {"cmd": "status"}, wait_s=0.3)
    assert time.monotonic() - started >= 0.3  # it did wait (and then gave up)


async def test_waiting_client_is_answered_by_a_daemon_that_starts_after_it(sock_dir: Path) -> None:
    # `run … &` then `status --wait S` at once: the socket appears after the client started asking.
    path = sock_dir / "late.sock"
    replies: list[dict[str, Any]] = []

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:

            async def client() -> None:
                ask = lambda: query_waiting(path, {"cmd": "status"}, wait_s=20)  # noqa: E731
                replies.append(await anyio.to_thread.run_sync(ask))
                tg.cancel_scope.cancel()  # answered: stop the server

            tg.start_soon(client)
            assert not path.exists()
            await tg.start(serve_control, path, handler)
    assert replies[0]["ok"] is True and replies[0]["status"]["state"] == "evolving"


async def test_the_server_says_who_asks_and_a_client_cannot_pretend(sock_dir: Path) -> None:
    with anyio.fail_after(5):
        async with running_server(sock_dir) as server:
            reply = await anyio.to_thread.run_sync(query, server, {"cmd": "whoami", "peer_uid": 0})
            spoof = await anyio.to_thread.run_sync(query, server, {"cmd": "whoami", "peer_uid": 12345})
    assert reply == {"ok": True, "uid": os.getuid()}
    assert spoof == {"ok": True, "uid": os.getuid()}
