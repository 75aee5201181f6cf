"""PHASE verdict: from one run's trials to metrics, promotions, flags, insights and search-space advice. Pure.

Theory of operation. Every comparison is against the stock baseline measured *in the same PHASE
run* (it is re-measured in every epoch, interleaved with the candidates), never an older one.

* Score: ``score_v2`` of the candidate's KPI means against the baseline's, with its bootstrap CI
  (``measure.stats.score_ci``) over all epochs' trials; and a point score per epoch.
* Promoted: safe (no cap breach, failed trials not a majority), score CI lower bound > 0, and the
  point score > 0 in every epoch the variant ran ("beats the baseline across the epochs").
* Flagged: unsafe, or significantly worse (score CI upper bound < 0); reasons carry numbers.
* KPI effects (insights, recommendations): candidate and baseline trials are paired by
  (epoch, replica), which the QTIME plan ran side by side; the mean paired relative difference
  ``c/b − 1`` gets a bootstrap interval (``measure.stats.bootstrap_mean_ci``, the CI printed). An
  effect is *measurable* when that interval excludes 0 **and** the Welch test of the same trials
  (``measure.stats.welch_p_value``) passes ``(1 − level)/m``, m = the variant's regime×KPI
  comparisons (Bonferroni), with at least ``MIN_PAIRS_EFFECT`` pairs. Why both: with a handful of
  trials a bootstrap interval cannot reach extreme quantiles (for 3 pairs it is the sample range,
  which excludes 0 one time in four by chance), so a Bonferroni level on it alone does not hold;
  the t-based test does, and keeps a variant's dozen comparisons from producing chance "effects".
* Recommendations, per knob, first rule that applies:
  1. choice knob whose non-stock value was used only by flagged variants → ``narrow`` with that
     value removed from ``choices`` (the stock value is never removed);
  2. ``drop``: every variant that changed the knob moved no KPI measurably *and* proved it —
     at least ``MIN_PAIRS_DROP`` pairs in every regime over ``MIN_EPOCHS_DROP`` epochs, with each
     score KPI's interval inside ±``DROP_SCORE_MARGIN``/|weight| (±2 % throughput, ±10 % p95,
     ±20 % watts): equivalence shown, not merely "nothing detected";
  3. ``keep``: changed, nothing moved measurably, but too little evidence to drop;
  4. a variant was promoted: numeric knobs ``narrow`` around the promoted value(s), choice knobs
     ``keep`` it (``value``);
  5. no variant beat the baseline: numeric knobs ``widen``;
  6. otherwise ``keep``.
  A caveat of rule 2: two knobs changed together whose effects cancel look like no effect.
"""

from __future__ import annotations

import math
import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import msgspec
import numpy as np
import numpy.typing as npt

from kloros_orchestrator.measure.scoring import SCORE_TERMS, score_regime, score_v2
from kloros_orchestrator.measure.stats import bootstrap_mean_ci, score_ci, welch_p_value
from kloros_orchestrator.model import REGIMES, STANDARD_KPIS, Genome, Scalar, TrialResult
from kloros_orchestrator.phase.qtime import BASELINE_ID
from kloros_orchestrator.phase.results import (
    DomainMetrics,
    FlaggedVariant,
    PhaseResults,
    PromotedVariant,
    Qtime,
    Recommendation,
    TrialCounts,
    VariantSummary,
    Window,
)

FloatArray = npt.NDArray[np.float64]
Interval = tuple[float, float]

MIN_PAIRS_EFFECT: Final = 3  # fewer paired trials: no claim either way
MIN_PAIRS_DROP: Final = 6
MIN_EPOCHS_DROP: Final = 2
DROP_SCORE_MARGIN: Final = 0.02  # a knob is droppable when no score term can move by more than 2 %
NARROW_FRACTION: Final = 0.25  # narrow to ± a quarter of the current range around the promoted value
WIDEN_FRACTION: Final = 0.5  # widen by half the current range on each side
_WEIGHTS: Final = dict(SCORE_TERMS)


# --- input ---------------------------------------------------------------------------------------------


