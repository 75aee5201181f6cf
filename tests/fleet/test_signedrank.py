"""The scipy-free Wilcoxon signed-rank test against scipy (a test-only reference) and against a brute
enumeration of sign patterns where scipy's exact method does not apply (ties, zeros)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from kloros_orchestrator.fleet.signedrank import EXACT_MAX, wilcoxon_greater
from kloros_orchestrator.measure.distributions import average_ranks


@pytest.mark.parametrize("n", range(1, 15))
def test_exact_p_values_match_scipy(n: int) -> None:
    rng = np.random.default_rng(n)
    for shift in (-0.5, 0.0, 0.3, 1.0):
        d = rng.normal(shift, 1.0, n)
        ours = wilcoxon_greater(d)
        ref = stats.wilcoxon(d, alternative="greater", method="exact")
        assert ours is not None and ours.exact and ours.n == n
        assert ours.w_plus == pytest.approx(float(ref.statistic), abs=1e-12)
        assert ours.p_value == pytest.approx(float(ref.pvalue), rel=1e-12, abs=1e-15)


def test_the_smallest_p_values_are_one_over_two_to_the_n() -> None:
    for n in (3, 6, 7, 20):
        p = wilcoxon_greater(np.arange(1.0, n + 1.0))
        assert p is not None and p.p_value == pytest.approx(0.5**n, rel=1e-12)
        q = wilcoxon_greater(-np.arange(1.0, n + 1.0))
        assert q is not None and q.p_value == 1.0


def _brute_force(d: np.ndarray) -> float:
    """P(W+ >= observed) over all sign patterns of the non-zero |d| with their average ranks."""
    nz = d[d != 0.0]
    ranks = average_ranks(np.abs(nz))
    observed = ranks[nz > 0].sum()
    hits = sum(
        1
        for signs in itertools.product((0, 1), repeat=nz.size)
        if float(np.dot(signs, ranks)) >= observed - 1e-9
    )
    return float(hits / 2 ** int(nz.size))


@pytest.mark.parametrize(
    "d",
    [
        [0.1, -0.1, 0.2, 0.2, -0.3, 0.4, 0.4, 0.4],  # ties, half ranks
        [0.0, 0.05, -0.02, 0.05, 0.0, 0.07, -0.05],  # zeros dropped, ties across signs
        [1.0, 1.0, 1.0, -1.0, 2.0, 2.0],
    ],
)
def test_ties_and_zeros_follow_the_exact_conditional_distribution(d: list[float]) -> None:
    ours = wilcoxon_greater(d)
    assert ours is not None
    assert ours.n == sum(1 for x in d if x != 0.0)
    assert ours.p_value == pytest.approx(_brute_force(np.asarray(d)), rel=1e-12)


def test_many_values_use_the_normal_approximation_as_scipy() -> None:
    rng = np.random.default_rng(7)
    d = np.round(rng.normal(0.05, 1.0, EXACT_MAX + 60), 2)  # rounding makes ties: the correction counts
    ours = wilcoxon_greater(d)
    ref = stats.wilcoxon(d, alternative="greater", method="approx")
    assert ours is not None and not ours.exact
    assert ours.p_value == pytest.approx(float(ref.pvalue), rel=1e-9)


def test_at_the_exact_limit_it_is_still_exact() -> None:
    d = np.random.default_rng(3).normal(0.1, 1.0, EXACT_MAX)
    ours = wilcoxon_greater(d)
    assert ours is not None and ours.exact
    ref = stats.wilcoxon(d, alternative="greater", method="exact")
    assert ours.p_value == pytest.approx(float(ref.pvalue), rel=1e-9)


def test_no_non_zero_difference_has_no_test() -> None:
    assert wilcoxon_greater([0.0, 0.0]) is None
    assert wilcoxon_greater([]) is None
    with pytest.raises(ValueError, match="NaN"):
        wilcoxon_greater([0.1, float("nan")])
