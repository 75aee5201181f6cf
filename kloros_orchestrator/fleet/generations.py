"""A study's generations as the leader drives them: created with the engine's state, concluded once.

Theory of operation. The leader asks its engine for a generation's candidates and creates the
generation, its work units (candidate × round) and the engine's state *after* the ask in one
transaction (:func:`create_generation`). When every unit is done, the leader tells the engine the
verdict, asks it for the next generation, and records the conclusion of the old one together with
the creation of the new one in one transaction (:func:`conclude_and_advance`). A leader that dies at
any point leaves the database either before or after that transaction: the next leader restores the
engine from the newest generation's row and does the same step again, so no generation is concluded
twice and the engine is never told twice. Concluding a generation that is already concluded changes
nothing and returns False (two leaders cannot both win: the row's update is the arbiter).

Blocking psycopg calls: the daemon runs them in worker threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import psycopg
from psycopg.types.json import Jsonb

from kloros_orchestrator.fleet.pgstore import FleetStore, UnitCounts, insert_units


class GenerationInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The newest generation of a study and where it stands."""

    generation: int
    rounds: int | None
    engine: dict[str, Any] | None
    concluded: bool
    verdict: dict[str, Any] | None
    counts: UnitCounts

    @property
    def complete(self) -> bool:
        """Every work unit is done (a generation without units never is)."""
        return self.counts.total > 0 and self.counts.done == self.counts.total


def _insert(
    conn: psycopg.Connection[Any],
    study_id: int,
    generation: int,
    candidates: Mapping[str, Mapping[str, Any]],
    *,
    rounds: int,
    created_by: str,
    engine: Mapping[str, Any],
) -> bool:
    made = conn.execute(
        "INSERT INTO generations (study_id, generation, created_by, engine, rounds)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING generation",
        (study_id, generation, created_by, Jsonb(dict(engine)), rounds),
    ).fetchone()
    if made is None:
        return False
    insert_units(conn, study_id, generation, candidates, rounds)
    return True


def create_generation(
    store: FleetStore,
    study_id: int,
    generation: int,
    candidates: Mapping[str, Mapping[str, Any]],
    *,
    rounds: int,
    created_by: str,
    engine: Mapping[str, Any],
) -> bool:
    """The generation, its units and the engine's state, in one transaction; False when it existed."""
    with store.pool.connection() as conn, conn.transaction():
        return _insert(
            conn, study_id, generation, candidates, rounds=rounds, created_by=created_by, engine=engine
        )


def conclude_and_advance(
    store: FleetStore,
    study_id: int,
    generation: int,
    *,
    verdict: Mapping[str, Any],
    by: str,
    candidates: Mapping[str, Mapping[str, Any]],
    rounds: int,
    engine: Mapping[str, Any],
) -> bool:
    """Conclude ``generation`` and create ``generation + 1`` in one transaction; False (nothing
    changed) when the generation was concluded already."""
    with store.pool.connection() as conn, conn.transaction():
        row = conn.execute(
            "UPDATE generations SET concluded_at = now(), concluded_by = %s, verdict = %s"
            " WHERE study_id = %s AND generation = %s AND concluded_at IS NULL RETURNING generation",
            (by, Jsonb(dict(verdict)), study_id, generation),
        ).fetchone()
        if row is None:
            return False
        return _insert(
            conn, study_id, generation + 1, candidates, rounds=rounds, created_by=by, engine=engine
        )


def latest(store: FleetStore, study_id: int) -> GenerationInfo | None:
    """The newest generation of the study with its unit counts; None before the first."""
    with store.pool.connection() as conn:
        row = conn.execute(
            "SELECT generation, rounds, engine, concluded_at IS NOT NULL, verdict FROM generations"
            " WHERE study_id = %s ORDER BY generation DESC LIMIT 1",
            (study_id,),
        ).fetchone()
        if row is None:
            return None
        counts = conn.execute(
            "SELECT state, count(*) FROM work_units WHERE study_id = %s AND generation = %s GROUP BY state",
            (study_id, row[0]),
        ).fetchall()
    return GenerationInfo(
        generation=int(row[0]),
        rounds=None if row[1] is None else int(row[1]),
        engine=None if row[2] is None else dict(row[2]),
        concluded=bool(row[3]),
        verdict=None if row[4] is None else dict(row[4]),
        counts=UnitCounts(**{str(r[0]): int(r[1]) for r in counts}),
    )


def verdict_of(store: FleetStore, study_id: int, generation: int) -> dict[str, Any] | None:
    """The recorded fleet verdict of a concluded generation (None while it is not concluded)."""
    with store.pool.connection() as conn:
        row = conn.execute(
            "SELECT verdict FROM generations WHERE study_id = %s AND generation = %s",
            (study_id, generation),
        ).fetchone()
    return None if row is None or row[0] is None else dict(row[0])


__all__ = ["GenerationInfo", "conclude_and_advance", "create_generation", "latest", "verdict_of"]
