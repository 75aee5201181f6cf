"""The durable restore journal, and the file and command primitives that knobs are written through.

Every write of a system knob goes through :class:`KnobJournal` first: the original is stored
durably before anything changes, so a crashed run can be undone at the next start-up without
knowing which domain changed what. Entries name absolute paths (or restore commands), never domains'
knob objects, which is what lets a journal restore what another run's domains left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec
from loguru import logger

from kloros_orchestrator.store import atomic_write_bytes, fsync_dir

__all__ = ["JournalEntry", "KnobJournal", "Runner", "read_text", "run_argv", "write_text"]

_MAX_READ = 65536  # sysfs attributes are at most one page; never read an endless file to its end

Runner = Callable[[Sequence[str]], str]
"""Runs an argv (never through a shell) and returns its stdout; raises on failure."""


def run_argv(argv: Sequence[str]) -> str:
    """Default :data:`Runner`: ``subprocess.run`` with a timeout; non-zero exit raises."""
    proc = subprocess.run(list(argv), check=True, capture_output=True, text=True, timeout=60)
    return proc.stdout


# --- file primitives ---------------------------------------------------------------------------------
def read_text(path: Path) -> str:
    with open(path, "rb") as f:
        return f.read(_MAX_READ).decode("utf-8")


def write_text(path: Path, text: str) -> None:
    """Write ``text`` in one write(2), as sysfs requires; never creates a missing file."""
    data = text.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        written = os.write(fd, data)
    finally:
        os.close(fd)
    if written != len(data):
        raise OSError(f"short write to {path}: {written} of {len(data)} bytes")


# --- journal -----------------------------------------------------------------------------------------
class JournalEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """One journaled original. ``path`` is an absolute file path, or a key such as
    ``nvidia-smi:gpu0:power_limit_w`` for knobs restored by running ``restore_argv``."""

    path: str
    original: str
    domain: str
    knob: str
    restore: str | None = None  # text to write back; None → ``original``
    restore_argv: list[str] | None = None
    domains: list[str] = msgspec.field(default_factory=list)
    seq: int = 0


class KnobJournal:
    """Durable restore journal: one JSON file per changed knob in ``directory``.

    The first original recorded for a path wins until it is restored, however many candidates
    are applied on top. Entries name absolute paths (or restore commands), so a journal left by a
    crashed run can be restored at start-up by a journal that knows no domain at all.
    """

    def __init__(self, directory: Path, *, runner: Runner | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.runner: Runner = runner or run_argv
        self._last_seq = 0

    def _file(self, path: str) -> Path:
        return self.directory / (hashlib.sha1(path.encode()).hexdigest() + ".json")

    def _next_seq(self) -> int:
        self._last_seq = max(time.time_ns(), self._last_seq + 1)
        return self._last_seq

    def record(
        self,
        path: str | Path,
        original: str,
        domain: str,
        knob: str,
        *,
        restore: str | None = None,
        restore_argv: Sequence[str] | None = None,
    ) -> bool:
        """Journal ``original`` for ``path`` (durably) unless it is already journaled; True if new."""
        key = str(path)
        file = self._file(key)
        if file.exists():
            entry = self._load(file)
            if domain not in entry.domains:
                # Another domain touches the same file: it must be able to restore it as well.
                entry = msgspec.structs.replace(entry, domains=[*entry.domains, domain])
                atomic_write_bytes(file, msgspec.json.encode(entry), mode=0o600)
            return False
        entry = JournalEntry(
            path=key,
            original=original,
            domain=domain,
            knob=knob,
            restore=restore,
            restore_argv=list(restore_argv) if restore_argv is not None else None,
            domains=[domain],
            seq=self._next_seq(),
        )
        atomic_write_bytes(file, msgspec.json.encode(entry), mode=0o600)
        return True

    @staticmethod
    def _load(file: Path) -> JournalEntry:
        return msgspec.json.decode(file.read_bytes(), type=JournalEntry)

    def _entries(self) -> tuple[list[tuple[Path, JournalEntry]], list[str]]:
        good: list[tuple[Path, JournalEntry]] = []
        problems: list[str] = []
        for file in sorted(self.directory.glob("*.json")):
            try:
                good.append((file, self._load(file)))
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                problems.append(f"{file}: unreadable journal entry: {exc}")
        # Restore in the order originals were taken: writing one knob can reset another
        # (an I/O scheduler change resets nr_requests), so the later one must be written last.
        good.sort(key=lambda fe: (fe[1].seq, fe[1].path))
        return good, problems

    def pending(self, domain: str | None = None) -> list[JournalEntry]:
        """Journaled originals not yet restored (all, or those a ``domain`` recorded)."""
        entries, _ = self._entries()
        return [e for _, e in entries if domain is None or domain in e.domains or domain == e.domain]

    def restore(self, domain: str | None = None) -> list[str]:
        """Write originals back (all, or a ``domain``'s); return problems. A failed entry is kept."""
        entries, problems = self._entries()
        restored_any = False
        for file, entry in entries:
            if domain is not None and domain not in entry.domains and domain != entry.domain:
                continue
            try:
                if entry.restore_argv is not None:
                    self.runner(entry.restore_argv)
                else:
                    write_text(Path(entry.path), entry.original if entry.restore is None else entry.restore)
            except (OSError, subprocess.SubprocessError) as exc:
                msg = f"{entry.path}: could not restore {entry.knob} ({entry.domain}): {exc}"
                logger.error("knob restore failed: {}", msg)
                problems.append(msg)
                continue
            file.unlink()
            restored_any = True
            logger.debug("restored {} ({}) from journal", entry.knob, entry.path)
        if domain is None:
            # A temp file left by a crash mid-record belongs to a write that never happened.
            for tmp in self.directory.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    restored_any = True
        if restored_any:
            fsync_dir(self.directory)
        return problems

    def restore_all(self) -> list[str]:
        """Restore every journaled original (start-up after a crash, stop); return problems."""
        return self.restore(None)
