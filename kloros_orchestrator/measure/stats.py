"""Bootstrap confidence intervals and two-sample helpers. Pure numpy (distribution functions from
``distributions.py``, no scipy); randomness only from the ``numpy.random.Generator`` the caller
passes in.

Interval method: the *expanded percentile* bootstrap (Hesterberg, "What teachers should know about
the bootstrap", 2015). The plain percentile bootstrap is too narrow for small n (its bootstrap
distribution has variance (n−1)/n·s²/n and ignores t-tails); the expanded version reads the
bootstrap distribution at the tail probability ``Φ(−√(n/(n−1))·t_{1−α/2, n−1})`` instead of
``α/2``, which restores close-to-nominal coverage for n of a few tens while keeping the
percentile method's shape-following behaviour for skewed data. For n = 2 or 3 that probability
is so small that the interval is the range of the bootstrap distribution: deliberately cautious
with few trials. Every interval is finally clamped to contain its point estimate.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Final, Literal, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from kloros_orchestrator.measure.distributions import norm_cdf, t_ppf, t_sf, welch_ttest
from kloros_orchestrator.measure.scoring import (
    score_regime,
    score_regime_array,
    score_terms,
    stressor_ratio,
    stressor_ratio_array,
)
from kloros_orchestrator.model import THROUGHPUT

FloatArray = npt.NDArray[np.float64]
ArrayLike = npt.ArrayLike

DEFAULT_N_BOOT: Final = 2000
DEFAULT_LEVEL: Final = 0.95
# Upper bound on resampled elements held at once by the batched bootstrap (~32 MB of float64).
_MAX_ELEMENTS: Final = 4_000_000


def _as_samples(samples: ArrayLike, what: str = "samples") -> FloatArray:
    arr = np.asarray(samples, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contain NaN or infinity")
    return arr


def _check_params(n_boot: int, level: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def expanded_tail(n: int, level: float = DEFAULT_LEVEL) -> float:
    """Lower tail probability at which the expanded percentile interval reads the bootstrap distribution.

    For n < 2 there is no variance estimate to expand; 0.0 (the range) is returned.
    """
    if n < 2:
        return 0.0
    return _expanded_tail(n, level)


@functools.lru_cache(maxsize=256)
def _expanded_tail(n: int, level: float) -> float:
    # Cached: every bootstrap asks for it, with few distinct (n, level) pairs per run, and the
    # t quantile is an iterative solve.
    alpha = 1.0 - level
    t = t_ppf(1.0 - alpha / 2.0, n - 1)
    return norm_cdf(-math.sqrt(n / (n - 1)) * t)


def _interval(replicates: FloatArray, tail: float) -> FloatArray:
    """Quantiles (tail, 1 − tail) along the last axis; shape (..., 2)."""
    q = np.quantile(replicates, [tail, 1.0 - tail], axis=-1)
    return np.moveaxis(q, 0, -1)


def bootstrap_mean_ci_batch(
    samples: ArrayLike,
    *,
    rng: np.random.Generator,
    n_boot: int = DEFAULT_N_BOOT,
    level: float = DEFAULT_LEVEL,
) -> FloatArray:
    """``bootstrap_mean_ci`` for each row of an (m, n) array at once; returns shape (m, 2).

    Rows are processed in chunks so memory stays bounded; each chunk is one index draw.
    """
    _check_params(n_boot, level)
    arr = np.asarray(samples, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"samples must be two-dimensional (m, n), got shape {arr.shape}")
    m, n = arr.shape
    if n == 0:
        raise ValueError("cannot bootstrap an empty sample")
    if not np.all(np.isfinite(arr)):
        raise ValueError("samples contain NaN or infinity")
    means = arr.mean(axis=1)
    if n == 1:
        return np.stack([means, means], axis=1)
    tail = expanded_tail(n, level)
    out = np.empty((m, 2), dtype=np.float64)
    rows_per_chunk = max(1, _MAX_ELEMENTS // (n_boot * n))
    for start in range(0, m, rows_per_chunk):
        block = arr[start : start + rows_per_chunk]
        idx = rng.integers(0, n, size=(block.shape[0], n_boot, n))
        boot_means = np.take_along_axis(block[:, None, :], idx, axis=2).mean(axis=2)
        out[start : start + block.shape[0]] = _interval(boot_means, tail)
    # Clamp: quantile interpolation and float rounding can leave the mean a hair outside.
    out[:, 0] = np.minimum(out[:, 0], means)
    out[:, 1] = np.maximum(out[:, 1], means)
    return out


def bootstrap_mean_ci(
    samples: ArrayLike,
    *,
    rng: np.random.Generator,
    n_boot: int = DEFAULT_N_BOOT,
    level: float = DEFAULT_LEVEL,
) -> tuple[float, float]:
    """Expanded-percentile bootstrap CI of the mean (see the module docstring).

    One (n_boot, n) index draw, no Python loop. n == 1 gives (x, x); n == 0 raises ValueError.
    The interval always contains ``np.mean(samples)`` (clamped if the quantiles miss it).
    """
    _check_params(n_boot, level)
    arr = _as_samples(samples)
    if arr.size == 0:
        raise ValueError("cannot bootstrap an empty sample")
    mean = float(np.mean(arr))
    if arr.size == 1:
        return (mean, mean)
    idx = rng.integers(0, arr.size, size=(n_boot, arr.size))
    lo, hi = _interval(arr[idx].mean(axis=1), expanded_tail(arr.size, level))
    return (min(float(lo), mean), max(float(hi), mean))


def kpi_cis(
    kpis: Mapping[str, Sequence[float]],
    *,
    rng: np.random.Generator,
    n_boot: int = DEFAULT_N_BOOT,
    level: float = DEFAULT_LEVEL,
) -> dict[str, tuple[float, float]]:
    """``bootstrap_mean_ci`` per KPI; KPIs without values are absent from the result."""
    return {
        kpi: bootstrap_mean_ci(values, rng=rng, n_boot=n_boot, level=level)
        for kpi, values in kpis.items()
        if len(values) > 0
    }


Key = TypeVar("Key", bound=Hashable)
Sides = Mapping[str, Mapping[str, ArrayLike]]  # {regime: {kpi or stressor: values}}


def _replicate_means(
    arrays: Mapping[Key, FloatArray], rng: np.random.Generator, n_boot: int
) -> dict[Key, FloatArray]:
    """Bootstrap means per column. Columns with equally many values come from the same trials, so they
    share one index draw: a trial's throughput, latency and stressor rates are resampled together."""
    by_length: dict[int, list[Key]] = {}
    for key, arr in arrays.items():
        by_length.setdefault(arr.size, []).append(key)
    out: dict[Key, FloatArray] = {}
    for n, keys in by_length.items():
        if n == 1:
            for key in keys:
                out[key] = np.full(n_boot, arrays[key][0])
            continue
        idx = rng.integers(0, n, size=(n_boot, n))
        for key in keys:
            out[key] = arrays[key][idx].mean(axis=1)
    return out


