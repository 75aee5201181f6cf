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
from collections.abc import Mapping, Sequence
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from kloros_orchestrator.measure.distributions import norm_cdf, t_ppf, t_sf, welch_ttest
from kloros_orchestrator.measure.scoring import score_regime_array, score_terms

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


def _replicate_means(
    arrays: Mapping[str, FloatArray], rng: np.random.Generator, n_boot: int
) -> dict[str, FloatArray]:
    """Bootstrap means per KPI. KPIs with equally many values come from the same trials, so they
    share one index draw: a trial's throughput and latency are resampled together."""
    by_length: dict[int, list[str]] = {}
    for kpi, arr in arrays.items():
        by_length.setdefault(arr.size, []).append(kpi)
    out: dict[str, FloatArray] = {}
    for n, kpis in by_length.items():
        if n == 1:
            for kpi in kpis:
                out[kpi] = np.full(n_boot, arrays[kpi][0])
            continue
        idx = rng.integers(0, n, size=(n_boot, n))
        for kpi in kpis:
            out[kpi] = arrays[kpi][idx].mean(axis=1)
    return out


def score_ci(
    candidate: Mapping[str, Mapping[str, ArrayLike]],
    baseline: Mapping[str, Mapping[str, ArrayLike]],
    *,
    rng: np.random.Generator,
    n_boot: int = DEFAULT_N_BOOT,
    level: float = DEFAULT_LEVEL,
) -> tuple[float, float]:
    """Bootstrap CI of ``score_v2`` from per-trial KPI values: ``{regime: {kpi: values}}`` per side.

    Each regime's candidate and baseline trials are resampled independently (vectorised over
    replicates), the score is recomputed per replicate with the terms chosen from the point
    estimate, and the expanded percentile interval uses the smallest group size involved (the
    least informed group sets the caution). A group with a single trial contributes no resampling
    variance. The interval contains the point score. Raises ValueError when no regime can be
    scored (check ``score_candidate(...) is not None`` first).
    """
    _check_params(n_boot, level)
    regime_scores: list[FloatArray] = []
    point_scores: list[float] = []
    n_min: int | None = None
    for regime, cand_raw in candidate.items():
        base_raw = baseline.get(regime)
        if base_raw is None:
            continue
        cand = {k: _as_samples(v, f"{regime}/{k}") for k, v in cand_raw.items()}
        base = {k: _as_samples(v, f"{regime}/{k}") for k, v in base_raw.items()}
        cand_mean = {k: float(a.mean()) for k, a in cand.items() if a.size}
        base_mean = {k: float(a.mean()) for k, a in base.items() if a.size}
        terms = score_terms(cand_mean, base_mean)
        if terms is None:
            continue
        point = score_regime_array(
            {k: np.asarray(cand_mean[k]) for k in terms}, {k: np.asarray(base_mean[k]) for k in terms}, terms
        )
        point_scores.append(float(point))
        cand_reps = _replicate_means({k: cand[k] for k in terms}, rng, n_boot)
        base_reps = _replicate_means({k: base[k] for k in terms}, rng, n_boot)
        regime_scores.append(score_regime_array(cand_reps, base_reps, terms))
        sizes = [cand[k].size for k in terms] + [base[k].size for k in terms]
        n_min = min([*sizes, n_min] if n_min is not None else sizes)
    if not regime_scores or n_min is None:
        raise ValueError("no regime can be scored: throughput absent on the candidate or baseline side")
    point_score = sum(point_scores) / len(point_scores)
    replicates = np.mean(np.stack(regime_scores), axis=0)
    # A replicate whose baseline mean resampled to 0 has no finite ratio; it carries no information.
    replicates = replicates[np.isfinite(replicates)]
    if replicates.size == 0:
        raise ValueError("no bootstrap replicate produced a finite score")
    lo, hi = _interval(replicates, expanded_tail(n_min, level))
    return (min(float(lo), point_score), max(float(hi), point_score))


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
