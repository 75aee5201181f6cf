"""PHASE evidence per variant: its score and interval against the baseline, and its paired KPI effects.

The rules these numbers feed (promotion, flags, measurable effects) are stated in ``phase/analysis.py``.
Randomness: one Generator per (seed, domain, variant), so adding a domain or a variant does not
change the others' intervals.

Pairs. The QTIME plan runs each variant trial beside a stock trial of the same (epoch, slice,
replica); ``_pair_keys`` finds them again. Both the KPI effects and the score interval use these
pairs: the interval resamples whole pairs (``measure.stats.paired_score_ci``), so what a pair shares
(drift over the window, a neighbour's load in that stretch) cancels instead of counting as noise.
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

from kloros_orchestrator.measure.arms import stressor_means, stressor_values
from kloros_orchestrator.measure.scoring import score_candidate, score_terms, stressor_ratio
from kloros_orchestrator.measure.stats import bootstrap_mean_ci, paired_p_value, paired_score_ci
from kloros_orchestrator.model import REGIMES, STANDARD_KPIS, STOCK_ARM, THROUGHPUT
from kloros_orchestrator.phase.records import DomainData, TrialRecord, VariantInfo

FloatArray = npt.NDArray[np.float64]
Interval = tuple[float, float]

MIN_PAIRS_EFFECT: Final = 3  # fewer paired trials: no claim either way


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


class VariantStats(msgspec.Struct):
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


def check_input(domain: str, data: DomainData) -> None:
    if STOCK_ARM in data.variants:
        raise ValueError(f"domain {domain!r}: {STOCK_ARM!r} is reserved for the stock configuration")
    known = {STOCK_ARM, *data.variants}
    for t in data.trials:
        if t.variant_id not in known:
            raise ValueError(f"domain {domain!r}: trial of unknown variant {t.variant_id!r}")


def _rng(seed: int, domain: str, variant_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(domain.encode()), zlib.crc32(variant_id.encode())])


def usable(trial: TrialRecord) -> bool:
    return trial.ok


def kpi_arrays(trials: Iterable[TrialRecord]) -> dict[str, dict[str, FloatArray]]:
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for t in trials:
        if not usable(t):
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


def means(arrays: Mapping[str, Mapping[str, FloatArray]]) -> dict[str, dict[str, float]]:
    return {r: {k: float(a.mean()) for k, a in kpis.items() if a.size} for r, kpis in arrays.items()}


def _by_regime(trials: Iterable[TrialRecord]) -> dict[str, list[TrialRecord]]:
    out: dict[str, list[TrialRecord]] = defaultdict(list)
    for t in trials:
        out[t.regime].append(t)
    return out


def stressor_mean_table(trials: Iterable[TrialRecord]) -> dict[str, dict[str, float]]:
    """``{regime: {stressor: mean bogo-ops/s}}`` where every usable trial of the regime carries the
    same stressors (``measure.arms.stressor_values``'s rule); other regimes are absent."""
    table = {r: stressor_means(ts) for r, ts in _by_regime(trials).items()}
    return {r: m for r, m in table.items() if m is not None}


def _score(trials: Sequence[TrialRecord], base_trials: Sequence[TrialRecord]) -> float | None:
    """score_v2 over the regimes both sides measured, per-stressor throughput where both sides have it."""
    return score_candidate(
        means(kpi_arrays(trials)),
        means(kpi_arrays(base_trials)),
        cand_stressors=stressor_mean_table(trials),
        base_stressors=stressor_mean_table(base_trials),
    )


def _paired_columns(
    pairs: Sequence[tuple[TrialRecord, TrialRecord]], terms: Sequence[str], per_stressor: bool
) -> tuple[dict[str, FloatArray], dict[str, FloatArray], dict[str, FloatArray], dict[str, FloatArray]]:
    """One regime's pairs as arrays, one value per pair, for exactly the point score's formula: its
    ``terms`` (a pair missing one of them on either side is dropped, never the term) and, when the
    point used per-stressor throughput, each side's stressor rates (pairs without them dropped)."""

    def carries(c: TrialRecord, b: TrialRecord) -> bool:
        finite = all(math.isfinite(t.kpis.get(k, math.nan)) for t in (c, b) for k in terms)
        return finite and (not per_stressor or stressor_values([c, b]) is not None)

    kept = [(c, b) for c, b in pairs if carries(c, b)]
    cand = {k: np.asarray([c.kpis[k] for c, _ in kept], dtype=np.float64) for k in terms}
    base = {k: np.asarray([b.kpis[k] for _, b in kept], dtype=np.float64) for k in terms}
    if not per_stressor or not kept:
        return cand, base, {}, {}
    rates = stressor_values([c for c, _ in kept]), stressor_values([b for _, b in kept])
    cand_s, base_s = ({s: np.asarray(v, dtype=np.float64) for s, v in (r or {}).items()} for r in rates)
    return cand, base, cand_s, base_s


def _paired_ci(
    trials: Sequence[TrialRecord],
    base_trials: Sequence[TrialRecord],
    formula: Mapping[str, tuple[tuple[str, ...], bool]],
    rng: np.random.Generator,
    n_boot: int,
    level: float,
) -> Interval | None:
    """The score interval over the (epoch, slice, replica) pairs, with the point score's ``formula``
    per scored regime (its KPI terms, per-stressor or not); None unless every scored regime keeps at
    least two pairs that carry that formula (one pair has no spread: no interval, no claim)."""
    base = _pair_keys(base_trials)
    pairs: dict[str, list[tuple[TrialRecord, TrialRecord]]] = defaultdict(list)
    for key, c in _pair_keys(trials).items():
        b = base.get(key)
        if b is not None and usable(c) and usable(b):
            pairs[c.regime].append((c, b))
    if not formula:
        return None
    columns = {r: _paired_columns(pairs.get(r, []), *formula[r]) for r in formula}
    if any(len(c[0][THROUGHPUT]) < 2 for c in columns.values()):
        return None
    try:
        return paired_score_ci(
            {r: c[0] for r, c in columns.items()},
            {r: c[1] for r, c in columns.items()},
            cand_stressors={r: c[2] for r, c in columns.items()},
            base_stressors={r: c[3] for r, c in columns.items()},
            rng=rng,
            n_boot=n_boot,
            level=level,
        )
    except ValueError:  # no regime scorable from the pairs alone
        return None


def _formula(
    trials: Sequence[TrialRecord], base_trials: Sequence[TrialRecord]
) -> dict[str, tuple[tuple[str, ...], bool]]:
    """Per regime the point score uses: its KPI terms, and whether throughput is per stressor."""
    cand_means, base_means = means(kpi_arrays(trials)), means(kpi_arrays(base_trials))
    cand_tab, base_tab = stressor_mean_table(trials), stressor_mean_table(base_trials)
    out: dict[str, tuple[tuple[str, ...], bool]] = {}
    for r, m in cand_means.items():
        terms = score_terms(m, base_means[r]) if r in base_means else None
        if terms is not None:
            ratio = stressor_ratio(cand_tab[r], base_tab[r]) if r in cand_tab and r in base_tab else None
            out[r] = (terms, ratio is not None)
    return out


def evaluate_variant(
    domain: str,
    variant_id: str,
    info: VariantInfo,
    trials: Sequence[TrialRecord],
    base_trials: Sequence[TrialRecord],
    seed: int,
    n_boot: int,
    level: float,
) -> VariantStats:
    rng = _rng(seed, domain, variant_id)
    score = _score(trials, base_trials)
    ci = None
    if score is not None:
        ci = _paired_ci(trials, base_trials, _formula(trials, base_trials), rng, n_boot, level)
        # The interval is of the pairs; the point score uses every usable trial: contain it.
        ci = None if ci is None else (min(ci[0], score), max(ci[1], score))
    epochs = sorted({t.epoch for t in trials if usable(t)})
    epoch_scores: dict[int, float | None] = {
        e: _score([t for t in trials if t.epoch == e], [t for t in base_trials if t.epoch == e])
        for e in epochs
    }
    breaches = [
        f"cap breach in the {t.regime} regime (epoch {t.epoch}): {t.cap_breach}"
        for t in trials
        if t.cap_breach is not None
    ]
    failures = [t.failure or "failed" for t in trials if not t.ok and t.cap_breach is None]
    return VariantStats(
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
        if b is None or not (usable(c) and usable(b)):
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
        # The plan pairs each variant trial with the stock trial beside it (epoch, regime, replica):
        # a paired test on the per-pair differences, not Welch's on two independent groups.
        p = paired_p_value(deltas) if len(values) >= 2 else None
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
