"""The PostgreSQL store against a real server: studies, claims under leases, idempotent results."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from kloros_orchestrator.fleet.key import StudyKey
from kloros_orchestrator.fleet.pgstore import FleetStore, UnitCounts, open_fleet_store
from kloros_orchestrator.fleet.records import Outcome, TrialRow, UnitResult, WorkUnit

KEY = StudyKey(
    domain="cpu",
    knob_space_hash="0" * 64,
    cpu_model="AMD EPYC 7B13",
    cpu_count=2,
    memory_gib=24,
    kernel="6.1.0",
    stress_ng_version="0.15.06",
)
CANDIDATES = {f"c{i}": {"vm.swappiness": 10 * i} for i in range(6)}
ROUNDS = 3
LONG = 300.0  # a lease no test outlives


@pytest.fixture
def store(fleet_dsn: str) -> Iterator[FleetStore]:
    s = open_fleet_store(fleet_dsn, max_size=8)
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def study(store: FleetStore) -> int:
    sid = store.join_study("web", KEY).study_id
    assert store.create_generation(sid, 0, CANDIDATES, rounds=ROUNDS, created_by="a")
    return sid


def result_for(unit: WorkUnit, host: str, value: float = 1.0) -> UnitResult:
    rows = tuple(
        TrialRow(
            regime=regime, arm=arm, ok=True, kpis={"throughput": value}, result={"cand_id": unit.cand_id}
        )
        for regime in ("idle", "stress")
        for arm in ("candidate", "stock")
    )
    return UnitResult(
        study_id=unit.study_id,
        generation=unit.generation,
        cand_id=unit.cand_id,
        round=unit.round,
        host=host,
        trials=rows,
        finished_at=0.0,
    )


def expire(dsn: str, unit_ids: list[int]) -> None:
    """What the passing of a lease's time does (its host died): the claim's end is in the past."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE work_units SET expires_at = now() - interval '1 second' WHERE id = ANY(%s)", (unit_ids,)
        )


def trial_count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM trials").fetchone()
    assert row is not None
    return int(row[0])


def test_hosts_with_the_same_key_join_one_study_and_others_their_own(store: FleetStore) -> None:
    ids: list[int] = []
    start = threading.Barrier(4)

    def join() -> None:
        start.wait(timeout=30)
        ids.append(store.join_study("web", KEY).study_id)

    threads = [threading.Thread(target=join) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(ids) == 4 and len(set(ids)) == 1
    other_class = StudyKey(**{**{f: getattr(KEY, f) for f in KEY.__struct_fields__}, "cpu_count": 4})
    assert store.join_study("web", other_class).study_id not in ids
    assert store.join_study("db", KEY).study_id not in ids


def test_heartbeats_count_the_hosts_alive(store: FleetStore, fleet_dsn: str) -> None:
    sid = store.join_study("web", KEY).study_id
    for host in ("b", "a", "a"):
        store.heartbeat(sid, host)
    assert store.hosts_alive(sid, within_s=60) == ["a", "b"]
    with psycopg.connect(fleet_dsn, autocommit=True) as conn:
        conn.execute("UPDATE hosts SET last_seen = now() - interval '2 minutes' WHERE host = 'b'")
    assert store.hosts_alive(sid, within_s=60) == ["a"]


def test_a_generation_is_created_once_with_a_unit_per_candidate_and_round(
    store: FleetStore, study: int
) -> None:
    assert not store.create_generation(study, 0, {"other": {}}, rounds=9, created_by="b")
    assert store.unit_counts(study, 0) == UnitCounts(open=len(CANDIDATES) * ROUNDS)
    assert store.latest_generation(study) == 0


def test_concurrent_claimers_never_get_the_same_unit(store: FleetStore, study: int) -> None:
    got: dict[str, list[WorkUnit]] = {f"h{i}": [] for i in range(4)}
    errors: list[BaseException] = []
    start = threading.Barrier(len(got))

    def claim_all(host: str) -> None:
        try:
            start.wait(timeout=30)
            while units := store.claim(study, host, lease_s=LONG, limit=1):
                got[host].extend(units)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=claim_all, args=(h,)) for h in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    ids = [u.unit_id for units in got.values() for u in units]
    assert len(ids) == len(set(ids)) == len(CANDIDATES) * ROUNDS
    assert store.unit_counts(study, 0) == UnitCounts(claimed=len(ids))


