"""sd_notify without extra packages: datagrams to ``$NOTIFY_SOCKET`` (systemd ``Type=notify``).

Without ``$NOTIFY_SOCKET`` (not started by systemd) every call is a no-op. A send failure is
logged once and never raised: the daemon must not die because its supervisor went away.
With ``WatchdogSec=`` in the unit, :func:`watchdog_interval` says how often to send ``WATCHDOG=1``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Final

import anyio
from loguru import logger

_SEND_TIMEOUT_S: Final = 1.0


def _address(raw: str | None) -> str | None:
    if not raw:
        return None
    if raw.startswith("@"):
        return "\0" + raw[1:]  # abstract namespace
    if raw.startswith("/"):
        return raw
    logger.warning("NOTIFY_SOCKET {!r} is not a Unix socket address; sd_notify disabled", raw)
    return None


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between two ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC`` (``WatchdogSec=``), as
    ``sd_watchdog_enabled(3)`` advises; None when no watchdog watches this process.

    None without ``$WATCHDOG_USEC``, for a value that is not a positive integer, and when
    ``$WATCHDOG_PID`` names another process (the variables were inherited, not meant for us).
    """
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC", "")
    if not raw.isascii() or not raw.isdigit() or int(raw) == 0:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner is not None and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(raw) / 2 / 1_000_000


def _one_line(text: str) -> str:
    # A newline would start another assignment (e.g. a status text injecting READY=1).
    return " ".join(text.splitlines())


class Notifier:
    """Sends ``READY=1``, ``STATUS=...``, ``STOPPING=1``, ``WATCHDOG=1``, ``EXTEND_TIMEOUT_USEC=...``."""

    def __init__(self, notify_socket: str | None, *, watchdog_s: float | None = None) -> None:
        self._address = _address(notify_socket)
        self._watchdog_s = watchdog_s
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"), watchdog_s=watchdog_interval(env))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between :meth:`watchdog` pings, None when no watchdog expects them (or no socket)."""
        return self._watchdog_s if self.enabled else None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` assignments in one datagram; True when it was sent."""
        if self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(_SEND_TIMEOUT_S)
                sock.sendto(payload, self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                logger.warning("sd_notify to {!r} failed (not logged again): {}", self._address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_one_line(text)}")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def extend_timeout(self, usec: int) -> bool:
        if isinstance(usec, bool) or not isinstance(usec, int) or usec < 0:
            raise ValueError(f"extend_timeout needs a non-negative integer of microseconds, got {usec!r}")
        return self.send(f"EXTEND_TIMEOUT_USEC={usec}")


async def keep_watchdog(notifier: Notifier) -> None:
    """``WATCHDOG=1`` every :attr:`Notifier.watchdog_interval` seconds while the event loop turns (a
    loop that stops turning stops pinging, and systemd restarts the daemon); returns at once when
    there is no watchdog."""
    every = notifier.watchdog_interval
    while every is not None:
        notifier.watchdog()
        await anyio.sleep(every)
