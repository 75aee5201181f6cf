"""The fleet store's errors: each says what is wrong and what the operator can do."""

from __future__ import annotations

from kloros_orchestrator.errors import KlorosError


class FleetError(KlorosError):
    """Root of the fleet store's errors."""


class KeyUnavailable(FleetError):
    """A field of the study key could not be read on this host: it may not join any study."""


class SchemaTooNew(FleetError):
    """The database's fleet schema is newer than this daemon knows: upgrade the daemon first."""

    def __init__(self, found: int, known: int) -> None:
        self.found = found
        self.known = known
        super().__init__(
            f"fleet schema version {found} in the database, this daemon knows up to {known}: "
            "upgrade kloros-orchestrator on this host (an older daemon never writes a newer schema)"
        )


__all__ = ["FleetError", "KeyUnavailable", "SchemaTooNew"]
