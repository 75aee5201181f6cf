"""Each host's PHASE runs in the fleet store, read back per host as the fleet verdict's trials.

Against a real PostgreSQL (``fleet_dsn``). A host's run is simulated as PHASE records it: epochs ×
replicas × regimes, in each slot the stock arm and every variant, sharing the slot's drift (pairing
cancels it) with per-trial noise; a variant's throughput is ×(1 + effect) of the host's stock.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping

import msgspec
import numpy as np
import psycopg
import pytest

from kloros_orchestrator.fleet.key import StudyKey
from kloros_orchestrator.fleet.pgstore import FleetStore, open_fleet_store
from kloros_orchestrator.fleet.phase_rows import (
    SLOT_STRIDE,
    PhaseRun,
    PhaseTrial,
    hosts_sharing,
    hosts_with_runs,
    phase_run_of,
    phase_trials,
    record_phase_run,
)
from kloros_orchestrator.fleet.records import genome_digest
from kloros_orchestrator.fleet.verdict import FleetTrial, fleet_verdicts
from kloros_orchestrator.model import STOCK_ARM
from kloros_orchestrator.phase.records import DomainData, TrialRecord, VariantInfo

KEY = StudyKey(
    domain="cpu",
    knob_space_hash="0" * 64,
    cpu_model="AMD EPYC 7B13",
    cpu_count=2,
    memory_gib=24,
    kernel="6.1.0",
    stress_ng_version="0.15.06",
)
STOCK = {"vm.swappiness": 60}
GENOMES = {"good": {"vm.swappiness": 10}, "null": {"vm.swappiness": 30}, "bad": {"vm.swappiness": 90}}
DIGEST = {name: genome_digest(g) for name, g in GENOMES.items()}
REGIMES = (("stress", {"cpu": 2.0e6}), ("mixed", {"cpu": 1.5e6, "vm": 3.0e3}))


@pytest.fixture
def store(fleet_dsn: str) -> Iterator[FleetStore]:
    s = open_fleet_store(fleet_dsn, max_size=4)
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def study(store: FleetStore) -> int:
    return store.join_study("web", KEY).study_id


def window(effects: Mapping[str, float], *, seed: int, epochs: int = 2, replicas: int = 3) -> DomainData:
    """One PHASE window of the named variants (``GENOMES``), as ``phase.records`` holds it."""
    rng = np.random.default_rng(seed)
    trials: list[TrialRecord] = []
    for epoch in range(epochs):
        for regime, stressors in REGIMES:
            for replica in range(replicas):
                drift = float(np.exp(rng.normal(0.0, 0.05)))
                for vid, gain in ((STOCK_ARM, 1.0), *((v, 1.0 + e) for v, e in effects.items())):
                    rates = {
                        s: base * gain * drift * float(np.exp(rng.normal(0.0, 0.02)))
                        for s, base in stressors.items()
                    }
                    kpis = {"throughput_ops": sum(rates.values()), "p95_latency_us": 50.0}
                    trials.append(
                        TrialRecord(epoch, regime, vid, True, kpis, replica=replica, stressor_ops=rates)
                    )
    variants = {v: VariantInfo(genome=dict(GENOMES[v]), spica_id="s", cand_id=f"g1_{v}") for v in effects}
    return DomainData(stock=dict(STOCK), variants=variants, trials=trials)


def run_of(
    host: str, run_id: str, finished_at: float, effects: Mapping[str, float], seed: int, domain: str = "cpu"
) -> PhaseRun:
    return phase_run_of(
        window(effects, seed=seed), run_id=run_id, host=host, domain=domain, finished_at=finished_at
    )


def count_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM phase_runs").fetchone()
    assert row is not None
    return int(row[0])


def by_host(trials: list[FleetTrial]) -> dict[tuple[str, str], list[FleetTrial]]:
    out: dict[tuple[str, str], list[FleetTrial]] = {}
    for t in trials:
        out.setdefault((t.host, t.cand_id), []).append(t)
    return out


# --- from a PHASE window -------------------------------------------------------------------------


def test_phase_run_of_names_variants_by_genome_and_numbers_slots_across_epochs() -> None:
    data = window({"good": 0.05, "null": 0.0}, seed=1, epochs=3, replicas=2)
    # A variant listed without trials (the window ended first) is not a variant the run measured.
    data.variants["bad"] = VariantInfo(genome=dict(GENOMES["bad"]), spica_id="s", cand_id="g1_bad")
    run = phase_run_of(data, run_id="r1", host="a", domain="cpu", finished_at=100.0)
    assert run.stock_digest == genome_digest(STOCK)
    assert run.variants == {DIGEST["good"]: "g1_good", DIGEST["null"]: "g1_null"}
    assert len(run.trials) == len(data.trials)
    assert {t.variant for t in run.trials} == {STOCK_ARM, DIGEST["good"], DIGEST["null"]}
    slots = {t.slot for t in run.trials}
    assert slots == {e * SLOT_STRIDE + r for e in range(3) for r in range(2)}  # 6: unique across epochs
    for record, trial in zip(data.trials, run.trials, strict=True):
        assert trial.slot == record.epoch * SLOT_STRIDE + (record.replica or 0)
        assert (trial.regime, trial.kpis, trial.stressor_ops) == (
            record.regime,
            record.kpis,
            record.stressor_ops,
        )
    # JSON round trip as the store does it.
    back = msgspec.convert(msgspec.to_builtins(run), PhaseRun)
    assert back == run


def test_records_without_a_replica_take_their_order_in_epoch_regime_and_variant() -> None:
    trials = [
        TrialRecord(epoch, "stress", vid, True, {"throughput_ops": 1.0 + i})
        for epoch in (0, 1)
        for i in range(2)
        for vid in (STOCK_ARM, "good")
    ]
    trials.append(TrialRecord(0, "stress", "good", True, {"throughput_ops": float("nan"), "watts": 3.0}))
    variants = {"good": VariantInfo(genome=dict(GENOMES["good"]), spica_id="s", cand_id="c")}
    run = phase_run_of(
        DomainData(dict(STOCK), variants, trials), run_id="r", host="a", domain="cpu", finished_at=1.0
    )
    good = [(t.slot, t.kpis) for t in run.trials if t.variant == DIGEST["good"]]
    assert good == [
        (0, {"throughput_ops": 1.0}),
        (1, {"throughput_ops": 2.0}),
        (SLOT_STRIDE, {"throughput_ops": 1.0}),
        (SLOT_STRIDE + 1, {"throughput_ops": 2.0}),
        (2, {"watts": 3.0}),  # the third of epoch 0; a NaN is absent, never stored
    ]
    assert [t.slot for t in run.trials if t.variant == STOCK_ARM] == [0, 1, SLOT_STRIDE, SLOT_STRIDE + 1]


def test_phase_run_of_refuses_unknown_variants_and_keeps_one_of_two_twins() -> None:
    data = window({"good": 0.05}, seed=2)
    bad = DomainData(data.stock, data.variants, [*data.trials, TrialRecord(0, "stress", "ghost", True)])
    with pytest.raises(ValueError, match="'ghost'"):
        phase_run_of(bad, run_id="r", host="a", domain="cpu", finished_at=1.0)
    # The same genome under a second id (measured twice): the fleet knows it once, from the first id.
    twin = {**data.variants, "again": VariantInfo(genome=dict(GENOMES["good"]), spica_id="s", cand_id="x")}
    doubled = [
        *data.trials,
        *(msgspec.structs.replace(t, variant_id="again") for t in data.trials if t.variant_id == "good"),
    ]
    run = phase_run_of(
        DomainData(data.stock, twin, doubled), run_id="r", host="a", domain="cpu", finished_at=1.0
    )
    assert run == phase_run_of(data, run_id="r", host="a", domain="cpu", finished_at=1.0)


def test_a_run_is_validated() -> None:
    ok = PhaseTrial(slot=0, regime="stress", variant="d", ok=True)
    with pytest.raises(ValueError, match="does not list"):
        PhaseRun(
            run_id="r", host="a", domain="cpu", stock_digest="s", finished_at=1.0, variants={}, trials=(ok,)
        )
    with pytest.raises(ValueError, match="two trials of slot 0"):
        PhaseRun(
            run_id="r",
            host="a",
            domain="cpu",
            stock_digest="s",
            finished_at=1.0,
            variants={"d": "c"},
            trials=(ok, ok),
        )
    with pytest.raises(ValueError, match="finite"):
        PhaseTrial(slot=0, regime="stress", variant="d", ok=True, kpis={"throughput_ops": float("inf")})


# --- the store -----------------------------------------------------------------------------------


def test_recording_a_run_twice_writes_one_row(store: FleetStore, study: int, fleet_dsn: str) -> None:
    run = run_of("a", "r1", 100.0, {"good": 0.05}, seed=1)
    assert record_phase_run(store, study, run)
    assert not record_phase_run(store, study, run)  # a retry
    assert count_rows(fleet_dsn) == 1
    # The same run id on another host, or another domain of the same run, is another row.
    assert record_phase_run(store, study, msgspec.structs.replace(run, host="b"))
    assert record_phase_run(store, study, msgspec.structs.replace(run, domain="mem"))
    assert count_rows(fleet_dsn) == 3


def test_the_read_back_trials_are_the_runs_own(store: FleetStore, study: int) -> None:
    run = run_of("a", "r1", 100.0, {"good": 0.05, "null": 0.0}, seed=1)
    record_phase_run(store, study, run)
    got = phase_trials(store, study, "cpu")
    assert got == [t for d in sorted(run.variants) for t in run.trials_of(d)]  # by digest
    good = [t for t in got if t.cand_id == DIGEST["good"]]
    assert sum(t.arm == "candidate" for t in good) == sum(t.arm == "stock" for t in good) == 12
    assert phase_trials(store, study, "cpu", [DIGEST["null"]]) == run.trials_of(DIGEST["null"])
    assert phase_trials(store, study, "cpu", []) == []


def test_the_latest_run_of_each_host_wins(store: FleetStore, study: int) -> None:
    new = run_of("a", "r2", 200.0, {"good": 0.05}, seed=2)
    old = run_of("a", "r1", 100.0, {"good": -0.3}, seed=1)
    other = run_of("b", "r9", 50.0, {"good": 0.05}, seed=3)
    for run in (new, old, other):  # recorded out of order: finished_at decides, not arrival
        record_phase_run(store, study, run)
    got = by_host(phase_trials(store, study, "cpu"))
    assert got[("a", DIGEST["good"])] == new.trials_of(DIGEST["good"])
    assert got[("b", DIGEST["good"])] == other.trials_of(DIGEST["good"])
    assert len(got) == 2


def test_a_host_falls_back_to_its_latest_run_that_measured_the_variant(store: FleetStore, study: int) -> None:
    old = run_of("a", "r1", 100.0, {"good": 0.05, "null": 0.0}, seed=1)
    new = run_of("a", "r2", 200.0, {"null": 0.0}, seed=2)
    record_phase_run(store, study, old)
    record_phase_run(store, study, new)
    got = by_host(phase_trials(store, study, "cpu"))
    assert got[("a", DIGEST["good"])] == old.trials_of(DIGEST["good"])
    assert got[("a", DIGEST["null"])] == new.trials_of(DIGEST["null"])
    assert by_host(phase_trials(store, study, "cpu", [DIGEST["good"]])) == {
        ("a", DIGEST["good"]): old.trials_of(DIGEST["good"])
    }


def test_only_the_last_runs_per_host_are_searched(store: FleetStore, study: int) -> None:
    record_phase_run(store, study, run_of("a", "r0", 100.0, {"good": 0.05}, seed=1))
    for i in range(1, 6):  # five newer runs that did not measure "good"
        record_phase_run(store, study, run_of("a", f"r{i}", 100.0 + i, {"null": 0.0}, seed=1 + i))
    assert phase_trials(store, study, "cpu", [DIGEST["good"]]) == []
    assert phase_trials(store, study, "cpu", [DIGEST["good"]], runs_per_host=6) != []
    with pytest.raises(ValueError, match="runs_per_host"):
        phase_trials(store, study, "cpu", runs_per_host=0)


def test_runs_of_another_domain_or_study_are_not_mixed_in(store: FleetStore, study: int) -> None:
    other_study = store.join_study("db", KEY).study_id
    mine = run_of("a", "r1", 100.0, {"good": 0.05}, seed=1)
    record_phase_run(store, study, mine)
    # Newer runs of the same host and variant, elsewhere: neither may replace ``mine``.
    record_phase_run(store, study, run_of("a", "r2", 200.0, {"good": -0.2}, seed=2, domain="mem"))
    record_phase_run(store, other_study, run_of("a", "r3", 300.0, {"good": -0.2}, seed=3))
    record_phase_run(store, other_study, run_of("b", "r4", 300.0, {"good": -0.2}, seed=4))
    assert phase_trials(store, study, "cpu") == mine.trials_of(DIGEST["good"])
    assert hosts_with_runs(store, study, "cpu", DIGEST["good"]) == {"a"}
    assert hosts_with_runs(store, other_study, "cpu", DIGEST["good"]) == {"a", "b"}
    assert hosts_with_runs(store, study, "mem", DIGEST["good"]) == {"a"}
    assert hosts_with_runs(store, study, "disk", DIGEST["good"]) == set()


def test_hosts_with_runs_counts_runs_since(store: FleetStore, study: int) -> None:
    record_phase_run(store, study, run_of("a", "r1", 100.0, {"good": 0.05}, seed=1))
    record_phase_run(store, study, run_of("b", "r1", 200.0, {"good": 0.05, "null": 0.0}, seed=2))
    assert hosts_with_runs(store, study, "cpu", DIGEST["good"]) == {"a", "b"}
    assert hosts_with_runs(store, study, "cpu", DIGEST["good"], since=150.0) == {"b"}
    assert hosts_with_runs(store, study, "cpu", DIGEST["good"], since=200.0) == {"b"}
    assert hosts_with_runs(store, study, "cpu", DIGEST["null"], since=0.0) == {"b"}
    assert hosts_with_runs(store, study, "cpu", DIGEST["bad"]) == set()


def test_a_malformed_row_is_left_out_with_a_clear_warning(
    store: FleetStore, study: int, fleet_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One host's bad row is no evidence, and never blocks the other hosts' verdict."""
    from loguru import logger

    record_phase_run(store, study, run_of("a", "r1", 100.0, {"good": 0.05}, seed=1))
    record_phase_run(store, study, run_of("b", "r1", 100.0, {"good": 0.05}, seed=2))
    with psycopg.connect(fleet_dsn, autocommit=True) as conn:
        bad = """UPDATE phase_runs SET trials = '[{"slot": 1, "regime": "stress"}]' WHERE host = 'a'"""
        conn.execute(bad)
    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(str(m)), level="WARNING")
    try:
        trials = phase_trials(store, study, "cpu")
    finally:
        logger.remove(sink)
    assert trials and {t.host for t in trials} == {"b"}
    assert any("malformed PHASE run 'r1' of host 'a' (cpu)" in m and "variant" in m for m in seen), seen
    assert hosts_sharing(store, study, "cpu", 50.0) == {"a", "b"}
    assert hosts_sharing(store, study, "cpu", 150.0) == set()


