"""The local spool: finished work units kept on disk while the fleet database cannot be reached.

Theory of operation. A host that finishes a unit while the database is down appends the unit's
:class:`~kloros_orchestrator.fleet.records.UnitResult` to ``<state_dir>/fleet/spool.jsonl`` as one
line, written with one ``write(2)`` on an ``O_APPEND`` descriptor and fsynced before
:meth:`TrialSpool.append` returns: a crash leaves every acknowledged line whole (a torn last line
of an unacknowledged append is skipped on reading). When the database is back, :meth:`TrialSpool.flush`
writes the lines in order through the store's ``complete_unit``; the lines not yet written are
then rewritten atomically (temporary file, fsync, rename), or the file is removed when none is
left. A crash between a database commit and that rewrite leaves a written line in the spool: the
next flush writes it again, and the store's idempotent keys make that a no-op
(``Outcome.ALREADY``). So nothing is lost and nothing is counted twice.

The spool knows nothing of psycopg: the caller passes the write function and the exception types
that mean "still unreachable".
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final

import msgspec
from loguru import logger

from kloros_orchestrator.fleet.records import Outcome, UnitResult
from kloros_orchestrator.safefs import make_dirs, open_append
from kloros_orchestrator.store import atomic_write_bytes, fsync_dir, read_jsonl

SPOOL_NAME: Final = "spool.jsonl"

_encoder = msgspec.json.Encoder()


def spool_path(state_dir: Path) -> Path:
    return Path(state_dir) / "fleet" / SPOOL_NAME


class FlushReport(msgspec.Struct, kw_only=True):
    """What one flush did: outcomes by kind, lines left (the database went away again), bad lines."""

    written: int = 0
    already: int = 0
    superseded: int = 0
    left: int = 0
    unreadable: int = 0


class TrialSpool:
    """The spool file of one daemon; safe to use from several threads of it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, result: UnitResult) -> None:
        """Keep one finished unit durably (returns after fsync)."""
        line = _encoder.encode(result) + b"\n"
        with self._lock:
            make_dirs(self.path.parent)
            fd = open_append(self.path)
            try:
                os.write(fd, line)  # one write(2) on O_APPEND: the line is whole or absent
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(self.path.parent)  # a new file's name is durable too

    def pending(self) -> list[UnitResult]:
        """The spooled units, oldest first."""
        with self._lock:
            return self._read()[0]

    def __len__(self) -> int:
        return len(self.pending())

    def flush(
        self,
        write: Callable[[UnitResult], Outcome],
        unreachable: tuple[type[BaseException], ...],
    ) -> FlushReport:
        """Write spooled units in order until done or until ``write`` raises one of ``unreachable``
        (the rest stay for the next flush); other exceptions propagate, the spool kept as it was
        less what was written."""
        report = FlushReport()
        with self._lock:
            units, report.unreadable = self._read()
            done = 0
            try:
                for unit in units:
                    try:
                        outcome = write(unit)
                    except unreachable as e:
                        left = len(units) - done
                        logger.warning("fleet spool: database unreachable again ({}); {} kept", e, left)
                        break
                    done += 1
                    setattr(report, outcome.value, getattr(report, outcome.value) + 1)
            finally:
                report.left = len(units) - done
                if done or report.unreadable:
                    self._rewrite(units[done:])
        return report

    def _read(self) -> tuple[list[UnitResult], int]:
        units: list[UnitResult] = []
        bad = 0
        for obj in read_jsonl(self.path):
            try:
                units.append(msgspec.convert(obj, UnitResult))
            except msgspec.ValidationError as e:
                logger.error("fleet spool: a line that is no unit result is dropped: {}", e)
                bad += 1
        return units, bad

    def _rewrite(self, rest: list[UnitResult]) -> None:
        if rest:
            atomic_write_bytes(self.path, b"".join(_encoder.encode(u) + b"\n" for u in rest))
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return
        fsync_dir(self.path.parent)


__all__ = ["SPOOL_NAME", "FlushReport", "TrialSpool", "spool_path"]
