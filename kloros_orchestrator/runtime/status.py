"""The status object's parts that describe work in hand: D-REAM's tournament and PHASE's window.

The contract fields (README, "Command line (contract)") stay as they were — ``tournament`` keeps
``done``/``total`` — and everything here is additive: the race's round, the trial in hand, the
race leader, the time left, and each domain's latest verdict.
"""

from __future__ import annotations

from typing import Any

from kloros_orchestrator.core.schedule import Schedule
from kloros_orchestrator.phase.results import PhaseResults
from kloros_orchestrator.runtime.evaluate import TrialCounters
from kloros_orchestrator.runtime.records import Progress, SavedState, iso


def _rounded(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(x, digits)


def tournament_status(pr: Progress) -> dict[str, Any]:
    """``tournament``: done/total (exact: racing shrinks the total), round k of n, the trial in
    hand, the race leader and the seconds left."""
    return {
        "done": pr.tournament_done,
        "total": pr.tournament_total,
        "remaining": max(0, pr.tournament_total - pr.tournament_done),
        "round": pr.round,
        "rounds": pr.rounds,
        "arm": pr.arm,
        "regime": pr.regime,
        "leader": pr.leader,
        "eta_s": _rounded(pr.eta_s()),
        "contaminated_rounds": pr.contaminated_rounds,  # re-run under outside load (README)
        "stopped": pr.stopped,  # why the tournament stopped early ("host too busy: ..."), else None
    }


def work_status(pr: Progress, counters: TrialCounters) -> dict[str, Any]:
    """D-REAM's part of ``status``."""
    return {
        "domain": pr.domain,
        "generation": pr.generation,
        "tournament": tournament_status(pr),
        "best": {name: dict(b) for name, b in pr.best.items()},
        "pacing": pr.pacing,
        "backoff": {n: {k: v for k, v in b.items() if k != "until_ts"} for n, b in pr.backoff.items()},
        "counters": {
            "tournaments": pr.tournaments,
            "trials": counters.trials,
            "failed_trials": counters.failed_trials,
            "contaminated_trials": counters.contaminated_trials,
        },
        # README "Contaminated rounds": without /proc/stat no round can be told contaminated.
        "contamination": {
            "detectable": counters.outside_cpu_problem is None,
            "problem": counters.outside_cpu_problem,
        },
    }


def window_status(saved: SavedState, schedule: Schedule, now: float) -> dict[str, Any]:
    """``next_window``: the open one, else the next the schedule will open."""
    ow = saved.open_window
    if ow is not None:
        return {"start": iso(ow.start), "end": iso(ow.end), "open": True, "window_id": ow.window_id}
    w = schedule.next_window(now, saved.last_opened_start)
    return {"start": iso(w.start), "end": iso(w.end), "open": False, "window_id": w.window_id}


def metrics_status(status: dict[str, Any], results: PhaseResults | None, busy_s: float) -> dict[str, Any]:
    """``status`` plus what the metrics file needs beyond it: each domain's best score with its
    interval, the last PHASE's verdict counts, and the share of the uptime spent in trials."""
    best = {  # an unsafe best, or the current configuration itself, has no score worth a dashboard
        name: {"cand_id": b.get("cand_id"), "score": b.get("score"), "ci95": b.get("ci95")}
        for name, b in (status.get("best") or {}).items()
        if b.get("comparable")
    }
    out = {**status, "best": best}
    if results is not None:
        out["phase_verdicts"] = {
            "promoted": len(results.promoted_variants),
            "flagged": len(results.flagged_variants),
        }
    uptime = float(status.get("uptime_s") or 0.0)
    if uptime > 0:
        out["duty_cycle"] = min(1.0, busy_s / uptime)
    return out


__all__ = ["metrics_status", "tournament_status", "window_status", "work_status"]
