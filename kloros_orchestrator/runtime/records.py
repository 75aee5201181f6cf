"""Typed records the runtime keeps and persists: the saved state, hall-of-fame entries, progress.

Three words that used to mean one thing each time:

* the coordinator's **state** (``core.coordinator.State``: evolving, draining, ...) is the daemon's
  lifecycle position, reported as status ``state``;
* the **saved state** (:class:`SavedState`, ``state_dir/state.json``) is what survives a restart;
* the **progress** (:class:`Progress`) is what a person watching ``status`` sees of the work in hand.

Every record here is a msgspec Struct built once and encoded once, so the writer and the reader of
``state.json`` share one schema. Fields added after the first release have defaults, so a file
written by an older version still loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from loguru import logger

from kloros_orchestrator.model import Genome
from kloros_orchestrator.store import atomic_write_bytes

Interval = tuple[float, float]


def iso(ts: float | None) -> str | None:
    """Unix seconds as an ISO-8601 UTC string (None stays None)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat()


class HallOfFameEntry(msgspec.Struct, omit_defaults=True):
    """One of a domain's best candidates so far: what PHASE re-measures and what adoption picks from.

    ``score``/``score_ci95`` are D-REAM's estimate until a PHASE run re-scores the entry
    (``phase_run_id`` then names that run).
    """

    cand_id: str
    spica_id: str
    genome: Genome
    generation: int
    score: float | None
    score_ci95: Interval | None = None
    phase_run_id: str | None = None


class DomainProgress(msgspec.Struct):
    """One domain's search, as saved: the engine snapshot, numbering, hall of fame, durations."""

    engine: dict[str, Any] | None = None
    generation: int = 0
    hall_of_fame: list[HallOfFameEntry] = msgspec.field(default_factory=list)
    durations: list[float] = msgspec.field(default_factory=list)


class OpenWindow(msgspec.Struct, frozen=True):
    """A PHASE window that was opened and whose PHASE has not completed (resumed after a restart)."""

    window_id: str
    start: float
    end: float
    catch_up: bool = False
    manual: bool = False


class LastPhase(msgspec.Struct, frozen=True):
    """The last completed PHASE (status ``last_phase``: ``completed_at`` and ``results`` are contract)."""

    completed_at: str
    results: str
    window_id: str
    complete: bool
    run_id: str


class SavedState(msgspec.Struct):
    """``state_dir/state.json``: what survives a restart."""

    first_seen: float
    last_opened_id: str | None = None
    last_opened_start: float | None = None
    open_window: OpenWindow | None = None
    last_phase: LastPhase | None = None
    domain_index: int = 0
    last_collapsed: str | None = None  # run_id of the last PHASE results ingested by D-REAM
    engines: dict[str, DomainProgress] = msgspec.field(default_factory=dict)


_encoder = msgspec.json.Encoder()


def load_saved_state(path: Path, *, now: float) -> SavedState:
    """The saved state at ``path``, or a fresh one (logged) when it is missing or unreadable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return SavedState(first_seen=now)
    except OSError as e:
        logger.error("state file {} is unreadable ({}); starting from a fresh state", path, e)
        return SavedState(first_seen=now)
    try:
        return msgspec.json.decode(raw, type=SavedState)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        logger.error("state file {} is unreadable ({}); starting from a fresh state", path, e)
        return SavedState(first_seen=now)


def save_state(path: Path, state: SavedState) -> bool:
    """Persist atomically; a failing disk is logged (and False returned), never raised."""
    try:
        atomic_write_bytes(path, _encoder.encode(state) + b"\n")
    except OSError as e:
        logger.error("cannot persist {}: {} (continuing; a restart would lose recent progress)", path, e)
        return False
    return True


@dataclass
class Progress:
    """What ``status`` shows of the work in hand (D-REAM's tournament, pacing, counts)."""

    domain: str | None = None
    generation: int = 0
    tournament_done: int = 0
    tournament_total: int = 0
    tournaments: int = 0
    pacing: dict[str, Any] = field(default_factory=lambda: {"last_sleep_s": None, "reason": "not paced yet"})
    phase: dict[str, Any] | None = None  # PHASE's progress while a window runs


__all__ = [
    "DomainProgress",
    "HallOfFameEntry",
    "LastPhase",
    "OpenWindow",
    "Progress",
    "SavedState",
    "iso",
    "load_saved_state",
    "save_state",
]
