"""One fleet work unit measured on this host, and a finished generation's rows turned into a verdict.

Theory of operation. A work unit is one candidate × one round of a study's generation. The host that
claims it measures, exactly as a tournament round does on a single host, the candidate and its own
current configuration (the ``stock`` arm) once per regime, in an order shuffled across arms and
regimes (:func:`measure_unit`). A unit with a contaminated trial (outside CPU load above
``dream.contamination.outside_cpu``) says nothing reliable: it stops at that trial, is dropped and
run again with a fresh order, at most ``max_reruns`` times; after that the host gives the unit back
(``None``: too busy here, another host may measure it). Knobs are restored when the unit ends,
however it ends.

Concluding (:func:`conclude_rows`) is pure: each unit's candidate trials are paired with the stock
trials *of the same unit* (the same host, the same minutes), one paired score per unit
(``measure.arms.round_score``). Hosts are blocks: a candidate's fleet score is the mean over hosts
of each host's mean paired score, so a host that measured more units does not weigh more, and each
host's effect is relative to its own current configuration. The candidate packs pool the arms over
hosts (every unit carries its own stock trials, so the pooled stock arm covers the same hosts).

A conclusion's artifacts are written to a staging tree first (:func:`staging`, with a copy of the
current ``baselines.json`` that the conclusion merges into) and moved into place
(:func:`publish_staged`) only once the database recorded this leader's conclusion; a leader that
lost the race discards them (:func:`discard_staged`), so no host shows a verdict that does not stand.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import numpy as np
from loguru import logger

from kloros_orchestrator.config import ContaminationConfig, RacingConfig
from kloros_orchestrator.engine import Candidate
from kloros_orchestrator.fleet.records import Arm, TrialRow, WorkUnit
from kloros_orchestrator.fleet.verdict import FleetTrial, FleetVerdict, fleet_verdicts
from kloros_orchestrator.measure.arms import round_score
from kloros_orchestrator.model import STOCK_ARM, Genome, TrialResult
from kloros_orchestrator.runtime.fleet_race import replay_race
from kloros_orchestrator.runtime.ports import TrialRunner
from kloros_orchestrator.runtime.tournament import TournamentOutcome
from kloros_orchestrator.safefs import make_dirs, read_bounded
from kloros_orchestrator.spica.base import SpicaDomain
from kloros_orchestrator.store import MAX_JSONL_BYTES, StatePaths, atomic_write_bytes

if TYPE_CHECKING:
    from kloros_orchestrator.fleet.generations import GenerationInfo
    from kloros_orchestrator.fleet.pgstore import FleetStore

STAGING = ("fleet", "staging")  # under state_dir


@dataclass(frozen=True)
class UnitPlan:
    """What measuring one unit needs besides the unit itself."""

    domain: SpicaDomain
    stock: Genome  # this host's current configuration
    regimes: Sequence[str]
    evaluator: TrialRunner
    trial_seconds: float | None
    contamination: ContaminationConfig
    on_trial: Callable[[str, str], object] | None = None  # (arm, regime) before each trial


def _row(arm: Arm, tr: TrialResult) -> TrialRow:
    return TrialRow(regime=tr.regime, arm=arm, ok=tr.ok, kpis=dict(tr.kpis), result=msgspec.to_builtins(tr))


async def _attempt(plan: UnitPlan, unit: WorkUnit, rng: np.random.Generator) -> list[TrialRow] | None:
    """One pass over both arms × every regime; None when a trial was contaminated (stops there)."""
    order: list[tuple[Arm, str]] = [(arm, r) for r in plan.regimes for arm in ("stock", "candidate")]
    rng.shuffle(order)  # a list of tuples shuffles in place
    rows: list[TrialRow] = []
    for arm, regime in order:
        if plan.on_trial is not None:
            plan.on_trial(arm, regime)
        genome = plan.stock if arm == "stock" else unit.genome
        cand_id = STOCK_ARM if arm == "stock" else unit.cand_id
        tr = await plan.evaluator.run_trial(
            plan.domain, genome, regime, cand_id=cand_id, duration_s=plan.trial_seconds
        )
        if tr.contaminated:
            return None
        rows.append(_row(arm, tr))
    return rows


async def measure_unit(
    plan: UnitPlan, unit: WorkUnit, rng: np.random.Generator
) -> tuple[TrialRow, ...] | None:
    """The unit's trial rows, or None when every attempt was contaminated (see the module docstring)."""
    try:
        for attempt in range(plan.contamination.max_reruns + 1):
            rows = await _attempt(plan, unit, rng)
            if rows is not None:
                return tuple(rows)
            logger.warning(
                "fleet unit {} gen {} round {}: contaminated by outside load (attempt {} of {})",
                unit.cand_id, unit.generation, unit.round, attempt + 1, plan.contamination.max_reruns + 1,
            )  # fmt: skip
        return None
    finally:
        with anyio.CancelScope(shield=True):
            for problem in await anyio.to_thread.run_sync(plan.domain.restore):
                logger.error("restore after fleet unit {}: {}", unit.cand_id, problem)


