"""Distribution functions for the daemon's tests and intervals, in pure Python/numpy (no scipy).

Why: ``import scipy.stats`` alone adds ~70 MB to a process, and the search loop needs only a
handful of values per tournament — a Student t tail for racing, a t quantile and a normal CDF for
the expanded bootstrap, an F tail and a Spearman test for knob dropping, a Welch test.

Everything rests on the regularized incomplete beta function ``I_x(a, b)``, evaluated as in
Numerical Recipes (§6.4): the prefactor ``x^a (1−x)^b / (a B(a, b))`` in logarithms, times the
continued fraction evaluated by the modified Lentz method, on whichever side of
``x = (a+1)/(a+b+2)`` it converges quickly (``I_x(a, b) = 1 − I_{1−x}(b, a)`` on the other). Both
``x`` and ``1 − x`` — and their logarithms — are formed from the odds ``(1−x)/x`` directly, so a
tail is never computed as ``1 −`` something close to 1 and a huge t or F statistic does not
overflow. ``log B(a, b)`` uses Stirling's series for large arguments, so that it does not lose
digits to the cancellation of ``lgamma(a) + lgamma(b) − lgamma(a+b)``.

Accuracy (df in [1, 1e4], values down to 1e-300; ``tests/measure/test_measure_distributions.py``
holds every function to 1e-8 against scipy, and against closed forms where scipy is not exact):

* Student t CDF/SF: relative error < 4e-13 against scipy and against 40-digit references;
* F SF and ``betainc``: < 5e-12. The error is that of the prefactor's logarithm,
  ``a·log x + b·log(1−x) − log B(a, b)``, about ``1e-16 · (a + b)``, so it grows with the df;
* t quantile: < 2e-13 against scipy; ``t_cdf(t_ppf(p))`` returns p to 2e-12 for p ≥ 1e-300, and
  near the median t keeps its relative accuracy (``0.5 − p`` is exact there);
* Spearman p-value < 2e-12 (rho is the same ``corrcoef`` of average ranks), Welch p < 1e-13.

scipy itself is off in places these functions are not: its F tail below ~1e-270 (0.7 % at 3e-293),
its t CDF once t² overflows (0 instead of ~1e-291), ``betainc`` at subnormal x, and ``t.ppf`` in
far tails and near the median (relative error up to 1e-10 in t).

Argument order follows ``scipy.stats``: the variate first, then the degrees of freedom.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "average_ranks",
    "betainc",
    "f_sf",
    "norm_cdf",
    "spearman",
    "t_cdf",
    "t_isf",
    "t_ppf",
    "t_sf",
    "welch_ttest",
]

FloatArray = npt.NDArray[np.float64]
Alternative = Literal["two-sided", "greater", "less"]
_Step = Callable[[float], tuple[float, float]]  # s -> (value, derivative) of an increasing function

_EPS: Final = 1e-15  # continued fraction: stop when a convergent changes by less than this
_TINY: Final = 1e-300  # Lentz: stand-in for a zero denominator
_MAX_TERMS: Final = 100_000  # ~ sqrt(max(a, b)) terms are needed; this is far beyond any use here
_LOG_MIN: Final = math.log(5e-324)  # smallest positive float's log: lower end of a quantile search
_LOG_MAX: Final = math.log(1.7e308)
_HALF_LOG_2PI: Final = 0.5 * math.log(2.0 * math.pi)
# Stirling series of log Γ(x) − [(x − ½)·log x − x + ½·log 2π]: B_2k / (2k (2k − 1)), k = 1..8.
# Eight terms leave an error below 3e-17 for x ≥ 10.
_STIRLING: Final = (
    1.0 / 12.0,
    -1.0 / 360.0,
    1.0 / 1260.0,
    -1.0 / 1680.0,
    1.0 / 1188.0,
    -691.0 / 360360.0,
    1.0 / 156.0,
    -3617.0 / 122400.0,
)


# --- incomplete beta --------------------------------------------------------------------------


def _stirling_correction(x: float) -> float:
    """log Γ(x) − [(x − ½)·log x − x + ½·log 2π], for x ≥ 10."""
    inv2 = 1.0 / (x * x)
    total = 0.0
    for coef in reversed(_STIRLING):
        total = total * inv2 + coef
    return total / x


def _log_beta(a: float, b: float) -> float:
    """log B(a, b) for a, b > 0, without the cancellation of three large ``lgamma`` values."""
    p, q = min(a, b), max(a, b)
    if q < 10.0:
        return math.lgamma(p) + math.lgamma(q) - math.lgamma(p + q)
    corr = _stirling_correction(q) - _stirling_correction(p + q)
    ratio = p / (p + q)
    if p >= 10.0:
        corr += _stirling_correction(p)
        return (
            -0.5 * math.log(q) + _HALF_LOG_2PI + corr + (p - 0.5) * math.log(ratio) + q * math.log1p(-ratio)
        )
    return math.lgamma(p) + corr + p - p * math.log(p + q) + (q - 0.5) * math.log1p(-ratio)


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (Numerical Recipes ``betacf``), by modified Lentz."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _MAX_TERMS + 1):
        m2 = 2.0 * m
        for aa in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + aa / c
            c = c if abs(c) > _TINY else _TINY
            delta = d * c
            h *= delta
        if abs(delta - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta: continued fraction did not converge (a={a}, b={b}, x={x})")


def _beta_lower(a: float, b: float, x: float, log_x: float, log_y: float) -> float:
    """I_x(a, b) straight from the continued fraction; accurate for x < (a+1)/(a+b+2)."""
    fraction = _beta_fraction(a, b, x)
    return math.exp(a * log_x + b * log_y - _log_beta(a, b) + math.log(fraction / a))


def _beta_tails(a: float, b: float, x: float, y: float, log_x: float, log_y: float) -> tuple[float, float]:
    """(I_x(a, b), 1 − I_x(a, b)) with y = 1 − x; whichever of the two is small is computed
    directly (never as 1 − something), so both keep their relative accuracy."""
    if log_x == -math.inf:
        return 0.0, 1.0
    if log_y == -math.inf:
        return 1.0, 0.0
    if x * (a + b + 2.0) < a + 1.0:
        lower = _beta_lower(a, b, x, log_x, log_y)
        return lower, 1.0 - lower
    upper = _beta_lower(b, a, y, log_y, log_x)
    return 1.0 - upper, upper


def _from_odds(log_u: float) -> tuple[float, float, float, float]:
    """x = 1/(1+u), y = u/(1+u) and their logarithms, from log u (u itself may over/underflow)."""
    if log_u > 0.0:
        e = math.exp(-log_u)
        l1 = math.log1p(e)
        return e / (1.0 + e), 1.0 / (1.0 + e), -log_u - l1, -l1
    e = math.exp(log_u)
    l1 = math.log1p(e)
    return 1.0 / (1.0 + e), e / (1.0 + e), -l1, log_u - l1


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 ≤ x ≤ 1 (else NaN)."""
    if not (a > 0.0 and b > 0.0 and 0.0 <= x <= 1.0) or math.isinf(a) or math.isinf(b):
        return math.nan
    y = 1.0 - x
    log_x = math.log(x) if x > 0.0 else -math.inf
    log_y = math.log1p(-x) if y > 0.0 else -math.inf
    return _beta_tails(a, b, x, y, log_x, log_y)[0]


