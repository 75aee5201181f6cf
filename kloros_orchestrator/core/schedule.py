"""PHASE windows: when the next one starts, which one is due now, and catch-up after a miss.

Pure: the current time is always an argument (Unix seconds), the time zone is injected.

Rules (systemd ``Persistent=true`` in spirit, made safe against clock jumps):

* Scheduled windows are either daily at a local ``HH:MM`` or, for ``now+SECONDS``, every
  ``period_s`` starting ``SECONDS`` after ``origin`` (the daemon passes its own start: such
  windows are for demos and tests, relative to each run).
* At any ``now`` only the *latest* scheduled window whose start is at or before ``now`` is
  considered. Whether it already opened is decided by its *scheduled* start against the recorded
  ``last_opened_start`` (a high-water mark), never by wall time of opening: a clock that jumps back
  after a window opened cannot open it again, and a repeated local hour (DST fall-back) maps to the
  same window id.
* A window missed while the daemon existed (ended after ``first_seen``) gets one catch-up window
  starting at ``now`` with the full duration. Only the most recent miss is caught up, and not when
  the next regular window starts before the catch-up could end (that window serves instead).
* Daily windows are built from local wall time with zoneinfo: a nonexistent time (spring-forward
  gap) maps to the first instant after the gap, an ambiguous one (fall-back) to its first occurrence.

The caller records every window it opens by ``window.window_id`` and ``window.start`` (for a
catch-up that start lies after the missed window's scheduled start, so the miss counts as opened).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Final

DAY_S: Final = 86400.0
CATCH_UP_SUFFIX: Final = "+catchup"

_DAILY_RE: Final = re.compile(r"([0-9]{1,2}):([0-9]{2})")
_RELATIVE_RE: Final = re.compile(r"now\+([0-9]+(?:\.[0-9]+)?)")


@dataclass(frozen=True, slots=True)
class DailyStart:
    """A window every local day at ``hour:minute``."""

    hour: int
    minute: int

    def __post_init__(self) -> None:
        if not (0 <= self.hour <= 23 and 0 <= self.minute <= 59):
            raise ValueError(f"daily start {self.hour}:{self.minute:02d} is not a time of day (00:00-23:59)")

    def __str__(self) -> str:
        return f"{self.hour:02d}:{self.minute:02d}"


@dataclass(frozen=True, slots=True)
class RelativeStart:
    """A first window ``offset_s`` after the daemon's first start, then one every period."""

    offset_s: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.offset_s) and self.offset_s >= 0):
            raise ValueError(f"relative start offset must be >= 0 seconds, got {self.offset_s}")

    def __str__(self) -> str:
        return f"now+{self.offset_s:g}"


WindowStart = DailyStart | RelativeStart


def parse_window_start(text: str) -> DailyStart | RelativeStart:
    """Parse ``phase.window.start``: ``"HH:MM"`` (local, 24-hour) or ``"now+SECONDS"``."""
    stripped = text.strip()
    if stripped.startswith("now"):
        match = _RELATIVE_RE.fullmatch(stripped)
        if match is None:
            raise ValueError(
                f"{text!r} is not a relative start: expected 'now+SECONDS' with a non-negative "
                "number of seconds, e.g. 'now+30'"
            )
        return RelativeStart(float(match[1]))
    match = _DAILY_RE.fullmatch(stripped)
    if match is None:
        raise ValueError(
            f"{text!r} is not a window start: expected 'HH:MM' (24-hour local time) or 'now+SECONDS'"
        )
    hour, minute = int(match[1]), int(match[2])
    if hour > 23 or minute > 59:
        raise ValueError(f"{text!r} is not a time of day: hours run 00-23 and minutes 00-59")
    return DailyStart(hour, minute)


