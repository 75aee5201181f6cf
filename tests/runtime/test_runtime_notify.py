"""runtime.notify: sd_notify datagrams to a real socket."""

from __future__ import annotations

import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kloros_orchestrator.runtime.notify import Notifier


@pytest.fixture
def receiver() -> Iterator[tuple[str, socket.socket]]:
    directory = tempfile.mkdtemp(prefix="k")
    path = str(Path(directory) / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()
    shutil.rmtree(directory, ignore_errors=True)


def test_messages_arrive_as_systemd_expects(
    receiver: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, sock = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier.from_env()
    assert notifier.enabled
    assert notifier.ready()
    assert sock.recv(4096) == b"READY=1"
    assert notifier.status("evolving: cpu gen 3\nREADY=1")
    assert sock.recv(4096) == b"STATUS=evolving: cpu gen 3 READY=1"  # no injected assignment
    assert notifier.stopping("stopping: SIGTERM")
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping: SIGTERM"
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.extend_timeout(5_000_000)
    assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=5000000"
    with pytest.raises(ValueError):
        notifier.extend_timeout(-1)


def test_abstract_namespace_address() -> None:
    name = f"kloros-test-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready("up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_without_notify_socket_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier.from_env()
    assert not notifier.enabled
    assert notifier.ready() is False and notifier.status("x") is False and notifier.stopping() is False


def test_send_failure_is_swallowed(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    assert notifier.enabled
    assert notifier.ready() is False
    assert notifier.status("still fine") is False  # warned once, never raised
    assert Notifier("vsock:2:1234").enabled is False


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    from kloros_orchestrator.runtime.notify import watchdog_interval

    assert watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "3"}) == 1.5e-6
    assert watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "4242"}, pid=4242) == 30.0


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"WATCHDOG_USEC": ""},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "-5"},
        {"WATCHDOG_USEC": "1.5"},
        {"WATCHDOG_USEC": "60s"},
        {"WATCHDOG_USEC": "٣"},  # a digit, but not an ASCII one
        {"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "4243"},  # inherited: meant for another process
        {"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": ""},
    ],
)
def test_no_watchdog_interval(environ: dict[str, str]) -> None:
    from kloros_orchestrator.runtime.notify import watchdog_interval

    assert watchdog_interval(environ, pid=4242) is None


def test_watchdog_interval_from_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from kloros_orchestrator.runtime.notify import watchdog_interval

    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 10.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval() is None


def test_notifier_carries_the_watchdog_interval(receiver: tuple[str, socket.socket]) -> None:
    path, sock = receiver
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "60000000"})
    assert notifier.watchdog_interval == 30.0
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert Notifier.from_env({"NOTIFY_SOCKET": path}).watchdog_interval is None  # no WatchdogSec=
    assert Notifier.from_env({"WATCHDOG_USEC": "60000000"}).watchdog_interval is None  # nowhere to ping
    assert Notifier(path).watchdog_interval is None
