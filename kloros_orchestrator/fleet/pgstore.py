"""The PostgreSQL study store: studies, hosts, generations, leased work units and trial rows.

Theory of operation. Synchronous psycopg 3 over a ``psycopg_pool.ConnectionPool`` (the daemon calls
it from worker threads; each call borrows one connection for one short transaction). Connections
are in autocommit mode; every multi-statement step is one explicit transaction. Every time is the
database's (``now()``), so hosts' clocks never decide who holds a lease.

* **Joining**: a study is found or created by (name, key digest) in one race-free statement; a host
  announces itself with :meth:`FleetStore.heartbeat` and counts as alive while its last heartbeat is
  recent (:meth:`FleetStore.hosts_alive`).
* **Work**: the study's leader (``leader.LeaderLock``) creates a generation and its work units
  (candidate × round) in one transaction; creating one that exists changes nothing. Hosts
  :meth:`~FleetStore.claim` units with ``SELECT … FOR UPDATE SKIP LOCKED``: two claimers never lock
  the same row, so never get the same unit, and neither waits for the other. A claim holds until
  ``expires_at``; the claimer :meth:`~FleetStore.renew` s it while measuring; a unit whose claim
  expired (its host died or lost the database) is claimable again.
* **Results**: :meth:`~FleetStore.complete_unit` writes a unit's trial rows and marks it done in one
  transaction, holding the unit's row lock. A unit already done by this host is a retry: nothing is
  written. A unit done by another host (our claim expired and it was re-measured elsewhere) keeps
  that host's rows: ours are dropped and reported as superseded, so each unit counts once, from one
  host. The rows' primary key (``schema`` module) with ``ON CONFLICT DO NOTHING`` guards the rest.
  A result is written only into the unit it says it measured (its unit id, genome digest, study
  key digest and database, ``records.UnitResult``): anything else, or no such unit, is refused as
  ``Outcome.MISMATCHED`` (a spool left from another database or study) and nothing is written.

Every connection bounds its waits (``fleet.session``: keepalives, ``tcp_user_timeout``,
``statement_timeout``, ``lock_timeout``). Errors are raised to the caller; :func:`is_unreachable`
says which mean "not now" — every ``psycopg.Error`` (a lost connection, the pool's ``PoolTimeout``, a
timeout, a server in recovery or read-only, a session ended for idling) except those that say the
statement or its data is wrong (``NOT_TRANSIENT``: a retry would fail the same way). For those the
daemon spools finished units (``spool.TrialSpool``) and carries on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import msgspec
import psycopg
from loguru import logger
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from kloros_orchestrator.fleet.errors import FleetError
from kloros_orchestrator.fleet.key import StudyKey
from kloros_orchestrator.fleet.records import Outcome, UnitResult, WorkUnit, genome_digest
from kloros_orchestrator.fleet.schema import migrate
from kloros_orchestrator.fleet.session import session_kwargs
from kloros_orchestrator.fleet.spool import TrialSpool

# Database errors that say the statement or its data is wrong: retrying later would fail again, so
# they are bugs to report, never a reason to spool. Every other psycopg.Error means "not now".
NOT_TRANSIENT: Final = (
    psycopg.ProgrammingError,
    psycopg.DataError,
    psycopg.IntegrityError,
    psycopg.NotSupportedError,
)


def is_unreachable(e: BaseException) -> bool:
    """Whether ``e`` means the database cannot do it now (spool, try later): see the module docstring."""
    return isinstance(e, psycopg.Error) and not isinstance(e, NOT_TRANSIENT)


Pool = ConnectionPool[psycopg.Connection[TupleRow]]


class Study(msgspec.Struct, frozen=True, kw_only=True):
    study_id: int
    name: str
    key_digest: str


class UnitCounts(msgspec.Struct, frozen=True, kw_only=True):
    """A generation's work units by state (``claimed`` counts expired claims too)."""

    open: int = 0
    claimed: int = 0
    done: int = 0
    dropped: int = 0  # raced out: never measured (schema v4)

    @property
    def total(self) -> int:
        """The units to be measured (dropped ones are not)."""
        return self.open + self.claimed + self.done


