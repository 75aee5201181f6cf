"""Wilcoxon's signed-rank test, one-sided (``greater``), without scipy. Pure numpy.

The statistic is ``W+``, the sum of the ranks of ``|d|`` over the positive ``d``. Zeros are dropped
before ranking (Wilcoxon's own rule, scipy's ``zero_method="wilcox"``); tied ``|d|`` share their
average rank. The p-value ``P(W+ >= observed)`` is under the null hypothesis that each sign is + or −
with probability 1/2 independently (d symmetric about 0):

* **Exact** up to ``EXACT_MAX`` non-zero values: the distribution of ``W+`` over the ``2^n`` sign
  patterns of the *observed* ranks, built by convolution one rank at a time. Ranks are counted in
  halves (twice an average rank is a whole number), so ties are handled exactly as well: the
  distribution is the conditional one given the tie pattern. Without ties it is the textbook one
  (what ``scipy.stats.wilcoxon(..., method="exact")`` computes). Probabilities are carried as
  floats, halved at each step, so ``2^n`` never has to be represented; the cost is O(n³) at worst
  (n = 400: under a second).
* **Normal approximation** above that, with the tie correction of the variance and no continuity
  correction (scipy's ``method="approx"`` defaults). With hundreds of values it is accurate to far
  below any decision threshold here.
"""

from __future__ import annotations

import math
from typing import Final

import msgspec
import numpy as np
import numpy.typing as npt

from kloros_orchestrator.measure.distributions import average_ranks, norm_cdf

EXACT_MAX: Final = 400


class SignedRank(msgspec.Struct, frozen=True, kw_only=True):
    """The test's result: the statistic, the values it counted, the p-value and how it was found."""

    w_plus: float
    n: int  # non-zero differences
    p_value: float
    exact: bool


def _exact_upper_tail(half_ranks: npt.NDArray[np.int64], observed_half: int) -> float:
    """P(sum of a random subset of ``half_ranks`` >= ``observed_half``), each element in with 1/2."""
    total = int(half_ranks.sum())
    dist = np.zeros(total + 1, dtype=np.float64)
    dist[0] = 1.0
    reach = 0
    for r in (int(x) for x in half_ranks):
        # new[s] = (old[s] + old[s − r]) / 2, over the sums reachable so far only.
        dist[r : reach + r + 1] += dist[: reach + 1]
        reach += r
        dist[: reach + 1] *= 0.5
    return min(1.0, float(dist[observed_half:].sum()))


def wilcoxon_greater(differences: npt.ArrayLike) -> SignedRank | None:
    """One-sided signed-rank test that ``differences`` lean positive; None when every one is 0.

    ValueError for NaN or infinite values, or an array that is not one-dimensional.
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 1:
        raise ValueError(f"differences must be one-dimensional, got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError("differences contain NaN or infinity")
    d = d[d != 0.0]
    n = int(d.size)
    if n == 0:
        return None
    ranks = average_ranks(np.abs(d))
    w_plus = float(ranks[d > 0.0].sum())
    if n <= EXACT_MAX:
        half = np.rint(2.0 * ranks).astype(np.int64)
        p = _exact_upper_tail(half, round(2.0 * w_plus))
        return SignedRank(w_plus=w_plus, n=n, p_value=p, exact=True)
    _, counts = np.unique(ranks, return_counts=True)
    tie_term = float(np.sum(counts.astype(np.float64) ** 3 - counts)) / 48.0
    var = n * (n + 1) * (2 * n + 1) / 24.0 - tie_term
    z = (w_plus - n * (n + 1) / 4.0) / math.sqrt(var)
    return SignedRank(w_plus=w_plus, n=n, p_value=norm_cdf(-z), exact=False)


__all__ = ["EXACT_MAX", "SignedRank", "wilcoxon_greater"]
