"""runtime.control under abuse: connection cap, idle timeout, failing accepts, deeply nested JSON.

Every test ends by showing that a plain status query is still answered. The file-descriptor tests
run the server in a subprocess with a low RLIMIT_NOFILE, as the daemon would meet it in production.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import resource
import shutil
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from kloros_orchestrator.runtime.control import (
    MAX_JSON_DEPTH,
    MAX_LINE_BYTES,
    default_max_connections,
    query,
    serve_control,
)
from kloros_orchestrator.safefs import nesting_exceeds

STATUS = b'{"cmd": "status"}\n'
TOO_DEEP = "arrays/objects"


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes and pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="kc"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def handler(request: dict[str, Any]) -> dict[str, Any]:
    if request["cmd"] == "status":
        return {"ok": True, "status": {"state": "evolving"}}
    return {"ok": False, "error": f"unknown command {request['cmd']!r}"}


@contextlib.asynccontextmanager
async def running_server(sock_dir: Path, **options: Any) -> AsyncIterator[Path]:
    path = sock_dir / "ctl.sock"
    async with anyio.create_task_group() as tg:
        await tg.start(functools.partial(serve_control, path, handler, **options))
        yield path
        tg.cancel_scope.cancel()


async def ask(path: Path) -> dict[str, Any]:
    return await anyio.to_thread.run_sync(query, path, {"cmd": "status"})


async def ask_until_a_slot_frees(path: Path) -> dict[str, Any]:
    # A slot is freed when the server has seen a client's close, which no client can observe:
    # each refused attempt is a full round trip, so this loop waits on the server, not on a clock.
    while "too many connections" in (answer := await ask(path)).get("error", ""):
        pass
    return answer


async def exchange(stream: anyio.abc.ByteStream, line: bytes) -> dict[str, Any]:
    await stream.send(line)
    buf = b""
    while not buf.endswith(b"\n"):
        buf += await stream.receive()
    result: dict[str, Any] = json.loads(buf)
    return result


async def read_until_closed(stream: anyio.abc.ByteStream) -> bytes:
    buf = b""
    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):  # ECONNRESET counts too
        while True:
            buf += await stream.receive()
    return buf


# --- connection cap ---------------------------------------------------------------------------------


async def test_connections_beyond_the_cap_get_one_error_line_and_are_closed(sock_dir: Path) -> None:
    with anyio.fail_after(10):
        async with (
            running_server(sock_dir, max_connections=3) as server,
            contextlib.AsyncExitStack() as stack,
        ):
            held = [await stack.enter_async_context(await anyio.connect_unix(server)) for _ in range(3)]
            for stream in held:  # answered, so the server counts them
                assert (await exchange(stream, STATUS))["ok"] is True
            for _ in range(5):
                async with await anyio.connect_unix(server) as excess:
                    lines = (await read_until_closed(excess)).splitlines()
                assert [json.loads(x) for x in lines] == [
                    {"ok": False, "error": "too many connections (at most 3); try again later"}
                ]
            refused = await ask(server)  # what the CLI sees
            assert refused["ok"] is False and "too many connections" in refused["error"]
            assert (await exchange(held[1], STATUS))["ok"] is True  # the held ones are still served
            await held[0].aclose()
            assert (await ask_until_a_slot_frees(server))["ok"] is True


def test_default_cap_is_a_quarter_of_the_fd_limit_at_most_128(monkeypatch: pytest.MonkeyPatch) -> None:
    for soft, cap in [(1024, 128), (20000, 128), (256, 64), (64, 16), (3, 1), (resource.RLIM_INFINITY, 128)]:
        monkeypatch.setattr(resource, "getrlimit", lambda _which, s=soft: (s, resource.RLIM_INFINITY))
        assert default_max_connections() == cap, soft


async def test_invalid_limits_are_refused(sock_dir: Path) -> None:
    with pytest.raises(ValueError, match="max_connections"):
        await serve_control(sock_dir / "a.sock", handler, max_connections=0)
    with pytest.raises(ValueError, match="idle_timeout"):
        await serve_control(sock_dir / "a.sock", handler, idle_timeout=0)
    assert list(sock_dir.iterdir()) == []


# --- idle timeout -----------------------------------------------------------------------------------


async def test_silent_partial_and_finished_clients_are_closed_when_idle(sock_dir: Path) -> None:
    idle = 0.3
    with anyio.fail_after(10):
        async with running_server(sock_dir, idle_timeout=idle) as server:
            async with (
                await anyio.connect_unix(server) as silent,
                await anyio.connect_unix(server) as partial,
                await anyio.connect_unix(server) as finished,
            ):
                started = anyio.current_time()
                await partial.send(b'{"cmd": "sta')
                assert (await exchange(finished, STATUS))["ok"] is True
                assert await read_until_closed(silent) == b""
                assert await read_until_closed(partial) == b""
                assert await read_until_closed(finished) == b""
                assert anyio.current_time() - started >= idle / 2  # closed by the timeout, not at once
            assert (await ask(server))["ok"] is True


async def test_a_client_that_never_reads_its_answers_is_dropped(sock_dir: Path) -> None:
    sent = 0

    async def flood(stream: anyio.abc.ByteStream) -> None:
        nonlocal sent
        with contextlib.suppress(anyio.BrokenResourceError):
            while True:  # blocks once the server, blocked on its own send, stops reading
                await stream.send(STATUS * 256)
                sent += 256

    with anyio.fail_after(20):
        async with running_server(sock_dir, idle_timeout=0.3) as server:
            async with await anyio.connect_unix(server) as stream:
                await flood(stream)  # returns when the server hangs up
                answers = (await read_until_closed(stream)).splitlines()
            assert 0 < len(answers) < sent
            assert all(json.loads(x)["ok"] is True for x in answers[:-1])  # the last may be cut short
            assert (await ask(server))["ok"] is True


# --- bounded JSON -----------------------------------------------------------------------------------


def _nested(depth: int) -> bytes:
    # A request object whose "x" member adds depth - 1 levels: total nesting is ``depth``.
    return b'{"cmd": "status", "x": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}\n"


async def test_deeply_nested_lines_get_ok_false_and_the_connection_stays_usable(sock_dir: Path) -> None:
    with anyio.fail_after(10):
        async with running_server(sock_dir) as server, await anyio.connect_unix(server) as stream:
            for line in [
                b"[" * 60_000 + b"\n",
                b"{" * 60_000 + b"\n",
                b'{"a":' * 12_000 + b"\n",
                b"[" * 30_000 + b"]" * 30_000 + b"\n",  # well-formed, still too deep
                _nested(MAX_JSON_DEPTH + 1),
            ]:
                assert len(line) <= MAX_LINE_BYTES
                answer = await exchange(stream, line)
                assert answer == {
                    "ok": False,
                    "error": f"request nested deeper than {MAX_JSON_DEPTH} {TOO_DEEP}",
                }
                assert (await exchange(stream, STATUS))["ok"] is True
            assert (await exchange(stream, _nested(MAX_JSON_DEPTH)))["ok"] is True
            in_a_string = b'{"cmd": "status", "note": "' + b"[{" * 5000 + b'\\"]"}\n'
            assert (await exchange(stream, in_a_string))["ok"] is True
            assert (await ask(server))["ok"] is True


@pytest.mark.parametrize(
    ("line", "exceeds"),
    [
        (b"[" * 3, True),
        (b"[[]]", False),
        (b"[[][][]]", False),  # width is not depth
        (b'["[[[[", "{{{{"]', False),
        (b'["\\"[[[[["]', False),  # an escaped quote does not end the string
        (b'["\\\\", [[[', True),  # an escaped backslash does
        (b'"[[[[[[', False),  # an unterminated string hides the rest (the decoder refuses it)
        (b"[]]][[[", False),
    ],
)
def test_nesting_scan(line: bytes, exceeds: bool) -> None:
    assert nesting_exceeds(line, limit=2) is exceeds


@pytest.mark.parametrize(
    "line",
    [
        b'"' + b'\\"' * (MAX_LINE_BYTES // 2),  # one unterminated string of escaped quotes
        b'"\\"' * (MAX_LINE_BYTES // 3),  # strings that look unterminated from every quote
        b'"' * MAX_LINE_BYTES,
        b'["' * (MAX_LINE_BYTES // 2),
        b"[]" * (MAX_LINE_BYTES // 2),
    ],
)
def test_nesting_scan_of_a_hostile_full_line_is_linear(line: bytes) -> None:
    started = time.perf_counter()
    nesting_exceeds(line + b"[" * (MAX_JSON_DEPTH + 1), MAX_JSON_DEPTH)
    assert time.perf_counter() - started < 0.5  # about 10 ms; a quadratic scan would take minutes


# --- failing accepts --------------------------------------------------------------------------------


async def test_accept_errors_are_survived(sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failures = [errno.ENFILE, errno.ENOBUFS, errno.EMFILE]
    create_unix_listener = anyio.create_unix_listener

    async def flaky_listener(*args: Any, **kwargs: Any) -> anyio.abc.SocketListener:
        listener = await create_unix_listener(*args, **kwargs)
        accept = listener.accept

        async def flaky_accept() -> anyio.abc.SocketStream:
            if failures:  # anyio wraps accept's OSError so
                raise anyio.BrokenResourceError from OSError(failures.pop(), "injected")
            return await accept()

        monkeypatch.setattr(listener, "accept", flaky_accept)
        return listener

    monkeypatch.setattr(anyio, "create_unix_listener", flaky_listener)
    with anyio.fail_after(10):
        async with running_server(sock_dir) as server:
            assert (await ask(server))["ok"] is True
            assert failures == []


# The server in a subprocess: argv = socket path, soft RLIMIT_NOFILE, max_connections ("" = default).
_SERVER = textwrap.dedent(
    """
    import functools, resource, sys
    from pathlib import Path
    import anyio
    from loguru import logger
    from kloros_orchestrator.runtime.control import serve_control

    path, soft, cap = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    logger.remove()
    logger.add(sys.stdout, format="{level} {message}", level="INFO")

    async def handler(request):
        return {"ok": True, "status": {"state": "evolving"}}

    async def main():
        async with anyio.create_task_group() as tg:
            serve = functools.partial(serve_control, path, handler, idle_timeout=60)
            await tg.start(functools.partial(serve, max_connections=int(cap)) if cap else serve)
            print("READY", flush=True)

    anyio.run(main)
    """
)


class ServerProcess:
    """The subprocess server's socket and its log, one message per line."""

    def __init__(self, path: Path, process: anyio.abc.Process) -> None:
        assert process.stdout is not None
        self.path, self._process = path, process
        self._output = BufferedByteReceiveStream(process.stdout)

    async def log_until(self, needle: bytes) -> list[bytes]:
        """The log lines up to and including the first one containing ``needle``."""
        lines = [await self._output.receive_until(b"\n", 65536)]
        while needle not in lines[-1]:
            lines.append(await self._output.receive_until(b"\n", 65536))
        return lines

    async def stop(self) -> list[bytes]:
        """Kill the server; the rest of its log."""
        if self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
        rest = b""
        with contextlib.suppress(anyio.EndOfStream):
            while True:
                rest += await self._output.receive()
        return rest.splitlines()


