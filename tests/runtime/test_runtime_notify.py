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
