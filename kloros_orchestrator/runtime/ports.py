"""The narrow surfaces D-REAM and PHASE get from the driver instead of the daemon itself.

* :class:`DreamGate` — whether D-REAM may start a tournament, and a sleep that a resume ends early.
  The driver opens it on ``ResumeDream`` and closes it on ``PauseDream``; D-REAM only looks at it
  between tournaments, so a window opening mid-tournament drains the tournament instead of cutting it.
* :class:`EventLog` — ``logs/events.jsonl`` (one JSON object per line, ``ts`` in Unix seconds).
* :class:`TrialRunner` — what runs one trial (the real ``Evaluator``, or a fake in tests).

Both are plain objects with no reference back to the driver, which is what lets D-REAM and PHASE be
unit-tested with a fake evaluator and a fake clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import anyio
import msgspec

from kloros_orchestrator.model import Genome, TrialResult
from kloros_orchestrator.runtime.evaluate import TrialCounters
from kloros_orchestrator.spica.base import SpicaDomain
from kloros_orchestrator.store import append_jsonl

Clock = Callable[[], float]


class TrialRunner(Protocol):
    """Runs one trial (apply, workload, KPIs); ``runtime.evaluate.Evaluator`` is the real one."""

    counters: TrialCounters  # trials run and failed, for status

    async def run_trial(
        self,
        domain: SpicaDomain,
        genome: Genome,
        regime: str,
        *,
        cand_id: str,
        duration_s: float | None = None,
        cpus: tuple[int, ...] | None = None,
    ) -> TrialResult: ...

    def missing_reasons(self) -> dict[str, str]: ...


class DreamGate:
    """Open/closed plus a wake-up for sleepers; anyio events are one-shot, so each resume arms a new one."""

    def __init__(self) -> None:
        self._open = False
        self._resumed = anyio.Event()

    @property
    def is_open(self) -> bool:
        return self._open

    def open(self) -> None:
        """Allow tournaments and wake everyone waiting or pacing."""
        self._open = True
        woken, self._resumed = self._resumed, anyio.Event()
        woken.set()

    def close(self) -> None:
        """Forbid the next tournament (a running one finishes)."""
        self._open = False

    async def wait_open(self) -> None:
        """Return when a tournament may start (at once if it may now)."""
        while not self._open:
            await self._resumed.wait()

    async def pace(self, seconds: float) -> None:
        """Sleep up to ``seconds`` (``inf``: until the next resume); a resume ends the sleep at once."""
        resumed = self._resumed
        if math.isinf(seconds):
            await resumed.wait()
            return
        with anyio.move_on_after(max(0.0, seconds)):
            await resumed.wait()


def jsonable(fields: dict[str, Any]) -> dict[str, Any]:
    """Fields as JSON builtins; a value msgspec cannot encode is written as its ``str``."""
    out: dict[str, Any] = {}
    for k, v in fields.items():
        try:
            out[k] = msgspec.to_builtins(v)
        except TypeError:
            out[k] = str(v)
    return out


class EventLog:
    """Appends structured events to ``logs/events.jsonl``; every line is written whole."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path = path
        self.clock = clock

    def record(self, event: str, *, ts: float | None = None, **fields: Any) -> None:
        append_jsonl(
            self.path, {"ts": self.clock() if ts is None else ts, "event": event, **jsonable(fields)}
        )


__all__ = ["Clock", "DreamGate", "EventLog", "TrialRunner", "jsonable"]
