"""A fleet runner's turn against a real PostgreSQL: the leader never leaves a complete generation
unconcluded and gives its lock up when its turn ends; a lost lease stops the measurement; a stop while
a measured unit is being written spools it rather than dropping it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import psycopg
import pytest
from test_fleet_runner import REGIMES, TUNE, UNITS, make_runner

import kloros_orchestrator.runtime.fleet_work as fleet_work
from kloros_orchestrator.fleet.pgstore import FleetStore, is_unreachable, open_fleet_store
from kloros_orchestrator.fleet.records import Outcome, TrialRow, UnitResult, WorkUnit
from kloros_orchestrator.model import TrialResult
from kloros_orchestrator.runtime.fleet_work import StudyContext


@pytest.fixture
def other_host(fleet_dsn: str) -> Iterator[FleetStore]:
    store = open_fleet_store(fleet_dsn)
    yield store
    store.close()


def _query(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return list(conn.execute(sql).fetchall())


def _finished(unit: WorkUnit, host: str) -> UnitResult:
    rows = tuple(
        TrialRow(regime=r, arm=arm, ok=True, kpis={"ops": 1.0}, result=msgspec.to_builtins(
            TrialResult(domain=TUNE, cand_id=unit.cand_id, regime=r, ok=True, kpis={"ops": 1.0})))
        for r in REGIMES for arm in ("stock", "candidate")
    )  # fmt: skip
    return UnitResult(study_id=unit.study_id, generation=unit.generation, cand_id=unit.cand_id,
                      round=unit.round, host=host, trials=rows, finished_at=0.0)  # fmt: skip


async def test_the_leader_concludes_a_generation_whose_last_unit_lands_late_then_gives_the_lock_up(
    tmp_path: Path, fleet_dsn: str, other_host: FleetStore
) -> None:
    """Another host finishes the last unit between the leader's conclusion check and the end of its
    step: the leader's turn must not end there (nobody would conclude while it holds the lock)."""
    a = make_runner(tmp_path, fleet_dsn, "a")
    c = make_runner(tmp_path, fleet_dsn, "c")
    held: list[WorkUnit] = []
    lead = a._lead

    async def lead_then_b_acts(name: str, ctx: StudyContext) -> None:
        await lead(name, ctx)
        if not held:  # generation 0 exists now: host b claims one unit of it
            held.extend(
                await anyio.to_thread.run_sync(lambda: other_host.claim(ctx.study_id, "b", lease_s=300))
            )
            return
        counts = await anyio.to_thread.run_sync(lambda: other_host.unit_counts(ctx.study_id, 0))
        if counts.done == counts.total - 1 and counts.claimed == 1:  # b finishes its unit right now
            result = _finished(held[0], "b")
            assert await anyio.to_thread.run_sync(lambda: other_host.complete_unit(result)) is Outcome.WRITTEN

    a._lead = lead_then_b_acts  # type: ignore[method-assign]
    try:
        with anyio.fail_after(60):
            await a.tournament(TUNE)
        gens = _query(fleet_dsn, "SELECT generation, concluded_by FROM generations ORDER BY generation")
        assert gens == [(0, "a"), (1, None)], "the leader's turn ended only once generation 0 was concluded"
        assert held and not a.studies[TUNE].lock.held(), "its turn over, the leader holds no lock"
        with anyio.fail_after(30):  # another host's turn takes the lead at once
            await c.tournament(TUNE)
        gens = _query(fleet_dsn, "SELECT generation, concluded_by FROM generations ORDER BY generation")
        assert gens == [(0, "a"), (1, "c"), (2, None)]
        assert not c.studies[TUNE].lock.held() and c.fleet_status()["studies"][TUNE]["leader"] is True
    finally:
        for loop in (a, c):
            loop._close()


async def test_a_lost_lease_stops_the_measurement(tmp_path: Path, fleet_dsn: str) -> None:
    loop = make_runner(tmp_path, fleet_dsn, "a", hang=True)
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(loop.tournament, TUNE)
                while loop.in_hand is None:
                    await anyio.sleep(0.01)
                first = loop.in_hand
                with psycopg.connect(fleet_dsn, autocommit=True) as conn:  # re-claimed elsewhere
                    conn.execute("UPDATE work_units SET claimed_by = 'b' WHERE id = %s", (first.unit_id,))
                while loop.in_hand is None or loop.in_hand.unit_id == first.unit_id:
                    await anyio.sleep(0.01)  # a measures another unit now
                tg.cancel_scope.cancel()
    finally:
        loop._close()
    rows = _query(fleet_dsn, f"SELECT state, claimed_by FROM work_units WHERE id = {first.unit_id}")
    assert rows == [("claimed", "b")], "b's claim was left alone"
    assert '"fleet_lease_lost"' in loop.paths.events.read_text()


async def test_a_stop_while_a_measured_unit_is_written_spools_it(
    tmp_path: Path, fleet_dsn: str, other_host: FleetStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fleet_work, "RECORD_BOUND_S", 0.3)
    loop = make_runner(tmp_path, fleet_dsn, "a")
    flush = loop._flush
    writing = anyio.Event()

    async def stuck_flush() -> None:  # the database stops answering once the first unit is measured
        if loop.units_claimed and loop.in_hand is None:
            writing.set()
            await anyio.sleep_forever()
        await flush()

    loop._flush = stuck_flush  # type: ignore[method-assign]
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(loop.tournament, TUNE)
                await writing.wait()
                tg.cancel_scope.cancel()  # SIGTERM
    finally:
        loop._close()
    (spooled,) = loop.spool.pending()
    assert loop.spooled == 1 and spooled.unit_id is not None and spooled.database is not None
    report = loop.spool.flush(other_host.complete_unit, is_unreachable)
    assert (report.written, report.left) == (1, 0)
    done = _query(fleet_dsn, "SELECT count(*) FROM work_units WHERE state = 'done'")
    assert done == [(1,)] and UNITS > 1


def test_the_settings_repr_hides_the_store_address() -> None:
    settings = fleet_work.FleetSettings(
        dsn="postgresql://fleet:TOPSECRET@db/x",
        name="n",
        host_id="h",
        manifest={},
        lease_s=30,
        heartbeat_s=10,
    )
    assert "TOPSECRET" not in repr(settings) and "host_id='h'" in repr(settings)