# --- the fleet verdict from the shared runs ----------------------------------------------------------


def test_three_hosts_each_five_per_cent_better_promote_it_and_a_null_variant_is_not(
    store: FleetStore, study: int
) -> None:
    for i, host in enumerate(("a", "b", "c")):
        # An older run measured against a configuration since replaced: a large harm, to be ignored.
        record_phase_run(store, study, run_of(host, "old", 10.0, {"good": -0.3, "null": -0.3}, seed=50 + i))
        record_phase_run(store, study, run_of(host, "new", 20.0, {"good": 0.05, "null": 0.0}, seed=i))
    trials = phase_trials(store, study, "cpu")
    verdicts = fleet_verdicts(trials, seed=1, n_boot=400)
    good, null = verdicts[DIGEST["good"]], verdicts[DIGEST["null"]]
    assert good.promoted, good.reason
    assert good.effect == pytest.approx(0.05, abs=0.015)
    assert [h.host for h in good.hosts] == ["a", "b", "c"]
    assert all(h.pairs == 12 and h.rounds == 6 for h in good.hosts)  # 2 epochs × 3 replicas, 2 regimes
    assert not null.promoted, null.reason
    assert null.effect == pytest.approx(0.0, abs=0.015)


# --- footprint -------------------------------------------------------------------------------------


def test_the_module_does_not_import_psycopg() -> None:
    """The PHASE side builds runs in local mode too (``runtime.fleet_phase``): no psycopg there."""
    code = (
        "import sys, kloros_orchestrator.fleet.phase_rows\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('psycopg', 'psycopg_pool')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
