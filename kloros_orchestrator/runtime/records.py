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

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import msgspec
from loguru import logger

from kloros_orchestrator.model import Genome
from kloros_orchestrator.safefs import (
    MAX_JSON_DEPTH,
    RefusedFile,
    Rejected,
    nesting_exceeds,
    read_bounded,
    reject,
)
from kloros_orchestrator.store import atomic_write_bytes

Interval = tuple[float, float]


def format_duration(seconds: float) -> str:
    """``95`` → ``1m35s``, ``3725`` → ``1h02m``, ``4.2`` → ``4s``: for people, not for parsing."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


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

MAX_STATE_BYTES: Final = 32 * 2**20
# A time outside this distance from now is corruption: the schedule's arithmetic on 1e300 never ends.
_TIME_SPAN_S: Final = 100 * 365.25 * 86400.0
_MAX_COUNT: Final = 2**31  # generations and the domain index; beyond is corruption, not progress


def read_saved_state(
    path: Path, *, now: float, move_aside: bool = True
) -> tuple[SavedState, Rejected | None]:
    """The saved state at ``path``, or a fresh one; and why the file was rejected, if it was.

    This is the daemon's start-up read. Missing: a fresh state, nothing rejected. Otherwise the file
    is read through ``read_bounded`` (no link, no FIFO, at most MAX_STATE_BYTES), decoded into
    :class:`SavedState` and checked (:func:`state_problems`). A file that fails is logged and moved
    aside (``state.json.rejected-<ts>``, unless ``move_aside`` is False) so the next start begins
    clean; the caller records the returned :class:`Rejected` as an event.
    """
    try:
        raw = read_bounded(path, max_bytes=MAX_STATE_BYTES)
    except FileNotFoundError:
        return SavedState(first_seen=now), None
    except RefusedFile as e:
        return _fresh(path, f"unreadable: {e.strerror}", now, move_aside=move_aside)
    except OSError as e:  # a failing disk: the file may be fine, leave it
        return _fresh(path, f"unreadable: {e.strerror or e}", now, move_aside=False)
    if nesting_exceeds(raw):
        return _fresh(path, f"nested deeper than {MAX_JSON_DEPTH} levels", now, move_aside=move_aside)
    try:
        state = msgspec.json.decode(raw, type=SavedState)
    except msgspec.ValidationError as e:
        return _fresh(path, str(e), now, move_aside=move_aside)
    except msgspec.DecodeError as e:
        return _fresh(path, f"not valid JSON: {e}", now, move_aside=move_aside)
    problem = next(state_problems(state, now=now), None)
    if problem is not None:
        return _fresh(path, problem, now, move_aside=move_aside)
    return state, None


def _fresh(path: Path, reason: str, now: float, *, move_aside: bool) -> tuple[SavedState, Rejected]:
    rejected = reject(path, reason) if move_aside else Rejected(path, reason, None)
    logger.error("state file {} rejected: {}; starting from a fresh state", path, rejected)
    return SavedState(first_seen=now), rejected


def load_saved_state(path: Path, *, now: float) -> SavedState:
    """The saved state at ``path``, or a fresh one; a bad file is logged and left where it is.

    The same checks as :func:`read_saved_state` without its side effect, for whoever only looks.
    """
    return read_saved_state(path, now=now, move_aside=False)[0]


def state_problems(state: SavedState, *, now: float) -> Iterator[str]:
    """What the types cannot say: times finite and within a century of ``now``, counts in
    0..2**31-1, durations and scores finite, intervals ordered (``field: problem`` each)."""

    def when(field: str, t: float) -> Iterator[str]:
        if not (math.isfinite(t) and abs(t - now) < _TIME_SPAN_S):
            yield f"{field}: {t!r} is not a time within 100 years of now"

    yield from when("first_seen", state.first_seen)
    if state.last_opened_start is not None:
        yield from when("last_opened_start", state.last_opened_start)
    ow = state.open_window
    if ow is not None:
        yield from when("open_window.start", ow.start)
        yield from when("open_window.end", ow.end)
        if ow.end < ow.start:
            yield f"open_window.end: {ow.end!r} is before its start {ow.start!r}"
    yield from _count("domain_index", state.domain_index)
    for name, dp in state.engines.items():
        yield from _progress_problems(f"engines.{name}", dp)


def _count(field: str, n: int) -> Iterator[str]:
    if not 0 <= n < _MAX_COUNT:
        yield f"{field}: {n} is not a count (0 to {_MAX_COUNT - 1})"


def _progress_problems(at: str, dp: DomainProgress) -> Iterator[str]:
    yield from _count(f"{at}.generation", dp.generation)
    for i, d in enumerate(dp.durations):
        if not 0 <= d < _TIME_SPAN_S:  # NaN fails this too
            yield f"{at}.durations[{i}]: {d!r} is not a duration"
    for i, h in enumerate(dp.hall_of_fame):
        yield from _count(f"{at}.hall_of_fame[{i}].generation", h.generation)
        if h.score is not None and not math.isfinite(h.score):
            yield f"{at}.hall_of_fame[{i}].score: {h.score!r} is not a finite number"
        ci = h.score_ci95
        if ci is not None and not (math.isfinite(ci[0]) and math.isfinite(ci[1]) and ci[0] <= ci[1]):
            yield f"{at}.hall_of_fame[{i}].score_ci95: {list(ci)} is not an interval"


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
    backoff: dict[str, dict[str, Any]] = field(default_factory=dict)  # domain -> until_ts, until, reason
    # The running tournament: round k of n, the trial in hand, its race leader, seconds per trial.
    round: int = 0
    rounds: int = 0
    arm: str | None = None
    regime: str | None = None
    leader: dict[str, Any] | None = None  # {cand_id, mean_score, rounds}
    trial_wall_s: float | None = None  # mean wall time of this tournament's trials so far
    contaminated_rounds: int = 0  # rounds of this tournament re-run under outside CPU load
    stopped: str | None = None  # why this tournament stopped early (host too busy), else None
    best: dict[str, dict[str, Any]] = field(default_factory=dict)  # domain -> its latest verdict

    def eta_s(self) -> float | None:
        """Seconds until the tournament ends, from its own trials' mean wall time (None: no trial yet)."""
        if self.trial_wall_s is None:
            return None
        return max(0, self.tournament_total - self.tournament_done) * self.trial_wall_s


__all__ = [
    "MAX_STATE_BYTES",
    "DomainProgress",
    "HallOfFameEntry",
    "LastPhase",
    "OpenWindow",
    "Progress",
    "SavedState",
    "format_duration",
    "iso",
    "load_saved_state",
    "read_saved_state",
    "save_state",
    "state_problems",
]
