"""Small pure pieces of the runtime: CPU slicing for parallel trials, the status summary."""

from __future__ import annotations

import pytest

from kloros_orchestrator.cli import format_status
from kloros_orchestrator.runtime.tournament import cpu_slices


@pytest.mark.parametrize(
    ("cpus", "k", "expected"),
    [
        ((0, 1), 2, [(0,), (1,)]),
        ((0, 1, 2, 3), 2, [(0, 1), (2, 3)]),
        ((0, 1, 2), 2, [(0,), (1,)]),
        ((0, 1), 5, [(0,), (1,)]),
        ((0, 1, 2, 3), 1, [(0, 1, 2, 3)]),
    ],
)
def test_cpu_slices_are_disjoint_and_equal(
    cpus: tuple[int, ...], k: int, expected: list[tuple[int, ...]]
) -> None:
    out = cpu_slices(cpus, k)
    assert out == expected
    flat = [c for s in out for c in s]
    assert set(flat) <= set(cpus) and len(set(flat)) == len(flat)
    assert len({len(s) for s in out}) == 1  # equal capacity for arms paired in one round


def test_status_summary_shows_every_contract_field() -> None:
    text = format_status(
        {
            "state": "draining",
            "domain": "cpu",
            "generation": 3,
            "tournament": {"done": 5, "total": 12},
            "next_window": {"start": "2026-11-22T03:00:00+00:00", "end": "2026-11-22T07:00:00+00:00"},
            "last_phase": {"completed_at": "2026-11-21T04:10:00+00:00", "results": "/x/phase_results.json"},
            "pacing": {"last_sleep_s": 12.5, "reason": "converging"},
            "domains": {"cpu": "ok", "gpu": "unsupported"},
            "pid": 42,
            "uptime_s": 100.0,
            "version": "0.1.0",
            "counters": {"tournaments": 2, "trials": 40},
        }
    )
    for needle in (
        "draining",
        "cpu",
        "generation 3",
        "5/12",
        "2026-11-22",
        "/x/phase_results.json",
        "12.5",
        "converging",
        "gpu=unsupported",
        "trials=40",
        "pid 42",
    ):
        assert needle in text, needle
    assert "none yet" in format_status({"state": "evolving", "last_phase": None})


def test_status_text_shows_the_round_the_trial_in_hand_the_verdict_and_phase_progress() -> None:
    text = format_status(
        {
            "state": "evolving", "domain": "cpu", "generation": 0,
            "tournament": {"done": 40, "total": 64, "remaining": 24, "round": 2, "rounds": 3,
                           "arm": "g0c3", "regime": "stress", "eta_s": 80.0,
                           "leader": {"cand_id": "g0c3", "mean_score": 0.032, "rounds": 2}},
            "best": {"cpu": {"generation": 0, "text": "g0c3 beat the current configuration: +4.1%"}},
            "phase": {"run_id": "p1", "epoch": 1, "epochs": 2, "regime": "normal", "replica": 2,
                      "replicas": 3, "arm": "stock", "domain": "cpu", "done": 10, "total": 48, "eta_s": 190},
        }
    )  # fmt: skip
    assert (
        "tournament  cpu gen 0 round 2/3: 40/64 trials (24 left, about 1m20s), now g0c3 in stress; "
        "leader g0c3 +3.2% vs the stock arm" in text
    )
    assert "verdict     cpu gen 0: g0c3 beat the current configuration: +4.1%" in text
    assert "epoch 1/2, normal, replica 2/3, stock on cpu: 10/48 trials, about 3m10s left" in text


def test_status_text_in_phase_says_the_tournament_is_paused() -> None:
    status = {"state": "phase", "domain": "cpu", "generation": 3, "tournament": {"done": 9, "total": 9}}
    text = format_status(status)
    assert "tournament  paused while PHASE runs (the last: cpu gen 3)" in text and "9/9" not in text