class TrialRecord(msgspec.Struct, frozen=True):
    """One PHASE trial. ``replica`` (from the plan's Slot) pairs it with the baseline trial beside it;
    without it, trials pair by their order within (epoch, regime)."""

    epoch: int
    regime: str
    variant_id: str
    ok: bool
    kpis: dict[str, float] = msgspec.field(default_factory=dict)
    failure: str | None = None
    cap_breach: str | None = None
    replica: int | None = None

    @classmethod
    def from_trial(
        cls, trial: TrialResult, *, epoch: int, variant_id: str, replica: int | None = None
    ) -> TrialRecord:
        return cls(
            epoch=epoch,
            regime=trial.regime,
            variant_id=variant_id,
            ok=trial.ok,
            kpis=dict(trial.kpis),
            failure=trial.failure,
            cap_breach=trial.cap_breach,
            replica=replica,
        )


class VariantInfo(msgspec.Struct, frozen=True):
    genome: Genome
    spica_id: str
    cand_id: str


class DomainData(msgspec.Struct, frozen=True):
    """One domain's PHASE input. ``space``: the knob form (name → {type, low, high, log, choices});
    knobs missing from it are inferred from their values."""

    stock: Genome
    variants: dict[str, VariantInfo]
    trials: list[TrialRecord]
    space: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)


class PhaseData(msgspec.Struct, frozen=True):
    domains: dict[str, DomainData]


# --- output --------------------------------------------------------------------------------------------


class PhaseAnalysis(msgspec.Struct, frozen=True):
    metrics: dict[str, DomainMetrics]
    promoted_variants: list[PromotedVariant]
    flagged_variants: list[FlaggedVariant]
    search_space_recommendations: dict[str, dict[str, Recommendation]]


class KpiEffect(msgspec.Struct, frozen=True):
    """Paired relative change of one KPI in one regime (``mean(c/b − 1)``), its bootstrap interval,
    and the Welch p-value against the variant's Bonferroni threshold ``alpha``."""

    regime: str
    kpi: str
    delta: float
    ci: Interval
    pairs: int
    p_value: float | None
    alpha: float

    @property
    def measurable(self) -> bool:
        return (
            self.pairs >= MIN_PAIRS_EFFECT
            and (self.ci[0] > 0.0 or self.ci[1] < 0.0)
            and self.p_value is not None
            and self.p_value <= self.alpha
        )


class _Variant(msgspec.Struct):
    variant_id: str
    info: VariantInfo
    trials: int
    failed: int
    breaches: list[str]
    failures: list[str]
    score: float | None
    ci: Interval | None
    epoch_scores: dict[int, float | None]
    effects: list[KpiEffect]
    epochs: int

    @property
    def safe(self) -> bool:
        return not self.breaches and 2 * self.failed <= self.trials

    @property
    def promoted(self) -> bool:
        return (
            self.safe
            and self.ci is not None
            and self.ci[0] > 0.0
            and bool(self.epoch_scores)
            and all(s is not None and s > 0.0 for s in self.epoch_scores.values())
        )

    @property
    def significantly_worse(self) -> bool:
        return self.ci is not None and self.ci[1] < 0.0

    @property
    def flagged(self) -> bool:
        return self.trials > 0 and (not self.safe or self.significantly_worse)

    @property
    def measurable_effects(self) -> list[KpiEffect]:
        return [e for e in self.effects if e.measurable]


