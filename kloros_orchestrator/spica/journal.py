"""The durable restore journal, and the confined file primitives that knobs are read and written through.

Theory of operation
-------------------
Every write of a system knob goes through :class:`KnobJournal` first: the original is stored
durably (one JSON file per changed knob) before anything changes, so a crashed run can be undone at
the next start-up.

Journal entries are data, never instructions. What is written or run on restore comes from a
*declared* knob, a :class:`RestoreTarget`: the domain name and knob name, the journal keys the knob
may have (its absolute files under ``sysfs_root``, resolved when the knob was declared, or a tool
key such as ``nvidia-smi:gpu0:power_limit_w``), and the domain's own code that puts an original
back. The journal only supplies the original value, which that code checks against the knob's type.
An entry whose ``(domain, knob)`` is not declared, whose path is not one of the declared keys, or
whose value does not fit is never acted on: it is moved aside as ``<name>.rejected-<unix_ts>``,
reported once, and the other entries are still restored. ``restore_argv`` in old files is read and
ignored; a restore command handed to :meth:`KnobJournal.record` by this process's own code is kept
in memory only, and run only while the entry on disk is still the one this process wrote.

Who declares: every domain declares its knobs when it discovers them
(:meth:`~kloros_orchestrator.spica.base.SpicaDomain.discover`), and at start-up
:func:`~kloros_orchestrator.spica.registry.open_journal` declares the knobs of every registered
domain class before the crash journal is restored, so a journal left by another run is restored
without that run's objects.

Knob files are opened only through :func:`read_knob` / :func:`write_knob`: the real path of the
file's directory must stay inside ``sysfs_root``'s kernel trees (:data:`ALLOWED_PREFIXES`, so
``sys/block/sda → ../devices/...`` still works), the file itself is opened ``O_NOFOLLOW`` and must be
a regular file with one link. A symlink out of the tree is never written through.

The journal directory is created 0700 (tightened to 0700, and taken over when run as root, if it
already exists with other bits or another owner) and opened once: every entry operation is relative
to that descriptor, so replacing the directory afterwards cannot redirect the journal. Entry files
are read bounded: a regular file only, ``O_NOFOLLOW | O_NONBLOCK``, at most :data:`MAX_ENTRY_BYTES`,
decoded by msgspec into :class:`JournalEntry`; a FIFO, a symlink or a deeply nested document is
rejected, never followed, blocked on or crashed on.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
import subprocess
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final

import msgspec
from loguru import logger

from kloros_orchestrator.errors import DomainError, KlorosError

__all__ = [
    "ALLOWED_PREFIXES",
    "MAX_ENTRY_BYTES",
    "JournalEntry",
    "KnobJournal",
    "RefusedPath",
    "RestoreTarget",
    "Runner",
    "read_knob",
    "read_text",
    "run_argv",
    "write_knob",
]

# System knobs live in kernel tunables only; nothing else under sysfs_root may be written.
ALLOWED_PREFIXES: Final = ("proc/sys/", "sys/")
MAX_ENTRY_BYTES: Final = 65536  # a journal entry is a few hundred bytes; never read a huge file
_MAX_READ = 65536  # sysfs attributes are at most one page; never read an endless file to its end
_MAX_VALUE = 4096  # a kernel tunable's text fits in one page
_NAME = r"^[a-z][a-z0-9_]*$"
_OPEN_ENTRY = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
# open(2) errors that say what the entry is (a symlink, a FIFO or device), not that the disk fails.
_NOT_A_FILE = frozenset({errno.ELOOP, errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP, errno.EACCES, errno.EPERM})

Runner = Callable[[Sequence[str]], str]
"""Runs an argv (never through a shell) and returns its stdout; raises on failure."""


def run_argv(argv: Sequence[str]) -> str:
    """Default :data:`Runner`: ``subprocess.run`` with a timeout; non-zero exit raises."""
    proc = subprocess.run(list(argv), check=True, capture_output=True, text=True, timeout=60)
    return proc.stdout


class RefusedPath(DomainError):
    """A knob file that may not be touched: its real directory leaves ``sysfs_root``'s kernel trees,
    it is a symlink, or it is not a regular file."""


# --- file primitives ---------------------------------------------------------------------------------
def _read_fd(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def read_text(path: Path) -> str:
    """A small host file (``proc/meminfo``, a sysfs attribute), at most 64 KiB; regular files only,
    opened non-blocking, so a FIFO or a device in its place fails instead of hanging."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return _read_fd(fd, _MAX_READ).decode("utf-8")
    finally:
        os.close(fd)


