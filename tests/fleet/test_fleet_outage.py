"""The database goes away and comes back (``pg_ctl stop``/``start``/``restart``): finished units are
spooled locally, written when it returns, and no trial row is lost or counted twice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import Cluster
from test_fleet_store import KEY, result_for

from kloros_orchestrator.fleet.leader import LeaderLock
from kloros_orchestrator.fleet.pgstore import (
    FleetStore,
    UnitCounts,
    is_unreachable,
    open_fleet_store,
    write_or_spool,
)
from kloros_orchestrator.fleet.records import Outcome
from kloros_orchestrator.fleet.spool import TrialSpool, spool_path

CANDIDATES = {f"c{i}": {"vm.swappiness": i} for i in range(4)}
ROUNDS = 3
UNITS = len(CANDIDATES) * ROUNDS
ROWS_PER_UNIT = 4  # result_for: two regimes x two arms


@pytest.fixture
def store(fleet_dsn: str, pg_cluster: Cluster) -> Iterator[FleetStore]:
    s = open_fleet_store(fleet_dsn, max_size=4, timeout_s=0.5)
    s.migrate()
    yield s
    s.close()
    if not (pg_cluster.data / "postmaster.pid").exists():  # a failed test must not leave it down
        pg_cluster.start()


def _rows(dsn: str) -> list[tuple[str, int, str, str]]:
    with psycopg.connect(dsn) as conn:
        return [
            (str(r[0]), int(r[1]), str(r[2]), str(r[3]))
            for r in conn.execute("SELECT cand_id, round, regime, arm FROM trials").fetchall()
        ]


def test_units_finished_while_the_database_is_down_are_spooled_and_written_once(
    store: FleetStore, pg_cluster: Cluster, fleet_dsn: str, tmp_path: Path
) -> None:
    spool = TrialSpool(spool_path(tmp_path))
    sid = store.join_study("web", KEY).study_id
    store.create_generation(sid, 0, CANDIDATES, rounds=ROUNDS, created_by="a")
    leader = LeaderLock(fleet_dsn, sid)
    assert leader.try_acquire()
    units = store.claim(sid, "a", lease_s=300, limit=UNITS)
    before, during, after = units[:4], units[4:9], units[9:]
    for u in before:
        assert write_or_spool(store, spool, result_for(u, "a")) is Outcome.WRITTEN

    pg_cluster.stop()
    for u in during:
        assert write_or_spool(store, spool, result_for(u, "a")) is None  # spooled
    spool.append(result_for(before[0], "a"))  # written, but its answer was lost: retried from the spool
    assert len(spool) == len(during) + 1
    assert not leader.held()  # the leader's session died with the server
    pg_cluster.start()
    # Ready, not slept for: drop the connections the restart broke and wait until the pool has a new
    # one (its reconnect backoff is about a second, longer than this store's 0.5 s borrow timeout).
    store.pool.check()
    store.pool.wait(timeout=30)

    report = spool.flush(store.complete_unit, is_unreachable)
    assert (report.written, report.already, report.left) == (len(during), 1, 0)
    assert not spool.path.exists()
    assert spool.flush(store.complete_unit, is_unreachable).written == 0
    for u in after:
        assert write_or_spool(store, spool, result_for(u, "a")) is Outcome.WRITTEN

    rows = _rows(fleet_dsn)
    assert len(rows) == len(set(rows)) == UNITS * ROWS_PER_UNIT
    assert store.unit_counts(sid, 0) == UnitCounts(done=UNITS)
    assert leader.try_acquire()  # and leadership can be taken again
    leader.release()


def test_a_restart_between_calls_is_invisible_to_the_caller(
    pg_cluster: Cluster, fleet_dsn: str, tmp_path: Path
) -> None:
    """The pool checks a connection before lending it: the ones the restart broke are replaced (the
    pool retries after a backoff of about a second, well inside a daemon's timeout)."""
    store = open_fleet_store(fleet_dsn, timeout_s=10)
    store.migrate()
    sid = store.join_study("web", KEY).study_id
    store.create_generation(sid, 0, CANDIDATES, rounds=1, created_by="a")
    (first,) = store.claim(sid, "a", lease_s=300)
    pg_cluster.restart()
    spool = TrialSpool(spool_path(tmp_path))
    assert write_or_spool(store, spool, result_for(first, "a")) is Outcome.WRITTEN
    assert len(spool) == 0
    assert store.renew([first.unit_id], "a", lease_s=300) == set()  # done: nothing left to renew
    assert len(_rows(fleet_dsn)) == ROWS_PER_UNIT
    store.close()
