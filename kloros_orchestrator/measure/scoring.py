"""The ``score_v2`` formula: a candidate's KPIs relative to the stock-system baseline. Pure.

Per regime::

    score = perf/perf_base − 1 − 0.2·(p95/p95_base − 1) − 0.1·(watts/watts_base − 1)

A term whose KPI is absent on either side (or whose baseline is not a positive finite number, so
the ratio is meaningless) is dropped; without throughput the regime cannot be scored.
``score_v2`` is the mean over the regimes that could be scored. The array variants apply the same
formula element-wise to bootstrap replicates.

Throughput ratio. ``perf/perf_base`` is the *geometric mean over the regime's stressors* of the
candidate/baseline ratio of each stressor's mean bogo-ops/s, ``exp(mean_s log(c_s / b_s))``: a sum
of bogo-ops/s over stressor kinds is dominated by the fastest one (a cpu stressor's millions beside a
vm stressor's thousands), so a mixed regime's sum mostly measures one stressor and inherits its noise;
the geometric mean of ratios gives every stressor the same weight and does not depend on the units of
any. The rule (``stressor_ratio``): per-stressor only when both sides carry the *same non-empty set*
of stressors, each with a positive finite mean; otherwise (a command workload, whose KPIs come from
its own output; trials recorded before per-stressor rates were kept; differing stressor sets) the
ratio of the summed ``throughput_ops`` means, as before. For a one-stressor regime both rules agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Final, overload

import numpy as np
import numpy.typing as npt

from kloros_orchestrator.model import P95, THROUGHPUT, WATTS

FloatArray = npt.NDArray[np.float64]

# (KPI, weight): the weight multiplies (kpi/kpi_base − 1); negative = lower is better.
SCORE_TERMS: Final[tuple[tuple[str, float], ...]] = ((THROUGHPUT, 1.0), (P95, -0.2), (WATTS, -0.1))
SCORE_KPIS: Final = tuple(kpi for kpi, _ in SCORE_TERMS)
OVERALL: Final = "overall"


def _usable_base(value: float) -> bool:
    return math.isfinite(value) and value > 0.0


def _usable(value: float) -> bool:
    return math.isfinite(value)


def score_terms(candidate: Mapping[str, float], baseline: Mapping[str, float]) -> tuple[str, ...] | None:
    """The KPIs whose terms enter this regime's score; None when throughput cannot be compared."""
    kpis = tuple(
        kpi
        for kpi in SCORE_KPIS
        if kpi in candidate
        and kpi in baseline
        and _usable(candidate[kpi])
        and _usable_base(baseline[kpi])
    )
    return kpis if THROUGHPUT in kpis else None


def stressor_ratio(candidate: Mapping[str, float], baseline: Mapping[str, float]) -> float | None:
    """Geometric mean over stressors of ``candidate[s] / baseline[s]`` (mean bogo-ops/s per stressor);
    None when the two sides do not hold the same non-empty set of stressors with positive finite means
    (the caller then uses the summed throughput, see the module docstring)."""
    if not candidate or set(candidate) != set(baseline):
        return None
    pairs = [(float(candidate[s]), float(baseline[s])) for s in sorted(candidate)]
    if not all(_usable_base(c) and _usable_base(b) for c, b in pairs):
        return None
    return math.exp(sum(math.log(c / b) for c, b in pairs) / len(pairs))


def stressor_ratio_array(
    candidate: Mapping[str, FloatArray], baseline: Mapping[str, FloatArray]
) -> FloatArray:
    """``stressor_ratio`` element-wise over arrays of replicate means (same stressors on both sides,
    decided from the point estimates by the caller)."""
    if not candidate or set(candidate) != set(baseline):
        raise ValueError("stressor_ratio_array needs the same non-empty set of stressors on both sides")
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = [np.log(np.asarray(candidate[s], dtype=np.float64) / baseline[s]) for s in sorted(candidate)]
        return np.asarray(np.exp(np.mean(np.stack(logs), axis=0)), dtype=np.float64)


def score_regime(
    candidate: Mapping[str, float],
    baseline: Mapping[str, float],
    *,
    cand_stressors: Mapping[str, float] | None = None,
    base_stressors: Mapping[str, float] | None = None,
) -> float | None:
    """One regime's score from mean KPIs; None when throughput is absent on either side.

    ``cand_stressors``/``base_stressors``: each stressor's mean bogo-ops/s on either side; when they
    qualify (``stressor_ratio``) the throughput term is their geometric-mean ratio, else the ratio
    of the ``throughput_ops`` means.
    """
    terms = score_terms(candidate, baseline)
    if terms is None:
        return None
    weights = dict(SCORE_TERMS)
    ratios = {k: candidate[k] / baseline[k] for k in terms}
    per_stressor = stressor_ratio(cand_stressors or {}, base_stressors or {})
    if per_stressor is not None:
        ratios[THROUGHPUT] = per_stressor
    return float(sum(weights[k] * (ratios[k] - 1.0) for k in terms))


