from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kloros_orchestrator.core import PacingInputs, decide, estimate_tournament_s, should_start

# Wide clamps so that directions are visible; 100 s tournaments rest 25 s at neutral.
NEUTRAL = PacingInputs(
    recent_durations_s=(100.0, 100.0, 100.0),
    improvement_rate=None,
    host_busy=None,
    time_to_window_s=None,
    min_sleep_s=0.0,
    max_sleep_s=10_000.0,
)


def sleep(**changes: object) -> float:
    return decide(replace(NEUTRAL, **changes)).sleep_s  # type: ignore[arg-type]


def test_neutral_rest_is_a_fraction_of_the_mean_tournament() -> None:
    decision = decide(NEUTRAL)
    assert decision.sleep_s == pytest.approx(25.0)
    assert decision.estimate_s == pytest.approx(100.0)
    assert decision.defer_to_window is False
    assert "100.0s" in decision.reason


def test_longer_tournaments_rest_proportionally_longer() -> None:
    short = sleep(recent_durations_s=(100.0, 100.0))
    assert sleep(recent_durations_s=(200.0, 200.0)) == pytest.approx(2 * short)
    assert sleep(recent_durations_s=(10.0,)) < sleep(recent_durations_s=(1000.0,))


def test_converging_search_rests_longer() -> None:
    neutral = sleep()
    assert sleep(improvement_rate=0.001) > neutral
    assert sleep(improvement_rate=0.0) > neutral
    assert sleep(improvement_rate=-0.02) >= sleep(improvement_rate=0.001)


def test_fast_improvement_rests_shorter() -> None:
    assert sleep(improvement_rate=0.05) < sleep(improvement_rate=0.01) < sleep(improvement_rate=0.002)


def test_busy_host_backs_off_and_idle_host_runs_more() -> None:
    neutral = sleep()
    assert sleep(host_busy=0.9) > sleep(host_busy=0.6) > neutral
    assert sleep(host_busy=0.05) < sleep(host_busy=0.4) < neutral


def test_unknown_inputs_are_neutral() -> None:
    at_neutral_points = sleep(host_busy=0.5, improvement_rate=0.01)
    assert sleep(improvement_rate=None, host_busy=None) == pytest.approx(at_neutral_points)


def test_clamped_to_min_and_max() -> None:
    assert sleep(max_sleep_s=30.0, host_busy=1.0, improvement_rate=0.0) == 30.0
    assert sleep(min_sleep_s=20.0, host_busy=0.0, improvement_rate=1.0) == 20.0
    decision = decide(replace(NEUTRAL, max_sleep_s=10.0))
    assert "clamped to max 10.0s" in decision.reason


def test_no_history_rests_the_minimum_and_estimates_nothing() -> None:
    decision = decide(replace(NEUTRAL, recent_durations_s=(), min_sleep_s=5.0))
    assert decision.sleep_s == 5.0
    assert decision.estimate_s is None


def test_sleep_never_exceeds_time_to_window() -> None:
    decision = decide(replace(NEUTRAL, recent_durations_s=(), min_sleep_s=60.0, time_to_window_s=20.0))
    assert decision.sleep_s == 20.0
    assert decide(replace(NEUTRAL, time_to_window_s=-5.0)).sleep_s == 0.0


def test_rest_is_shortened_so_one_tournament_still_fits() -> None:
    # Rest 25 s + tournament 100 s + margin 10 s > 120 s: rest 10 s and start one.
    decision = decide(replace(NEUTRAL, time_to_window_s=120.0, margin_s=10.0))
    assert decision.defer_to_window is False
    assert decision.sleep_s == pytest.approx(10.0)


def test_defers_when_the_next_tournament_cannot_finish_before_the_window() -> None:
    decision = decide(replace(NEUTRAL, time_to_window_s=90.0, min_sleep_s=5.0))
    assert decision.defer_to_window is True
    assert decision.sleep_s == 90.0
    assert "defer" in decision.reason and "90.0s" in decision.reason
    assert decide(replace(NEUTRAL, time_to_window_s=1000.0)).defer_to_window is False


def test_inputs_are_logged_as_a_json_ready_dict() -> None:
    inputs = decide(replace(NEUTRAL, host_busy=0.25)).inputs
    assert inputs["recent_durations_s"] == [100.0, 100.0, 100.0]
    assert inputs["host_busy"] == 0.25
    assert inputs["improvement_rate"] is None


def test_estimate_is_a_rolling_mean_of_recent_tournaments() -> None:
    assert estimate_tournament_s(()) is None
    assert estimate_tournament_s((10.0, 20.0)) == 15.0
    # Only the newest five count.
    assert estimate_tournament_s((1000.0, 10.0, 10.0, 10.0, 10.0, 20.0)) == 12.0


def test_should_start() -> None:
    assert should_start(100.0, None, 30.0)
    assert should_start(100.0, 130.0, 30.0)
    assert not should_start(100.0, 129.0, 30.0)
    assert should_start(None, 5.0, 0.0)
    assert not should_start(None, 0.0, 1.0)


@pytest.mark.parametrize(
    "changes",
    [
        {"min_sleep_s": -1.0},
        {"min_sleep_s": 10.0, "max_sleep_s": 5.0},
        {"host_busy": 1.5},
        {"host_busy": float("nan")},
        {"recent_durations_s": (-1.0,)},
        {"improvement_rate": float("inf")},
        {"time_to_window_s": float("nan")},
        {"margin_s": -1.0},
    ],
)
def test_invalid_inputs_are_rejected(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        replace(NEUTRAL, **changes)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    durations=st.lists(st.floats(0, 10_000), max_size=8),
    rate=st.none() | st.floats(-1, 1),
    busy=st.none() | st.floats(0, 1),
    ttw=st.none() | st.floats(-100, 50_000),
    lo=st.floats(0, 600),
    span=st.floats(0, 3600),
    margin=st.floats(0, 300),
)
def test_decision_bounds(
    durations: list[float],
    rate: float | None,
    busy: float | None,
    ttw: float | None,
    lo: float,
    span: float,
    margin: float,
) -> None:
    inputs = PacingInputs(tuple(durations), rate, busy, ttw, lo, lo + span, margin)
    decision = decide(inputs)
    assert decision.sleep_s >= 0
    if ttw is not None:
        assert decision.sleep_s <= max(ttw, 0.0)
    if decision.defer_to_window:
        assert ttw is not None and decision.sleep_s == max(ttw, 0.0)
    else:
        assert decision.sleep_s <= lo + span
        if ttw is None or ttw >= lo + (decision.estimate_s or 0.0) + margin:
            assert decision.sleep_s >= lo
        if ttw is not None:
            assert should_start(decision.estimate_s, max(ttw, 0.0) - decision.sleep_s, margin)
