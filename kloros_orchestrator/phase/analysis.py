"""PHASE verdict: from one run's trials to metrics, promotions, flags, insights and search-space advice. Pure.

Theory of operation. Every comparison is against the stock baseline measured *in the same PHASE
run* (it is re-measured in every epoch, interleaved with the candidates), never an older one.

* Score: ``score_v2`` of the candidate's KPI means against the baseline's (throughput per stressor,
  ``measure.scoring``), and a point score per epoch. Its interval is paired: the bootstrap resamples
  the (epoch, slice, replica) pairs the QTIME plan ran side by side, each with both arms' trials
  (``measure.stats.paired_score_ci``), at ``level`` like every other interval here (no further
  correction: promotion also needs a positive score in every epoch). Fewer than two pairs of usable
  trials in a scored regime: no interval, no claim.
* Promoted: safe (no cap breach, failed trials not a majority), score CI lower bound > 0, and the
  point score > 0 in every epoch the variant ran ("beats the baseline across the epochs").
* Flagged: unsafe, or significantly worse (score CI upper bound < 0); reasons carry numbers.
* KPI effects (insights, recommendations): candidate and baseline trials are paired by
  (epoch, replica), which the QTIME plan ran side by side; the mean paired relative difference
  ``c/b − 1`` gets a bootstrap interval (``measure.stats.bootstrap_mean_ci``, the CI printed). An
  effect is *measurable* when that interval excludes 0 **and** the paired t-test of the same
  differences (``measure.stats.paired_p_value``) passes ``(1 − level)/m``, m = the variant's regime×KPI
  comparisons (Bonferroni), with at least ``MIN_PAIRS_EFFECT`` pairs. Why both: with a handful of
  trials a bootstrap interval cannot reach extreme quantiles (for 3 pairs it is the sample range,
  which excludes 0 one time in four by chance), so a Bonferroni level on it alone does not hold;
  the t-based test does, and keeps a variant's dozen comparisons from producing chance "effects".
* Recommendations, per knob (narrow, widen, drop, keep): the rules are in ``phase/recommend.py``.

Modules: ``records`` (the input), ``evidence`` (statistics per variant), ``insights`` (text),
``recommend`` (search-space advice); this one assembles a domain's verdict from them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import msgspec

from kloros_orchestrator.model import STOCK_ARM
from kloros_orchestrator.phase.evidence import (
    MIN_PAIRS_EFFECT,
    KpiEffect,
    check_input,
    evaluate_variant,
    kpi_arrays,
    means,
)
from kloros_orchestrator.phase.insights import domain_insights, flag_reasons, promotion_reason
from kloros_orchestrator.phase.recommend import (
    DROP_SCORE_MARGIN,
    MIN_EPOCHS_DROP,
    MIN_PAIRS_DROP,
    NARROW_FRACTION,
    WIDEN_FRACTION,
    recommend,
)
from kloros_orchestrator.phase.records import DomainData, PhaseData, TrialRecord, VariantInfo
from kloros_orchestrator.phase.results import (
    DomainMetrics,
    FlaggedVariant,
    PhaseResults,
    PromotedVariant,
    Qtime,
    Recommendation,
    ResultsWindow,
    TrialCounts,
    VariantSummary,
)

__all__ = [
    "DROP_SCORE_MARGIN",
    "MIN_EPOCHS_DROP",
    "MIN_PAIRS_DROP",
    "MIN_PAIRS_EFFECT",
    "NARROW_FRACTION",
    "WIDEN_FRACTION",
    "DomainData",
    "KpiEffect",
    "PhaseAnalysis",
    "PhaseData",
    "TrialRecord",
    "VariantInfo",
    "analyze_domain",
    "analyze_phase",
    "build_results",
]


class PhaseAnalysis(msgspec.Struct, frozen=True):
    metrics: dict[str, DomainMetrics]
    promoted_variants: list[PromotedVariant]
    flagged_variants: list[FlaggedVariant]
    search_space_recommendations: dict[str, dict[str, Recommendation]]


def analyze_phase(data: PhaseData, *, seed: int, n_boot: int = 2000, level: float = 0.95) -> PhaseAnalysis:
    """Analyse every domain that ran at least one trial (domains without trials are left out)."""
    metrics: dict[str, DomainMetrics] = {}
    promoted: list[PromotedVariant] = []
    flagged: list[FlaggedVariant] = []
    recs: dict[str, dict[str, Recommendation]] = {}
    for domain, ddata in data.domains.items():
        if not ddata.trials:
            continue
        one = analyze_domain(domain, ddata, seed=seed, n_boot=n_boot, level=level)
        metrics.update(one.metrics)
        promoted.extend(one.promoted_variants)
        flagged.extend(one.flagged_variants)
        recs.update(one.search_space_recommendations)
    return PhaseAnalysis(metrics, promoted, flagged, recs)


def analyze_domain(
    domain: str, data: DomainData, *, seed: int, n_boot: int = 2000, level: float = 0.95
) -> PhaseAnalysis:
    """One domain's verdict. Randomness: a Generator per (seed, domain, variant), so adding a domain
    or a variant does not change the others' intervals."""
    check_input(domain, data)
    by_variant: dict[str, list[TrialRecord]] = defaultdict(list)
    for t in data.trials:
        by_variant[t.variant_id].append(t)
    base_trials = by_variant.get(STOCK_ARM, [])
    base_arrays = kpi_arrays(base_trials)
    base_means = means(base_arrays)
    variants = [
        evaluate_variant(
            domain, vid, info, by_variant.get(vid, []), base_trials, seed, n_boot, level
        )
        for vid, info in data.variants.items()
    ]
    measured = [v for v in variants if v.trials > 0]
    scored_safe = [v for v in measured if v.safe and v.score is not None]
    best = max(scored_safe, key=lambda v: v.score or 0.0, default=None)

    promoted = [
        PromotedVariant(
            domain=domain,
            cand_id=v.info.cand_id,
            spica_id=v.info.spica_id,
            genome=dict(v.info.genome),
            score_v2=v.score,
            score_ci95=v.ci,
            reason=promotion_reason(v, level),
        )
        for v in sorted(measured, key=lambda v: -(v.score or 0.0))
        if v.promoted and v.score is not None and v.ci is not None
    ]
    flagged = [
        FlaggedVariant(
            domain=domain,
            cand_id=v.info.cand_id,
            genome=dict(v.info.genome),
            reasons=flag_reasons(v, level),
        )
        for v in measured
        if v.flagged
    ]
    metrics = DomainMetrics(
        fitness=best.score if best is not None else None,
        ci95=best.ci if best is not None else None,
        baseline=base_means,
        insights=domain_insights(domain, data, base_trials, variants, best, level),
        best_cand_id=best.info.cand_id if best is not None else None,
        variants={
            v.info.cand_id: VariantSummary(
                score_v2=v.score,
                score_ci95=v.ci,
                safe=v.safe,
                trials=v.trials,
                failed=v.failed,
                epoch_scores=[v.epoch_scores[e] for e in sorted(v.epoch_scores)] or None,
            )
            for v in measured
        },
    )
    recs = recommend(data, measured)
    return PhaseAnalysis({domain: metrics}, promoted, flagged, {domain: recs})


def build_results(
    analysis: PhaseAnalysis,
    *,
    run_id: str,
    timestamp: str,
    qtime: Qtime,
    complete: bool,
    qtime_requested: Qtime | None = None,
    shrink: dict[str, Any] | None = None,
    window: ResultsWindow | None = None,
    trials: TrialCounts | None = None,
    stopped_reason: str | None = None,
) -> PhaseResults:
    """The ``phase_results.v1`` document for an analysis; ``qtime`` is the plan actually run."""
    return PhaseResults(
        timestamp=timestamp,
        run_id=run_id,
        qtime=qtime,
        domains_tested=list(analysis.metrics),
        metrics=dict(analysis.metrics),
        promoted_variants=list(analysis.promoted_variants),
        flagged_variants=list(analysis.flagged_variants),
        search_space_recommendations=dict(analysis.search_space_recommendations),
        complete=complete,
        qtime_requested=qtime_requested,
        shrink=shrink,
        window=window,
        trials=trials,
        stopped_reason=stopped_reason,
    )