class _Regime(NamedTuple):
    """One regime's columns, validated: ``("kpi", name)`` and ``("stressor", name)`` per side."""

    cand: dict[tuple[str, str], FloatArray]
    base: dict[tuple[str, str], FloatArray]
    terms: tuple[str, ...]
    point: float
    per_stressor: bool


def _columns(
    regime: str, kpis: Mapping[str, ArrayLike], stressors: Mapping[str, ArrayLike] | None
) -> dict[tuple[str, str], FloatArray]:
    cols = {("kpi", k): _as_samples(v, f"{regime}/{k}") for k, v in kpis.items()}
    cols.update({("stressor", s): _as_samples(v, f"{regime}/{s}") for s, v in (stressors or {}).items()})
    return {key: a for key, a in cols.items() if a.size}


def _names(cols: Mapping[tuple[str, str], FloatArray], kind: str) -> dict[str, FloatArray]:
    return {name: a for (k, name), a in cols.items() if k == kind}


def _prepare(
    regime: str,
    cand_cols: dict[tuple[str, str], FloatArray],
    base_cols: dict[tuple[str, str], FloatArray],
) -> _Regime | None:
    """The terms and point score of one regime from its columns; None when it cannot be scored.

    Per-stressor throughput needs, besides ``stressor_ratio``'s rule, one stressor value per
    throughput value on each side (the same trials); otherwise the summed throughput is used.
    """
    cand_mean = {k: float(a.mean()) for k, a in _names(cand_cols, "kpi").items()}
    base_mean = {k: float(a.mean()) for k, a in _names(base_cols, "kpi").items()}
    terms = score_terms(cand_mean, base_mean)
    if terms is None:
        return None
    cs, bs = _names(cand_cols, "stressor"), _names(base_cols, "stressor")
    aligned = all(a.size == cand_cols["kpi", THROUGHPUT].size for a in cs.values()) and all(
        a.size == base_cols["kpi", THROUGHPUT].size for a in bs.values()
    )
    cs_mean = {s: float(a.mean()) for s, a in cs.items()}
    bs_mean = {s: float(a.mean()) for s, a in bs.items()}
    per_stressor = aligned and stressor_ratio(cs_mean, bs_mean) is not None
    point = score_regime(
        cand_mean,
        base_mean,
        cand_stressors=cs_mean if per_stressor else None,
        base_stressors=bs_mean if per_stressor else None,
    )
    keep = {("kpi", k) for k in terms}
    if per_stressor:
        keep |= {key for key in cand_cols if key[0] == "stressor"}
    cand = {key: a for key, a in cand_cols.items() if key in keep}
    base = {key: a for key, a in base_cols.items() if key in keep}
    return _Regime(cand, base, terms, float(point or 0.0), per_stressor)


