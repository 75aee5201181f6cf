"""The fleet schema against a real PostgreSQL: versioned, idempotent, safe when daemons race."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from kloros_orchestrator.fleet.errors import SchemaTooNew
from kloros_orchestrator.fleet.schema import LATEST, MIGRATIONS, migrate, schema_version

TABLES = {"fleet_schema", "studies", "hosts", "generations", "work_units", "trials", "phase_runs"}


def _tables(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {str(r[0]) for r in rows}


def test_a_new_database_is_migrated_to_the_latest_version_once(fleet_dsn: str) -> None:
    with psycopg.connect(fleet_dsn, autocommit=True) as conn:
        assert schema_version(conn) == 0
        assert migrate(conn) == [v for v, _ in MIGRATIONS]
        assert schema_version(conn) == LATEST
        assert _tables(conn) == TABLES
        assert migrate(conn) == []  # a second start applies nothing
        rows = conn.execute("SELECT version FROM fleet_schema ORDER BY version").fetchall()
        assert [r[0] for r in rows] == [v for v, _ in MIGRATIONS]


def test_daemons_migrating_at_once_apply_each_version_exactly_once(fleet_dsn: str) -> None:
    applied: list[list[int]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def one() -> None:
        try:
            with psycopg.connect(fleet_dsn, autocommit=True) as conn:
                start.wait(timeout=30)
                applied.append(migrate(conn))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert sorted(applied) == [[], [], [], [v for v, _ in MIGRATIONS]]


def test_a_failed_migration_leaves_nothing_behind(fleet_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = ((1, (*MIGRATIONS[0][1], "CREATE TABLE studies (id int)")),)  # the last statement fails
    monkeypatch.setattr("kloros_orchestrator.fleet.schema.MIGRATIONS", broken)
    with psycopg.connect(fleet_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DuplicateTable):
            migrate(conn)
        assert schema_version(conn) == 0
        assert _tables(conn) == set()  # fleet_schema too: the one transaction rolled back


def test_a_version_2_database_with_a_study_is_migrated_to_the_latest(
    fleet_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fleet created by an earlier release keeps its studies, gains ``phase_runs`` (v3) and work
    units that can be ``dropped`` by the fleet's race (v4)."""
    with psycopg.connect(fleet_dsn, autocommit=True) as conn:
        monkeypatch.setattr("kloros_orchestrator.fleet.schema.MIGRATIONS", MIGRATIONS[:2])
        monkeypatch.setattr("kloros_orchestrator.fleet.schema.LATEST", 2)
        assert migrate(conn) == [1, 2]
        assert "phase_runs" not in _tables(conn)
        row = conn.execute(
            "INSERT INTO studies (name, key_digest, key) VALUES ('web', 'k', '{}') RETURNING id"
        ).fetchone()
        assert row is not None
        monkeypatch.undo()
        assert LATEST == 4
        assert migrate(conn) == [3, 4]
        assert schema_version(conn) == 4 and _tables(conn) == TABLES
        conn.execute("INSERT INTO generations (study_id, generation, created_by) VALUES (%s, 0, 'a')", row)
        unit = (
            "INSERT INTO work_units (study_id, generation, cand_id, round, genome, state)"
            " VALUES (%s, 0, %s, 0, '{}', %s)"
        )
        conn.execute(unit, (row[0], "c0", "dropped"))
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(unit, (row[0], "c1", "lost"))
        conn.execute(
            "INSERT INTO phase_runs (study_id, host, run_id, domain, stock_digest, finished_at,"
            " variants, trials) VALUES (%s, 'a', 'r1', 'cpu', 's', 1.0, '{}', '[]')",
            (row[0],),
        )
        with pytest.raises(psycopg.errors.ForeignKeyViolation):  # a run belongs to a study
            conn.execute(
                "INSERT INTO phase_runs (study_id, host, run_id, domain, stock_digest, finished_at,"
                " variants, trials) VALUES (%s, 'a', 'r2', 'cpu', 's', 1.0, '{}', '[]')",
                (int(row[0]) + 1,),
            )


def test_a_database_newer_than_the_daemon_is_refused(fleet_dsn: str) -> None:
    with psycopg.connect(fleet_dsn, autocommit=True) as conn:
        migrate(conn)
        conn.execute("INSERT INTO fleet_schema (version) VALUES (%s)", (LATEST + 1,))
        with pytest.raises(SchemaTooNew, match=f"version {LATEST + 1}"):
            migrate(conn)
