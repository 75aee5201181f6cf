"""The fleet schema in PostgreSQL, versioned, and the migration every daemon runs when it connects.

Theory of operation. ``fleet_schema`` holds one row per applied version. :func:`migrate` runs in
one transaction that first takes a transaction-level advisory lock (``MIGRATION_LOCK``): daemons
starting together queue on the lock, the first applies what is missing, the others then find the
versions recorded and apply nothing. A failure rolls the whole migration back (PostgreSQL's DDL is
transactional), so a database is always at one recorded version. A database at a version this
daemon does not know is refused (:class:`SchemaTooNew`): an old daemon never writes a new schema.
Migrations are only appended to ``MIGRATIONS``; an applied one is never edited.

Version 1 (README, "Running a fleet"):

* ``studies``: one per (name, key digest); ``key`` keeps the key's fields as JSON.
* ``hosts``: who joined a study, and when each was last seen (heartbeats).
* ``generations``: one row per generation of a study, created by the study's leader.
* ``work_units``: candidate × round of a generation; ``state`` open → claimed → done. A claim holds
  until ``expires_at`` (database time, so host clocks do not matter); an expired claim is claimable
  again. ``done_by`` is the one host whose trial rows count for the unit.
* ``trials``: one row per (study, generation, cand_id, round, host, regime, arm) — the primary key
  that makes a retried write insert nothing.

Version 2 adds to ``generations`` the engine's state after the generation was asked, its rounds, and
its conclusion (``concluded_at``, ``concluded_by``, ``verdict``): see ``fleet.generations``.

Version 3 adds ``phase_runs``: one row per (study, host, PHASE run id, domain) with the run's
variants (genome digest → cand_id) and trials as JSON, read back per host, newest first (index
``phase_runs_recent``): see ``fleet.phase_rows``.

Version 4 lets a work unit be ``dropped``: a unit of a candidate the fleet's race eliminated (or of a
round a decided race no longer needs) is never claimed or counted (``runtime.fleet_race``); the
index of claimable units leaves dropped ones out.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg

from kloros_orchestrator.fleet.errors import SchemaTooNew

# Advisory lock keys (two int4: class, object). The class spells "klrf"; object 0 is the migration
# lock, the leader lock of study N is (LEADER_LOCK_CLASS, N).
MIGRATION_LOCK: Final = (0x6B6C7266, 0)
LEADER_LOCK_CLASS: Final = 0x6B6C7267

_V1: Final = (
    """CREATE TABLE studies (
        id bigserial PRIMARY KEY,
        name text NOT NULL,
        key_digest text NOT NULL,
        key jsonb NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (name, key_digest))""",
    """CREATE TABLE hosts (
        study_id bigint NOT NULL REFERENCES studies (id),
        host text NOT NULL,
        joined_at timestamptz NOT NULL DEFAULT now(),
        last_seen timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (study_id, host))""",
    """CREATE TABLE generations (
        study_id bigint NOT NULL REFERENCES studies (id),
        generation integer NOT NULL CHECK (generation >= 0),
        created_by text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (study_id, generation))""",
    """CREATE TABLE work_units (
        id bigserial PRIMARY KEY,
        study_id bigint NOT NULL,
        generation integer NOT NULL,
        cand_id text NOT NULL,
        round integer NOT NULL CHECK (round >= 0),
        genome jsonb NOT NULL,
        state text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'claimed', 'done')),
        claimed_by text,
        expires_at timestamptz,
        claims integer NOT NULL DEFAULT 0,
        done_by text,
        done_at timestamptz,
        UNIQUE (study_id, generation, cand_id, round),
        FOREIGN KEY (study_id, generation) REFERENCES generations (study_id, generation))""",
    "CREATE INDEX work_units_pending ON work_units (study_id, generation, round) WHERE state <> 'done'",
    """CREATE TABLE trials (
        study_id bigint NOT NULL,
        generation integer NOT NULL,
        cand_id text NOT NULL,
        round integer NOT NULL,
        host text NOT NULL,
        regime text NOT NULL,
        arm text NOT NULL CHECK (arm IN ('candidate', 'stock')),
        ok boolean NOT NULL,
        kpis jsonb NOT NULL,
        result jsonb NOT NULL,
        written_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (study_id, generation, cand_id, round, host, regime, arm),
        FOREIGN KEY (study_id, generation, cand_id, round)
            REFERENCES work_units (study_id, generation, cand_id, round))""",
)

# Version 2: a generation carries the engine's state after it was asked (so a leader that takes over
# tells the same engine), its rounds, and its conclusion (who concluded it, when, the fleet verdict).
_V2: Final = (
    """ALTER TABLE generations
        ADD COLUMN engine jsonb,
        ADD COLUMN rounds integer CHECK (rounds >= 1),
        ADD COLUMN concluded_at timestamptz,
        ADD COLUMN concluded_by text,
        ADD COLUMN verdict jsonb""",
)

# Version 3: each host's PHASE runs, so the fleet verdict on a PHASE variant has every host's trials
# (``fleet.phase_rows``). ``finished_at`` is the host's clock: it orders one host's runs only.
_V3: Final = (
    """CREATE TABLE phase_runs (
        study_id bigint NOT NULL REFERENCES studies (id),
        host text NOT NULL,
        run_id text NOT NULL,
        domain text NOT NULL,
        stock_digest text NOT NULL,
        finished_at double precision NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now(),
        variants jsonb NOT NULL CHECK (jsonb_typeof(variants) = 'object'),
        trials jsonb NOT NULL CHECK (jsonb_typeof(trials) = 'array'),
        PRIMARY KEY (study_id, host, run_id, domain))""",
    "CREATE INDEX phase_runs_recent ON phase_runs (study_id, domain, host, finished_at DESC, run_id DESC)",
)

_V4: Final = (
    """ALTER TABLE work_units DROP CONSTRAINT work_units_state_check,
        ADD CONSTRAINT work_units_state_check CHECK (state IN ('open', 'claimed', 'done', 'dropped'))""",
    "DROP INDEX work_units_pending",
    "CREATE INDEX work_units_pending ON work_units (study_id, generation, round)"
    " WHERE state IN ('open', 'claimed')",
)

MIGRATIONS: Final[tuple[tuple[int, tuple[str, ...]], ...]] = ((1, _V1), (2, _V2), (3, _V3), (4, _V4))
LATEST: Final = MIGRATIONS[-1][0]


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The highest applied version; 0 for a database without the fleet schema."""
    row = conn.execute("SELECT to_regclass('fleet_schema') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    got = conn.execute("SELECT coalesce(max(version), 0) FROM fleet_schema").fetchone()
    return int(got[0]) if got is not None else 0


def migrate(conn: psycopg.Connection[Any]) -> list[int]:
    """Bring the database to ``LATEST`` in one transaction under ``MIGRATION_LOCK``; returns the
    versions this call applied (empty when another daemon, or an earlier start, had done it)."""
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", MIGRATION_LOCK)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS fleet_schema ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = schema_version(conn)
        if current > LATEST:
            raise SchemaTooNew(current, LATEST)
        for version, statements in MIGRATIONS:
            if version <= current:
                continue
            for statement in statements:
                conn.execute(statement)  # constants of this module, never input
            conn.execute("INSERT INTO fleet_schema (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied


__all__ = ["LATEST", "LEADER_LOCK_CLASS", "MIGRATIONS", "MIGRATION_LOCK", "migrate", "schema_version"]