def _regime_replicates(
    reg: _Regime,
    cand_reps: Mapping[tuple[str, str], FloatArray],
    base_reps: Mapping[tuple[str, str], FloatArray],
) -> FloatArray:
    ratio = (
        stressor_ratio_array(_names(cand_reps, "stressor"), _names(base_reps, "stressor"))
        if reg.per_stressor
        else None
    )
    return score_regime_array(_names(cand_reps, "kpi"), _names(base_reps, "kpi"), reg.terms, perf_ratio=ratio)


def _paired_replicates(
    reg: _Regime, regime: str, rng: np.random.Generator, n_boot: int
) -> tuple[FloatArray, int]:
    """Resample the regime's pairs: one index draw applied to every column of both sides."""
    sizes = {a.size for a in (*reg.cand.values(), *reg.base.values())}
    if len(sizes) != 1:
        raise ValueError(f"{regime}: paired arrays need one value per pair on each side, got {sorted(sizes)}")
    (n,) = sizes
    idx = rng.integers(0, n, size=(n_boot, n)) if n > 1 else np.zeros((n_boot, 1), dtype=np.intp)
    cand_reps = {key: a[idx].mean(axis=1) for key, a in reg.cand.items()}
    base_reps = {key: a[idx].mean(axis=1) for key, a in reg.base.items()}
    return _regime_replicates(reg, cand_reps, base_reps), n


def _score_interval(
    candidate: Sides,
    baseline: Sides,
    stressors: tuple[Sides | None, Sides | None],
    *,
    paired: bool,
    rng: np.random.Generator,
    n_boot: int,
    level: float,
) -> tuple[float, float]:
    _check_params(n_boot, level)
    cand_stressors, base_stressors = stressors[0] or {}, stressors[1] or {}
    regime_scores: list[FloatArray] = []
    point_scores: list[float] = []
    sizes: list[int] = []
    for regime, cand_raw in candidate.items():
        base_raw = baseline.get(regime)
        if base_raw is None:
            continue
        cand_cols = _columns(regime, cand_raw, cand_stressors.get(regime))
        base_cols = _columns(regime, base_raw, base_stressors.get(regime))
        reg = _prepare(regime, cand_cols, base_cols)
        if reg is None:
            continue
        point_scores.append(reg.point)
        if paired:
            reps, n = _paired_replicates(reg, regime, rng, n_boot)
            sizes.append(n)
        else:
            cand_reps = _replicate_means(reg.cand, rng, n_boot)
            base_reps = _replicate_means(reg.base, rng, n_boot)
            reps = _regime_replicates(reg, cand_reps, base_reps)
            sizes.extend(a.size for a in (*reg.cand.values(), *reg.base.values()))
        regime_scores.append(reps)
    if not regime_scores:
        raise ValueError("no regime can be scored: throughput absent on the candidate or baseline side")
    point_score = sum(point_scores) / len(point_scores)
    replicates = np.mean(np.stack(regime_scores), axis=0)
    # A replicate whose baseline mean resampled to 0 has no finite ratio; it carries no information.
    replicates = replicates[np.isfinite(replicates)]
    if replicates.size == 0:
        raise ValueError("no bootstrap replicate produced a finite score")
    lo, hi = _interval(replicates, expanded_tail(min(sizes), level))
    return (min(float(lo), point_score), max(float(hi), point_score))


