from __future__ import annotations

import numpy as np
import pytest

from kloros_orchestrator.measure.scoring import (
    OVERALL,
    aggregate_means,
    improves_over_baseline,
    score_candidate,
    score_regime,
    score_regime_array,
    score_terms,
    score_v2,
)
from kloros_orchestrator.model import P50, P95, TEMP, THROUGHPUT, WATTS

BASE = {THROUGHPUT: 1000.0, P95: 50.0, WATTS: 20.0}


def test_full_formula() -> None:
    cand = {THROUGHPUT: 1100.0, P95: 60.0, WATTS: 18.0}
    expected = 0.1 - 0.2 * (60 / 50 - 1) - 0.1 * (18 / 20 - 1)
    assert score_regime(cand, BASE) == pytest.approx(expected)


def test_identical_kpis_score_zero() -> None:
    assert score_regime(BASE, BASE) == 0.0


def test_terms_with_absent_kpi_are_dropped_on_either_side() -> None:
    cand = {THROUGHPUT: 1100.0, P95: 60.0}
    assert score_regime(cand, BASE) == pytest.approx(0.1 - 0.2 * 0.2)
    base_no_watts = {THROUGHPUT: 1000.0, P95: 50.0}
    assert score_regime({**cand, WATTS: 1.0}, base_no_watts) == pytest.approx(0.1 - 0.2 * 0.2)
    # KPIs outside the formula do not count.
    assert score_regime({THROUGHPUT: 1000.0, TEMP: 99.0, P50: 1.0}, {THROUGHPUT: 1000.0, TEMP: 40.0}) == 0.0


def test_no_throughput_means_no_score() -> None:
    assert score_regime({P95: 10.0}, BASE) is None
    assert score_regime({THROUGHPUT: 10.0}, {P95: 10.0}) is None
    # A zero baseline throughput cannot be a ratio denominator.
    assert score_regime({THROUGHPUT: 10.0}, {THROUGHPUT: 0.0}) is None
    assert score_terms({THROUGHPUT: 10.0, P95: 3.0}, {THROUGHPUT: 5.0, P95: 0.0}) == (THROUGHPUT,)


def test_score_v2_is_mean_over_scorable_regimes() -> None:
    assert score_v2([0.1, None, -0.3]) == pytest.approx(-0.1)
    assert score_v2([None, None]) is None
    assert score_v2([]) is None


def test_score_candidate_from_regime_means() -> None:
    cand = {
        "normal": {THROUGHPUT: 1100.0},
        "stress": {THROUGHPUT: 700.0},
        "idle": {P95: 1.0},  # cannot be scored: ignored, not counted as 0
        "mixed": {THROUGHPUT: 5000.0},  # no baseline for this regime
    }
    base = {"normal": {THROUGHPUT: 1000.0}, "stress": {THROUGHPUT: 1000.0}, "idle": {P95: 1.0}}
    assert score_candidate(cand, base) == pytest.approx((0.1 - 0.3) / 2)
    assert score_v2(cand, base) == score_candidate(cand, base)  # the two-argument form
    with pytest.raises(TypeError, match="baseline"):
        score_v2(cand)  # type: ignore[arg-type]
    assert score_candidate({"idle": {P95: 1.0}}, base) is None
    assert score_candidate({}, base) is None


def test_array_variant_matches_scalar() -> None:
    rng = np.random.default_rng(0)
    cand = {k: rng.uniform(0.5, 2.0, 50) * v for k, v in BASE.items()}
    base = {k: rng.uniform(0.5, 2.0, 50) * v for k, v in BASE.items()}
    terms = (THROUGHPUT, P95, WATTS)
    out = score_regime_array(cand, base, terms)
    assert out.shape == (50,)
    for i in (0, 17, 49):
        scalar = score_regime({k: float(cand[k][i]) for k in terms}, {k: float(base[k][i]) for k in terms})
        assert out[i] == pytest.approx(scalar)
    with pytest.raises(ValueError, match="at least one term"):
        score_regime_array(cand, base, ())


def test_improves_over_baseline_needs_positive_lower_bound() -> None:
    assert improves_over_baseline((0.01, 0.2))
    assert not improves_over_baseline((0.0, 0.2))
    assert not improves_over_baseline((-0.01, 0.2))
    assert not improves_over_baseline(None)


def test_aggregate_means() -> None:
    per_regime = {
        "normal": {THROUGHPUT: [100.0, 200.0], P95: [10.0]},
        "stress": {THROUGHPUT: [50.0], WATTS: []},
    }
    assert aggregate_means(per_regime) == {
        THROUGHPUT: {"normal": 150.0, "stress": 50.0, OVERALL: 100.0},
        P95: {"normal": 10.0, OVERALL: 10.0},
    }
    with pytest.raises(ValueError, match="reserved"):
        aggregate_means({OVERALL: {THROUGHPUT: [1.0]}})