# --- Student t ----------------------------------------------------------------------------------


def _t_parts(t: float, df: float) -> tuple[float, float]:
    """(P(T > |t|), P(0 < T < |t|)) for T ~ t(df); both accurate to their own relative precision."""
    if t == 0.0:
        return 0.5, 0.0
    if math.isinf(t):
        return 0.0, 0.5
    log_u = 2.0 * math.log(abs(t)) - math.log(df)  # odds t²/df of y = t²/(df+t²) to x = df/(df+t²)
    x, y, log_x, log_y = _from_odds(log_u)
    tail2, center2 = _beta_tails(0.5 * df, 0.5, x, y, log_x, log_y)
    return 0.5 * tail2, 0.5 * center2


def _valid_df(df: float) -> bool:
    return df > 0.0 and not math.isinf(df)


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` > 0 degrees of freedom (real-valued df allowed)."""
    if math.isnan(t) or not _valid_df(df):
        return math.nan
    tail, center = _t_parts(t, df)
    return tail if t >= 0.0 else 0.5 + center


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` > 0 degrees of freedom."""
    return t_sf(-t, df)


def _t_log_pdf(t: float, df: float) -> float:
    log_u = 2.0 * math.log(abs(t)) - math.log(df) if t != 0.0 else -math.inf
    log1p_u = log_u + math.log1p(math.exp(-log_u)) if log_u > 0.0 else math.log1p(math.exp(log_u))
    return -_log_beta(0.5 * df, 0.5) - 0.5 * math.log(df) - 0.5 * (df + 1.0) * log1p_u


def t_isf(q: float, df: float) -> float:
    """The t with P(T > t) = q (inverse survival function); ``t_isf(q) = -t_ppf(q)``.

    Closed forms for df = 1 and 2; otherwise safeguarded Newton in log t on the log of the tail
    probability (or, for q ≥ 0.25, of the central probability 0.5 − q, which is exact there), so
    neither q close to 0.5 nor a tail of 1e-300 loses relative precision.
    """
    if math.isnan(q) or not _valid_df(df) or not 0.0 <= q <= 1.0:
        return math.nan
    if q > 0.5:
        return -t_isf(1.0 - q, df)  # exact: 1 − q for q in [0.5, 1] is representable
    if q == 0.5:
        return 0.0
    if q == 0.0:
        return math.inf
    if df == 1.0:  # Cauchy
        return math.tan(math.pi * (0.5 - q)) if q > 0.25 else 1.0 / math.tan(math.pi * q)
    if df == 2.0:
        return (1.0 - 2.0 * q) / math.sqrt(2.0 * q * (1.0 - q))
    if q >= 0.25:
        target = math.log(0.5 - q)
        guess = (0.5 - q) / math.exp(_t_log_pdf(0.0, df))

        def step(s: float) -> tuple[float, float]:
            t = math.exp(s)
            center = _t_parts(t, df)[1]
            if center == 0.0:
                return -math.inf, math.inf
            return math.log(center) - target, t * math.exp(_t_log_pdf(t, df)) / center

    else:
        target = math.log(q)
        # heavy-tail asymptote P(T > t) ≈ t^-df · df^(df/2 − 1) / B(df/2, 1/2), never < 1
        log_guess = ((0.5 * df - 1.0) * math.log(df) - _log_beta(0.5 * df, 0.5) - target) / df
        guess = max(1.0, math.exp(min(log_guess, _LOG_MAX)))

        def step(s: float) -> tuple[float, float]:
            t = math.exp(s)
            tail = _t_parts(t, df)[0]
            if tail == 0.0:
                return math.inf, math.inf
            return target - math.log(tail), t * math.exp(_t_log_pdf(t, df)) / tail

    return math.exp(_solve_increasing(step, math.log(guess)))


def t_ppf(p: float, df: float) -> float:
    """The t with P(T ≤ t) = p (quantile function) for Student's t with ``df`` degrees of freedom."""
    return -t_isf(p, df)


