"""The local spool: finished work units kept on disk while the fleet database cannot be reached.

Theory of operation. A host that finishes a unit while the database is down appends the unit's
:class:`~kloros_orchestrator.fleet.records.UnitResult` to ``<state_dir>/fleet/spool.jsonl`` as one
line, written with one ``write(2)`` on an ``O_APPEND`` descriptor and fsynced before
:meth:`TrialSpool.append` returns: a crash leaves every acknowledged line whole (a torn last line
of an unacknowledged append is skipped on reading, and the next append starts on a fresh line so
it is never glued to it). When the database is back, :meth:`TrialSpool.flush` writes the lines in
order through the store's ``complete_unit``; the lines it wrote are then removed from the head of
the file (the rest, and whatever was appended meanwhile, rewritten atomically: temporary file,
fsync, rename), or the file is removed when none is left. A crash between a database commit and
that rewrite leaves a written line in the spool: the next flush writes it again, and the store's
idempotent keys make that a no-op (``Outcome.ALREADY``). So nothing is lost and nothing is counted
twice. A line the store refuses as no measurement of its unit (``Outcome.MISMATCHED``: a spool
left from another database or study) is dropped and counted.

One flush runs at a time; a flush that finds another one running (its database call may be stuck)
returns at once without writing. The file lock is held only while the file itself is read or
written, never during a database call, so an append never waits for the database.

The spool knows nothing of psycopg: the caller passes the write function and what means "still
unreachable" (exception types, or a predicate on the exception).
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
from kloros_orchestrator.safefs import make_dirs, open_append, open_regular
from kloros_orchestrator.store import atomic_write_bytes, fsync_dir, read_jsonl

SPOOL_NAME: Final = "spool.jsonl"

_encoder = msgspec.json.Encoder()


def spool_path(state_dir: Path) -> Path:
    return Path(state_dir) / "fleet" / SPOOL_NAME


Unreachable = tuple[type[BaseException], ...] | Callable[[BaseException], bool]


class FlushReport(msgspec.Struct, kw_only=True):
    """What one flush did: outcomes by kind, lines left, bad lines, and why it stopped early (the
    database went away again; ``None`` when it did not)."""

    written: int = 0
    already: int = 0
    superseded: int = 0
    mismatched: int = 0
    left: int = 0
    unreadable: int = 0
    interrupted: str | None = None
    busy: bool = False  # another flush was running: this one did nothing


def _matches(unreachable: Unreachable, e: BaseException) -> bool:
    return isinstance(e, unreachable) if isinstance(unreachable, tuple) else unreachable(e)


class TrialSpool:
    """The spool file of one daemon; safe to use from several threads of it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()  # the file
        self._flushing = threading.Lock()  # one flush at a time

    def append(self, result: UnitResult) -> None:
        """Keep one finished unit durably (returns after fsync)."""
        line = _encoder.encode(result) + b"\n"
        with self._lock:
            make_dirs(self.path.parent)
            if not _ends_a_line(self.path):
                line = b"\n" + line  # a torn last line (a crash mid-append) must not swallow this one
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

    def flush(self, write: Callable[[UnitResult], Outcome], unreachable: Unreachable) -> FlushReport:
        """Write spooled units in order until done or until ``write`` raises what ``unreachable``
        matches (the rest stay for the next flush, ``interrupted`` says why); other exceptions
        propagate, the spool kept as it was less what was written. ``left``: the units in the spool
        afterwards. Another flush running: nothing is done (``busy``)."""
        report = FlushReport()
        if not self._flushing.acquire(blocking=False):
            report.left, report.busy = len(self), True
            return report
        try:
            with self._lock:
                units, report.unreadable = self._read()
            done = 0
            try:
                for unit in units:
                    try:
                        outcome = write(unit)
                    except Exception as e:
                        if not _matches(unreachable, e):
                            raise
                        report.interrupted = str(e) or type(e).__name__
                        logger.warning("fleet spool: database unreachable again; {} kept", len(units) - done)
                        break
                    done += 1
                    setattr(report, outcome.value, getattr(report, outcome.value) + 1)
            finally:
                with self._lock:
                    if done or report.unreadable:
                        self._drop_head(done)
                    report.left = len(self._read()[0])  # appends made meanwhile count too
        finally:
            self._flushing.release()
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

    def _drop_head(self, done: int) -> None:
        """Remove the first ``done`` units (written by this flush); appended ones stay."""
        rest = self._read()[0][done:]
        if rest:
            atomic_write_bytes(self.path, b"".join(_encoder.encode(u) + b"\n" for u in rest))
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return
        fsync_dir(self.path.parent)


def _ends_a_line(path: Path) -> bool:
    """Whether ``path`` is missing, empty or ends with a newline (never follows a link)."""
    try:
        fd = open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        size = os.fstat(fd).st_size
        return size == 0 or os.pread(fd, 1, size - 1) == b"\n"
    finally:
        os.close(fd)


__all__ = ["SPOOL_NAME", "FlushReport", "TrialSpool", "spool_path"]
