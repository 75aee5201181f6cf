from __future__ import annotations

import zoneinfo
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kloros_orchestrator.core import (
    DailyStart,
    RelativeStart,
    Schedule,
    Window,
    local_to_unix,
    parse_window_start,
)

if not {"Europe/Berlin", "America/New_York"} <= zoneinfo.available_timezones():
    pytest.skip("tz database without Europe/Berlin and America/New_York", allow_module_level=True)

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
HOUR = 3600.0
DAY = 86400.0


def local(tz: zoneinfo.ZoneInfo, y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> float:
    """Unix time of an existing, unambiguous local wall time."""
    return datetime(y, mo, d, h, mi, tzinfo=tz).timestamp()


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=UTC).timestamp()


class Clock:
    """A caller that records every opened window, as the driver does."""

    def __init__(self, schedule: Schedule, first_seen: float) -> None:
        self.schedule = schedule
        self.first_seen = first_seen
        self.last_id: str | None = None
        self.last_start: float | None = None
        self.opened: list[Window] = []

    def tick(self, now: float) -> Window | None:
        window = self.schedule.due(now, self.last_id, self.last_start, self.first_seen)
        if window is not None:
            self.opened.append(window)
            self.last_id, self.last_start = window.window_id, window.start
        return window

    def sweep(self, start: float, stop: float, step: float = 300.0) -> list[Window]:
        before = len(self.opened)
        now = start
        while now < stop:
            self.tick(now)
            now += step
        return self.opened[before:]


# --- parsing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("03:00", DailyStart(3, 0)),
        ("3:05", DailyStart(3, 5)),
        (" 23:59 ", DailyStart(23, 59)),
        ("00:00", DailyStart(0, 0)),
        ("now+30", RelativeStart(30.0)),
        ("now+0", RelativeStart(0.0)),
        ("now+1.5", RelativeStart(1.5)),
    ],
)
def test_parse_window_start_accepts(text: str, expected: DailyStart | RelativeStart) -> None:
    assert parse_window_start(text) == expected


@pytest.mark.parametrize(
    "text",
    ["25:00", "12:60", "3pm", "0300", "", "now", "now+", "now+-5", "now+abc", "now-5", "now+5s", "٠٣:٠٠"],
)
def test_parse_window_start_rejects_with_a_clear_message(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_window_start(text)
    message = str(info.value)
    assert repr(text) in message
    assert "HH:MM" in message or "now+SECONDS" in message or "00-23" in message


def test_schedule_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="duration"):
        Schedule("03:00", 0, BERLIN, origin=0.0)
    with pytest.raises(ValueError, match="duration"):
        Schedule("now+5", 200, BERLIN, period_s=100, origin=0.0)
    with pytest.raises(ValueError, match="period_s"):
        Schedule("03:00", 60, BERLIN, period_s=3600, origin=0.0)


# --- local time ----------------------------------------------------------------------------------------


def test_local_to_unix_gap_maps_to_the_instant_after_the_gap() -> None:
    # Berlin 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC); 02:30 does not exist.
    assert local_to_unix(datetime(2026, 3, 29, 2, 30), BERLIN) == utc(2026, 3, 29, 1, 0)
    # New York 2026-03-08: 02:00 EST jumps to 03:00 EDT (07:00 UTC).
    assert local_to_unix(datetime(2026, 3, 8, 2, 15), NEW_YORK) == utc(2026, 3, 8, 7, 0)


def test_local_to_unix_ambiguous_uses_first_occurrence() -> None:
    # Berlin 2026-10-25: 02:30 happens at 00:30 UTC (CEST) and again at 01:30 UTC (CET).
    assert local_to_unix(datetime(2026, 10, 25, 2, 30), BERLIN) == utc(2026, 10, 25, 0, 30)
    # New York 2026-11-01: 01:30 happens at 05:30 UTC (EDT) and 06:30 UTC (EST).
    assert local_to_unix(datetime(2026, 11, 1, 1, 30), NEW_YORK) == utc(2026, 11, 1, 5, 30)


# --- due -------------------------------------------------------------------------------------------------


def test_window_crossing_midnight_is_due_after_midnight() -> None:
    schedule = Schedule("23:30", HOUR, BERLIN, origin=local(BERLIN, 2026, 11, 20))
    now = local(BERLIN, 2026, 11, 23, 0, 10)
    window = schedule.due(now, None, None, first_seen=local(BERLIN, 2026, 11, 20))
    assert window == Window(
        "2026-11-22T23:30", local(BERLIN, 2026, 11, 22, 23, 30), local(BERLIN, 2026, 11, 23, 0, 30), False
    )
    assert schedule.due(local(BERLIN, 2026, 11, 23, 0, 31), window.window_id, window.start, 0.0) is None


def test_start_inside_a_window_opens_it() -> None:
    now = local(BERLIN, 2026, 11, 22, 5, 0)
    schedule = Schedule("03:00", 4 * HOUR, BERLIN, origin=now)
    window = schedule.due(now, None, None, first_seen=now)
    assert window is not None
    assert (window.window_id, window.start, window.end, window.catch_up) == (
        "2026-11-22T03:00",
        local(BERLIN, 2026, 11, 22, 3),
        local(BERLIN, 2026, 11, 22, 7),
        False,
    )