# --- entry points --------------------------------------------------------------------------------------


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
    _check_input(domain, data)
    by_variant: dict[str, list[TrialRecord]] = defaultdict(list)
    for t in data.trials:
        by_variant[t.variant_id].append(t)
    base_trials = by_variant.get(BASELINE_ID, [])
    base_arrays = _kpi_arrays(base_trials)
    base_means = _means(base_arrays)
    variants = [
        _evaluate(domain, vid, info, by_variant.get(vid, []), base_trials, base_arrays, seed, n_boot, level)
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
            reason=_promotion_reason(v, level),
        )
        for v in sorted(measured, key=lambda v: -(v.score or 0.0))
        if v.promoted and v.score is not None and v.ci is not None
    ]
    flagged = [
        FlaggedVariant(
            domain=domain,
            cand_id=v.info.cand_id,
            genome=dict(v.info.genome),
            reasons=_flag_reasons(v, level),
        )
        for v in measured
        if v.flagged
    ]
    metrics = DomainMetrics(
        fitness=best.score if best is not None else None,
        ci95=best.ci if best is not None else None,
        baseline=base_means,
        insights=_insights(domain, data, base_trials, variants, best, level),
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
    recs = _recommendations(data, measured)
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
    window: Window | None = None,
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


# --- statistics per variant ---------------------------------------------------------------------------


def _check_input(domain: str, data: DomainData) -> None:
    if BASELINE_ID in data.variants:
        raise ValueError(f"domain {domain!r}: {BASELINE_ID!r} is reserved for the stock configuration")
    known = {BASELINE_ID, *data.variants}
    for t in data.trials:
        if t.variant_id not in known:
            raise ValueError(f"domain {domain!r}: trial of unknown variant {t.variant_id!r}")


def _rng(seed: int, domain: str, variant_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(domain.encode()), zlib.crc32(variant_id.encode())])


def _usable(trial: TrialRecord) -> bool:
    return trial.ok


def _kpi_arrays(trials: Iterable[TrialRecord]) -> dict[str, dict[str, FloatArray]]:
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for t in trials:
        if not _usable(t):
            continue
        for kpi, value in t.kpis.items():
            if math.isfinite(value):
                values[t.regime][kpi].append(float(value))
    return {
        regime: {kpi: np.asarray(vals, dtype=np.float64) for kpi, vals in kpis.items()}
        for regime, kpis in _regime_order(values).items()
    }


def _regime_order(d: Mapping[str, Any]) -> dict[str, Any]:
    order = {r: i for i, r in enumerate(REGIMES)}
    return {k: d[k] for k in sorted(d, key=lambda r: (order.get(r, len(order)), r))}


def _means(arrays: Mapping[str, Mapping[str, FloatArray]]) -> dict[str, dict[str, float]]:
    return {r: {k: float(a.mean()) for k, a in kpis.items() if a.size} for r, kpis in arrays.items()}


def _score(cand: Mapping[str, Mapping[str, float]], base: Mapping[str, Mapping[str, float]]) -> float | None:
    """score_v2 over the regimes both sides measured."""
    return score_v2(score_regime(kpis, base[r]) for r, kpis in cand.items() if r in base)


def _evaluate(
    domain: str,
    variant_id: str,
    info: VariantInfo,
    trials: Sequence[TrialRecord],
    base_trials: Sequence[TrialRecord],
    base_arrays: Mapping[str, Mapping[str, FloatArray]],
    seed: int,
    n_boot: int,
    level: float,
) -> _Variant:
    rng = _rng(seed, domain, variant_id)
    cand_arrays = _kpi_arrays(trials)
    score = _score(_means(cand_arrays), _means(base_arrays))
    ci = None
    # One trial per regime has no spread: a bootstrap of it is a zero-width "interval" that would
    # promote or flag a variant on a single measurement. No interval, no claim.
    if score is not None and _min_group(cand_arrays) >= 2 and _min_group(base_arrays) >= 2:
        ci = score_ci(cand_arrays, base_arrays, rng=rng, n_boot=n_boot, level=level)
    epochs = sorted({t.epoch for t in trials if _usable(t)})
    epoch_scores: dict[int, float | None] = {
        e: _score(
            _means(_kpi_arrays(t for t in trials if t.epoch == e)),
            _means(_kpi_arrays(t for t in base_trials if t.epoch == e)),
        )
        for e in epochs
    }
    breaches = [
        f"cap breach in the {t.regime} regime (epoch {t.epoch}): {t.cap_breach}"
        for t in trials
        if t.cap_breach is not None
    ]
    failures = [t.failure or "failed" for t in trials if not t.ok and t.cap_breach is None]
    return _Variant(
        variant_id=variant_id,
        info=info,
        trials=len(trials),
        failed=sum(1 for t in trials if not t.ok),
        breaches=breaches,
        failures=failures,
        score=score,
        ci=ci,
        epoch_scores=epoch_scores,
        effects=_effects(trials, base_trials, rng, n_boot, level),
        epochs=len(epochs),
    )


