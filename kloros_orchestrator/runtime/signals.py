"""Receiving the stop signals on the event loop (the driver's ``serve`` runs this in its outer group)."""

from __future__ import annotations

import signal
from collections.abc import Callable

import anyio

from kloros_orchestrator.stop_signals import STOP_SIGNALS, EarlyStops


async def receive_stop_signals(
    on_signal: Callable[[int], object], *, early: EarlyStops | None, hold_signals: bool
) -> None:
    """Call ``on_signal`` for every stop signal: first those recorded before the loop ran (``early``),
    then each one received, until cancelled.

    Signals can only be received in the main thread; open_signal_receiver replaces handlers, and
    leaving it puts the *default* ones back (a late SIGTERM would then kill us with -15). With
    ``hold_signals``, they are blocked before the receiver closes and ignored after, so any burst
    ends in exit 0 (or 130 for a forced second SIGINT).
    """
    try:
        with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
            for signum in early.take() if early is not None else []:
                on_signal(signum)
            try:
                async for signum in signals:
                    on_signal(signum)
            finally:
                if hold_signals:
                    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    finally:
        if hold_signals:
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # pending ones: ignored


__all__ = ["receive_stop_signals"]