@contextlib.asynccontextmanager
async def server_process(sock_dir: Path, soft_limit: int, cap: int | None) -> AsyncIterator[ServerProcess]:
    path = sock_dir / "ctl.sock"
    argv = [sys.executable, "-c", _SERVER, str(path), str(soft_limit), "" if cap is None else str(cap)]
    async with await anyio.open_process(argv, stderr=None) as process:
        server = ServerProcess(path, process)
        try:
            await server.log_until(b"READY")
            yield server
        finally:
            await server.stop()


async def test_idle_flood_under_a_low_descriptor_limit_is_capped_without_emfile(sock_dir: Path) -> None:
    # 1,100 idle clients against RLIMIT_NOFILE 1024 (which killed the daemon), scaled down: 150 against 64.
    with anyio.fail_after(30):
        async with server_process(sock_dir, soft_limit=64, cap=None) as server:
            async with contextlib.AsyncExitStack() as stack:
                clients = [
                    await stack.enter_async_context(await anyio.connect_unix(server.path)) for _ in range(150)
                ]
                cap = 64 // 4
                for refused in clients[cap:]:  # accepted in connection order
                    assert b"too many connections (at most 16)" in await read_until_closed(refused)
                for held in clients[:cap]:
                    assert (await exchange(held, STATUS))["ok"] is True
            assert (await ask_until_a_slot_frees(server.path))["ok"] is True
            logged = await server.log_until(b"refusing connections beyond 16")
            logged += await server.stop()
            assert not [line for line in logged if b"accept failed" in line]


async def test_accept_failing_with_emfile_does_not_end_the_server(sock_dir: Path) -> None:
    # A cap above the descriptor limit lets the idle clients exhaust it: accept() fails with EMFILE.
    with anyio.fail_after(30):
        async with server_process(sock_dir, soft_limit=64, cap=1000) as server:
            async with contextlib.AsyncExitStack() as stack:
                for _ in range(150):
                    await stack.enter_async_context(await anyio.connect_unix(server.path))
                failure = (await server.log_until(b"accept failed"))[-1]
                assert b"Too many open files" in failure
            # The clients are gone: the server frees their descriptors and answers again.
            assert (await ask(server.path))["ok"] is True