@dataclass
class FleetConclusion:
    """A generation's rows, read: the pooled outcome for packs and the per-host block scores."""

    outcome: TournamentOutcome
    per_host: dict[str, dict[str, float]]  # cand_id -> host -> mean paired score
    told: dict[str, float | None]  # cand_id -> mean over hosts (None: unsafe or never scored)

    def verdict(self, best: str | None, text: str) -> dict[str, Any]:
        """The fleet verdict as stored with the generation (JSON)."""
        hosts = sorted({h for per in self.per_host.values() for h in per})
        positive = {c: sum(1 for s in per.values() if s > 0) for c, per in self.per_host.items()}
        return {
            "schema": "fleet_verdict.v1",
            "method": "host-blocked mean of paired unit scores",
            "hosts": hosts,
            "told": self.told,
            "per_host": self.per_host,
            "hosts_positive": positive,
            "unsafe": self.outcome.unsafe,
            "best": best,
            "text": text,
        }


def _result(row: Mapping[str, Any]) -> TrialResult:
    return msgspec.convert(row["result"], TrialResult)


def conclude_rows(
    rows: Sequence[Mapping[str, Any]],
    candidates: Sequence[Candidate],
    regimes: Sequence[str],
    *,
    rounds: int,
    racing: RacingConfig,
) -> FleetConclusion:
    """Read a complete generation's trial rows (``FleetStore.trial_rows``); pure."""
    ids = [c.cand_id for c in candidates]
    results: dict[str, dict[str, list[TrialResult]]] = {
        a: {r: [] for r in regimes} for a in [STOCK_ARM, *ids]
    }
    units: dict[tuple[str, int, str], dict[str, dict[str, TrialResult]]] = defaultdict(
        lambda: {"c": {}, "s": {}}
    )
    unsafe: dict[str, list[str]] = {}
    for row in rows:
        cid, regime = str(row["cand_id"]), str(row["regime"])
        if cid not in results or regime not in regimes:
            continue
        tr = _result(row)
        arm = cid if row["arm"] == "candidate" else STOCK_ARM
        results[arm][regime].append(tr)
        units[(cid, int(row["round"]), str(row["host"]))]["c" if arm == cid else "s"][regime] = tr
        if tr.cap_breach and arm == cid:
            unsafe.setdefault(cid, []).append(f"{regime}: {tr.cap_breach}")
    samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (cid, _rnd, host), pair in units.items():
        score = round_score(pair["c"], pair["s"]) if len(pair["c"]) == len(regimes) else None
        if score is not None:
            samples[cid][host].append(score)
    per_host = {c: {h: float(np.mean(v)) for h, v in sorted(hs.items())} for c, hs in samples.items()}
    told: dict[str, float | None] = {
        c: (float(np.mean(list(per_host[c].values()))) if per_host.get(c) and c not in unsafe else None)
        for c in ids
    }
    race = replay_race(rows, ids, regimes, rounds=rounds, racing=racing)  # the race the leader ran
    outcome = TournamentOutcome(
        candidates=list(candidates), regimes=list(regimes), results=results, race=race, unsafe=unsafe
    )
    return FleetConclusion(outcome=outcome, per_host=per_host, told=told)


def verdicts_of_rows(rows: Sequence[Mapping[str, Any]], seed: int, n_boot: int) -> dict[str, FleetVerdict]:
    """``fleet.verdict.fleet_verdicts`` over a generation's rows (each candidate, hosts as blocks)."""
    return fleet_verdicts((FleetTrial.from_row(r) for r in rows), seed=seed, n_boot=n_boot)


def latest_generation(store: FleetStore, study_id: int) -> GenerationInfo | None:
    from kloros_orchestrator.fleet.generations import latest

    return latest(store, study_id)


def short_verdict(verdict: Mapping[str, Any]) -> dict[str, Any]:
    """A generation's recorded verdict as the ``best`` status field shows it."""
    return {
        "hosts": len(verdict.get("hosts") or ()),
        "best": verdict.get("best"),
        "method": verdict.get("method"),
    }


def staging(paths: StatePaths) -> StatePaths:
    """An empty staging tree under ``state_dir`` holding a copy of ``baselines.json`` (module docstring)."""
    stage = StatePaths(paths.root.joinpath(*STAGING))
    shutil.rmtree(stage.root, ignore_errors=True)  # what a leader that died mid-conclusion left
    make_dirs(stage.baselines.parent)
    with contextlib.suppress(FileNotFoundError):
        atomic_write_bytes(stage.baselines, read_bounded(paths.baselines, max_bytes=MAX_JSONL_BYTES))
    return stage


def publish_staged(stage: StatePaths, paths: StatePaths) -> None:
    """Move every staged file to its place under ``paths`` (one filesystem: each move is atomic)."""
    for staged in sorted(p for p in stage.root.rglob("*") if p.is_file() and not p.is_symlink()):
        dest = paths.root / staged.relative_to(stage.root)
        make_dirs(dest.parent)
        os.replace(staged, dest)
    discard_staged(stage)


def discard_staged(stage: StatePaths) -> None:
    shutil.rmtree(stage.root, ignore_errors=True)


__all__ = [
    "FleetConclusion",
    "UnitPlan",
    "conclude_rows",
    "discard_staged",
    "measure_unit",
    "publish_staged",
    "staging",
]