_CLAIM: Final = """
WITH picked AS (
    SELECT id FROM work_units
    WHERE study_id = %(study)s AND state IN ('open', 'claimed')
      AND (state = 'open' OR expires_at < now())
    ORDER BY generation, round, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED)
UPDATE work_units AS w
SET state = 'claimed', claimed_by = %(host)s, claims = w.claims + 1,
    expires_at = now() + make_interval(secs => %(lease)s)
FROM picked WHERE w.id = picked.id
RETURNING w.id, w.generation, w.cand_id, w.round, w.genome, extract(epoch FROM w.expires_at)
"""

_INSERT_TRIAL: Final = """
INSERT INTO trials (study_id, generation, cand_id, round, host, regime, arm, ok, kpis, result)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING
"""


class FleetStore:
    """One database's fleet tables, through a connection pool (see the module docstring)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._identity: str | None = None

    def identity(self) -> str:
        """This database, as ``<cluster system identifier>:<database oid>`` (read once): a spool
        line claimed from another database (even a same-named one) never matches it."""
        if self._identity is None:
            with self.pool.connection() as conn:
                try:
                    row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
                    system = str(row[0]) if row is not None else "?"
                except psycopg.errors.InsufficientPrivilege:
                    system = "?"
                got = conn.execute(
                    "SELECT oid::text FROM pg_database WHERE datname = current_database()"
                ).fetchone()
            self._identity = f"{system}:{got[0] if got is not None else '?'}"
        return self._identity

    def close(self) -> None:
        self.pool.close()

    def migrate(self) -> list[int]:
        """Create or upgrade the schema (``schema.migrate``); the versions applied by this call."""
        with self.pool.connection() as conn:
            return migrate(conn)

    def join_study(self, name: str, key: StudyKey) -> Study:
        """The study of this name and key, created when it does not exist yet (safe when racing)."""
        digest = key.digest()
        with self.pool.connection() as conn:
            row = conn.execute(
                "INSERT INTO studies (name, key_digest, key) VALUES (%s, %s, %s)"
                " ON CONFLICT (name, key_digest) DO NOTHING RETURNING id",
                (name, digest, Jsonb(msgspec.to_builtins(key))),
            ).fetchone()
            if row is None:
                row = conn.execute(
                    "SELECT id FROM studies WHERE name = %s AND key_digest = %s", (name, digest)
                ).fetchone()
        if row is None:  # only if the study was deleted between the two statements
            raise FleetError(f"study {name!r} ({digest[:12]}) vanished while joining it")
        return Study(study_id=int(row[0]), name=name, key_digest=digest)

    def heartbeat(self, study_id: int, host: str) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "INSERT INTO hosts (study_id, host) VALUES (%s, %s)"
                " ON CONFLICT (study_id, host) DO UPDATE SET last_seen = now()",
                (study_id, host),
            )

    def hosts_alive(self, study_id: int, within_s: float) -> list[str]:
        """The hosts whose last heartbeat is at most ``within_s`` seconds old, by name."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT host FROM hosts WHERE study_id = %s"
                " AND last_seen >= now() - make_interval(secs => %s) ORDER BY host",
                (study_id, within_s),
            ).fetchall()
        return [str(r[0]) for r in rows]

    def create_generation(
        self,
        study_id: int,
        generation: int,
        candidates: Mapping[str, Mapping[str, Any]],
        *,
        rounds: int,
        created_by: str,
    ) -> bool:
        """The generation with one work unit per candidate × round; False when it existed already
        (a leader that took over re-creates nothing)."""
        with self.pool.connection() as conn, conn.transaction():
            made = conn.execute(
                "INSERT INTO generations (study_id, generation, created_by) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING RETURNING generation",
                (study_id, generation, created_by),
            ).fetchone()
            if made is None:
                return False
            insert_units(conn, study_id, generation, candidates, rounds)
        return True

    def latest_generation(self, study_id: int) -> int | None:
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT max(generation) FROM generations WHERE study_id = %s", (study_id,)
            ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def claim(self, study_id: int, host: str, *, lease_s: float, limit: int = 1) -> list[WorkUnit]:
        """Up to ``limit`` open (or expired) units, oldest generation and round first, leased to
        ``host`` for ``lease_s`` seconds. Empty when nothing is claimable now."""
        database = self.identity()
        with self.pool.connection() as conn:
            rows = conn.execute(
                _CLAIM, {"study": study_id, "host": host, "lease": lease_s, "limit": limit}
            ).fetchall()
        return sorted(
            (
                WorkUnit(
                    unit_id=int(r[0]),
                    study_id=study_id,
                    generation=int(r[1]),
                    cand_id=str(r[2]),
                    round=int(r[3]),
                    genome=dict(r[4]),
                    expires_at=float(r[5]),
                    database=database,
                )
                for r in rows
            ),
            key=lambda u: (u.generation, u.round, u.unit_id),
        )

    def renew(self, unit_ids: Iterable[int], host: str, *, lease_s: float) -> set[int]:
        """Extend this host's claims; returns the units still held (a missing one was re-claimed by
        another host after it expired, or completed: stop measuring it)."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "UPDATE work_units SET expires_at = now() + make_interval(secs => %s)"
                " WHERE id = ANY(%s) AND claimed_by = %s AND state = 'claimed' RETURNING id",
                (lease_s, list(unit_ids), host),
            ).fetchall()
        return {int(r[0]) for r in rows}

    def release(self, unit_ids: Iterable[int], host: str) -> int:
        """Give back claims this host will not finish (a stop): claimable at once, not after the
        lease. Returns how many were released."""
        with self.pool.connection() as conn:
            cur = conn.execute(
                "UPDATE work_units SET state = 'open', claimed_by = NULL, expires_at = NULL"
                " WHERE id = ANY(%s) AND claimed_by = %s AND state = 'claimed'",
                (list(unit_ids), host),
            )
            return cur.rowcount

    def complete_unit(self, result: UnitResult) -> Outcome:
        """Write a finished unit's trial rows and mark it done, in one transaction (see the module
        docstring for retries, superseded and mismatched results)."""
        unit = (result.study_id, result.generation, result.cand_id, result.round)
        with self.pool.connection() as conn, conn.transaction():
            row = conn.execute(
                "SELECT w.state, w.done_by, w.id, w.genome, s.key_digest FROM work_units w"
                " JOIN studies s ON s.id = w.study_id WHERE w.study_id = %s AND w.generation = %s"
                " AND w.cand_id = %s AND w.round = %s FOR UPDATE OF w",
                unit,
            ).fetchone()
            problem = "no such unit" if row is None else self._mismatch(result, row)
            if row is None or problem is not None:
                logger.warning("fleet result for unit {} refused ({}): not written", unit, problem)
                return Outcome.MISMATCHED
            if row[0] == "done":
                return Outcome.ALREADY if row[1] == result.host else Outcome.SUPERSEDED
            if row[0] == "dropped":  # raced out while it was measured: the race no longer wants it
                return Outcome.SUPERSEDED
            with conn.cursor() as cur:
                cur.executemany(
                    _INSERT_TRIAL,
                    [
                        (*unit, result.host, t.regime, t.arm, t.ok, Jsonb(t.kpis), Jsonb(t.result))
                        for t in result.trials
                    ],
                )
            conn.execute(
                "UPDATE work_units SET state = 'done', done_by = %s, done_at = now(), expires_at = NULL"
                " WHERE id = %s",
                (result.host, row[2]),
            )
        return Outcome.WRITTEN

    def _mismatch(self, result: UnitResult, row: tuple[Any, ...]) -> str | None:
        """Why ``result`` is no measurement of this unit (None: it is); fields it lacks are not checked."""
        if result.unit_id is not None and result.unit_id != int(row[2]):
            return f"unit id {result.unit_id}, here {row[2]}"
        if result.genome_digest is not None and result.genome_digest != genome_digest(dict(row[3])):
            return "another genome"
        if result.key_digest is not None and result.key_digest != row[4]:
            return "another study key"
        if result.database is not None and result.database != self.identity():
            return "claimed from another database"
        return None

    def drop_units(self, study_id: int, generation: int, drops: Mapping[str, int]) -> int:
        """Drop the units not yet done of each candidate from its round ``drops[cand_id]`` on (the
        fleet's race no longer wants them); a claim in progress loses its lease. Idempotent."""
        if not drops:
            return 0
        dropped = 0
        with self.pool.connection() as conn, conn.transaction():
            for cand_id, first in sorted(drops.items()):
                cur = conn.execute(
                    "UPDATE work_units SET state = 'dropped', expires_at = NULL WHERE study_id = %s AND"
                    " generation = %s AND cand_id = %s AND round >= %s AND state IN ('open', 'claimed')",
                    (study_id, generation, cand_id, first),
                )
                dropped += max(cur.rowcount, 0)
        return dropped

    def unit_counts(self, study_id: int, generation: int) -> UnitCounts:
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT state, count(*) FROM work_units WHERE study_id = %s AND generation = %s"
                " GROUP BY state",
                (study_id, generation),
            ).fetchall()
        return UnitCounts(**{str(r[0]): int(r[1]) for r in rows})

    def trial_rows(self, study_id: int, generation: int) -> list[dict[str, Any]]:
        """Every trial row of a generation (each unit's rows come from the host that completed it)."""
        with self.pool.connection() as conn:
            cur = conn.execute(
                "SELECT cand_id, round, host, regime, arm, ok, kpis, result FROM trials"
                " WHERE study_id = %s AND generation = %s ORDER BY cand_id, round, host, regime, arm",
                (study_id, generation),
            )
            names = [d.name for d in cur.description or ()]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def write_or_spool(store: FleetStore, spool: TrialSpool, result: UnitResult) -> Outcome | None:
    """Record a finished unit in the database or, when it cannot be reached, in the spool (None).

    Spooled units are written by ``spool.flush(store.complete_unit, is_unreachable)`` once the
    database answers again; the daemon flushes before writing new results, so order is kept.
    """
    try:
        return store.complete_unit(result)
    except psycopg.Error as e:
        if not is_unreachable(e):
            raise
        logger.warning(
            "fleet store unreachable ({}): unit {}/{} round {} spooled",
            type(e).__name__,
            result.generation,
            result.cand_id,
            result.round,
        )
        spool.append(result)
        return None


