from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from kloros_orchestrator.model import P50, P95, STOCK_ARM, THROUGHPUT, Genome, TrialResult
from kloros_orchestrator.phase.analysis import (
    DomainData,
    PhaseData,
    TrialRecord,
    VariantInfo,
    analyze_domain,
    analyze_phase,
    build_results,
)
from kloros_orchestrator.phase.qtime import QtimeSpec, build_plan
from kloros_orchestrator.phase.results import Qtime, load_results, write_results

STOCK: Genome = {"workers": 2, "swappiness": 60, "sched": "other"}
SPACE = {
    "workers": {"type": "int", "low": 1, "high": 8},
    "swappiness": {"type": "int", "low": 0, "high": 100},
    "sched": {"type": "choice", "choices": ["other", "batch", "fifo"]},
}
BASE_KPIS = {THROUGHPUT: 1000.0, P95: 100.0, P50: 40.0}

# variant id -> (knob changes from stock, KPI multipliers applied in every regime)
Effects = Mapping[str, tuple[Genome, Mapping[str, float]]]


def _domain(
    effects: Effects,
    *,
    epochs: int = 2,
    replicas: int = 4,
    noise: float = 0.005,
    seed: int = 0,
    breach: Mapping[str, str] | None = None,
    fail: Mapping[str, int] | None = None,
    epoch_multiplier: Mapping[tuple[str, int], float] | None = None,
) -> DomainData:
    """Synthetic PHASE data generated from the real QTIME plan, with multiplicative noise."""
    rng = np.random.default_rng(seed)
    plan = build_plan({"cpu": [STOCK_ARM, *effects]}, QtimeSpec(epochs, 4, replicas), seed=seed)
    trials: list[TrialRecord] = []
    failures_left = dict(fail or {})
    breached: set[str] = set()
    for slot in plan:
        mult = effects[slot.variant_id][1] if slot.variant_id in effects else {}
        extra = (epoch_multiplier or {}).get((slot.variant_id, slot.epoch), 1.0)
        kpis = {
            k: v
            * mult.get(k, 1.0)
            * (extra if k == THROUGHPUT else 1.0)
            * (1.0 + noise * rng.standard_normal())
            for k, v in BASE_KPIS.items()
        }
        if failures_left.get(slot.variant_id, 0) > 0:
            failures_left[slot.variant_id] -= 1
            trials.append(
                TrialRecord(slot.epoch, slot.regime, slot.variant_id, ok=False, failure="stress-ng exit 3")
            )
            continue
        cap = None
        if (
            breach
            and slot.variant_id in breach
            and slot.variant_id not in breached
            and slot.regime == "stress"
        ):
            breached.add(slot.variant_id)
            cap = breach[slot.variant_id]
        trials.append(
            TrialRecord(
                slot.epoch,
                slot.regime,
                slot.variant_id,
                ok=cap is None,
                kpis=kpis,
                cap_breach=cap,
                replica=slot.replica,
            )
        )
    variants = {
        vid: VariantInfo(genome={**STOCK, **changes}, spica_id=f"spica-{vid}", cand_id=vid)
        for vid, (changes, _) in effects.items()
    }
    return DomainData(stock=dict(STOCK), variants=variants, trials=trials, space=SPACE)


def _has_digits(text: str) -> bool:
    return re.search(r"\d", text) is not None


def test_clearly_better_variant_is_promoted_with_numeric_insight() -> None:
    data = _domain({"better": ({"workers": 4}, {THROUGHPUT: 1.2})})
    result = analyze_domain("cpu", data, seed=1)
    [promoted] = result.promoted_variants
    assert promoted.cand_id == "better"
    assert promoted.spica_id == "spica-better"
    assert promoted.genome["workers"] == 4
    assert promoted.score_v2 == pytest.approx(0.2, abs=0.02)
    assert 0.0 < promoted.score_ci95[0] <= promoted.score_v2 <= promoted.score_ci95[1]
    assert "each of 2 epoch" in promoted.reason
    assert not result.flagged_variants
    metrics = result.metrics["cpu"]
    assert metrics.fitness == promoted.score_v2
    assert metrics.ci95 == promoted.score_ci95
    assert metrics.best_cand_id == "better"
    # The baseline is the stock configuration measured in this run, per regime.
    assert set(metrics.baseline) == {"idle", "normal", "stress", "mixed"}
    assert metrics.baseline["stress"][THROUGHPUT] == pytest.approx(1000.0, rel=0.02)
    insight = next(i for i in metrics.insights if "stress regime" in i and THROUGHPUT in i)
    match = re.search(
        r"workers=4 \(stock 2\) changed throughput_ops by \+(\d+\.\d)% \[95% CI \+(\d+\.\d)%", insight
    )
    assert match is not None, insight
    assert 18.0 < float(match.group(1)) < 22.0
    rec = result.search_space_recommendations["cpu"]["workers"]
    assert rec.action == "narrow"
    assert rec.low is not None and rec.high is not None
    assert 1 <= rec.low <= 4 <= rec.high <= 8
    assert (rec.low, rec.high) != (1, 8)