def _min_group(arrays: Mapping[str, Mapping[str, FloatArray]]) -> int:
    """The fewest values any (regime, KPI) has; 0 when there is none."""
    sizes = [len(v) for per in arrays.values() for v in per.values()]
    return min(sizes) if sizes else 0


def _pair_keys(trials: Iterable[TrialRecord]) -> dict[tuple[str, int, int], TrialRecord]:
    """Key each trial by (regime, epoch, replica); without a replica, by its order in (regime, epoch)."""
    seen: dict[tuple[str, int], int] = defaultdict(int)
    out: dict[tuple[str, int, int], TrialRecord] = {}
    for t in trials:
        ordinal = seen[(t.regime, t.epoch)]
        seen[(t.regime, t.epoch)] += 1
        out[(t.regime, t.epoch, t.replica if t.replica is not None else ordinal)] = t
    return out


def _effects(
    trials: Sequence[TrialRecord],
    base_trials: Sequence[TrialRecord],
    rng: np.random.Generator,
    n_boot: int,
    level: float,
) -> list[KpiEffect]:
    cand, base = _pair_keys(trials), _pair_keys(base_trials)
    pairs: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for key, c in cand.items():
        b = base.get(key)
        if b is None or not (_usable(c) and _usable(b)):
            continue
        for kpi, cv in c.kpis.items():
            bv = b.kpis.get(kpi)
            if bv is None or not (math.isfinite(cv) and math.isfinite(bv)) or bv <= 0.0:
                continue  # a ratio to a zero/absent baseline means nothing
            pairs[(c.regime, kpi)].append((cv, bv))
    # Bonferroni over the variant's regime×KPI comparisons: together they hold at ``level``.
    alpha = (1.0 - level) / max(1, sum(1 for p in pairs.values() if len(p) >= MIN_PAIRS_EFFECT))
    order = {r: i for i, r in enumerate(REGIMES)}
    kpi_order = {k: i for i, k in enumerate(STANDARD_KPIS)}

    def sort_key(key: tuple[str, str]) -> tuple[int, str, int, str]:
        regime, kpi = key
        return (order.get(regime, len(order)), regime, kpi_order.get(kpi, len(kpi_order)), kpi)

    effects: list[KpiEffect] = []
    for regime, kpi in sorted(pairs, key=sort_key):
        values = np.asarray(pairs[(regime, kpi)], dtype=np.float64)
        deltas = values[:, 0] / values[:, 1] - 1.0
        ci = bootstrap_mean_ci(deltas, rng=rng, n_boot=n_boot, level=level)
        p = welch_p_value(values[:, 0], values[:, 1]) if len(values) >= 2 else None
        effects.append(
            KpiEffect(
                regime=regime,
                kpi=kpi,
                delta=float(deltas.mean()),
                ci=ci,
                pairs=len(values),
                p_value=p,
                alpha=alpha,
            )
        )
    return effects


# --- text -------------------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def _ci_text(ci: Interval, level: float) -> str:
    return f"[{level * 100:g}% CI {_pct(ci[0])}, {_pct(ci[1])}]"


def _fmt(value: Scalar | None) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return "(unset)" if value is None else str(value)


def _diff(genome: Mapping[str, Scalar], stock: Mapping[str, Scalar]) -> dict[str, Scalar]:
    return {k: v for k, v in genome.items() if k not in stock or stock[k] != v}


def _describe(info: VariantInfo, stock: Mapping[str, Scalar]) -> str:
    diff = _diff(info.genome, stock)
    if not diff:
        return f"{info.cand_id} (same knob values as stock)"
    return ", ".join(f"{k}={_fmt(v)} (stock {_fmt(stock.get(k))})" for k, v in diff.items())


def _score_text(v: _Variant, level: float) -> str:
    if v.score is None:
        return "score not computable (no throughput on both sides)"
    ci = f" {_ci_text(v.ci, level)}" if v.ci is not None else ""
    return f"score_v2 {_pct(v.score)}{ci}"