def score_ci(
    candidate: Sides,
    baseline: Sides,
    *,
    rng: np.random.Generator,
    n_boot: int = DEFAULT_N_BOOT,
    level: float = DEFAULT_LEVEL,
    cand_stressors: Sides | None = None,
    base_stressors: Sides | None = None,
) -> tuple[float, float]:
    """Bootstrap CI of ``score_v2`` from per-trial KPI values: ``{regime: {kpi: values}}`` per side.

    Each regime's candidate and baseline trials are resampled independently (vectorised over
    replicates), the score is recomputed per replicate with the terms chosen from the point
    estimate, and the expanded percentile interval uses the smallest group size involved (the
    least informed group sets the caution). A group with a single trial contributes no resampling
    variance. The interval contains the point score. Raises ValueError when no regime can be
    scored (check ``score_candidate(...) is not None`` first).

    ``cand_stressors``/``base_stressors``: ``{regime: {stressor: bogo-ops/s per trial}}``, in the
    same trial order as the KPI values. Where they qualify (``scoring.stressor_ratio``, and one value
    per throughput value) the throughput term is the per-stressor geometric-mean ratio: a replicate
    resamples trials, then takes each stressor's mean over the resampled trials.
    """
    return _score_interval(
        candidate,
        baseline,
        (cand_stressors, base_stressors),
        paired=False,
        rng=rng,
        n_boot=n_boot,
        level=level,
    )


def paired_score_ci(
    candidate: Sides,
    baseline: Sides,
    *,
    rng: np.random.Generator,
    n_boot: int = DEFAULT_N_BOOT,
    level: float = DEFAULT_LEVEL,
    cand_stressors: Sides | None = None,
    base_stressors: Sides | None = None,
) -> tuple[float, float]:
    """``score_ci`` for paired trials: within a regime, element i of every candidate and baseline
    array (KPIs and stressors) comes from pair i (trials run side by side, e.g. PHASE's
    (epoch, slice, replica)), so every array of a regime has one value per pair.

    Each replicate resamples a regime's *pairs* and keeps both arms' trials of a pair together: what
    a pair shares (drift, a noisy neighbour in that stretch) moves both sides of the ratio alike and
    cancels, where the unpaired bootstrap counts it as noise of either side. The expanded tail uses
    the smallest number of pairs in a scored regime. ValueError as ``score_ci``, and for arrays of
    different lengths within a regime.
    """
    return _score_interval(
        candidate,
        baseline,
        (cand_stressors, base_stressors),
        paired=True,
        rng=rng,
        n_boot=n_boot,
        level=level,
    )


def prob_better(
    a: ArrayLike,
    b: ArrayLike,
    *,
    rng: np.random.Generator,
    n_boot: int = DEFAULT_N_BOOT,
) -> float:
    """Bootstrap probability that mean(a) > mean(b) (ties count half); both samples non-empty."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    arr_a, arr_b = _as_samples(a, "a"), _as_samples(b, "b")
    if arr_a.size == 0 or arr_b.size == 0:
        raise ValueError("prob_better needs at least one value on each side")
    means_a = arr_a[rng.integers(0, arr_a.size, size=(n_boot, arr_a.size))].mean(axis=1)
    means_b = arr_b[rng.integers(0, arr_b.size, size=(n_boot, arr_b.size))].mean(axis=1)
    return float(np.mean(means_a > means_b) + 0.5 * np.mean(means_a == means_b))


def paired_p_value(differences: ArrayLike) -> float | None:
    """Two-sided p-value of a paired t-test: the mean of per-pair ``differences`` against 0 (df n-1);
    None when undefined (fewer than two pairs, or every difference the same)."""
    d = _as_samples(differences, "differences")
    if d.size < 2 or np.ptp(d) == 0:
        return None
    t = float(np.mean(d)) / (float(np.std(d, ddof=1)) / math.sqrt(d.size))
    p = 2.0 * t_sf(abs(t), float(d.size - 1))
    return min(1.0, p) if math.isfinite(p) else None


def welch_p_value(
    a: ArrayLike, b: ArrayLike, *, alternative: Literal["two-sided", "greater", "less"] = "two-sided"
) -> float | None:
    """Welch's t-test p-value for mean(a) vs mean(b); None when undefined (n < 2 or no variance)."""
    arr_a, arr_b = _as_samples(a, "a"), _as_samples(b, "b")
    if arr_a.size < 2 or arr_b.size < 2:
        return None
    if np.ptp(arr_a) == 0 and np.ptp(arr_b) == 0:
        return None  # no variance on either side: the t statistic is undefined
    p = welch_ttest(arr_a, arr_b, alternative=alternative)[2]
    return p if math.isfinite(p) else None
