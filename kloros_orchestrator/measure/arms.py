"""From an arm's trials to the numbers its score is made of: KPI values and means, each stressor's
bogo-ops/s, and ``score_v2`` with its interval against the stock arm of the same tournament. Pure.

An *arm* is ``{regime: trials}`` of one configuration. Only successful trials count (a failed one
contributes nothing, never a zero). Per-stressor rates (``TrialResult.stressor_ops``) enter the
throughput term as a geometric mean of per-stressor ratios where both arms have them for the same
stressors in every successful trial of a regime; otherwise the summed ``throughput_ops`` does (the
rule is ``measure.scoring.stressor_ratio``'s, stated in its module docstring).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np

from kloros_orchestrator.measure.scoring import score_regime, score_v2
from kloros_orchestrator.measure.stats import score_ci
from kloros_orchestrator.model import REGIMES, TrialResult

Trials = Mapping[str, Sequence[TrialResult]]  # regime -> trials of one arm


class HasStressorOps(Protocol):
    """A trial as far as its per-stressor rates go (``TrialResult``, PHASE's ``TrialRecord``)."""

    @property
    def ok(self) -> bool: ...

    @property
    def stressor_ops(self) -> Mapping[str, float]: ...


def kpi_values(trials: Iterable[TrialResult]) -> dict[str, list[float]]:
    """KPI -> values over the successful trials (failed trials contribute nothing, never zeros)."""
    out: dict[str, list[float]] = {}
    for t in trials:
        if not t.ok:
            continue
        for k, v in t.kpis.items():
            out.setdefault(k, []).append(float(v))
    return out


def kpi_means(trials: Iterable[TrialResult]) -> dict[str, float]:
    return {k: float(np.mean(v)) for k, v in kpi_values(trials).items() if v}


def stressor_values(trials: Iterable[HasStressorOps]) -> dict[str, list[float]] | None:
    """Stressor -> its bogo-ops/s per successful trial, in trial order; None unless every successful
    trial carries the same non-empty set of stressors, each rate finite and >= 0 (a command workload,
    a trial recorded before rates were kept, or a changed workload: no per-stressor comparison)."""
    out: dict[str, list[float]] | None = None
    for t in trials:
        if not t.ok:
            continue
        rates = t.stressor_ops
        if not rates or (out is not None and set(rates) != set(out)):
            return None
        if not all(math.isfinite(r) and r >= 0.0 for r in rates.values()):
            return None
        if out is None:
            out = {s: [] for s in sorted(rates)}
        for s, r in rates.items():
            out[s].append(float(r))
    return out


def stressor_means(trials: Iterable[HasStressorOps]) -> dict[str, float] | None:
    """Stressor -> mean bogo-ops/s over the successful trials (``stressor_values``'s rule)."""
    values = stressor_values(trials)
    return None if values is None else {s: float(np.mean(v)) for s, v in values.items()}


def successful(trials: Iterable[TrialResult]) -> int:
    return sum(1 for t in trials if t.ok)


def scoring_shortfall(arm: Trials, stock: Trials, min_trials: int) -> str | None:
    """Why this arm cannot be scored (too few successful trials somewhere), or None."""
    for regime in REGIMES:
        if regime not in arm:
            continue
        n, nb = successful(arm[regime]), successful(stock.get(regime, ()))
        if n < min_trials:
            return f"{regime}: {n} successful trial(s) < minimum {min_trials}"
        if nb < min_trials:
            return f"{regime}: stock baseline has {nb} successful trial(s) < minimum {min_trials}"
    return None


def arm_score(arm: Trials, stock: Trials) -> float | None:
    """score_v2 of an arm against the stock arm: per-regime score on the means, mean over regimes."""
    per_regime: list[float | None] = []
    for regime, trials in arm.items():
        base = stock.get(regime, ())
        per_regime.append(
            score_regime(
                kpi_means(trials),
                kpi_means(base),
                cand_stressors=stressor_means(trials),
                base_stressors=stressor_means(base),
            )
        )
    return score_v2(per_regime)


def arm_score_ci(
    arm: Trials, stock: Trials, *, rng: np.random.Generator, n_boot: int, level: float = 0.95
) -> tuple[float, float]:
    """Bootstrap interval of ``arm_score``: each replicate resamples an arm's trials, then takes the KPI
    and per-stressor means of the replicate (``measure.stats.score_ci``)."""
    cand = {r: {k: np.asarray(v) for k, v in kpi_values(t).items()} for r, t in arm.items()}
    base = {r: {k: np.asarray(v) for k, v in kpi_values(stock.get(r, ())).items()} for r in arm}
    cand_s = {r: v for r, t in arm.items() if (v := stressor_values(t)) is not None}
    base_s = {r: v for r in arm if (v := stressor_values(stock.get(r, ()))) is not None}
    lo, hi = score_ci(
        cand, base, rng=rng, n_boot=n_boot, level=level, cand_stressors=cand_s, base_stressors=base_s
    )
    return float(lo), float(hi)


def round_score(arm_round: Mapping[str, TrialResult], stock_round: Mapping[str, TrialResult]) -> float | None:
    """One paired score sample: this round's trial of each regime against the stock arm's same round
    (per-stressor throughput where both trials have the same stressors)."""
    per_regime: list[float | None] = []
    for regime, t in arm_round.items():
        b = stock_round.get(regime)
        if not t.ok or b is None or not b.ok:
            return None
        per_regime.append(
            score_regime(t.kpis, b.kpis, cand_stressors=t.stressor_ops, base_stressors=b.stressor_ops)
        )
    return score_v2(per_regime)