def _solve_increasing(h: _Step, s0: float) -> float:
    """Root of an increasing function given as ``h(s) -> (value, derivative)``, in
    [log(5e-324), log(1.7e308)]: bracket outwards from ``s0``, then Newton, falling back to
    bisection whenever a step leaves the bracket. ±inf if the root lies beyond that range."""
    s = min(max(s0, _LOG_MIN), _LOG_MAX)
    value, slope = h(s)
    lo, hi = s, s
    width = 1.0
    while value != 0.0:  # expand geometrically from s0 until the sign changes
        probe = min(s + width, _LOG_MAX) if value < 0.0 else max(s - width, _LOG_MIN)
        probe_value, probe_slope = h(probe)
        if (probe_value < 0.0) == (value < 0.0):
            if probe in (_LOG_MIN, _LOG_MAX):
                return math.inf if probe == _LOG_MAX else -math.inf
            s, value, slope, width = probe, probe_value, probe_slope, 2.0 * width
            continue
        lo, hi = (s, probe) if value < 0.0 else (probe, s)
        break
    for _ in range(200):
        if value == 0.0:
            return s
        if value < 0.0:
            lo = s
        else:
            hi = s
        new = s - value / slope if slope > 0.0 and math.isfinite(slope) else math.nan
        if not lo < new < hi:
            new = 0.5 * (lo + hi)
        if abs(new - s) <= 4e-16 * max(1.0, abs(s)) or hi - lo <= 4e-16 * max(1.0, abs(lo), abs(hi)):
            return new
        s = new
        value, slope = h(s)
    return s


# --- normal, F ----------------------------------------------------------------------------------


