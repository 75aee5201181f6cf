"""Files under ``state_dir``, opened the way a daemon running as root must open them.

Theory of operation
-------------------
The daemon runs as root and keeps everything it remembers in ``state_dir``. A file there replaced
by a symbolic link would let another user steer root's writes (a linked ``lock`` truncates its
target) and reads (a link to ``/dev/zero`` never ends, a FIFO never answers, a file nested 20,000
deep ends the decoder in RecursionError). ``statedir.check_state_dir`` looks the state directory
over at start-up; these primitives make sure nothing slips through afterwards:

* :func:`read_bounded` is how a file is read back: never through a symbolic link, regular files
  only, opened non-blocking, at most ``max_bytes``. :func:`nesting_exceeds` keeps too deeply nested
  JSON away from the recursive decoders.
* :func:`reject` moves a bad file aside (:func:`quarantine`: ``<name>.rejected-<unix_ts>``), so the
  same bad file never fails two starts in a row, logs it and returns a :class:`Rejected` for the
  caller's event.
* :func:`open_append` opens a log for appending on the same terms; :class:`LogFile` is the daemon
  log's sink on top of it, rotated by size.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from loguru import logger

from kloros_orchestrator.errors import SchemaError

MAX_JSON_DEPTH: Final = 64  # nested arrays/objects in a file read back; ours nest about 8 deep
DIR_MODE: Final = 0o755
PRIVATE_DIR_MODE: Final = 0o700  # the knob journal
FILE_MODE: Final = 0o644

_NO_FOLLOW: Final = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_READ: Final = os.O_RDONLY | _NO_FOLLOW
_APPEND: Final = os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NO_FOLLOW


class RefusedFile(OSError):
    """A path the daemon will not read or append to: a symbolic link, not a regular file, too large.

    An ``OSError`` (``strerror`` is the reason), so callers that survive a failing disk survive it too.
    """


def kind(mode: int) -> str:
    """What an ``st_mode`` is, for messages: "a directory", "a FIFO", ..."""
    kinds = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "an unknown kind of file")


def _refused(path: Path, mode: int) -> RefusedFile:
    if stat.S_ISLNK(mode):
        return RefusedFile(errno.ELOOP, "is a symbolic link (never followed)", str(path))
    code = errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL
    return RefusedFile(code, f"is {kind(mode)}, not a regular file", str(path))


def open_regular(path: Path, flags: int, mode: int = FILE_MODE) -> int:
    """``os.open`` of a regular file that is not a symbolic link (``O_NOFOLLOW``, ``O_NONBLOCK``:
    a FIFO cannot hang the open); anything else raises :class:`RefusedFile`. The descriptor is
    returned blocking again."""
    try:
        fd = os.open(path, flags | _NO_FOLLOW, mode)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):  # ENXIO: a FIFO nobody reads
            raise
        try:
            found = os.lstat(path).st_mode
        except OSError:
            raise e from None
        if stat.S_ISREG(found):
            raise
        raise _refused(path, found) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refused(path, st.st_mode)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bounded(path: Path, *, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them.

    A symbolic link, a directory, a FIFO or a device, or a file larger than ``max_bytes``, raises
    :class:`RefusedFile`; a missing file ``FileNotFoundError``.
    """
    st = os.lstat(path)  # refuse a device before opening it: an open can have side effects
    if not stat.S_ISREG(st.st_mode):
        raise _refused(path, st.st_mode)
    too_large = RefusedFile(errno.EFBIG, f"is larger than {max_bytes} bytes", str(path))
    fd = open_regular(path, _READ)
    try:
        if os.fstat(fd).st_size > max_bytes:
            raise too_large
        chunks: list[bytes] = []
        left = max_bytes + 1  # one byte more than allowed tells a file that grew meanwhile
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise too_large
        return b"".join(chunks)
    finally:
        os.close(fd)


# A JSON string, possibly unterminated. Possessive quantifiers keep the substitution linear.
_JSON_STRING: Final = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_OPENERS: Final = frozenset(b"[{")


def nesting_exceeds(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``raw`` nests arrays/objects deeper than ``limit`` (brackets in strings ignored).

    A scan of the bytes, so that such a file never reaches a recursive decoder (json and msgspec
    both raise RecursionError on it); it validates nothing else.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth = 0
    for bracket in _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS):
        depth += 1 if bracket in _OPENERS else -1
        if depth > limit:
            return True
    return False


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path, mode: int = DIR_MODE) -> None:
    """``mkdir -p`` with ``mode`` for every directory it creates (``Path.mkdir`` gives the parents
    the umask's default, which may leave them writable by group or others)."""
    path = Path(path)
    missing: list[Path] = []
    while not os.path.lexists(path):
        missing.append(path)
        path = path.parent
    for p in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(p, mode)


