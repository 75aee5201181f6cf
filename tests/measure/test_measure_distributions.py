"""The scipy-free distribution functions against scipy (a test-only reference here) and exact forms.

Where scipy itself is not accurate the comparison uses a closed form instead: ``stdtr`` returns 0
once t² overflows (|t| > 1e154), the F survival function loses digits below about 1e-270 (off by
0.7 % at 3e-293 for F(46, 580)), and ``t.ppf`` is off by up to 1e-10 near the median.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from typing import Literal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

from kloros_orchestrator.measure.distributions import (
    average_ranks,
    betainc,
    f_sf,
    norm_cdf,
    spearman,
    t_cdf,
    t_isf,
    t_ppf,
    t_sf,
    welch_ttest,
)

REL = 1e-8
FLOOR = 1e-300  # below this only "tiny" is checked
F_SCIPY_FLOOR = 1e-250  # scipy's F tail is trusted above this; below, the exact finite sum

dfs = st.one_of(
    st.integers(1, 10_000).map(float),
    st.floats(0.0, 4.0).map(lambda e: float(10.0**e)),
)
magnitudes = st.floats(-12.0, 150.0).map(lambda e: float(10.0**e))
signs = st.sampled_from([-1.0, 1.0])
alternatives = st.sampled_from(["two-sided", "greater", "less"])


def assert_close(got: float, ref: float, rel: float = REL, floor: float = FLOOR) -> None:
    if math.isnan(ref):
        assert math.isnan(got)
    elif abs(ref) >= floor:
        assert abs(got - ref) <= rel * abs(ref), (got, ref, abs(got - ref) / abs(ref))
    else:
        assert abs(got) <= 2.0 * floor, (got, ref)


# --- Student t --------------------------------------------------------------------------------


@settings(max_examples=500)
@given(df=dfs, mag=magnitudes, sign=signs)
def test_t_cdf_and_sf_match_scipy(df: float, mag: float, sign: float) -> None:
    t = sign * mag
    ref = float(special.stdtr(df, t))
    if ref == 0.0 and mag > 1e154:  # scipy overflows t²; the closed forms below cover this
        return
    assert_close(t_cdf(t, df), ref)
    assert_close(t_sf(t, df), float(special.stdtr(df, -t)))


@settings(max_examples=300)
@given(mag=st.floats(-12.0, 300.0).map(lambda e: float(10.0**e)))
def test_t_tails_with_one_and_two_df_match_closed_forms(mag: float) -> None:
    # P(T < -m): Cauchy atan(1/m)/π; df = 2: 1 / (s (s + m)) with s = sqrt(2 + m²), written
    # so that m² never overflows.
    assert_close(t_cdf(-mag, 1.0), math.atan(1.0 / mag) / math.pi, rel=1e-12)
    inv = 1.0 / mag
    root = math.sqrt(1.0 + 2.0 * inv * inv)
    assert_close(t_sf(mag, 2.0), inv * inv / (root * (root + 1.0)), rel=1e-12)


def test_t_edges() -> None:
    assert t_cdf(0.0, 3.0) == 0.5 and t_sf(-0.0, 3.0) == 0.5
    assert t_cdf(math.inf, 3.0) == 1.0 and t_cdf(-math.inf, 3.0) == 0.0
    assert t_cdf(1e300, 1.0) == 1.0 and 0.0 < t_cdf(-1e300, 1.0) < 1e-300
    for bad in (t_cdf(math.nan, 3.0), t_cdf(1.0, 0.0), t_cdf(1.0, -2.0), t_cdf(1.0, math.inf)):
        assert math.isnan(bad)
    assert t_ppf(0.0, 3.0) == -math.inf and t_ppf(1.0, 3.0) == math.inf and t_ppf(0.5, 3.0) == 0.0
    assert math.isnan(t_ppf(1.5, 3.0)) and math.isnan(t_ppf(0.1, 0.0))


# --- t quantile -------------------------------------------------------------------------------


@settings(max_examples=500)
@given(df=dfs, log_p=st.floats(-300.0, math.log10(0.5)))
def test_t_ppf_round_trips(df: float, log_p: float) -> None:
    p = min(10.0**log_p, 0.5)
    t = t_ppf(p, df)
    assert t <= 0.0
    assert_close(t_cdf(t, df), p, rel=1e-10)
    assert t_isf(p, df) == -t


@settings(max_examples=300)
@given(df=dfs, q=st.floats(0.25, 0.5, exclude_max=True))
def test_t_ppf_near_the_median_keeps_the_small_distance_to_it(df: float, q: float) -> None:
    # p close to 0.5 gives t close to 0: the relative accuracy of t is what matters there,
    # checked through P(t < T < 0) = I_y(1/2, df/2) / 2 with y = t²/(df + t²) — which is
    # 0.5 − q, exact in floating point for q in [0.25, 0.5].
    t = t_ppf(q, df)
    center = 0.5 * float(special.betainc(0.5, df / 2.0, t * t / (df + t * t)))
    assert_close(center, 0.5 - q, rel=1e-9)
    upper = 1.0 - q  # rounded; 1 − upper is then exact, and the quantiles mirror exactly
    assert t_ppf(upper, df) == -t_ppf(1.0 - upper, df)


@settings(max_examples=300)
@given(df=dfs, log_p=st.floats(-250.0, math.log10(0.5)))
def test_t_ppf_matches_scipy(df: float, log_p: float) -> None:
    p = min(10.0**log_p, 0.5)
    if 0.5 - p < 1e-9:
        return  # scipy loses relative accuracy in t there; the test above covers it exactly
    ref = float(stats.t.ppf(p, df))
    if abs(float(special.stdtr(df, ref)) - p) > 1e-10 * p:
        return  # scipy's t.ppf misses in far tails (t = -6.7e53 for p = 1e-171, df = √10: P = 7.9e-171)
    assert_close(t_ppf(p, df), ref)


def test_expanded_bootstrap_quantiles_match_scipy() -> None:
    """The values measure/stats.py asks for: t_{1−α/2, n−1} for small n."""
    for n in range(2, 200):
        for level in (0.8, 0.9, 0.95, 0.99):
            p = 1.0 - (1.0 - level) / 2.0
            assert_close(t_ppf(p, n - 1), float(stats.t.ppf(p, n - 1)), rel=1e-12)


# --- normal, F, incomplete beta ---------------------------------------------------------------


@given(x=st.floats(-37.5, 37.5))
def test_norm_cdf_matches_scipy(x: float) -> None:
    assert_close(norm_cdf(x), float(special.ndtr(x)), rel=1e-12)


def _f_sf_even_dfn(f: float, dfn: int, dfd: float) -> float:
    """P(F > f) for even dfn = 2k: I_x(dfd/2, k) = Σ_{j<k} C(a+j−1, j) x^a y^j, all terms positive."""
    a, u = dfd / 2.0, dfn * f / dfd
    log_x, log_y = -math.log1p(u), math.log(u) - math.log1p(u)
    return math.fsum(
        math.exp(a * log_x + j * log_y + math.lgamma(a + j) - math.lgamma(a) - math.lgamma(j + 1.0))
        for j in range(dfn // 2)
    )


@settings(max_examples=500)
@given(
    dfn=dfs,
    dfd=dfs,
    f=st.floats(-12.0, 12.0).map(lambda e: float(10.0**e)),
)
def test_f_sf_matches_scipy(dfn: float, dfd: float, f: float) -> None:
    ref = float(stats.f.sf(f, dfn, dfd))
    if ref >= F_SCIPY_FLOOR:
        assert_close(f_sf(f, dfn, dfd), ref)


@settings(max_examples=300)
@given(
    k=st.integers(1, 5_000),
    dfd=dfs,
    f=st.floats(-12.0, 12.0).map(lambda e: float(10.0**e)),
)
def test_f_sf_matches_the_exact_sum_deep_in_the_tail(k: int, dfd: float, f: float) -> None:
    assert_close(f_sf(f, 2 * k, dfd), _f_sf_even_dfn(f, 2 * k, dfd))


def test_f_sf_edges_and_a_tail_where_scipy_is_off() -> None:
    assert f_sf(0.0, 2, 5) == 1.0 and f_sf(-1.0, 2, 5) == 1.0 and f_sf(math.inf, 2, 5) == 0.0
    assert f_sf(1e-300, 3, 7) == pytest.approx(1.0) and 0.0 < f_sf(1e300, 1, 1) < 1e-149
    assert math.isnan(f_sf(1.0, 0, 5)) and math.isnan(f_sf(math.nan, 1, 5))
    # scipy gives 3.0262e-293 here; the exact sum (dfn even) and a 40-digit computation agree on
    # 3.0035118773014e-293
    assert_close(f_sf(154.41683671305302, 46.0, 579.5773681644291), 3.0035118773014e-293, rel=1e-12)


@settings(max_examples=500)
@given(
    a=st.floats(-0.5, 4.0).map(lambda e: float(10.0**e)),
    b=st.floats(-0.5, 4.0).map(lambda e: float(10.0**e)),
    x=st.floats(0.0, 1.0),
)
def test_betainc_matches_scipy(a: float, b: float, x: float) -> None:
    if 0.0 < x < sys.float_info.min:
        return  # scipy is off for subnormal x (by 3 % for a = 0.316, b = 10, x = 5e-324)
    ref = float(special.betainc(a, b, x))
    if ref >= F_SCIPY_FLOOR or ref == 0.0:
        assert_close(betainc(a, b, x), ref, floor=F_SCIPY_FLOOR)


# --- tests on samples -------------------------------------------------------------------------


def _scipy_spearman(x: list[float], y: list[float]) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns nan
        res = stats.spearmanr(x, y)
    return float(res.statistic), float(res.pvalue)


values_with_ties = st.one_of(
    st.lists(st.integers(0, 4).map(float), min_size=2, max_size=60),
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=60),
)


@settings(max_examples=500)
@given(data=st.data(), x=values_with_ties)
def test_spearman_matches_scipy(data: st.DataObject, x: list[float]) -> None:
    y = data.draw(
        st.one_of(
            st.lists(st.integers(0, 6).map(float), min_size=len(x), max_size=len(x)),
            st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=len(x), max_size=len(x)),
            st.just([2.0 * v + 1.0 for v in x]),  # perfectly related: p = 0
        )
    )
    rho, p = spearman(x, y)
    ref_rho, ref_p = _scipy_spearman(x, y)
    if math.isnan(ref_rho):
        assert math.isnan(rho) and math.isnan(p)
        return
    assert abs(rho - ref_rho) <= 1e-12
    assert_close(p, ref_p)


def test_average_ranks_share_ties() -> None:
    assert average_ranks([3.0, 1.0, 3.0, 2.0, 3.0]).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]
    data = np.random.default_rng(0).integers(0, 5, size=200).astype(float)
    np.testing.assert_array_equal(average_ranks(data), stats.rankdata(data))


samples = st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=2, max_size=40)


@settings(max_examples=500)
@given(a=samples, b=samples, alternative=alternatives, shift=st.floats(-1e3, 1e3))
def test_welch_matches_scipy(
    a: list[float], b: list[float], alternative: Literal["two-sided", "greater", "less"], shift: float
) -> None:
    b = [v + shift for v in b]
    t, df, p = welch_ttest(a, b, alternative=alternative)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = stats.ttest_ind(a, b, equal_var=False, alternative=alternative)
    ref_t, ref_p = float(ref.statistic), float(ref.pvalue)
    if math.isnan(ref_p):
        assert math.isnan(p)
        return
    if math.isfinite(ref_t):
        assert_close(t, ref_t, rel=1e-9)
    else:
        assert t == ref_t
    if ref_p == 0.0 and abs(ref_t) > 1e150:
        # scipy's stdtr returns 0 once t² overflows; the true tail is tiny but not zero.
        assert p <= 1e-100
    else:
        assert_close(p, ref_p)
    assert df >= 1.0 or np.var(a) == np.var(b) == 0.0


def test_welch_needs_two_values_each_side_and_some_variance() -> None:
    assert all(math.isnan(v) for v in welch_ttest([1.0], [1.0, 2.0]))
    t, _, p = welch_ttest([1.0, 1.0], [1.0, 1.0])
    assert math.isnan(t) and math.isnan(p)
    t, df, p = welch_ttest([2.0, 2.0, 2.0], [1.0, 1.0])  # constant, but different: certain
    assert t == math.inf and p == 0.0
    t, df, p = welch_ttest([1.0, 2.0, 3.0], [5.0, 5.0, 5.0], alternative="less")
    assert df == pytest.approx(2.0) and p == pytest.approx(float(stats.t.cdf(t, 2.0)), rel=1e-12)


# --- the daemon never loads scipy -------------------------------------------------------------


def test_daemon_side_modules_do_not_import_scipy() -> None:
    code = (
        "import sys, kloros_orchestrator.engine, kloros_orchestrator.measure.stats, "
        "kloros_orchestrator.measure.packs\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"