def test_clearly_worse_variant_is_flagged_with_numbers() -> None:
    data = _domain({"worse": ({"workers": 1}, {THROUGHPUT: 0.5, P95: 1.3})})
    result = analyze_domain("cpu", data, seed=1)
    assert not result.promoted_variants
    [flag] = result.flagged_variants
    assert flag.cand_id == "worse"
    assert flag.genome["workers"] == 1
    assert any("significantly worse" in r and _has_digits(r) for r in flag.reasons)
    assert any(r.startswith("throughput_ops -50") for r in flag.reasons), flag.reasons
    insights = result.metrics["cpu"].insights
    assert any("workers=1 (stock 2) changed throughput_ops by -50" in i for i in insights), insights
    # A worse-only run: nothing beat the baseline, so numeric knobs are widened.
    rec = result.search_space_recommendations["cpu"]["swappiness"]
    assert rec.action == "widen"
    assert rec.low == 0 and rec.high is not None and rec.high > 100


def test_cap_breach_is_flagged_unsafe_even_when_faster() -> None:
    data = _domain({"hot": ({"workers": 8}, {THROUGHPUT: 1.3})}, breach={"hot": "temp_c 92.0 > cap 85.0"})
    result = analyze_domain("cpu", data, seed=1)
    assert not result.promoted_variants
    [flag] = result.flagged_variants
    assert flag.cand_id == "hot"
    assert any("cap breach" in r and "temp_c 92.0 > cap 85.0" in r for r in flag.reasons)
    summary = result.metrics["cpu"].variants
    assert summary is not None and summary["hot"].safe is False
    # No safe variant: fitness is null, not an invented number.
    assert result.metrics["cpu"].fitness is None
    assert any("unsafe" in i for i in result.metrics["cpu"].insights)


def test_failed_trial_majority_is_unsafe() -> None:
    data = _domain({"flaky": ({"workers": 3}, {THROUGHPUT: 1.2})}, epochs=1, fail={"flaky": 12})
    result = analyze_domain("cpu", data, seed=1)
    assert not result.promoted_variants
    [flag] = result.flagged_variants
    assert "12 of 16 trials failed: stress-ng exit 3" in flag.reasons


def test_choice_used_only_by_flagged_variant_is_removed() -> None:
    data = _domain({"rt": ({"sched": "fifo"}, {THROUGHPUT: 0.6})})
    rec = analyze_domain("cpu", data, seed=1).search_space_recommendations["cpu"]["sched"]
    assert rec.action == "narrow"
    assert rec.choices == ["other", "batch"]
    assert "fifo" in rec.reason


def test_no_effect_knob_is_dropped_with_enough_evidence() -> None:
    data = _domain(
        {"better": ({"workers": 4}, {THROUGHPUT: 1.2}), "noop": ({"swappiness": 10}, {})},
        epochs=2,
        replicas=4,
    )
    result = analyze_domain("cpu", data, seed=1)
    rec = result.search_space_recommendations["cpu"]["swappiness"]
    assert rec.action == "drop", rec.reason
    assert rec.value == 60
    assert _has_digits(rec.reason)
    assert "noop" not in {f.cand_id for f in result.flagged_variants}
    assert "noop" not in {p.cand_id for p in result.promoted_variants}


def test_no_effect_knob_is_kept_when_evidence_is_thin() -> None:
    # A seed whose noise moves no KPI measurably (by chance a few seeds do: the false-positive rate
    # of PHASE is issue 13's subject, not this rule's).
    data = _domain({"noop": ({"swappiness": 10}, {})}, epochs=1, replicas=3, noise=0.02, seed=1)
    result = analyze_domain("cpu", data, seed=1)
    rec = result.search_space_recommendations["cpu"]["swappiness"]
    assert rec.action == "keep"
    assert "too little evidence" in rec.reason
    [insight] = [i for i in result.metrics["cpu"].insights if "no variant differed measurably" in i]
    assert re.search(r"best score [+-]\d+\.\d% \[[+-]\d+\.\d%, [+-]\d+\.\d%\]", insight), insight