_REJECTED: Final = re.compile(r".+\.rejected-\d+(?:\.\d+)?")


def is_rejected(name: str) -> bool:
    """Whether ``name`` is one :func:`quarantine` gave: never read again, never moved again."""
    return _REJECTED.fullmatch(name) is not None


def quarantine(path: Path, reason: str) -> Path:
    """Rename ``path`` to ``<name>.rejected-<unix_ts>`` beside it and return the new path.

    ``rename(2)`` moves the entry itself: a symbolic link is moved, never followed.
    """
    path = Path(path)
    stem = f"{path.name}.rejected-{int(time.time())}"
    target, n = path.with_name(stem), 0
    while os.path.lexists(target):
        n += 1
        target = path.with_name(f"{stem}.{n}")
    os.rename(path, target)
    with contextlib.suppress(OSError):
        fsync_dir(path.parent)
    logger.warning("moved {} aside to {}: {}", path, target.name, reason)
    return target


@dataclass(frozen=True)
class Rejected:
    """A file that was read back and refused; ``moved_to`` is None when it stayed where it was."""

    path: Path
    reason: str
    moved_to: Path | None

    def fields(self) -> dict[str, Any]:
        """For the caller's event: ``events.record("state_rejected", **rejected.fields())``."""
        return {
            "path": str(self.path),
            "reason": self.reason,
            "moved_to": None if self.moved_to is None else str(self.moved_to),
        }

    def __str__(self) -> str:
        where = f"moved aside to {self.moved_to.name}" if self.moved_to is not None else "left in place"
        return f"{self.reason} ({where})"


def reject(path: Path, reason: str) -> Rejected:
    """Move a bad file aside (so the next start does not meet it again) and say what happened.

    Whatever is there moves: a file, a link, a FIFO, or a directory where a file belongs (the
    daemon never creates one there, and a write onto it would fail forever). A failed rename is
    logged and reported as ``moved_to=None``.
    """
    path = Path(path)
    try:
        return Rejected(path, reason, quarantine(path, reason))
    except OSError as e:
        logger.error("{} could not be moved aside ({}): {}", path, reason, e.strerror or e)
        return Rejected(path, reason, None)


def move_aside_for(e: SchemaError) -> SchemaError:
    """Reject the file ``e`` is about (:func:`reject`); ``e`` saying where it went, if it moved."""
    rejected = reject(Path(e.path), f"{e.field}: {e.problem}")
    if rejected.moved_to is None:
        return e
    return SchemaError(e.path, e.field, f"{e.problem} (moved aside to {rejected.moved_to.name})")


def open_append(path: Path, mode: int = FILE_MODE) -> int:
    """A descriptor appending to the regular file ``path`` (created if missing, never through a link)."""
    return open_regular(path, _APPEND, mode)


class LogFile:
    """The daemon log as a loguru sink: appended through :func:`open_append`, rotated by size.

    Given a path, loguru would follow a planted symbolic link and read braces in the path as a
    format string; given this object it does neither. ``<name>.1`` … ``<name>.<keep>`` hold the
    rotated logs, newest first.
    """

    def __init__(self, path: Path, *, max_bytes: int = 20 * 2**20, keep: int = 3) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self._fd: int | None = open_append(self.path)
        self._size = os.fstat(self._fd).st_size

    def write(self, message: str) -> None:
        data = message.encode("utf-8", "replace")
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        if self._fd is not None:
            self._size += os.write(self._fd, data)  # one write(2) on O_APPEND: lines stay whole

    def _rotate(self) -> None:
        try:
            for i in range(self.keep - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if os.path.lexists(older):
                    os.rename(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.rename(self.path, self.path.with_name(f"{self.path.name}.1"))
            fd = open_append(self.path)
        except OSError:
            self._size = 0  # keep appending where we are; try again after another max_bytes
            return
        old, self._fd, self._size = self._fd, fd, 0
        if old is not None:
            os.close(old)

    def stop(self) -> None:
        """Called by loguru when the sink is removed."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


__all__ = [
    "DIR_MODE",
    "MAX_JSON_DEPTH",
    "PRIVATE_DIR_MODE",
    "LogFile",
    "RefusedFile",
    "Rejected",
    "fsync_dir",
    "is_rejected",
    "kind",
    "make_dirs",
    "move_aside_for",
    "nesting_exceeds",
    "open_append",
    "open_regular",
    "quarantine",
    "read_bounded",
    "reject",
]
