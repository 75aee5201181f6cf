"""Collapse: D-REAM ingests a finished PHASE's verdict for one domain.

PHASE's baselines go into the fitness history (kind ``phase_baseline``); its many-epoch scores replace
D-REAM's quick estimates in the hall of fame; flagged variants leave the hall of fame; promoted ones
seed the next bred generation; search-space recommendations are applied, never past a knob's
declared bounds. What changed is returned, for the ``results_collapsed`` event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from loguru import logger

from kloros_orchestrator.engine import Evolution
from kloros_orchestrator.phase.results import PhaseResults
from kloros_orchestrator.runtime.conclude import sort_hall_of_fame
from kloros_orchestrator.runtime.records import HallOfFameEntry
from kloros_orchestrator.store import StatePaths, append_jsonl


def collapse_domain(
    name: str,
    results: PhaseResults,
    eng: Evolution,
    hof: list[HallOfFameEntry],
    paths: StatePaths,
    clock: Callable[[], float],
) -> dict[str, Any]:
    """Apply ``results`` to one domain's engine and hall of fame (``hof`` is changed in place)."""
    ch: dict[str, Any] = {
        "baseline_regimes": [],
        "rescored": [],
        "removed": [],
        "seeded": [],
        "space": [],
        "rejected": [],
    }
    m = results.metrics.get(name)
    if m is not None:
        for regime, kpis in m.baseline.items():
            append_jsonl(
                paths.fitness_history,
                {
                    "ts": clock(),
                    "kind": "phase_baseline",
                    "phase_run_id": results.run_id,
                    "domain": name,
                    "regime": regime,
                    "kpis": kpis,
                },
            )
            ch["baseline_regimes"].append(regime)
        # PHASE's many-epoch score replaces D-REAM's quick estimate as the variant's fitness.
        for cid, summary in (m.variants or {}).items():
            for h in hof:
                if h.cand_id == cid and summary.score_v2 is not None:
                    h.score = summary.score_v2
                    h.score_ci95 = summary.score_ci95
                    h.phase_run_id = results.run_id
                    ch["rescored"].append(cid)
    for f in results.flagged_variants:
        if f.domain != name:
            continue
        before = len(hof)
        hof[:] = [h for h in hof if h.cand_id != f.cand_id and h.genome != f.genome]
        if len(hof) != before:
            ch["removed"].append({"cand_id": f.cand_id, "reasons": list(f.reasons)})
    sort_hall_of_fame(hof)
    _seed_promoted(name, results, eng, ch)
    _apply_recommendations(name, results, eng, ch)
    return ch


def _seed_promoted(name: str, results: PhaseResults, eng: Evolution, ch: dict[str, Any]) -> None:
    promoted = [p for p in results.promoted_variants if p.domain == name]
    if not promoted:
        return
    try:
        eng.inject([dict(p.genome) for p in promoted])
        ch["seeded"] = [p.cand_id for p in promoted]
    except ValueError as e:  # e.g. a genome from before a knob appeared on this host
        logger.error("PHASE-promoted seeds for {} rejected: {}", name, e)
        ch["rejected"].append({"seeds": len(promoted), "error": str(e)})


def _apply_recommendations(name: str, results: PhaseResults, eng: Evolution, ch: dict[str, Any]) -> None:
    for knob, rec in results.search_space_recommendations.get(name, {}).items():
        if rec.action == "keep":
            continue
        try:
            ch["space"].append(eng.space.apply_recommendation(knob, msgspec.to_builtins(rec)))
        except ValueError as e:
            logger.error("PHASE recommendation for {}.{} rejected: {}", name, knob, e)
            ch["rejected"].append({"knob": knob, "error": str(e)})


__all__ = ["collapse_domain"]