def test_fresh_install_outside_a_window_waits_for_the_next() -> None:
    now = local(BERLIN, 2026, 11, 22, 10, 0)
    schedule = Schedule("03:00", 4 * HOUR, BERLIN, origin=now)
    assert schedule.due(now, None, None, first_seen=now) is None
    assert schedule.next_start(now, None) == local(BERLIN, 2026, 11, 23, 3)
    assert schedule.next_window(now, None) == Window(
        "2026-11-23T03:00", local(BERLIN, 2026, 11, 23, 3), local(BERLIN, 2026, 11, 23, 7), False
    )


def test_clock_jump_forward_over_a_window_gives_exactly_one_catch_up() -> None:
    first_seen = local(BERLIN, 2026, 11, 20)
    schedule = Schedule("03:00", 4 * HOUR, BERLIN, origin=first_seen)
    clock = Clock(schedule, first_seen)
    clock.last_id, clock.last_start = "2026-11-21T03:00", local(BERLIN, 2026, 11, 21, 3)
    assert clock.tick(local(BERLIN, 2026, 11, 22, 2, 0)) is None
    jumped = local(BERLIN, 2026, 11, 22, 8, 0)  # 03:00-07:00 passed in one jump
    window = clock.tick(jumped)
    assert window == Window("2026-11-22T03:00+catchup", jumped, jumped + 4 * HOUR, True)
    assert clock.sweep(jumped + 60, local(BERLIN, 2026, 11, 23, 2, 59)) == []
    regular = clock.sweep(local(BERLIN, 2026, 11, 23, 3), local(BERLIN, 2026, 11, 23, 12))
    assert [w.window_id for w in regular] == ["2026-11-23T03:00"]


def test_clock_jump_backward_after_opening_does_not_reopen() -> None:
    first_seen = local(BERLIN, 2026, 11, 20)
    schedule = Schedule("03:00", 4 * HOUR, BERLIN, origin=first_seen)
    clock = Clock(schedule, first_seen)
    opened = clock.tick(local(BERLIN, 2026, 11, 22, 3, 0))
    assert opened is not None and opened.window_id == "2026-11-22T03:00"
    # NTP steps the clock back an hour, then time runs through 03:00 again.
    assert clock.sweep(local(BERLIN, 2026, 11, 22, 2, 30), local(BERLIN, 2026, 11, 22, 7, 30), 60) == []
    back = local(BERLIN, 2026, 11, 22, 2, 30)
    assert schedule.next_start(back, opened.start) == local(BERLIN, 2026, 11, 23, 3)


def test_daemon_down_three_days_catches_up_once() -> None:
    first_seen = local(BERLIN, 2026, 11, 1)
    schedule = Schedule("03:00", 4 * HOUR, BERLIN, origin=first_seen)
    clock = Clock(schedule, first_seen)
    assert clock.tick(local(BERLIN, 2026, 11, 19, 3, 0)) is not None  # last run before the outage
    back = local(BERLIN, 2026, 11, 22, 12, 0)  # 20th, 21st and 22nd were missed
    opened = clock.sweep(back, local(BERLIN, 2026, 11, 23, 2, 55))
    assert [(w.window_id, w.start, w.catch_up) for w in opened] == [("2026-11-22T03:00+catchup", back, True)]


def test_no_catch_up_when_the_next_window_comes_first() -> None:
    first_seen = local(BERLIN, 2026, 11, 1)
    schedule = Schedule("03:00", 4 * HOUR, BERLIN, origin=first_seen)
    clock = Clock(schedule, first_seen)
    clock.tick(local(BERLIN, 2026, 11, 20, 3, 0))
    back = local(BERLIN, 2026, 11, 22, 1, 0)  # the 21st was missed; the 22nd opens in 2 h
    assert clock.tick(back) is None
    assert schedule.next_start(back, clock.last_start) == local(BERLIN, 2026, 11, 22, 3)
    opened = clock.sweep(back, local(BERLIN, 2026, 11, 22, 12))
    assert [(w.window_id, w.catch_up) for w in opened] == [("2026-11-22T03:00", False)]


def test_window_ended_before_first_seen_is_never_caught_up() -> None:
    first_seen = local(BERLIN, 2026, 11, 22, 7, 30)
    schedule = Schedule("03:00", 4 * HOUR, BERLIN, origin=first_seen)
    assert schedule.due(local(BERLIN, 2026, 11, 22, 9), None, None, first_seen) is None


def test_last_opened_id_alone_blocks_the_same_window() -> None:
    schedule = Schedule("03:00", 4 * HOUR, BERLIN, origin=0.0)
    now = local(BERLIN, 2026, 11, 22, 4)
    assert schedule.due(now, "2026-11-22T03:00", None, 0.0) is None
    assert schedule.due(now, "2026-11-21T03:00", None, 0.0) is not None