@dataclass(frozen=True, slots=True)
class Window:
    """One PHASE window in Unix seconds; ``window_id`` is stable across restarts and clock jumps."""

    window_id: str
    start: float
    end: float
    catch_up: bool
    manual: bool = False

    @property
    def duration_s(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class _Slot:
    window_id: str
    start: float


def local_to_unix(wall: datetime, tz: tzinfo) -> float:
    """Unix time of a naive local wall time: first occurrence if ambiguous, gap end if nonexistent."""
    first = wall.replace(tzinfo=tz, fold=0)
    ts = first.timestamp()
    if datetime.fromtimestamp(ts, tz).replace(tzinfo=None) == wall:
        return ts
    # In a gap, fold=0/1 read the wall time with the offsets before/after the transition; the
    # transition instant lies between the two readings. Offsets change on whole seconds.
    other = wall.replace(tzinfo=tz, fold=1).timestamp()
    lo, hi = math.floor(min(ts, other)), math.ceil(max(ts, other))
    offset_lo = datetime.fromtimestamp(lo, tz).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == offset_lo:
            lo = mid
        else:
            hi = mid
    return float(hi)


class Schedule:
    """The PHASE calendar. All methods are pure; ``now`` is Unix seconds.

    ``period_s`` applies to ``now+SECONDS`` starts; daily starts repeat every local calendar day
    (23 or 25 hours across DST changes). ``origin`` anchors ``now+SECONDS`` starts (the
    driver passes the process's start).
    """

    def __init__(
        self,
        spec: DailyStart | RelativeStart | str,
        duration_s: float,
        tz: tzinfo,
        *,
        period_s: float = DAY_S,
        origin: float,
    ) -> None:
        self.spec: DailyStart | RelativeStart = parse_window_start(spec) if isinstance(spec, str) else spec
        if not (math.isfinite(period_s) and period_s > 0):
            raise ValueError(f"window period must be positive, got {period_s}")
        if isinstance(self.spec, DailyStart) and period_s != DAY_S:
            raise ValueError("a daily 'HH:MM' window repeats every local day; period_s is for 'now+SECONDS'")
        if not (math.isfinite(duration_s) and 0 < duration_s <= period_s):
            raise ValueError(f"window duration must be in (0, {period_s:g}] seconds, got {duration_s}")
        if not math.isfinite(origin):
            raise ValueError(f"origin must be a finite Unix time, got {origin}")
        self.duration_s = float(duration_s)
        self.tz = tz
        self.period_s = float(period_s)
        self.origin = float(origin)

    # --- public -----------------------------------------------------------------------------------

    def due(
        self,
        now: float,
        last_opened_id: str | None,
        last_opened_start: float | None,
        first_seen: float,
    ) -> Window | None:
        """The window that must open at ``now``, or None (see the module rules)."""
        slot = self._latest_at_or_before(now)
        if slot is None or self._opened(slot, last_opened_id, last_opened_start):
            return None
        end = slot.start + self.duration_s
        if now < end:
            return Window(slot.window_id, slot.start, end, catch_up=False)
        if end <= first_seen:
            return None  # ended before this daemon existed: a fresh install does not catch up
        if self._first_after(now).start < now + self.duration_s:
            return None  # the next regular window opens before a catch-up could finish
        return Window(slot.window_id + CATCH_UP_SUFFIX, now, now + self.duration_s, catch_up=True)

    def next_start(self, now: float, last_opened_start: float | None) -> float:
        """Start of the next scheduled window ``due`` would open; ``<= now`` means it is open now.

        Catch-ups are not predicted here: they are decided by ``due`` (call it on every wake-up).
        """
        return self._next_slot(now, last_opened_start).start

    def next_window(self, now: float, last_opened_start: float | None) -> Window:
        slot = self._next_slot(now, last_opened_start)
        return Window(slot.window_id, slot.start, slot.start + self.duration_s, catch_up=False)

    def manual(self, now: float) -> Window:
        """A window asked for by ``phase-now``: it starts now and lasts the configured duration."""
        return Window(f"manual-{int(now)}", now, now + self.duration_s, catch_up=False, manual=True)

    # --- scheduled slots --------------------------------------------------------------------------

    @staticmethod
    def _opened(slot: _Slot, last_opened_id: str | None, last_opened_start: float | None) -> bool:
        if last_opened_start is not None and slot.start <= last_opened_start:
            return True
        return last_opened_id in (slot.window_id, slot.window_id + CATCH_UP_SUFFIX)

    def _next_slot(self, now: float, last_opened_start: float | None) -> _Slot:
        slot = self._latest_at_or_before(now)
        if (
            slot is not None
            and (last_opened_start is None or slot.start > last_opened_start)
            and now < slot.start + self.duration_s
        ):
            return slot
        after = now if last_opened_start is None else max(now, last_opened_start)
        return self._first_after(after)

    def _latest_at_or_before(self, t: float) -> _Slot | None:
        if isinstance(self.spec, RelativeStart):
            first = self.origin + self.spec.offset_s
            if t < first:
                return None
            k = math.floor((t - first) / self.period_s)
            # Float division can land one period off either way; settle on the exact slot.
            while first + k * self.period_s > t:
                k -= 1
            while first + (k + 1) * self.period_s <= t:
                k += 1
            return self._relative_slot(first + k * self.period_s)
        today = datetime.fromtimestamp(t, self.tz).date()
        for days in range(1, -4, -1):
            slot = self._daily_slot(today + timedelta(days=days))
            if slot.start <= t:
                return slot
        return None  # unreachable for real time zones: some day in the last three started before t

    def _first_after(self, t: float) -> _Slot:
        if isinstance(self.spec, RelativeStart):
            first = self.origin + self.spec.offset_s
            if t < first:
                return self._relative_slot(first)
            k = math.floor((t - first) / self.period_s) + 1
            while first + (k - 1) * self.period_s > t:
                k -= 1
            while first + k * self.period_s <= t:
                k += 1
            return self._relative_slot(first + k * self.period_s)
        today = datetime.fromtimestamp(t, self.tz).date()
        day = today - timedelta(days=1)
        while True:  # ends within three iterations: a day's start is within its own day
            slot = self._daily_slot(day)
            if slot.start > t:
                return slot
            day += timedelta(days=1)

    @staticmethod
    def _relative_slot(start: float) -> _Slot:
        return _Slot(f"rel-{int(start)}", start)

    def _daily_slot(self, day: date) -> _Slot:
        assert isinstance(self.spec, DailyStart)
        at = time(self.spec.hour, self.spec.minute)
        return _Slot(f"{day.isoformat()}T{at:%H:%M}", local_to_unix(datetime.combine(day, at), self.tz))