def norm_cdf(x: float) -> float:
    """Standard normal CDF Φ(x), accurate in both tails (erfc, never 1 − erf)."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def f_sf(f: float, dfn: float, dfd: float) -> float:
    """P(F > f) for the F distribution with ``dfn`` (numerator) and ``dfd`` (denominator) df."""
    if math.isnan(f) or not (_valid_df(dfn) and _valid_df(dfd)):
        return math.nan
    if f <= 0.0:
        return 1.0
    if math.isinf(f):
        return 0.0
    # x = dfd/(dfd + dfn·f): P(F > f) = I_x(dfd/2, dfn/2); the odds (1−x)/x are dfn·f/dfd.
    x, y, log_x, log_y = _from_odds(math.log(dfn) + math.log(f) - math.log(dfd))
    return _beta_tails(0.5 * dfd, 0.5 * dfn, x, y, log_x, log_y)[0]


# --- tests on samples ---------------------------------------------------------------------------


def _t_p_value(t: float, df: float, alternative: Alternative) -> float:
    if alternative == "two-sided":
        return 2.0 * t_sf(abs(t), df)
    if alternative == "greater":
        return t_sf(t, df)
    if alternative == "less":
        return t_cdf(t, df)
    raise ValueError(f"alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}")


def average_ranks(values: npt.ArrayLike) -> FloatArray:
    """Ranks 1..n of a 1-D array, ties sharing their average rank (``rankdata(method="average")``)."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(arr, kind="mergesort")
    ordered = arr[order]
    starts = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    bounds = np.flatnonzero(np.concatenate([starts, [True]]))  # first index of each tie group, then n
    group = np.cumsum(starts) - 1
    ranks = np.empty(arr.size, dtype=np.float64)
    ranks[order] = ((bounds[:-1] + bounds[1:] + 1) / 2.0)[group]
    return ranks


def spearman(
    x: npt.ArrayLike, y: npt.ArrayLike, *, alternative: Alternative = "two-sided"
) -> tuple[float, float]:
    """Spearman's rank correlation rho and its p-value, as ``scipy.stats.spearmanr`` computes them.

    rho is the Pearson correlation of average ranks; the p-value uses the t approximation
    ``t = rho·sqrt((n−2) / (1 − rho²))`` with n − 2 df. (nan, nan) when an input is constant or
    has fewer than two values; the p-value is nan for n = 2.
    """
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    if a.size != b.size:
        raise ValueError(f"spearman: inputs differ in length ({a.size} vs {b.size})")
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan, math.nan
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return math.nan, math.nan
    rho = float(np.corrcoef(average_ranks(a), average_ranks(b))[0, 1])
    dof = a.size - 2
    if dof == 0:
        return rho, math.nan
    denom = (rho + 1.0) * (1.0 - rho)
    t = math.copysign(math.inf, rho) if denom <= 0.0 else rho * math.sqrt(max(dof / denom, 0.0))
    return rho, _t_p_value(t, dof, alternative)


def welch_ttest(
    a: npt.ArrayLike, b: npt.ArrayLike, *, alternative: Alternative = "two-sided"
) -> tuple[float, float, float]:
    """Welch's unequal-variance t-test of mean(a) vs mean(b): (t, df, p-value).

    df is the Welch–Satterthwaite approximation; matches ``scipy.stats.ttest_ind(a, b,
    equal_var=False, alternative=...)``. Needs two values on each side (else nan); t and p are nan
    when neither side varies.
    """
    arr_a = np.asarray(a, dtype=np.float64).ravel()
    arr_b = np.asarray(b, dtype=np.float64).ravel()
    n1, n2 = arr_a.size, arr_b.size
    if n1 < 2 or n2 < 2:
        return math.nan, math.nan, math.nan
    vn1 = float(np.var(arr_a, ddof=1)) / n1
    vn2 = float(np.var(arr_b, ddof=1)) / n2
    denom_df = vn1**2 / (n1 - 1) + vn2**2 / (n2 - 1)
    df = (vn1 + vn2) ** 2 / denom_df if denom_df > 0.0 else 1.0  # df is moot when nothing varies
    diff = float(np.mean(arr_a)) - float(np.mean(arr_b))
    se = math.sqrt(vn1 + vn2)
    if se == 0.0 and diff == 0.0:
        return math.nan, df, math.nan
    t = diff / se if se > 0.0 else math.copysign(math.inf, diff)
    return t, df, _t_p_value(t, df, alternative)
