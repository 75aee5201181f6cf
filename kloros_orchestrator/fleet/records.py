"""What crosses the fleet store's boundary: claimed work units and the trial rows of a finished one.

A work unit is one candidate × one round of one generation. The host that claims it measures the
candidate and, interleaved with it, its own current configuration (the ``stock`` arm, as everywhere
in the daemon), as a single host does today; the unit's trial rows are then written in one
transaction with its completion (``pgstore.FleetStore.complete_unit``) or, while the database is
unreachable, kept in the local spool (``spool.TrialSpool``) as a :class:`UnitResult` line. The
natural key of a row, ``(study, generation, cand_id, round, host, regime, arm)``, is what makes a
retried write harmless.

A result also says what it measured: the unit's id, the digest of the genome measured
(:func:`genome_digest`), the study key's digest and the database it was claimed from
(``FleetStore.identity``). The store writes it only into the unit it names, so a spool line left
from another database or study (the store's address changed, the spool stayed) is refused
(``Outcome.MISMATCHED``), never counted as a measurement of another genome.

These are plain msgspec structs: no psycopg here (the spool must work without the database).
"""

from __future__ import annotations

import enum
import hashlib
from typing import Any, Final, Literal

import msgspec

SPOOL_SCHEMA: Final = "fleet_unit_result.v1"

Arm = Literal["candidate", "stock"]  # "stock": the host's current configuration


class WorkUnit(msgspec.Struct, frozen=True, kw_only=True):
    """A claimed unit: what to measure, and until when (database time) the claim holds."""

    unit_id: int
    study_id: int
    generation: int
    cand_id: str
    round: int
    genome: dict[str, Any]
    expires_at: float  # Unix seconds, the database's clock
    database: str | None = None  # the store's identity (``FleetStore.identity``), when known


class TrialRow(msgspec.Struct, frozen=True, kw_only=True):
    """One trial of a work unit: one regime, one arm. ``result`` is the ``TrialResult`` as builtins."""

    regime: str
    arm: Arm
    ok: bool
    kpis: dict[str, float] = msgspec.field(default_factory=dict)
    result: dict[str, Any] = msgspec.field(default_factory=dict)


class UnitResult(msgspec.Struct, frozen=True, kw_only=True):
    """A finished work unit: the rows to write and the unit they complete (one spool line)."""

    study_id: int
    generation: int
    cand_id: str
    round: int
    host: str
    trials: tuple[TrialRow, ...]
    finished_at: float  # Unix seconds, this host's clock (informative only)
    schema: str = SPOOL_SCHEMA
    # What was measured (module docstring); None in a line written before these were recorded.
    unit_id: int | None = None
    genome_digest: str | None = None
    key_digest: str | None = None
    database: str | None = None


class Outcome(enum.Enum):
    """What writing a :class:`UnitResult` did."""

    WRITTEN = "written"  # the rows were inserted and the unit completed
    ALREADY = "already"  # this host had completed the unit before (a retry): nothing changed
    SUPERSEDED = "superseded"  # another host completed the unit first: its rows stand, ours are dropped
    MISMATCHED = "mismatched"  # no such unit here, or it is another genome/study/database: dropped


def genome_digest(genome: dict[str, Any]) -> str:
    """sha256 of the genome as canonical JSON (keys sorted): what a result says it measured."""
    return hashlib.sha256(msgspec.json.encode(genome, order="sorted")).hexdigest()


__all__ = ["SPOOL_SCHEMA", "Arm", "Outcome", "TrialRow", "UnitResult", "WorkUnit", "genome_digest"]
