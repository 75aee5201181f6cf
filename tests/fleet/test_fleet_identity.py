"""A result is written only into the unit it measured: a spool line left from another database, study
or genome (``study.store`` pointed elsewhere, the spool kept) is refused, never counted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from conftest import Cluster
from test_fleet_store import KEY

from kloros_orchestrator.fleet.generations import create_generation
from kloros_orchestrator.fleet.pgstore import FleetStore, is_unreachable, open_fleet_store
from kloros_orchestrator.fleet.records import Outcome, TrialRow, UnitResult, WorkUnit, genome_digest
from kloros_orchestrator.fleet.spool import TrialSpool


def _store(dsn: str, genome: dict[str, Any]) -> tuple[FleetStore, WorkUnit]:
    """A database with one study, generation 0 of one candidate, and that unit claimed by ``h``."""
    s = open_fleet_store(dsn)
    s.migrate()
    sid = s.join_study("web", KEY).study_id
    create_generation(s, sid, 0, {"g0c0": genome}, rounds=1, created_by="a", engine={})
    (unit,) = s.claim(sid, "h", lease_s=60)
    return s, unit


def _result(unit: WorkUnit, **over: Any) -> UnitResult:
    fields: dict[str, Any] = {
        "study_id": unit.study_id, "generation": unit.generation, "cand_id": unit.cand_id,
        "round": unit.round, "host": "h", "finished_at": 0.0, "unit_id": unit.unit_id,
        "genome_digest": genome_digest(unit.genome), "key_digest": KEY.digest(), "database": unit.database,
        "trials": (TrialRow(regime="r", arm="candidate", ok=True, kpis={"ops": 5.0}),),
    }  # fmt: skip
    return UnitResult(**{**fields, **over})


def _state(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return list(conn.execute("SELECT state, done_by FROM work_units").fetchall())


def test_a_spooled_unit_of_another_database_is_refused(tmp_path: Path, pg_cluster: Cluster) -> None:
    names = [pg_cluster.new_database() for _ in range(3)]
    old, new, same = (pg_cluster.dsn(n) for n in names)
    stores: list[FleetStore] = []
    try:
        s_old, measured = _store(old, {"x": 1})
        s_new, _ = _store(new, {"x": 99})  # the same study id, generation, candidate and round
        s_same, _ = _store(same, {"x": 1})  # even the same genome: claimed from another database
        stores += [s_old, s_new, s_same]
        assert len({s.identity() for s in stores}) == 3
        spool = TrialSpool(tmp_path / "spool.jsonl")
        spool.append(_result(measured))  # the database went away: spooled
        for s, dsn in ((s_new, new), (s_same, same)):
            report = spool.flush(s.complete_unit, is_unreachable)
            assert (report.mismatched, report.written, report.left) == (1, 0, 0), report
            assert _state(dsn) == [("claimed", None)], "nothing written into the other database's unit"
            spool.append(_result(measured))
        report = spool.flush(s_old.complete_unit, is_unreachable)
        assert (report.written, report.mismatched) == (1, 0) and _state(old) == [("done", "h")]
    finally:
        for s in stores:
            s.close()
        for n in names:
            pg_cluster.drop_database(n)


def test_a_result_for_another_genome_study_or_unit_is_refused(fleet_dsn: str) -> None:
    s, unit = _store(fleet_dsn, {"x": 1})
    try:
        for bad in (
            {"genome_digest": genome_digest({"x": 2})},
            {"key_digest": "f" * 64},
            {"unit_id": unit.unit_id + 1},
            {"cand_id": "g0c9"},  # no such unit
        ):
            assert s.complete_unit(_result(unit, **bad)) is Outcome.MISMATCHED, bad
        assert _state(fleet_dsn) == [("claimed", None)]
        legacy = _result(unit, unit_id=None, genome_digest=None, key_digest=None, database=None)
        assert s.complete_unit(legacy) is Outcome.WRITTEN, "a line without identity is checked by its unit"
    finally:
        s.close()
