"""Stop signals from the very start of ``run`` until the event loop takes them over.

The driver receives SIGTERM/SIGINT/SIGHUP through anyio's signal receiver, which exists only once
the loop runs; start-up (config, state directory, journal restore, discovery) comes before. Left
with the default dispositions, a SIGTERM there kills the process (-15) and a SIGINT prints a
``KeyboardInterrupt`` traceback. :class:`EarlyStops` records them instead; the driver replays them
as ``StopRequested`` the moment its receiver is open, so any signal at any time ends in exit 0 (or
130 for a second SIGINT).
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Final

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class EarlyStops:
    """Records stop signals until :meth:`take` hands them over (main thread only, like any handler)."""

    def __init__(self) -> None:
        self._received: list[int] = []

    def install(self) -> EarlyStops:
        """Record stop signals from now on (idempotent; returns itself)."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._record)
        return self

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self._received.append(signum)  # nothing else: a handler may run between any two bytecodes

    def take(self) -> list[int]:
        """The signals received so far, in order; they are forgotten here."""
        taken, self._received = self._received, []
        return taken


# The one recorder of the process: ``__main__`` installs it before anything heavy is imported, the CLI
# hands it to the daemon.
EARLY: Final = EarlyStops()

__all__ = ["EARLY", "STOP_SIGNALS", "EarlyStops"]
