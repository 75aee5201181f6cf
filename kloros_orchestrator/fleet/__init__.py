"""The fleet: identical hosts sharing one study in PostgreSQL (README, "Running a fleet").

Only the psycopg-free parts are re-exported here (the study key, the records, the spool): a daemon
with the local store imports none of psycopg. The database side is imported by name where the
PostgreSQL store is configured: ``fleet.pgstore`` (store, pool, write-or-spool), ``fleet.schema``
(versioned migrations) and ``fleet.leader`` (leader election).
"""

from __future__ import annotations

from kloros_orchestrator.fleet.errors import FleetError, KeyUnavailable, SchemaTooNew
from kloros_orchestrator.fleet.key import StudyKey, cpu_model, knob_space_hash, memory_gib, study_key
from kloros_orchestrator.fleet.records import Outcome, TrialRow, UnitResult, WorkUnit
from kloros_orchestrator.fleet.spool import FlushReport, TrialSpool, spool_path

__all__ = [
    "FleetError",
    "FlushReport",
    "KeyUnavailable",
    "Outcome",
    "SchemaTooNew",
    "StudyKey",
    "TrialRow",
    "TrialSpool",
    "UnitResult",
    "WorkUnit",
    "cpu_model",
    "knob_space_hash",
    "memory_gib",
    "spool_path",
    "study_key",
]
