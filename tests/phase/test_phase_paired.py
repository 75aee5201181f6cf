"""PHASE's variant score: its interval is paired over the QTIME pairs, and its throughput term is
per-stressor where the trials carry stressor rates."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from kloros_orchestrator.measure.stats import score_ci
from kloros_orchestrator.model import P95, STOCK_ARM, THROUGHPUT, TrialResult
from kloros_orchestrator.phase.analysis import (
    DomainData,
    PhaseAnalysis,
    TrialRecord,
    VariantInfo,
    analyze_domain,
)
from kloros_orchestrator.phase.evidence import evaluate_variant, kpi_arrays
from kloros_orchestrator.phase.qtime import QtimeSpec, build_plan
from kloros_orchestrator.phase.results import VariantSummary

STOCK = {"workers": 2}
# (variant, pair factor, noise) -> (KPIs, stressor rates) of one trial
Make = Callable[[str, float, float], tuple[dict[str, float], dict[str, float]]]


def _data(
    make: Make, *, epochs: int = 2, replicas: int = 4, spread: float = 0.2, seed: int = 0
) -> DomainData:
    """Trials from the real QTIME plan; every (epoch, slice, replica) pair shares a factor drawn in
    ±``spread`` (the machine's state in that stretch), and each trial has 0.3 % noise of its own."""
    rng = np.random.default_rng(seed)
    plan = build_plan({"cpu": [STOCK_ARM, "v"]}, QtimeSpec(epochs, 4, replicas), seed=seed)
    factor: dict[tuple[int, str, int], float] = {}
    trials: list[TrialRecord] = []
    for slot in plan:
        key = (slot.epoch, slot.regime, slot.replica)
        f = factor.setdefault(key, 1.0 + float(rng.uniform(-spread, spread)))
        kpis, rates = make(slot.variant_id, f, 1.0 + 0.003 * float(rng.standard_normal()))
        trials.append(
            TrialRecord(
                slot.epoch, slot.regime, slot.variant_id, ok=True, kpis=kpis, replica=slot.replica,
                stressor_ops=rates,
            )
        )  # fmt: skip
    variants = {"v": VariantInfo(genome={"workers": 4}, spica_id="spica-v", cand_id="v")}
    return DomainData(stock=dict(STOCK), variants=variants, trials=trials)


def _variant(result: PhaseAnalysis) -> VariantSummary:
    variants = result.metrics["cpu"].variants
    assert variants is not None
    return variants["v"]


def plus_three_percent(vid: str, f: float, noise: float) -> tuple[dict[str, float], dict[str, float]]:
    gain = 1.03 if vid == "v" else 1.0
    return {THROUGHPUT: 1000.0 * gain * f * noise, P95: 100.0}, {}


def test_a_consistent_gain_in_pairs_that_vary_is_promoted_paired_and_missed_unpaired() -> None:
    data = _data(plus_three_percent)
    result = analyze_domain("cpu", data, seed=1)
    summary = _variant(result)
    assert summary.score_v2 == pytest.approx(0.03, abs=0.01)
    assert summary.score_ci95 is not None
    assert 0.0 < summary.score_ci95[0] <= 0.03 <= summary.score_ci95[1] < 0.06
    assert [p.cand_id for p in result.promoted_variants] == ["v"]
    # The same trials as two independent groups: the ±20 % between pairs swamps the +3 %.
    cand = kpi_arrays(t for t in data.trials if t.variant_id == "v")
    base = kpi_arrays(t for t in data.trials if t.variant_id == STOCK_ARM)
    unpaired = score_ci(cand, base, rng=np.random.default_rng(1), n_boot=2000)
    assert unpaired[0] < 0.0 < unpaired[1]


def test_no_gain_in_pairs_that_vary_gets_an_interval_around_zero() -> None:
    def same(vid: str, f: float, noise: float) -> tuple[dict[str, float], dict[str, float]]:
        return {THROUGHPUT: 1000.0 * f * noise, P95: 100.0}, {}

    result = analyze_domain("cpu", _data(same, seed=3), seed=1)
    ci = _variant(result).score_ci95
    assert ci is not None and ci[0] < 0.0 < ci[1] and ci[1] - ci[0] < 0.02
    assert not result.promoted_variants


def test_one_pair_per_regime_gives_no_interval() -> None:
    result = analyze_domain("cpu", _data(plus_three_percent, epochs=1, replicas=1), seed=1)
    summary = _variant(result)
    assert summary.score_v2 is not None and summary.score_ci95 is None
    assert not result.promoted_variants


def mixed_vm_gain(with_rates: bool) -> Make:
    def make(vid: str, f: float, noise: float) -> tuple[dict[str, float], dict[str, float]]:
        rates = {"cpu": 100_000.0 * f * noise, "vm": 1_000.0 * f * (1.1 if vid == "v" else 1.0)}
        return {THROUGHPUT: sum(rates.values()), P95: 100.0}, rates if with_rates else {}

    return make


def test_the_variant_score_is_per_stressor_and_falls_back_to_the_sum_for_records_without_rates() -> None:
    per_stressor = analyze_domain("cpu", _data(mixed_vm_gain(True), spread=0.0), seed=1)
    summed = analyze_domain("cpu", _data(mixed_vm_gain(False), spread=0.0), seed=1)
    # Every regime has the cpu + vm workload here: +10 % on vm is sqrt(1.1) - 1 per stressor...
    assert _variant(per_stressor).score_v2 == pytest.approx(math.sqrt(1.1) - 1, abs=0.003)
    # ... and 100/101000 of the sum.
    assert _variant(summed).score_v2 == pytest.approx(100 / 101_000, abs=0.003)


def test_a_trial_record_keeps_the_trials_stressor_rates() -> None:
    tr = TrialResult(domain="cpu", cand_id="c", regime="mixed", ok=True, kpis={THROUGHPUT: 3.0},
                     stressor_ops={"cpu": 2.0, "vm": 1.0})  # fmt: skip
    rec = TrialRecord.from_trial(tr, epoch=0, variant_id="c", replica=0)
    assert rec.stressor_ops == {"cpu": 2.0, "vm": 1.0}
    assert TrialRecord(0, "idle", "c", ok=True).stressor_ops == {}  # older records: the sum is scored


def _records(
    vid: str, tp: float, p95: float, seed: int, drop_p95_at: tuple[int, int] | None = None
) -> list[TrialRecord]:
    rng = np.random.default_rng(seed)
    out: list[TrialRecord] = []
    for epoch in range(2):
        for replica in range(3):
            k = {
                THROUGHPUT: tp * (1 + 0.005 * rng.standard_normal()),
                P95: p95 * (1 + 0.02 * rng.standard_normal()),
            }
            if drop_p95_at == (epoch, replica):
                del k[P95]
            out.append(
                TrialRecord(
                    epoch=epoch,
                    regime="normal",
                    variant_id=vid,
                    ok=True,
                    kpis=k,
                    replica=replica,
                    stressor_ops={"cpu": k[THROUGHPUT]},
                )
            )
    return out


@pytest.mark.parametrize("drop", [None, (1, 2)])
def test_a_pair_missing_a_term_is_dropped_from_the_interval_not_the_term(
    drop: tuple[int, int] | None,
) -> None:
    # +1 % throughput but +60 % p95: the score is about 0.01 - 0.2 * 0.6 = -0.11, clearly below 0. A
    # baseline trial without p95 must not make the interval forget the latency term (it did: the
    # interval then reached +0.015 and the variant was no longer flagged).
    cand = _records("v1", 1010.0, 160.0, seed=1)
    base = _records(STOCK_ARM, 1000.0, 100.0, seed=2, drop_p95_at=drop)
    info = VariantInfo(genome={}, spica_id="s", cand_id="v1")
    v = evaluate_variant("d", "v1", info, cand, base, seed=0, n_boot=2000, level=0.95)
    assert v.score is not None and v.score == pytest.approx(-0.11, abs=0.01)
    assert v.ci is not None and v.ci[1] < -0.08