def _kernel_trees(sysfs_root: Path) -> tuple[str, ...]:
    real_root = os.path.realpath(sysfs_root)
    return tuple(os.path.join(real_root, prefix) for prefix in ALLOWED_PREFIXES)


def _inside(real_dir: str, trees: tuple[str, ...]) -> bool:
    return any((real_dir.rstrip("/") + "/").startswith(tree) for tree in trees)


def _open_knob(path: Path, sysfs_root: Path, flags: int) -> int:
    """An fd of the regular file ``path`` whose real directory lies in sysfs_root's kernel trees."""
    path = Path(path)
    trees = _kernel_trees(sysfs_root)
    real_dir = os.path.realpath(path.parent)
    if path.name in ("", ".", "..") or not _inside(real_dir, trees):
        raise RefusedPath(f"{path}: refused: its real directory {real_dir} is outside {' and '.join(trees)}")
    dfd = os.open(real_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        # realpath and open are two steps: check the directory that was really opened as well.
        with contextlib.suppress(OSError):
            opened = os.readlink(f"/proc/self/fd/{dfd}")
            if not _inside(opened, trees):
                raise RefusedPath(f"{path}: refused: its directory moved to {opened}")
        try:
            fd = os.open(path.name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY,
                         dir_fd=dfd)  # fmt: skip
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RefusedPath(f"{path}: refused: a symlink") from None
            raise
    finally:
        os.close(dfd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        raise RefusedPath(f"{path}: refused: not a regular file with a single link")
    return fd


def read_knob(path: Path, sysfs_root: Path) -> str:
    """The text of a knob file (at most 64 KiB), opened confined to ``sysfs_root`` (:class:`RefusedPath`)."""
    fd = _open_knob(path, sysfs_root, os.O_RDONLY)
    try:
        return _read_fd(fd, _MAX_READ).decode("utf-8")
    finally:
        os.close(fd)


def write_knob(path: Path, text: str, sysfs_root: Path) -> None:
    """Write ``text`` in one write(2), as sysfs requires; never creates a missing file, never follows a
    symlink, never writes outside ``sysfs_root``'s kernel trees (:class:`RefusedPath`)."""
    data = text.encode("utf-8")
    fd = _open_knob(path, sysfs_root, os.O_WRONLY)
    try:
        if os.fstat(fd).st_size:
            os.ftruncate(fd, 0)  # a regular file; the kernel's own files ignore the size
        written = os.write(fd, data)
    finally:
        os.close(fd)
    if written != len(data):
        raise OSError(f"short write to {path}: {written} of {len(data)} bytes")


# --- journal -----------------------------------------------------------------------------------------
Name = Annotated[str, msgspec.Meta(pattern=_NAME, max_length=64)]
Value = Annotated[str, msgspec.Meta(max_length=_MAX_VALUE)]


class JournalEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """One journaled original. ``path`` is an absolute file path, or a key such as
    ``nvidia-smi:gpu0:power_limit_w`` for a knob its domain restores with a tool.

    ``restore`` (the text that was to be written back) and ``restore_argv`` (files of older versions)
    are informational: a restore is built from the declared knob, never from them.
    """

    path: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    original: Value
    domain: Name
    knob: Name
    restore: Value | None = None
    restore_argv: list[str] | None = None
    domains: list[Name] = msgspec.field(default_factory=list)
    seq: int = 0


@dataclass(frozen=True)
class RestoreTarget:
    """A declared knob: where a journaled original of ``(domain, knob)`` may be put back, and how.

    ``keys`` are the entry paths the knob may have (its files, absolute, resolved under sysfs_root
    when it was declared; or its tool keys). ``put(key, original)`` is the domain's code: it raises
    ValueError (or :class:`RefusedPath`) for an original or a file it refuses, which rejects the entry,
    and OSError/SubprocessError/KlorosError when the restore failed and should be tried again.
    """

    domain: str
    knob: str
    keys: frozenset[str]
    put: Callable[[str, str], None]


class _Rejected(ValueError):
    """An entry that is never acted on (moved aside)."""


def _entry_name(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest() + ".json"


def _open_directory(directory: Path) -> int:
    """The journal directory, 0700 and ours, opened (never through a symlink)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise KlorosError(f"journal directory {directory}: cannot open it as a directory: {exc}") from exc
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() and os.geteuid() == 0:
            logger.warning("journal directory {} belonged to uid {}: taken over", directory, st.st_uid)
            os.fchown(fd, 0, os.getegid())
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    except OSError as exc:
        os.close(fd)
        raise KlorosError(f"journal directory {directory}: cannot make it private (0700): {exc}") from exc
    return fd


class KnobJournal:
    """Durable restore journal: one JSON file per changed knob in ``directory``.

    The first original recorded for a path wins until it is restored, however many candidates
    are applied on top. Restores act only on declared knobs (:meth:`declare`); see the module
    docstring.
    """

    def __init__(
        self, directory: Path, *, runner: Runner | None = None, targets: Iterable[RestoreTarget] = ()
    ) -> None:
        self.directory = Path(directory)
        self._dfd = _open_directory(self.directory)
        self._close = weakref.finalize(self, os.close, self._dfd)
        self.runner: Runner = runner or run_argv
        self._last_seq = 0
        self._targets: dict[tuple[str, str], list[RestoreTarget]] = {}
        self._commands: dict[str, tuple[int, tuple[str, ...]]] = {}  # key → (seq, argv), this process's
        self.declare(targets)

    def close(self) -> None:
        self._close()

    def declare(self, targets: Iterable[RestoreTarget]) -> None:
        """Add restore targets; a target with the same knob and keys as an earlier one replaces it."""
        for target in targets:
            key = (target.domain, target.knob)
            # A new list, not an edit: a restore in another thread may be reading the old one.
            kept = [t for t in self._targets.get(key, ()) if t.keys != target.keys]
            self._targets[key] = [*kept, target]

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
        """Journal ``original`` for ``path`` (durably) unless it is already journaled; True if new.

        ``restore_argv`` stays in this process's memory (it is code, not data): it is never written.
        """
        key = str(path)
        if len(original) > _MAX_VALUE or (restore is not None and len(restore) > _MAX_VALUE):
            raise DomainError(f"{key}: a value of more than {_MAX_VALUE} characters is not a knob's")
        name = _entry_name(key)
        try:
            entry: JournalEntry | None = self._load(name)
        except FileNotFoundError:
            entry = None
        except _Rejected as exc:
            self._reject(name, str(exc))
            entry = None
        if entry is not None:  # _load checked that it names this key
            if domain not in entry.domains:
                # Another domain touches the same file: it must be able to restore it as well.
                self._write(name, msgspec.structs.replace(entry, domains=[*entry.domains, domain]))
            return False
        seq = self._next_seq()
        self._write(name, JournalEntry(key, original, domain, knob, restore, None, [domain], seq))
        if restore_argv is not None:
            self._commands[key] = (seq, tuple(restore_argv))
        return True

    # --- entry files, relative to the directory descriptor ------------------------------------------
    def _write(self, name: str, entry: JournalEntry) -> None:
        """Atomic: a reader sees the old or the new file, never a torn one."""
        tmp = f".{name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=self._dfd)  # fmt: skip
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(msgspec.json.encode(entry))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, name, src_dir_fd=self._dfd, dst_dir_fd=self._dfd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=self._dfd)
            raise
        os.fsync(self._dfd)

    def _load(self, name: str) -> JournalEntry:
        """The entry in file ``name``; _Rejected for anything but a sound entry, OSError for a failing
        disk (the file is then kept for the next try)."""
        try:
            fd = os.open(name, _OPEN_ENTRY, dir_fd=self._dfd)
        except OSError as exc:
            if exc.errno in _NOT_A_FILE:
                raise _Rejected(f"cannot be opened as a plain file: {exc.strerror or exc}") from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _Rejected("not a regular file")
            data = _read_fd(fd, MAX_ENTRY_BYTES + 1)
        finally:
            os.close(fd)
        if len(data) > MAX_ENTRY_BYTES:
            raise _Rejected(f"larger than {MAX_ENTRY_BYTES} bytes")
        try:
            entry = msgspec.json.decode(data, type=JournalEntry)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            raise _Rejected(f"unreadable journal entry: {str(exc)[:200]}") from None
        if _entry_name(entry.path) != name:
            raise _Rejected(f"file name does not match its path {entry.path!r}")
        return entry

    def _reject(self, name: str, reason: str) -> str:
        """Move ``name`` aside as ``<name>.rejected-<unix_ts>``; the problem, as reported."""
        aside = f"{name}.rejected-{int(time.time())}"
        for n in range(1, 100):
            if not _exists(aside, self._dfd):
                break
            aside = f"{name}.rejected-{int(time.time())}-{n}"
        try:
            os.rename(name, aside, src_dir_fd=self._dfd, dst_dir_fd=self._dfd)
            os.fsync(self._dfd)
            where = f"moved aside as {aside}"
        except OSError as exc:
            where = f"could not be moved aside: {exc.strerror or exc}"
        msg = f"{self.directory / name}: journal entry rejected ({reason}); {where}"
        logger.error("{}", msg)
        return msg

    def _scan(self) -> tuple[list[tuple[str, JournalEntry]], list[tuple[str, str]], list[str]]:
        """Sound entries in restore order, rejected files with the reason, unreadable files' problems."""
        good: list[tuple[str, JournalEntry]] = []
        bad: list[tuple[str, str]] = []
        failing: list[str] = []
        for name in sorted(os.listdir(self._dfd)):
            if not name.endswith(".json") or name.startswith("."):
                continue
            try:
                good.append((name, self._load(name)))
            except FileNotFoundError:
                continue
            except _Rejected as exc:
                bad.append((name, str(exc)))
            except OSError as exc:
                failing.append(f"{self.directory / name}: journal entry unreadable, kept: {exc}")
        # Restore in the order originals were taken: writing one knob can reset another
        # (an I/O scheduler change resets nr_requests), so the later one must be written last.
        good.sort(key=lambda ne: (ne[1].seq, ne[1].path))
        return good, bad, failing

    # --- restore -------------------------------------------------------------------------------------
    def pending(self, domain: str | None = None) -> list[JournalEntry]:
        """Journaled originals not yet restored (all, or those a ``domain`` recorded); bad files skipped."""
        entries, _, _ = self._scan()
        return [e for _, e in entries if domain is None or domain in e.domains or domain == e.domain]

    def _put_back(self, entry: JournalEntry) -> None:
        own = self._commands.get(entry.path)
        if own is not None and own[0] == entry.seq:
            self.runner(own[1])  # handed to record() by this process's own domain code
            return
        self._target_for(entry).put(entry.path, entry.original)

    def _target_for(self, entry: JournalEntry) -> RestoreTarget:
        """The declared knob the entry names; else a declared knob with that file of another domain
        that recorded it too (the first recorder may not be in use in this run)."""
        candidates: list[RestoreTarget] = [*self._targets.get((entry.domain, entry.knob), ())]
        candidates += [t for (domain, _), ts in self._targets.items() if domain in entry.domains for t in ts]
        for target in candidates:
            if entry.path in target.keys:
                return target
        raise _Rejected(f"{entry.path!r} is not a declared file or key of this knob")

    def restore(self, domain: str | None = None) -> list[str]:
        """Put originals back (all, or a ``domain``'s); return problems.

        A failed restore keeps its entry for the next try; a refused entry is moved aside.
        """
        entries, bad, problems = self._scan()
        problems += [self._reject(name, reason) for name, reason in bad]
        changed = bool(bad)
        for name, entry in entries:
            if domain is not None and domain not in entry.domains and domain != entry.domain:
                continue
            try:
                self._put_back(entry)
            except (ValueError, RefusedPath) as exc:
                problems.append(self._reject(name, f"{entry.knob} ({entry.domain}): {exc}"))
                continue
            except Exception as exc:  # a failing tool or disk, or a domain's bug: the others still restore
                msg = f"{entry.path}: could not restore {entry.knob} ({entry.domain}): {exc}"
                logger.error("knob restore failed: {}", msg)
                problems.append(msg)
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=self._dfd)
            self._commands.pop(entry.path, None)
            changed = True
            logger.debug("restored {} ({}) from journal", entry.knob, entry.path)
        if domain is None:
            # A temp file left by a crash mid-record belongs to a write that never happened.
            for tmp in os.listdir(self._dfd):
                if tmp.startswith(".") and tmp.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        os.unlink(tmp, dir_fd=self._dfd)
                        changed = True
        if changed:
            os.fsync(self._dfd)
        return problems

    def restore_all(self) -> list[str]:
        """Restore every journaled original (start-up after a crash, stop); return problems."""
        return self.restore(None)


def _exists(name: str, dfd: int) -> bool:
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True