def insert_units(
    conn: psycopg.Connection[Any],
    study_id: int,
    generation: int,
    candidates: Mapping[str, Mapping[str, Any]],
    rounds: int,
) -> None:
    """One work unit per candidate × round of a generation just inserted (same transaction)."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO work_units (study_id, generation, cand_id, round, genome)"
            " VALUES (%s, %s, %s, %s, %s)",
            [
                (study_id, generation, cand_id, r, Jsonb(dict(genome)))
                for r in range(rounds)
                for cand_id, genome in candidates.items()
            ],
        )


def open_fleet_store(
    dsn: str, *, min_size: int = 1, max_size: int = 4, timeout_s: float = 10.0
) -> FleetStore:
    """A store over a pool for ``dsn`` (a libpq connection string or ``postgresql://`` URI).

    The pool opens without waiting: a database that is down at start-up makes the first call raise
    (``is_unreachable`` after ``timeout_s``), it does not stop the daemon. Each connection is
    checked when borrowed, so one broken by a server restart is replaced (after the pool's backoff
    of about a second), not handed out.
    """
    pool: Pool = ConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        open=False,
        timeout=timeout_s,
        check=ConnectionPool.check_connection,
        kwargs={"autocommit": True, **session_kwargs(dsn)},
        name="kloros-fleet",
    )
    pool.open(wait=False)
    return FleetStore(pool)


__all__ = [
    "NOT_TRANSIENT",
    "FleetStore",
    "Study",
    "UnitCounts",
    "insert_units",
    "is_unreachable",
    "open_fleet_store",
    "write_or_spool",
]