def test_variant_must_beat_the_baseline_in_every_epoch() -> None:
    # +15 % in epochs 0 and 1 but -3 % in epoch 2 relative to that epoch's own baseline.
    data = _domain(
        {"fading": ({"workers": 4}, {THROUGHPUT: 1.15})},
        epochs=3,
        epoch_multiplier={("fading", 2): 0.97 / 1.15},
    )
    result = analyze_domain("cpu", data, seed=1)
    summary = result.metrics["cpu"].variants
    assert summary is not None
    fading = summary["fading"]
    assert fading.score_ci95 is not None and fading.score_ci95[0] > 0.0  # pooled, it looks better
    assert fading.epoch_scores is not None and fading.epoch_scores[2] is not None
    assert fading.epoch_scores[2] < 0.0
    assert not result.promoted_variants


def test_only_baseline_gives_null_fitness_and_numeric_insight() -> None:
    data = _domain({})
    result = analyze_domain("cpu", data, seed=1)
    metrics = result.metrics["cpu"]
    assert metrics.fitness is None and metrics.ci95 is None
    assert metrics.insights and all(_has_digits(i) for i in metrics.insights)
    assert "32 trials in 4 regime(s)" in metrics.insights[0]


def test_failed_trials_do_not_enter_the_means() -> None:
    data = _domain({"better": ({"workers": 4}, {THROUGHPUT: 1.2})}, fail={STOCK_ARM: 2})
    metrics = analyze_domain("cpu", data, seed=1).metrics["cpu"]
    assert all(np.isfinite(v) for kpis in metrics.baseline.values() for v in kpis.values())
    assert any(i.startswith("cpu: 2 of 64 trials failed, e.g. stress-ng exit 3") for i in metrics.insights)


def test_analysis_is_deterministic_and_rejects_unknown_variants() -> None:
    data = _domain({"better": ({"workers": 4}, {THROUGHPUT: 1.1}), "noop": ({"swappiness": 10}, {})})
    assert analyze_domain("cpu", data, seed=5) == analyze_domain("cpu", data, seed=5)
    stray = TrialRecord(0, "idle", "ghost", ok=True, kpis={THROUGHPUT: 1.0})
    bad = DomainData(stock=data.stock, variants=data.variants, trials=[*data.trials, stray])
    with pytest.raises(ValueError, match="ghost"):
        analyze_domain("cpu", bad, seed=5)


def test_trial_record_from_trial_result() -> None:
    tr = TrialResult(
        domain="cpu", cand_id="c1", regime="stress", ok=False, failure="timeout", cap_breach=None
    )
    rec = TrialRecord.from_trial(tr, epoch=2, variant_id="c1", replica=1)
    assert (rec.epoch, rec.regime, rec.variant_id, rec.ok, rec.failure, rec.replica) == (
        2,
        "stress",
        "c1",
        False,
        "timeout",
        1,
    )


def test_results_from_analysis_validate_against_the_schema(tmp_path: Path) -> None:
    data = PhaseData(
        domains={
            "cpu": _domain(
                {
                    "better": ({"workers": 4}, {THROUGHPUT: 1.2}),
                    "worse": ({"sched": "fifo"}, {THROUGHPUT: 0.6}),
                    "hot": ({"workers": 8}, {THROUGHPUT: 1.1}),
                },
                breach={"hot": "temp_c 95 > 85"},
            ),
            "memory": _domain({"noop": ({"swappiness": 10}, {})}, seed=3),
            "storage": _domain({}, seed=4),
            "idle_domain": DomainData(stock={}, variants={}, trials=[]),  # never ran: not "tested"
        }
    )
    analysis = analyze_phase(data, seed=9)
    results = build_results(
        analysis, run_id="run-1", timestamp="2026-01-01T04:00:00+00:00", qtime=Qtime(2, 4, 4), complete=True
    )
    assert results.domains_tested == ["cpu", "memory", "storage"]
    assert {p.cand_id for p in results.promoted_variants} == {"better"}
    assert {f.cand_id for f in results.flagged_variants} == {"worse", "hot"}
    for domain in results.domains_tested:
        insights = results.metrics[domain].insights
        assert insights and all(_has_digits(i) and i.startswith(f"{domain}: ") for i in insights)
    path = write_results(tmp_path / "phase", results, now=1_767_240_000)
    assert load_results(path) == results


def test_a_single_trial_per_regime_gives_no_interval_and_no_verdict() -> None:
    # One epoch, one replica: a bootstrap of one value per regime is a zero-width "interval".
    data = _domain({"worse": ({"workers": 1}, {THROUGHPUT: 0.5})}, epochs=1, replicas=1)
    result = analyze_domain("cpu", data, seed=1)
    m = result.metrics["cpu"]
    assert m.fitness is not None and m.fitness < -0.4  # the point estimate is still reported
    assert m.ci95 is None
    assert not result.flagged_variants and not result.promoted_variants