def _epoch_text(v: _Variant) -> str:
    values = ", ".join("n/a" if s is None else _pct(s) for _, s in sorted(v.epoch_scores.items()))
    return f"{len(v.epoch_scores)} epoch(s) ({values})"


def _promotion_reason(v: _Variant, level: float) -> str:
    return (
        f"{_score_text(v, level)} over the stock baseline re-measured in this PHASE; "
        f"positive in each of {_epoch_text(v)}; safe in {v.trials} trials"
    )


def _flag_reasons(v: _Variant, level: float) -> list[str]:
    reasons = list(dict.fromkeys(v.breaches))
    if 2 * v.failed > v.trials:
        first = f": {v.failures[0]}" if v.failures else ""
        reasons.append(f"{v.failed} of {v.trials} trials failed{first}")
    if v.significantly_worse:
        reasons.append(f"{_score_text(v, level)}: significantly worse than the stock baseline")
        worst = sorted(v.measurable_effects, key=lambda e: abs(e.delta), reverse=True)[:3]
        reasons.extend(
            f"{e.kpi} {_pct(e.delta)} {_ci_text(e.ci, level)} in the {e.regime} regime" for e in worst
        )
    return reasons


def _insights(
    domain: str,
    data: DomainData,
    base_trials: Sequence[TrialRecord],
    variants: Sequence[_Variant],
    best: _Variant | None,
    level: float,
) -> list[str]:
    out: list[str] = []
    n_base_ok = sum(1 for t in base_trials if _usable(t))
    n_trials = len(data.trials)
    n_failed = sum(1 for t in data.trials if not t.ok)
    if n_base_ok == 0:
        out.append(
            f"{domain}: the stock baseline has no successful trial ({len(base_trials)} run); "
            f"no variant could be compared"
        )
    base_breaches = [t for t in base_trials if t.cap_breach is not None]
    if base_breaches:
        out.append(
            f"{domain}: the stock configuration itself breached caps in {len(base_breaches)} of "
            f"{len(base_trials)} trials ({base_breaches[0].cap_breach})"
        )
    if n_failed:
        first = next((t.failure for t in data.trials if not t.ok and t.failure), None)
        detail = f", e.g. {first}" if first else ""
        out.append(f"{domain}: {n_failed} of {n_trials} trials failed{detail}")
    measured = [v for v in variants if v.trials > 0]
    if not data.variants:
        regimes = len({t.regime for t in base_trials})
        out.append(
            f"{domain}: only the stock configuration was measured ({len(base_trials)} trials in "
            f"{regimes} regime(s)); no variant to compare"
        )
    for v in variants:
        if v.trials == 0:
            out.append(f"{domain}: {v.info.cand_id} was planned but ran 0 trials")
    any_effect = False
    for v in measured:
        desc = _describe(v.info, data.stock)
        by_regime: dict[str, list[KpiEffect]] = defaultdict(list)
        for e in v.measurable_effects:
            by_regime[e.regime].append(e)
        for regime, effects in by_regime.items():
            any_effect = True
            changes = " and ".join(f"{e.kpi} by {_pct(e.delta)} {_ci_text(e.ci, level)}" for e in effects)
            out.append(f"{domain}: {desc} changed {changes} in the {regime} regime")
        if v.breaches:
            out.append(
                f"{domain}: {desc} is unsafe: {len(v.breaches)} cap breach(es) in {v.trials} trials "
                f"({v.breaches[0]})"
            )
        if v.promoted:
            any_effect = True
            out.append(f"{domain}: {desc} beat the stock baseline: {_promotion_reason(v, level)}")
        elif v.significantly_worse:
            any_effect = True
            out.append(f"{domain}: {desc} was worse than the stock baseline: {_score_text(v, level)}")
    if measured and not any_effect:
        if best is not None and best.ci is not None and best.score is not None:
            detail = f"best score {_pct(best.score)} [{_pct(best.ci[0])}, {_pct(best.ci[1])}]"
        else:
            scored = sum(1 for v in measured if v.score is not None)
            detail = f"{scored} of {len(measured)} variants could be scored"
        out.append(f"{domain}: no variant differed measurably from the stock configuration ({detail})")
    if not out:  # every path above carries numbers; this keeps "at least one insight" unconditional
        out.append(f"{domain}: {n_trials} trials ran, {n_failed} failed")
    return out


