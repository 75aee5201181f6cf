from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kloros_orchestrator.measure.scoring import score_candidate
from kloros_orchestrator.measure.stats import (
    bootstrap_mean_ci,
    bootstrap_mean_ci_batch,
    expanded_tail,
    kpi_cis,
    prob_better,
    score_ci,
    welch_p_value,
)
from kloros_orchestrator.model import P95, THROUGHPUT, WATTS

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
samples_st = st.lists(finite, min_size=1, max_size=40)
seeds = st.integers(min_value=0, max_value=2**32 - 1)
FAST = settings(max_examples=60, deadline=None)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@FAST
@given(samples_st, seeds)
def test_ci_brackets_the_mean(samples: list[float], seed: int) -> None:
    lo, hi = bootstrap_mean_ci(samples, rng=_rng(seed), n_boot=200)
    assert lo <= float(np.mean(samples)) <= hi


@FAST
@given(samples_st, seeds, st.floats(min_value=-1e5, max_value=1e5))
def test_ci_is_shift_equivariant(samples: list[float], seed: int, shift: float) -> None:
    lo, hi = bootstrap_mean_ci(samples, rng=_rng(seed), n_boot=200)
    lo2, hi2 = bootstrap_mean_ci(np.asarray(samples) + shift, rng=_rng(seed), n_boot=200)
    tol = 1e-9 * (1.0 + max(abs(v) for v in samples) + abs(shift))
    assert lo2 == pytest.approx(lo + shift, abs=tol)
    assert hi2 == pytest.approx(hi + shift, abs=tol)


@FAST
@given(samples_st, seeds, st.floats(min_value=1e-3, max_value=1e3))
def test_ci_is_scale_equivariant_for_positive_scale(samples: list[float], seed: int, scale: float) -> None:
    lo, hi = bootstrap_mean_ci(samples, rng=_rng(seed), n_boot=200)
    lo2, hi2 = bootstrap_mean_ci(np.asarray(samples) * scale, rng=_rng(seed), n_boot=200)
    tol = 1e-9 * (1.0 + max(abs(v) for v in samples)) * scale
    assert lo2 == pytest.approx(lo * scale, abs=tol)
    assert hi2 == pytest.approx(hi * scale, abs=tol)


@FAST
@given(samples_st, seeds)
def test_ci_is_deterministic_for_a_seed(samples: list[float], seed: int) -> None:
    assert bootstrap_mean_ci(samples, rng=_rng(seed), n_boot=100) == bootstrap_mean_ci(
        samples, rng=_rng(seed), n_boot=100
    )


def test_single_sample_and_empty() -> None:
    assert bootstrap_mean_ci([3.5], rng=_rng()) == (3.5, 3.5)
    with pytest.raises(ValueError, match="empty"):
        bootstrap_mean_ci([], rng=_rng())
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_mean_ci([1.0, float("nan")], rng=_rng())
    with pytest.raises(ValueError, match="level"):
        bootstrap_mean_ci([1.0, 2.0], rng=_rng(), level=1.0)


def test_constant_samples_give_a_point_interval() -> None:
    assert bootstrap_mean_ci([0.1] * 7, rng=_rng()) == pytest.approx((0.1, 0.1))


def test_global_rng_is_not_used() -> None:
    state = np.random.get_state()[1].copy()  # type: ignore[index]
    bootstrap_mean_ci([1.0, 2.0, 4.0], rng=_rng(1))
    assert np.array_equal(np.random.get_state()[1], state)  # type: ignore[index]


def test_ci_is_wider_at_lower_n_on_average() -> None:
    rng = _rng(7)
    widths = {}
    for n in (5, 20, 80):
        ci = bootstrap_mean_ci_batch(rng.normal(0.0, 1.0, size=(300, n)), rng=rng, n_boot=300)
        widths[n] = float(np.mean(ci[:, 1] - ci[:, 0]))
    assert widths[5] > widths[20] > widths[80]


def test_batch_matches_single_for_n1_and_rejects_bad_shapes() -> None:
    out = bootstrap_mean_ci_batch([[1.0], [2.0]], rng=_rng())
    assert out.tolist() == [[1.0, 1.0], [2.0, 2.0]]
    with pytest.raises(ValueError, match="two-dimensional"):
        bootstrap_mean_ci_batch([1.0, 2.0], rng=_rng())


def test_coverage_on_normal_samples_is_close_to_95_percent() -> None:
    # 2000 synthetic experiments of n = 30; a 95% CI must cover the true mean 93–97% of the time.
    rng = _rng(20261122)
    true_mean = 10.0
    x = rng.normal(true_mean, 2.0, size=(2000, 30))
    ci = bootstrap_mean_ci_batch(x, rng=rng, n_boot=1000)
    coverage = float(np.mean((ci[:, 0] <= true_mean) & (true_mean <= ci[:, 1])))
    assert 0.93 <= coverage <= 0.97, coverage