def score_regime_array(
    candidate: Mapping[str, FloatArray],
    baseline: Mapping[str, FloatArray],
    terms: Iterable[str],
    *,
    perf_ratio: FloatArray | None = None,
) -> FloatArray:
    """``score_regime`` element-wise over arrays of replicate means, for the given ``terms``.

    ``terms`` is decided once from the point estimates (``score_terms``) so that every bootstrap
    replicate scores the same formula. ``perf_ratio``: the replicates' per-stressor throughput ratio
    (``stressor_ratio_array``), used for the throughput term instead of the summed throughput's.
    """
    weights = dict(SCORE_TERMS)
    total: FloatArray | None = None
    with np.errstate(divide="ignore", invalid="ignore"):
        for kpi in terms:
            if kpi == THROUGHPUT and perf_ratio is not None:
                ratio = np.asarray(perf_ratio, dtype=np.float64)
            else:
                ratio = np.asarray(candidate[kpi], dtype=np.float64) / baseline[kpi]
            term = weights[kpi] * (ratio - 1.0)
            total = term if total is None else total + term
    if total is None:
        raise ValueError("score_regime_array needs at least one term")
    return total


@overload
def score_v2(regime_scores: Iterable[float | None], baseline: None = None, /) -> float | None: ...


@overload
def score_v2(
    candidate: Mapping[str, Mapping[str, float]], baseline: Mapping[str, Mapping[str, float]], /
) -> float | None: ...


def score_v2(
    first: Iterable[float | None] | Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, Mapping[str, float]] | None = None,
    /,
) -> float | None:
    """Mean over the regimes that could be scored; None when none could.

    Two call forms: ``score_v2(regime_scores)`` with per-regime scores (None = not scorable), or
    ``score_v2(candidate_means, baseline_means)`` with ``{regime: {kpi: mean}}`` on both sides
    (same as ``score_candidate``).
    """
    if baseline is not None:
        if not isinstance(first, Mapping):
            raise TypeError("score_v2(candidate, baseline) needs {regime: {kpi: mean}} mappings")
        return score_candidate(first, baseline)
    if isinstance(first, Mapping):
        raise TypeError("score_v2 with KPI means needs the baseline means as second argument")
    scores = [s for s in first if s is not None]
    return sum(scores) / len(scores) if scores else None


def score_candidate(
    candidate: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, Mapping[str, float]],
    *,
    cand_stressors: Mapping[str, Mapping[str, float]] | None = None,
    base_stressors: Mapping[str, Mapping[str, float]] | None = None,
) -> float | None:
    """``score_v2`` from mean KPIs per regime (``{regime: {kpi: mean}}``) of candidate and baseline.

    Regimes without a baseline, or without throughput on either side, are not scored.
    ``cand_stressors``/``base_stressors``: ``{regime: {stressor: mean bogo-ops/s}}`` (see ``score_regime``).
    """
    cs, bs = cand_stressors or {}, base_stressors or {}
    return score_v2(
        [
            score_regime(kpis, baseline[r], cand_stressors=cs.get(r), base_stressors=bs.get(r))
            for r, kpis in candidate.items()
            if r in baseline
        ]
    )


def improves_over_baseline(score_ci: tuple[float, float] | None) -> bool:
    """True only when the score CI's lower bound is above zero (no CI: False)."""
    return score_ci is not None and score_ci[0] > 0.0


def aggregate_means(
    per_regime_kpis: Mapping[str, Mapping[str, Iterable[float]]],
) -> dict[str, dict[str, float]]:
    """``{kpi: {regime: mean, "overall": mean of the regime means}}`` from per-trial KPI values.

    A regime with no values for a KPI does not appear under it; a KPI with no values anywhere is absent.
    """
    out: dict[str, dict[str, float]] = {}
    for regime, kpis in per_regime_kpis.items():
        if regime == OVERALL:
            raise ValueError(f"{OVERALL!r} is reserved and cannot be a regime name")
        for kpi, values in kpis.items():
            vals = [float(v) for v in values]
            if vals:
                out.setdefault(kpi, {})[regime] = sum(vals) / len(vals)
    for by_regime in out.values():
        by_regime[OVERALL] = sum(by_regime.values()) / len(by_regime)
    return out