# --- search-space recommendations ------------------------------------------------------------------------


def _knob_kind(spec: Mapping[str, Any], values: Sequence[Scalar]) -> str:
    kind = spec.get("type")
    if kind in ("int", "float"):
        return str(kind)
    if kind in ("choice", "bool"):
        return "choice"
    if any(isinstance(v, bool | str) for v in values):
        return "choice"
    return "float" if any(isinstance(v, float) for v in values) else "int"


def _is_number(x: Scalar | None) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _bounds(spec: Mapping[str, Any], values: Sequence[Scalar]) -> tuple[float, float]:
    nums = [float(v) for v in values if _is_number(v)]
    low = spec.get("low", min(nums) if nums else 0.0)
    high = spec.get("high", max(nums) if nums else 0.0)
    return float(low), float(high)


def _as_kind(x: float, kind: str, up: bool) -> float | int:
    if kind == "int":
        return math.ceil(x - 1e-9) if up else math.floor(x + 1e-9)
    return float(x)


def _narrow(
    spec: Mapping[str, Any], kind: str, values: Sequence[float], all_values: Sequence[Scalar]
) -> Recommendation:
    low, high = _bounds(spec, all_values)
    vmin, vmax = min(values), max(values)
    log = bool(spec.get("log")) and low > 0.0 and vmin > 0.0
    if log:
        half = NARROW_FRACTION * math.log(high / low) if high > low else 0.0
        new_low, new_high = max(low, vmin * math.exp(-half)), min(high, vmax * math.exp(half))
    else:
        half = NARROW_FRACTION * (high - low)
        new_low, new_high = max(low, vmin - half), min(high, vmax + half)
    new_low, new_high = min(new_low, vmin), max(new_high, vmax)  # values outside the old range stay inside
    return Recommendation(
        action="narrow",
        low=_as_kind(new_low, kind, up=False),
        high=_as_kind(new_high, kind, up=True),
        value=_as_kind(values[0], kind, up=False) if kind == "int" else values[0],
        reason=(
            f"promoted at {', '.join(_fmt(v) for v in values)}; search ±{NARROW_FRACTION:.0%} of the "
            f"range [{_fmt(low)}, {_fmt(high)}] around it"
        ),
    )


def _widen(spec: Mapping[str, Any], kind: str, all_values: Sequence[Scalar], why: str) -> Recommendation:
    low, high = _bounds(spec, all_values)
    if bool(spec.get("log")) and low > 0.0 and high > low:
        factor = (high / low) ** WIDEN_FRACTION
        new_low, new_high = low / factor, high * factor
    else:
        span = high - low if high > low else max(abs(high), 1.0)
        new_low, new_high = low - WIDEN_FRACTION * span, high + WIDEN_FRACTION * span
        if low >= 0.0:
            new_low = max(new_low, 0.0)  # a non-negative knob stays non-negative
    return Recommendation(
        action="widen",
        low=_as_kind(new_low, kind, up=False),
        high=_as_kind(new_high, kind, up=True),
        reason=f"{why}; widen [{_fmt(low)}, {_fmt(high)}] by {WIDEN_FRACTION:.0%} of its range each side",
    )


def _equivalent(v: _Variant) -> tuple[bool, str]:
    """Whether ``v`` proved that it moved no KPI (see rule 2 in the module docstring)."""
    if v.measurable_effects:
        return False, "a KPI moved"
    if v.epochs < MIN_EPOCHS_DROP:
        return False, f"{v.epochs} epoch(s) < {MIN_EPOCHS_DROP}"
    if not v.effects:
        return False, "no paired trials"
    for e in v.effects:
        if e.pairs < MIN_PAIRS_DROP:
            return False, f"{e.pairs} pairs in {e.regime} < {MIN_PAIRS_DROP}"
        weight = _WEIGHTS.get(e.kpi)
        if weight is not None:
            margin = DROP_SCORE_MARGIN / abs(weight)
            if e.ci[0] < -margin or e.ci[1] > margin:
                return False, f"{e.kpi} interval in {e.regime} wider than ±{margin:.0%}"
    pairs = sum(e.pairs for e in v.effects if e.kpi in _WEIGHTS)
    return True, f"{pairs} paired KPI values over {v.epochs} epochs"