def test_expanded_tail_is_smaller_than_alpha_half_and_tends_to_it() -> None:
    assert expanded_tail(1) == 0.0
    assert expanded_tail(3) < 1e-4
    assert expanded_tail(30) < 0.025 < expanded_tail(100_000) + 1e-4


def test_kpi_cis_skip_empty() -> None:
    cis = kpi_cis({THROUGHPUT: [1.0, 2.0, 3.0], WATTS: []}, rng=_rng())
    assert set(cis) == {THROUGHPUT}
    assert cis[THROUGHPUT][0] <= 2.0 <= cis[THROUGHPUT][1]


# --- score CI ---------------------------------------------------------------------------------------


def _side(rng: np.random.Generator, perf: float, p95: float, n: int = 8) -> dict[str, dict[str, np.ndarray]]:
    return {
        regime: {THROUGHPUT: rng.normal(perf, perf * 0.03, n), P95: rng.normal(p95, p95 * 0.05, n)}
        for regime in ("normal", "stress")
    }


def test_score_ci_detects_a_clear_improvement_and_brackets_point_score() -> None:
    rng = _rng(3)
    cand, base = _side(rng, 1200.0, 50.0), _side(rng, 1000.0, 50.0)
    ci = score_ci(cand, base, rng=rng, n_boot=1000)
    point = score_candidate(
        {r: {k: float(np.mean(v)) for k, v in d.items()} for r, d in cand.items()},
        {r: {k: float(np.mean(v)) for k, v in d.items()} for r, d in base.items()},
    )
    assert point is not None
    assert ci[0] <= point <= ci[1]
    assert ci[0] > 0.1  # ~+20% throughput


def test_score_ci_straddles_zero_for_identical_distributions() -> None:
    rng = _rng(4)
    cand, base = _side(rng, 1000.0, 50.0), _side(rng, 1000.0, 50.0)
    ci = score_ci(cand, base, rng=rng, n_boot=1000)
    assert ci[0] < 0 < ci[1]


def test_score_ci_is_deterministic_and_refuses_when_unscorable() -> None:
    rng = _rng(5)
    cand, base = _side(rng, 1100.0, 40.0), _side(rng, 1000.0, 50.0)
    assert score_ci(cand, base, rng=_rng(9), n_boot=300) == score_ci(cand, base, rng=_rng(9), n_boot=300)
    no_perf = {"normal": {P95: np.array([1.0, 2.0])}}
    with pytest.raises(ValueError, match="no regime can be scored"):
        score_ci(no_perf, no_perf, rng=_rng())
    other_regime = {"normal": {THROUGHPUT: [1.0, 2.0]}}
    with pytest.raises(ValueError, match="no regime can be scored"):
        score_ci({"idle": {THROUGHPUT: [1.0, 2.0]}}, other_regime, rng=_rng())


def test_score_ci_with_single_trials_is_the_point_score() -> None:
    cand = {"normal": {THROUGHPUT: [110.0]}}
    base = {"normal": {THROUGHPUT: [100.0]}}
    assert score_ci(cand, base, rng=_rng()) == pytest.approx((0.1, 0.1))


def test_score_ci_few_trials_are_cautious() -> None:
    # Three noisy trials each side with a modest gain: the expanded interval must not claim it.
    cand = {"normal": {THROUGHPUT: [104.0, 96.0, 112.0]}}
    base = {"normal": {THROUGHPUT: [100.0, 95.0, 103.0]}}
    ci = score_ci(cand, base, rng=_rng(), n_boot=2000)
    assert ci[0] < 0


def test_prob_better_and_welch() -> None:
    rng = _rng(11)
    a, b = rng.normal(10.0, 1.0, 20), rng.normal(8.0, 1.0, 20)
    assert prob_better(a, b, rng=_rng()) > 0.99
    assert prob_better(b, a, rng=_rng()) < 0.01
    assert prob_better([1.0], [1.0], rng=_rng()) == 0.5
    p = welch_p_value(a, b, alternative="greater")
    assert p is not None and p < 1e-3
    assert welch_p_value([1.0], [2.0, 3.0]) is None
    assert welch_p_value([1.0, 1.0], [1.0, 1.0]) is None


def test_paired_p_value_is_scipys_paired_t_test_and_sees_what_welch_misses() -> None:
    from scipy import stats as sps

    from kloros_orchestrator.measure.stats import paired_p_value, welch_p_value

    rng = np.random.default_rng(5)
    base = 100.0 + 20.0 * rng.standard_normal(8)  # pairs differ a lot from each other ...
    cand = base * 1.02 + 0.2 * rng.standard_normal(8)  # ... but each variant trial is 2 % above its pair
    d = cand / base - 1.0
    p = paired_p_value(d)
    assert p is not None and p == pytest.approx(sps.ttest_1samp(d, 0.0).pvalue, rel=1e-9)
    assert p < 0.001 < (welch_p_value(cand, base) or 1.0)  # the groups overlap; the pairs do not
    assert paired_p_value([0.01]) is None and paired_p_value([0.01, 0.01]) is None
