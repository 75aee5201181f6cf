"""After a tournament: baselines, candidate packs, fitness history, the engine told, the hall of fame.

Pure bookkeeping over a :class:`~kloros_orchestrator.runtime.tournament.TournamentOutcome`; the only
I/O is writing the artifacts it produces (``baselines.json``, ``gen<N>_best.json``, one
``fitness_history.jsonl`` line per candidate). Every number comes from the trials in the outcome,
relative to the stock arm measured in the same tournament.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np
from loguru import logger

from kloros_orchestrator.engine import Candidate
from kloros_orchestrator.errors import DomainError, SchemaError
from kloros_orchestrator.measure.packs import (
    CandidatePack,
    PackContext,
    baseline_entry,
    build_pack,
    corrected_for_selection,
    load_pack,
    read_baselines,
    write_baselines,
    write_pack,
)
from kloros_orchestrator.model import Genome
from kloros_orchestrator.runtime.ports import EventLog
from kloros_orchestrator.runtime.records import HallOfFameEntry
from kloros_orchestrator.runtime.tournament import TournamentOutcome
from kloros_orchestrator.spica.base import SpicaDomain, code_hash
from kloros_orchestrator.store import StatePaths, append_jsonl

HOF_SIZE = 8


@dataclass(frozen=True)
class Conclusion:
    """What a tournament decided: the engine's feedback and the generation's best pack."""

    told: list[tuple[Candidate, float | None]]
    best: CandidatePack | None


def verdict_of(best: CandidatePack | None, current: Genome) -> dict[str, Any]:
    """In words and numbers, whether the tournament's best candidate beat the current configuration
    (the stock arm): ``{"text", "cand_id", "score", "ci95", "beat_current"}``."""
    if best is None:
        return {"text": "no candidate was measured", "cand_id": None, "beat_current": False}
    agg, cid = best.aggregate, best.cand_id
    out: dict[str, Any] = {"cand_id": cid, "score": agg.score_v2, "ci95": agg.score_ci95}
    out["beat_current"] = False
    if agg.score_v2 is None:
        return {**out, "text": f"no candidate could be scored ({agg.not_scored_reason or 'no score'})"}
    ci = agg.score_ci95
    numbers = f"{agg.score_v2:+.1%}" + (
        f" (95% CI {ci[0]:+.1%} to {ci[1]:+.1%})" if ci else f" ({agg.score_ci_note or 'no interval yet'})"
    )
    out["comparable"] = best.safe and dict(best.genome) != dict(current)  # a score worth exporting
    if dict(best.genome) == dict(current):
        text = f"the best candidate, {cid}, is the current configuration itself"
    elif not best.safe:
        text = f"no candidate beat the current configuration: the best, {cid}, breached a cap"
    elif agg.improves_over_baseline:
        return {**out, "beat_current": True, "text": f"{cid} beat the current configuration: {numbers}"}
    elif ci is not None and ci[1] < 0:
        text = f"no candidate beat the current configuration: the best, {cid}, is worse: {numbers}"
    elif ci is not None:
        text = f"no candidate beat the current configuration: the best, {cid}, is within noise: {numbers}"
    else:
        text = f"no candidate beat the current configuration yet: the best, {cid}, scored {numbers}"
    return {**out, "text": text}


def entry_from_pack(pack: CandidatePack) -> HallOfFameEntry:
    agg = pack.aggregate
    return HallOfFameEntry(
        cand_id=pack.cand_id,
        spica_id=pack.spica_id,
        genome=dict(pack.genome),
        generation=pack.generation,
        score=agg.score_v2,
        score_ci95=agg.score_ci95,
    )


def promote(hof: list[HallOfFameEntry], entry: HallOfFameEntry) -> list[HallOfFameEntry]:
    """The hall of fame with ``entry`` in it (replacing an equal genome), best first, at most HOF_SIZE."""
    out = [h for h in hof if h.genome != entry.genome]
    out.append(entry)
    sort_hall_of_fame(out)
    return out[:HOF_SIZE]


def sort_hall_of_fame(hof: list[HallOfFameEntry]) -> None:
    hof.sort(key=lambda h: h.score if h.score is not None else float("-inf"), reverse=True)


def hall_of_fame_from_packs(paths: StatePaths, name: str, events: EventLog) -> list[HallOfFameEntry]:
    """Without a saved state (new or lost state.json), the hall of fame rebuilt from the packs on disk.
    A corrupted or schema-violating pack is reported (file and field) and skipped."""
    hof: list[HallOfFameEntry] = []
    for path in sorted(paths.candidates(name).glob("gen*_best.json")):
        try:
            pack = load_pack(path)
        except SchemaError as e:
            logger.error("candidate pack rejected: {}", e)
            events.record("pack_rejected", path=str(path), field=e.field, problem=e.problem)
            continue
        if pack.safe and pack.aggregate.score_v2 is not None and pack.domain == name:
            hof.append(entry_from_pack(pack))
    sort_hall_of_fame(hof)
    if hof:
        logger.info("domain {}: hall of fame rebuilt from {} pack(s) on disk", name, len(hof))
    return hof[:HOF_SIZE]


@dataclass
class Concluder:
    """Turns one tournament's outcome into artifacts; collaborators are paths, a log and a clock."""

    paths: StatePaths
    run_id: str
    stress_ng_version: str | None
    n_boot: int
    min_trials: int  # successful trials per regime below which a candidate is not scored
    clock: Callable[[], float]

    def conclude(
        self,
        dom: SpicaDomain,
        gen: int,
        stock: Genome,
        out: TournamentOutcome,
        missing_reasons: dict[str, str],
        rng: np.random.Generator,
    ) -> Conclusion:
        baseline_ids = {r: f"{dom.name}_{r}_{self.run_id}_g{gen}" for r in out.stock}
        self.write_baselines(dom.name, stock, out, baseline_ids, rng)
        ctx = PackContext(
            run_id=self.run_id,
            domain=dom.name,
            generation=gen,
            baseline_ids=baseline_ids,
            expected_kpis=tuple(dom.kpi_names()),
            missing_reasons=missing_reasons,
            min_trials=self.min_trials,
            code_hash=code_hash(),
            n_boot=self.n_boot,
            stress_ng_version=self.stress_ng_version,
            current_genome=dict(stock),
        )
        packs: dict[str, CandidatePack] = {}
        told: list[tuple[Candidate, float | None]] = []
        for c in out.candidates:
            pack = self._pack(dom, gen, c, out, ctx, rng)
            if pack is None:
                told.append((c, None))
                continue
            packs[c.cand_id] = pack
            told.append((c, pack.aggregate.score_v2 if pack.safe else None))
        scored = [(f, c) for c, f in told if f is not None]
        best_id = max(scored, key=lambda x: x[0])[1].cand_id if scored else next(iter(packs), None)
        best = packs.get(best_id) if best_id is not None else None
        if best is not None:
            arm = out.results[best.cand_id]
            best = corrected_for_selection(best, arm, out.stock, len(scored), rng=rng, n_boot=self.n_boot)
            write_pack(self.paths.candidates(dom.name) / f"gen{gen}_best.json", best)
        return Conclusion(told=told, best=best)

    def _pack(
        self,
        dom: SpicaDomain,
        gen: int,
        c: Candidate,
        out: TournamentOutcome,
        ctx: PackContext,
        rng: np.random.Generator,
    ) -> CandidatePack | None:
        try:
            inst = dom.spawn(
                c.genome, parent=c.parents[0] if c.parents else None, generation=gen, mutations=c.mutations
            )
        except DomainError as e:
            logger.error("candidate {} of {} rejected by the domain: {}", c.cand_id, dom.name, e)
            return None
        eliminated = out.race.eliminated.get(c.cand_id)
        pack = build_pack(
            ctx,
            cand_id=c.cand_id,
            spica_id=inst.spica_id,
            genome=c.genome,
            arm=out.results[c.cand_id],
            stock=out.stock,
            unsafe_reasons=out.unsafe.get(c.cand_id, []),
            rng=rng,
            lineage=msgspec.to_builtins(inst.lineage),
            eliminated=eliminated,
        )
        agg = pack.aggregate
        append_jsonl(
            self.paths.fitness_history,
            {
                "ts": self.clock(),
                "kind": "candidate",
                "run_id": self.run_id,
                "domain": dom.name,
                "generation": gen,
                "cand_id": c.cand_id,
                "spica_id": inst.spica_id,
                "genome": c.genome,
                "score": agg.score_v2,
                "score_ci95": agg.score_ci95,
                "trials_used": out.trials_used(c.cand_id),
                "eliminated": eliminated is not None,
                "elimination": eliminated,
                "safe": pack.safe,
                "unsafe_reasons": pack.unsafe_reasons,
                "improves_over_baseline": agg.improves_over_baseline,
                "not_scored_reason": agg.not_scored_reason,
            },
        )
        return pack

    def write_baselines(
        self,
        name: str,
        stock: Genome,
        out: TournamentOutcome,
        ids: dict[str, str],
        rng: np.random.Generator,
    ) -> None:
        """Refresh ``baselines.json`` for ``name`` from this tournament's stock arm."""
        path = self.paths.baselines
        entries, problem = read_baselines(path)
        if problem is not None:
            logger.error("{} unreadable ({}); rewriting it", path, problem)
        measured = datetime.fromtimestamp(self.clock(), UTC).isoformat()
        fresh = {
            regime: baseline_entry(
                trials,
                baseline_id=ids[regime],
                code_hash=code_hash(),
                measured_at=measured,
                rng=rng,
                n_boot=self.n_boot,
                # Bogo-ops are only comparable within one stress-ng version and kernel: record both.
                stress_ng_version=self.stress_ng_version,
                kernel=platform.release(),
                genome=stock,
            )
            for regime, trials in out.stock.items()
            if any(t.ok for t in trials)
        }
        if fresh:
            entries[name] = {**entries.get(name, {}), **fresh}
            write_baselines(path, entries)


__all__ = [
    "HOF_SIZE",
    "Concluder",
    "Conclusion",
    "entry_from_pack",
    "hall_of_fame_from_packs",
    "promote",
    "verdict_of",
]