def _recommendations(data: DomainData, measured: Sequence[_Variant]) -> dict[str, Recommendation]:
    knobs = list(dict.fromkeys([*data.space, *data.stock, *(k for v in measured for k in v.info.genome)]))
    promoted = sorted((v for v in measured if v.promoted), key=lambda v: -(v.score or 0.0))
    out: dict[str, Recommendation] = {}
    for knob in knobs:
        spec = data.space.get(knob, {})
        stock = data.stock.get(knob)
        seen = (stock, *(v.info.genome.get(knob) for v in measured))
        values: list[Scalar] = [x for x in seen if x is not None]
        kind = _knob_kind(spec, values)
        changed = [v for v in measured if knob in v.info.genome and v.info.genome[knob] != stock]
        out[knob] = _recommend(knob, spec, kind, stock, values, changed, promoted)
    return out


def _recommend(
    knob: str,
    spec: Mapping[str, Any],
    kind: str,
    stock: Scalar | None,
    values: Sequence[Scalar],
    changed: Sequence[_Variant],
    promoted: Sequence[_Variant],
) -> Recommendation:
    # Rule 1: remove choices that only flagged variants used.
    if kind == "choice" and changed:
        users: dict[Scalar, list[_Variant]] = defaultdict(list)
        for v in changed:
            users[v.info.genome[knob]].append(v)
        bad = [c for c, vs in users.items() if all(v.flagged for v in vs)]
        if bad:
            declared = spec.get("choices") or ([False, True] if spec.get("type") == "bool" else None)
            pool: list[Scalar] = list(declared) if declared else list(dict.fromkeys(values))
            remaining = [c for c in pool if c not in bad or c == stock]
            who = "; ".join(f"{_fmt(c)} by {', '.join(v.info.cand_id for v in users[c])}" for c in bad)
            return Recommendation(
                action="narrow",
                choices=remaining,
                reason=f"remove {len(bad)} choice(s) used only by flagged variants ({who})",
            )
    # Rules 2 and 3: changed, nothing moved.
    if changed and not any(v.measurable_effects or v.promoted or v.flagged for v in changed):
        verdicts = [_equivalent(v) for v in changed]
        if all(ok for ok, _ in verdicts):
            return Recommendation(
                action="drop",
                value=stock,
                reason=(
                    f"{len(changed)} variant(s) changed it and no KPI moved; equivalence within "
                    f"±{DROP_SCORE_MARGIN:.0%} of the score shown ({verdicts[0][1]})"
                ),
            )
        why = next(msg for ok, msg in verdicts if not ok)
        return Recommendation(
            action="keep",
            reason=(
                f"{len(changed)} variant(s) changed it and no KPI moved measurably; "
                f"too little evidence to drop ({why})"
            ),
        )
    # Rule 4: a promoted variant.
    if promoted and knob in promoted[0].info.genome:
        best_value = promoted[0].info.genome[knob]
        if kind == "choice":
            reason = f"promoted {promoted[0].info.cand_id} uses {_fmt(best_value)}"
            return Recommendation(action="keep", value=best_value, reason=reason)
        nums = [float(x) for v in promoted if isinstance(x := v.info.genome.get(knob), int | float)]
        if nums:
            return _narrow(spec, kind, nums, values)
    # Rule 5: nothing beat the baseline.
    if not promoted and kind != "choice":
        return _widen(spec, kind, values, "no variant beat the stock baseline")
    reason = "not varied in this PHASE" if not changed else "changed, but no rule above applies"
    return Recommendation(action="keep", reason=reason)