# --- DST -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "start", "day", "expected_utc"),
    [
        # Spring forward: the nonexistent local time opens at the end of the gap.
        (BERLIN, "02:30", (2026, 3, 29), utc(2026, 3, 29, 1, 0)),
        (NEW_YORK, "02:15", (2026, 3, 8), utc(2026, 3, 8, 7, 0)),
        # Fall back: the repeated local time opens at its first occurrence only.
        (BERLIN, "02:30", (2026, 10, 25), utc(2026, 10, 25, 0, 30)),
        (NEW_YORK, "01:30", (2026, 11, 1), utc(2026, 11, 1, 5, 30)),
    ],
)
def test_dst_days_have_exactly_one_window(
    tz: zoneinfo.ZoneInfo, start: str, day: tuple[int, int, int], expected_utc: float
) -> None:
    the_day = date(*day)
    days = [the_day + timedelta(days=k) for k in (-1, 0, 1)]
    begin = local(tz, days[0].year, days[0].month, days[0].day)
    end = local(tz, days[2].year, days[2].month, days[2].day, 23, 59)
    schedule = Schedule(start, HOUR, tz, origin=begin)
    clock = Clock(schedule, begin)
    opened = clock.sweep(begin, end, step=60)
    assert [w.window_id for w in opened] == [f"{d.isoformat()}T{start}" for d in days]
    assert all(not w.catch_up for w in opened)
    assert opened[1].start == expected_utc
    # Neighbouring days keep their normal local time.
    for w in (opened[0], opened[2]):
        assert datetime.fromtimestamp(w.start, tz).strftime("%H:%M") == start


def test_repeated_hour_does_not_reopen_the_window() -> None:
    schedule = Schedule("02:30", HOUR, BERLIN, origin=0.0)
    first = utc(2026, 10, 25, 0, 30)
    second = utc(2026, 10, 25, 1, 30)  # the wall clock reads 02:30 again
    assert schedule.due(second, "2026-10-25T02:30", first, 0.0) is None


# --- relative and manual windows ------------------------------------------------------------------------


def test_relative_start_opens_after_origin_then_every_period() -> None:
    origin = 1_800_000_000.25
    schedule = Schedule("now+60", 30, BERLIN, origin=origin)
    clock = Clock(schedule, origin)
    assert clock.tick(origin) is None
    assert schedule.next_start(origin, None) == origin + 60
    first = clock.tick(origin + 60)
    assert first == Window(f"rel-{int(origin + 60)}", origin + 60, origin + 90, False)
    assert clock.tick(origin + 70) is None
    assert schedule.next_start(origin + 70, first.start) == origin + 60 + DAY


def test_relative_start_with_short_period_for_demos() -> None:
    origin = 1_000.0
    schedule = Schedule(RelativeStart(10), 5, BERLIN, period_s=20, origin=origin)
    clock = Clock(schedule, origin)
    opened = clock.sweep(origin, origin + 75, step=1)
    assert [w.start for w in opened] == [1010.0, 1030.0, 1050.0, 1070.0]


def test_manual_window() -> None:
    schedule = Schedule("03:00", 4 * HOUR, BERLIN, origin=0.0)
    assert schedule.manual(1_800_000_123.9) == Window(
        "manual-1800000123", 1_800_000_123.9, 1_800_000_123.9 + 4 * HOUR, False, manual=True
    )


# --- property: a window id is opened at most once -------------------------------------------------------

_steps = st.one_of(
    st.floats(min_value=0, max_value=2 * HOUR),  # time running
    st.floats(min_value=-3 * DAY, max_value=3 * DAY),  # clock jumps either way (NTP, RTC, suspend)
)


@settings(max_examples=150, deadline=None)
@given(
    tz=st.sampled_from([BERLIN, NEW_YORK]),
    spec=st.one_of(
        st.builds(DailyStart, st.integers(0, 23), st.integers(0, 59)),
        st.builds(RelativeStart, st.floats(0, 2 * DAY)),
    ),
    duration=st.floats(min_value=60, max_value=12 * HOUR),
    # Around 2026's DST changes in both zones.
    start=st.sampled_from([utc(2026, 3, 7), utc(2026, 3, 28), utc(2026, 10, 24), utc(2026, 10, 31)]),
    offset=st.floats(min_value=0, max_value=DAY),
    steps=st.lists(_steps, max_size=60),
)
def test_each_window_opens_at_most_once(
    tz: zoneinfo.ZoneInfo,
    spec: DailyStart | RelativeStart,
    duration: float,
    start: float,
    offset: float,
    steps: list[float],
) -> None:
    first_seen = start + offset
    schedule = Schedule(spec, duration, tz, origin=first_seen)
    clock = Clock(schedule, first_seen)
    now = first_seen
    for step in [0.0, *steps]:
        now += step
        window = clock.tick(now)
        if window is None:
            assert schedule.next_start(now, clock.last_start) > now
            continue
        assert window.start <= now < window.end
        if window.catch_up:
            assert window.start == now and window.window_id.endswith("+catchup")
        else:
            assert schedule.next_start(now, None if len(clock.opened) == 1 else clock.opened[-2].start) <= now
    ids = [w.window_id.removesuffix("+catchup") for w in clock.opened]
    assert len(ids) == len(set(ids))