def test_claims_come_round_by_round_with_the_genome(store: FleetStore, study: int) -> None:
    units = store.claim(study, "a", lease_s=LONG, limit=len(CANDIDATES) + 1)
    assert [u.round for u in units] == [0] * len(CANDIDATES) + [1]
    assert {u.cand_id: u.genome for u in units if u.round == 0} == CANDIDATES


def test_a_held_lease_is_not_claimable_and_an_expired_one_is(
    store: FleetStore, study: int, fleet_dsn: str
) -> None:
    mine = store.claim(study, "a", lease_s=LONG, limit=100)
    assert len(mine) == len(CANDIDATES) * ROUNDS
    assert store.claim(study, "b", lease_s=LONG) == []  # all held
    assert store.renew([u.unit_id for u in mine], "a", lease_s=LONG) == {u.unit_id for u in mine}
    lost = mine[:2]
    expire(fleet_dsn, [u.unit_id for u in lost])  # host a stopped renewing (died)
    taken = store.claim(study, "b", lease_s=LONG, limit=100)
    assert {u.unit_id for u in taken} == {u.unit_id for u in lost}
    # a, coming back, learns from its renewal that those units are no longer its own
    assert store.renew([u.unit_id for u in mine], "a", lease_s=LONG) == {u.unit_id for u in mine[2:]}


def test_released_claims_are_claimable_at_once(store: FleetStore, study: int) -> None:
    mine = store.claim(study, "a", lease_s=LONG, limit=2)
    assert store.release([u.unit_id for u in mine], "a") == 2
    assert {u.unit_id for u in store.claim(study, "b", lease_s=LONG, limit=2)} == {u.unit_id for u in mine}


def test_a_retried_result_writes_nothing_twice(store: FleetStore, study: int, fleet_dsn: str) -> None:
    (unit,) = store.claim(study, "a", lease_s=LONG)
    result = result_for(unit, "a")
    assert store.complete_unit(result) is Outcome.WRITTEN
    assert store.complete_unit(result) is Outcome.ALREADY  # the first commit's answer was lost
    assert trial_count(fleet_dsn) == len(result.trials)
    assert store.unit_counts(study, 0).done == 1
    rows = store.trial_rows(study, 0)
    assert {(r["host"], r["regime"], r["arm"]) for r in rows} == {
        ("a", t.regime, t.arm) for t in result.trials
    }


def test_a_unit_counts_once_from_the_host_that_finished_it_first(
    store: FleetStore, study: int, fleet_dsn: str
) -> None:
    (unit,) = store.claim(study, "a", lease_s=LONG)
    expire(fleet_dsn, [unit.unit_id])
    (again,) = store.claim(study, "b", lease_s=LONG)
    assert again.unit_id == unit.unit_id
    assert store.complete_unit(result_for(again, "b", 2.0)) is Outcome.WRITTEN
    assert store.complete_unit(result_for(unit, "a", 1.0)) is Outcome.SUPERSEDED  # a was late
    rows = store.trial_rows(study, 0)
    assert {r["host"] for r in rows} == {"b"} and len(rows) == 4
    assert {r["kpis"]["throughput"] for r in rows} == {2.0}


def test_a_failing_write_leaves_no_row_and_the_unit_unfinished(
    store: FleetStore, study: int, fleet_dsn: str
) -> None:
    (unit,) = store.claim(study, "a", lease_s=LONG)
    good = result_for(unit, "a")
    bad_row: Any = TrialRow(regime="idle", arm="bogus", ok=True)  # type: ignore[arg-type]
    bad = UnitResult(
        **{**{f: getattr(good, f) for f in good.__struct_fields__}, "trials": (*good.trials, bad_row)}
    )
    with pytest.raises(psycopg.errors.CheckViolation):
        store.complete_unit(bad)
    assert trial_count(fleet_dsn) == 0
    assert store.unit_counts(study, 0).done == 0
    assert store.complete_unit(good) is Outcome.WRITTEN
