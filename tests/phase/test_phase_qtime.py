from __future__ import annotations

from itertools import groupby, pairwise

import pytest

from kloros_orchestrator.model import REGIMES, STOCK_ARM
from kloros_orchestrator.phase.qtime import QtimeSpec, Slot, build_plan, estimate_s, fit_plan

DOMAINS = {
    "cpu": [STOCK_ARM, "c1", "c2"],
    "memory": [STOCK_ARM, "m1"],
    "storage": [STOCK_ARM, "s1"],
}


def _slices(plan: list[Slot]) -> list[tuple[tuple[int, str, str], list[Slot]]]:
    return [(key, list(group)) for key, group in groupby(plan, key=lambda s: (s.epoch, s.domain, s.regime))]


def test_plan_counts_every_slot() -> None:
    spec = QtimeSpec(epochs=3, slices=4, replicas=2)
    plan = build_plan(DOMAINS, spec, seed=7)
    variants = sum(len(v) for v in DOMAINS.values())
    assert len(plan) == 3 * 4 * 2 * variants
    for domain, ids in DOMAINS.items():
        for vid in ids:
            assert sum(1 for s in plan if s.domain == domain and s.variant_id == vid) == 3 * 4 * 2


def test_variants_alternate_inside_each_slice() -> None:
    spec = QtimeSpec(epochs=2, slices=3, replicas=3)
    plan = build_plan(DOMAINS, spec, seed=1)
    slices = _slices(plan)
    # Each (epoch, domain, regime) is one contiguous block: no slice is split.
    assert len(slices) == len({key for key, _ in slices}) == 2 * 3 * len(DOMAINS)
    firsts = []
    for (_, domain, _), slots in slices:
        ids = DOMAINS[domain]
        assert [s.replica for s in slots] == [r for r in range(spec.replicas) for _ in ids]
        for r in range(spec.replicas):  # every arm once per replica, in a drawn order
            replica = [s.variant_id for s in slots if s.replica == r]
            assert sorted(replica) == sorted(ids)
            firsts.append(replica[0])
    assert len(set(firsts)) > 1  # the stock arm is not always first: no position bias by construction


def test_slices_take_regimes_in_model_order() -> None:
    plan = build_plan(DOMAINS, QtimeSpec(epochs=4, slices=2, replicas=1), seed=3)
    assert {s.regime for s in plan} == set(REGIMES[:2])


def test_regime_and_domain_order_change_across_epochs() -> None:
    plan = build_plan(DOMAINS, QtimeSpec(epochs=6, slices=4, replicas=1), seed=11)
    regime_orders = []
    domain_orders = []
    for epoch in range(6):
        slots = [s for s in plan if s.epoch == epoch]
        regime_orders.append(tuple(dict.fromkeys(s.regime for s in slots if s.domain == "cpu")))
        domain_orders.append(tuple(dict.fromkeys(s.domain for s in slots)))
    assert all(sorted(order) == sorted(REGIMES) for order in regime_orders)
    # Consecutive epochs never repeat the regime order, so drift cannot hit the same regime each time.
    assert all(a != b for a, b in pairwise(regime_orders))
    assert len(set(domain_orders)) > 1


def test_plan_is_deterministic_for_a_seed() -> None:
    spec = QtimeSpec(epochs=3, slices=4, replicas=2)
    assert build_plan(DOMAINS, spec, seed=42) == build_plan(DOMAINS, spec, seed=42)
    others = [build_plan(DOMAINS, spec, seed=s) for s in range(43, 48)]
    assert any(p != build_plan(DOMAINS, spec, seed=42) for p in others)


def test_plan_requires_stock_first_and_valid_spec() -> None:
    with pytest.raises(ValueError, match="stock"):
        build_plan({"cpu": ["c1", STOCK_ARM]}, QtimeSpec(1, 1, 1), seed=0)
    with pytest.raises(ValueError, match="duplicate"):
        build_plan({"cpu": [STOCK_ARM, "c1", "c1"]}, QtimeSpec(1, 1, 1), seed=0)
    with pytest.raises(ValueError, match="slices"):
        QtimeSpec(epochs=1, slices=5, replicas=1)
    with pytest.raises(ValueError, match="replicas"):
        QtimeSpec(epochs=1, slices=1, replicas=0)


def test_estimate_counts_trial_and_overhead() -> None:
    plan = build_plan(DOMAINS, QtimeSpec(epochs=1, slices=2, replicas=2), seed=0)
    assert estimate_s(plan, 10.0) == pytest.approx(len(plan) * 10.5)
    assert estimate_s(plan, 10.0, overhead_s=0.0) == pytest.approx(len(plan) * 10.0)
    per_regime = {"idle": 5.0, "normal": 20.0}
    expected = sum(per_regime[s.regime] + 0.5 for s in plan)
    assert estimate_s(plan, lambda s: per_regime[s.regime]) == pytest.approx(expected)


def test_fit_plan_keeps_a_plan_that_fits() -> None:
    spec = QtimeSpec(epochs=2, slices=2, replicas=3)
    plan, effective, shrink = fit_plan(DOMAINS, spec, seed=5, trial_s=1.0, available_s=10_000.0)
    assert shrink is None
    assert effective == spec
    assert plan == build_plan(DOMAINS, spec, seed=5)


def test_fit_plan_shrinks_replicas_and_records_it() -> None:
    spec = QtimeSpec(epochs=2, slices=4, replicas=5)
    per_replica = 2 * 4 * 7 * 10.5  # epochs·slices·variants·(trial + overhead)
    available = per_replica * 3 + 1.0
    plan, effective, shrink = fit_plan(DOMAINS, spec, seed=5, trial_s=10.0, available_s=available)
    assert effective == QtimeSpec(epochs=2, slices=4, replicas=3)
    assert estimate_s(plan, 10.0) <= available
    assert plan == build_plan(DOMAINS, effective, seed=5)
    assert shrink is not None
    assert shrink["from"] == {"epochs": 2, "slices": 4, "replicas": 5}
    assert shrink["to"] == {"epochs": 2, "slices": 4, "replicas": 3}
    assert shrink["fits"] is True
    assert f"estimated {per_replica * 5:.0f} s > {available:.0f} s available" in shrink["reason"]


def test_fit_plan_never_goes_below_min_replicas() -> None:
    spec = QtimeSpec(epochs=2, slices=4, replicas=5)
    plan, effective, shrink = fit_plan(DOMAINS, spec, seed=5, trial_s=10.0, available_s=60.0, min_replicas=2)
    assert effective.replicas == 2
    assert len(plan) == 2 * 4 * 2 * 7
    assert shrink is not None
    assert shrink["fits"] is False
    assert shrink["to"]["replicas"] == 2
    assert "60 s available" in shrink["reason"]
    assert "window end" in shrink["reason"]
