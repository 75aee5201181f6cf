"""The fleet database as the daemon sees it (runtime/fleet_db.py, fleet/session.py): a server that stops
answering neither hangs a stop nor reads as reachable; a flush that meets the database gone keeps it
unreachable; errors that mean "not now" spool, a bug in a heartbeat does not end the daemon."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import anyio
import psycopg
import pytest
from test_fleet_runner import TUNE, make_runner
from test_fleet_store import CANDIDATES, KEY, result_for

import kloros_orchestrator.runtime.fleet_work as fleet_work
from kloros_orchestrator.fleet.leader import LeaderLock
from kloros_orchestrator.fleet.pgstore import FleetStore, is_unreachable, open_fleet_store, write_or_spool
from kloros_orchestrator.fleet.records import TrialRow, UnitResult
from kloros_orchestrator.fleet.session import session_kwargs
from kloros_orchestrator.fleet.spool import TrialSpool
from kloros_orchestrator.runtime.fleet_db import DatabaseDown, FleetDatabase
from kloros_orchestrator.runtime.fleet_work import StudyContext
from kloros_orchestrator.runtime.ports import EventLog


def _events(path: Path) -> list[str]:
    return [json.loads(line)["event"] for line in path.read_text().splitlines()] if path.exists() else []


def _backend_pid(store: FleetStore) -> int:
    with store.pool.connection() as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


async def test_a_database_that_stops_answering_neither_hangs_a_stop_nor_reads_as_reachable(
    fleet_dsn: str, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    db = FleetDatabase(
        fleet_dsn, events=EventLog(events, time.time), clock=time.time, pool_size=1, stall_s=0.3
    )
    pid = await db.call(_backend_pid)  # the pool's one connection
    os.kill(pid, signal.SIGSTOP)  # its server process stops answering, like a partitioned network
    try:
        started = time.monotonic()
        with anyio.move_on_after(0.5):  # a stop (SIGTERM) cancels the call
            await db.call(lambda st: st.latest_generation(1))
        assert time.monotonic() - started < 3.0, "the stop did not wait for the database"
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: db.call(lambda st: st.latest_generation(1), bound=60))
            await anyio.sleep(0.6)  # longer than stall_s: the call is stalled
            assert db.status()["reachable"] is False and db.status()["unreachable_since"] is not None
            tg.cancel_scope.cancel()
        with pytest.raises(DatabaseDown):
            await db.call(lambda st: st.latest_generation(1), bound=0.5)
        assert db.status()["reachable"] is False
    finally:
        os.kill(pid, signal.SIGCONT)
    with anyio.fail_after(30):
        assert await db.call(lambda st: st.latest_generation(1)) is None
    assert db.status() == {"reachable": True, "unreachable_since": None}
    assert _events(events) == ["fleet_database_unreachable", "fleet_database_back"]
    await anyio.to_thread.run_sync(db.close)


async def test_a_flush_that_meets_the_database_gone_does_not_say_it_is_back(tmp_path: Path) -> None:
    loop = make_runner(tmp_path, f"host={tmp_path}/nosock port=5432 dbname=x connect_timeout=1", "a")
    loop.db.pool_timeout_s = 0.3
    loop.db._migrated = True  # reached once, then the database went away
    row = TrialRow(regime="r", arm="stock", ok=True)
    loop.spool.append(
        UnitResult(
            study_id=1, generation=0, cand_id="g0c0", round=0, host="a", trials=(row,), finished_at=0.0
        )
    )
    loop.spooled = 1
    try:
        for _ in range(3):  # what the heartbeat task does each beat
            await loop._flush()
            assert loop.fleet_status()["database"]["reachable"] is False and loop.spooled == 1
    finally:
        loop._close()
    assert _events(loop.paths.events) == ["fleet_database_unreachable"], "no flapping"


async def test_a_heartbeat_that_fails_with_any_error_keeps_the_daemon_running(
    tmp_path: Path, fleet_dsn: str, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    loop = make_runner(tmp_path, fleet_dsn, "a")
    loop.studies[TUNE] = StudyContext(TUNE, 1, "web", "0" * 64, LeaderLock(fleet_dsn, 1))

    def boom(*_a: object) -> int:
        raise psycopg.errors.ReadOnlySqlTransaction("read-only: postgresql://u:TOPSECRET@db/x")

    monkeypatch.setattr(fleet_work, "_beat", boom)
    try:
        with anyio.move_on_after(1.0) as scope:
            await loop._heartbeats()  # beats every 0.2 s; only the deadline ends it
        assert scope.cancelled_caught
        assert loop.fleet_status()["database"]["reachable"] is False
        monkeypatch.setattr(fleet_work, "_beat", lambda *_a: (_ for _ in ()).throw(RuntimeError("a bug")))
        with anyio.move_on_after(0.5) as scope:
            await loop._heartbeats()
        assert scope.cancelled_caught
    finally:
        loop._close()
    assert "TOPSECRET" not in capfd.readouterr().err


def test_errors_that_mean_not_now_are_unreachable_and_bugs_are_not() -> None:
    for e in (
        psycopg.OperationalError("server closed the connection"),
        psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"),
        psycopg.errors.IdleInTransactionSessionTimeout("terminating connection"),
        psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
    ):
        assert is_unreachable(e), e
    for e in (psycopg.errors.UndefinedTable("no table"), psycopg.errors.CheckViolation("bad arm"),
              RuntimeError("a bug")):  # fmt: skip
        assert not is_unreachable(e), e


def test_a_read_only_database_spools_the_unit(fleet_dsn: str, tmp_path: Path) -> None:
    store = open_fleet_store(fleet_dsn)
    store.migrate()
    sid = store.join_study("web", KEY).study_id
    store.create_generation(sid, 0, CANDIDATES, rounds=1, created_by="a")
    (unit,) = store.claim(sid, "a", lease_s=300)
    store.close()
    db = fleet_dsn.split("dbname=")[1].split()[0]
    with psycopg.connect(fleet_dsn, autocommit=True) as conn:  # a standby, or a database made read-only
        conn.execute(f'ALTER DATABASE "{db}" SET default_transaction_read_only = on')
    store = open_fleet_store(fleet_dsn)
    spool = TrialSpool(tmp_path / "spool.jsonl")
    try:
        assert write_or_spool(store, spool, result_for(unit, "a")) is None
        assert len(spool) == 1
    finally:
        store.close()


def test_every_connection_bounds_its_waits(fleet_dsn: str) -> None:
    kwargs = session_kwargs("postgresql://u@h/db?connect_timeout=3&options=-c%20work_mem%3D8MB")
    assert "connect_timeout" not in kwargs and kwargs["keepalives"] == 1 and kwargs["tcp_user_timeout"] > 0
    assert kwargs["options"].endswith("-c work_mem=8MB"), "the operator's options come last, and win"
    store = open_fleet_store(fleet_dsn)
    try:
        with store.pool.connection() as conn:
            got = [conn.execute(f"SHOW {name}").fetchone() for name in ("statement_timeout", "lock_timeout")]
        assert got == [("15s",), ("10s",)]
    finally:
        store.close()
    lock = LeaderLock(fleet_dsn, 3)
    try:
        assert lock.try_acquire()
        assert lock._conn is not None
        row = lock._conn.execute("SHOW statement_timeout").fetchone()
        assert row == ("15s",)
    finally:
        lock.release()


def test_two_threads_opening_the_store_at_once_open_one_pool(fleet_dsn: str, tmp_path: Path) -> None:
    db = FleetDatabase(fleet_dsn, events=EventLog(tmp_path / "e.jsonl", time.time), clock=time.time)
    got: list[FleetStore] = []
    threads = [threading.Thread(target=lambda: got.append(db.open())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(got) == 2 and got[0] is got[1]
    finally:
        db.close()
