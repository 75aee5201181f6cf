"""Per-stressor throughput: a regime's throughput term is the geometric mean of per-stressor ratios,
with the summed throughput as the fallback; packs keep each stressor's mean; intervals resample trials."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kloros_orchestrator.measure.packs import PackContext, build_pack, load_pack, round_score, write_pack
from kloros_orchestrator.measure.scoring import (
    score_candidate,
    score_regime,
    score_regime_array,
    stressor_ratio,
    stressor_ratio_array,
)
from kloros_orchestrator.measure.stats import paired_score_ci, score_ci
from kloros_orchestrator.model import P95, THROUGHPUT, TrialResult

# A mixed regime: the cpu stressor's rate dwarfs the vm stressor's, as on a real host.
BASE_RATES = {"cpu": 100_000.0, "vm": 1_000.0}


def test_the_geometric_mean_weighs_every_stressor_equally() -> None:
    cand = {"cpu": 100_000.0, "vm": 1_500.0}  # only the slow stressor gains, by 50 %
    assert stressor_ratio(cand, BASE_RATES) == pytest.approx(math.sqrt(1.5))
    summed = {THROUGHPUT: sum(cand.values())}, {THROUGHPUT: sum(BASE_RATES.values())}
    by_sum = score_regime(*summed)
    by_stressor = score_regime(*summed, cand_stressors=cand, base_stressors=BASE_RATES)
    assert by_sum == pytest.approx(500 / 101_000)  # the sum hardly notices
    assert by_stressor == pytest.approx(math.sqrt(1.5) - 1.0)


@pytest.mark.parametrize(
    "cand",
    [
        {},  # a command workload: no stressors
        {"cpu": 100_000.0},  # a different set of stressors
        {"cpu": 100_000.0, "vm": 1_000.0, "hdd": 5.0},
        {"cpu": 100_000.0, "vm": 0.0},  # no positive rate: no ratio
        {"cpu": math.nan, "vm": 1_000.0},
    ],
)
def test_without_comparable_stressors_the_summed_throughput_is_used(cand: dict[str, float]) -> None:
    assert stressor_ratio(cand, BASE_RATES) is None
    kpis = {THROUGHPUT: 110.0, P95: 50.0}, {THROUGHPUT: 100.0, P95: 50.0}
    assert score_regime(*kpis, cand_stressors=cand, base_stressors=BASE_RATES) == pytest.approx(0.1)


def test_array_variants_match_the_scalar_formula() -> None:
    cand = {"cpu": np.array([90_000.0, 120_000.0]), "vm": np.array([1_200.0, 800.0])}
    base = {"cpu": np.array([100_000.0, 100_000.0]), "vm": np.array([1_000.0, 1_000.0])}
    ratios = stressor_ratio_array(cand, base)
    for i in range(2):
        at_i = {s: float(c[i]) for s, c in cand.items()}, {s: float(b[i]) for s, b in base.items()}
        one = stressor_ratio(*at_i)
        assert one is not None and ratios[i] == pytest.approx(one)
    kpis = {THROUGHPUT: np.array([1.0, 1.0]), P95: np.array([60.0, 50.0])}
    base_kpis = {THROUGHPUT: np.array([1.0, 1.0]), P95: np.array([50.0, 50.0])}
    arr = score_regime_array(kpis, base_kpis, (THROUGHPUT, P95), perf_ratio=ratios)
    assert arr == pytest.approx(ratios - 1.0 - 0.2 * np.array([0.2, 0.0]))
    with pytest.raises(ValueError):
        stressor_ratio_array({"cpu": np.ones(2)}, {"vm": np.ones(2)})


def test_score_candidate_takes_stressor_means_per_regime() -> None:
    cand_means = {"mixed": {THROUGHPUT: 101_500.0}, "stress": {THROUGHPUT: 110.0}}
    base_means = {"mixed": {THROUGHPUT: 101_000.0}, "stress": {THROUGHPUT: 100.0}}
    score = score_candidate(
        cand_means,
        base_means,
        cand_stressors={"mixed": {"cpu": 100_000.0, "vm": 1_500.0}},
        base_stressors={"mixed": BASE_RATES},
    )
    assert score == pytest.approx(((math.sqrt(1.5) - 1.0) + 0.1) / 2)


def trial(regime: str, rates: dict[str, float], *, p95: float = 50.0, ok: bool = True) -> TrialResult:
    kpis = {THROUGHPUT: sum(rates.values()) if rates else 100.0, P95: p95}
    return TrialResult(
        domain="cpu", cand_id="c", regime=regime, ok=ok, kpis=kpis if ok else {}, stressor_ops=rates
    )


def test_a_race_round_scores_per_stressor_and_falls_back_for_a_trial_without_rates() -> None:
    cand = trial("mixed", {"cpu": 100_000.0, "vm": 1_500.0})
    stock = trial("mixed", BASE_RATES)
    assert round_score({"mixed": cand}, {"mixed": stock}) == pytest.approx(math.sqrt(1.5) - 1.0)
    old = TrialResult(domain="cpu", cand_id="stock", regime="mixed", ok=True, kpis=dict(stock.kpis))
    assert round_score({"mixed": cand}, {"mixed": old}) == pytest.approx(500 / 101_000)


def context(**over: Any) -> PackContext:
    kw: dict[str, Any] = {
        "run_id": "r1",
        "domain": "cpu",
        "generation": 0,
        "baseline_ids": {"mixed": "b-mixed", "stress": "b-stress"},
        "expected_kpis": (THROUGHPUT, P95),
        "missing_reasons": {},
        "min_trials": 2,
        "code_hash": "abc",
        "n_boot": 500,
        "stress_ng_version": "0.15.06",
    }
    kw.update(over)
    return PackContext(**kw)


def test_a_pack_keeps_each_stressors_mean_and_scores_with_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)

    def rates(vm: float) -> dict[str, float]:  # the cpu stressor's noise swamps the sum
        return {"cpu": 100_000.0 * (1 + 0.05 * rng.standard_normal()), "vm": vm * (1 + 0.01 * rng.normal())}

    arm = {"mixed": [trial("mixed", rates(1_100.0)) for _ in range(6)]}
    stock = {"mixed": [trial("mixed", rates(1_000.0)) for _ in range(6)]}
    p = build_pack(
        context(), cand_id="g0c1", spica_id="s", genome={"w": 1}, arm=arm, stock=stock,
        unsafe_reasons=[], rng=np.random.default_rng(1),
    )  # fmt: skip
    cand_means = {s: float(np.mean([t.stressor_ops[s] for t in arm["mixed"]])) for s in BASE_RATES}
    stock_means = {s: float(np.mean([t.stressor_ops[s] for t in stock["mixed"]])) for s in BASE_RATES}
    assert p.stressor_throughput == {"mixed": pytest.approx(cand_means)}
    assert p.current_stressor_throughput == {"mixed": pytest.approx(stock_means)}
    expected = math.sqrt(math.prod(cand_means[s] / stock_means[s] for s in BASE_RATES)) - 1.0
    assert p.aggregate.score_v2 == pytest.approx(expected)  # p95 equal on both sides
    assert p.aggregate.improves_over_baseline  # +10 % on vm is seen through the cpu stressor's noise
    assert THROUGHPUT in p.aggregate.means  # the summed KPI stays in the pack for the contract
    path = tmp_path / "p.json"
    write_pack(path, p)
    assert load_pack(path) == p


def test_a_regime_with_uneven_stressor_records_is_absent_and_scored_on_the_sum() -> None:
    arm = {"mixed": [trial("mixed", {"cpu": 100_000.0, "vm": 1_500.0}), trial("mixed", {})]}
    stock = {"mixed": [trial("mixed", BASE_RATES), trial("mixed", BASE_RATES)]}
    p = build_pack(
        context(min_trials=1), cand_id="g0c1", spica_id="s", genome={"w": 1}, arm=arm, stock=stock,
        unsafe_reasons=[], rng=np.random.default_rng(1),
    )  # fmt: skip
    assert p.stressor_throughput == {} and p.current_stressor_throughput == {"mixed": BASE_RATES}
    cand_sum = (101_500.0 + 100.0) / 2
    assert p.aggregate.score_v2 == pytest.approx(cand_sum / 101_000.0 - 1.0)


def test_the_interval_resamples_trials_then_takes_each_stressors_mean() -> None:
    # Two candidate trials whose stressors move in opposite directions: resampling trials gives
    # per-stressor means (1, 4), (4, 1) or (2.5, 2.5), so ratios 2 or 2.5 against a (1, 1) baseline.
    # Resampling each stressor on its own would also give (1, 1) and (4, 4): ratios 1 and 4.
    cand = {"mixed": {THROUGHPUT: [5.0, 5.0]}}
    base = {"mixed": {THROUGHPUT: [2.0]}}
    cand_s = {"mixed": {"cpu": [1.0, 4.0], "vm": [4.0, 1.0]}}
    base_s = {"mixed": {"cpu": [1.0], "vm": [1.0]}}
    ci = score_ci(
        cand, base, rng=np.random.default_rng(0), n_boot=400, cand_stressors=cand_s, base_stressors=base_s
    )
    assert ci == pytest.approx((1.0, 1.5))


def test_a_gain_of_the_slow_stressor_is_lost_in_the_sum_but_not_per_stressor() -> None:
    spread = np.linspace(-1.0, 1.0, 8)

    def side(vm: float) -> dict[str, Any]:  # the same ±5 % spread of the fast stressor on both sides
        return {"cpu": 100_000.0 * (1 + 0.05 * spread), "vm": vm + 5 * spread[::-1]}

    cand_s, base_s = {"mixed": side(1_100.0)}, {"mixed": side(1_000.0)}
    cand = {"mixed": {THROUGHPUT: cand_s["mixed"]["cpu"] + cand_s["mixed"]["vm"]}}
    base = {"mixed": {THROUGHPUT: base_s["mixed"]["cpu"] + base_s["mixed"]["vm"]}}
    by_sum = score_ci(cand, base, rng=np.random.default_rng(1), n_boot=2000)
    by_stressor = score_ci(
        cand, base, rng=np.random.default_rng(1), n_boot=2000, cand_stressors=cand_s, base_stressors=base_s
    )
    assert by_sum[0] < 0.0 < by_sum[1]
    assert 0.0 < by_stressor[0] < math.sqrt(1.1) - 1.0 < by_stressor[1]


def test_paired_interval_sees_a_consistent_gain_that_varies_between_pairs() -> None:
    # +3 % in every pair, while the pairs themselves differ by up to ±20 % (drift, neighbours).
    rng = np.random.default_rng(11)
    n = 12
    level = 1.0 + rng.uniform(-0.2, 0.2, n)
    base = {"stress": {THROUGHPUT: 1_000.0 * level * (1 + 0.003 * rng.standard_normal(n))}}
    cand = {"stress": {THROUGHPUT: 1_030.0 * level * (1 + 0.003 * rng.standard_normal(n))}}
    paired = paired_score_ci(cand, base, rng=np.random.default_rng(2), n_boot=2000)
    unpaired = score_ci(cand, base, rng=np.random.default_rng(2), n_boot=2000)
    assert paired[0] > 0.0 and paired[1] < 0.06
    assert unpaired[0] < 0.0 < unpaired[1]


def test_paired_interval_needs_one_value_per_pair() -> None:
    with pytest.raises(ValueError, match="one value per pair"):
        paired_score_ci(
            {"stress": {THROUGHPUT: [1.0, 2.0, 3.0]}}, {"stress": {THROUGHPUT: [1.0, 2.0]}},
            rng=np.random.default_rng(0),
        )  # fmt: skip
