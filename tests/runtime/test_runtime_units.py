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
