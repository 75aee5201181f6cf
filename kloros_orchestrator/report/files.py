"""Reading ``state_dir`` for the report: never through a symbolic link, never moving anything aside.

The report is a reader of a directory the daemon owns (and may be writing right now): every file
goes through the product's own bounded readers with ``move_aside=False``, every directory on the way
to it must be a real directory (a symbolic link there is a problem, never followed), and anything
that cannot be read becomes one line in :attr:`Reader.problems` instead of an exception.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, NamedTuple, TypeVar

from kloros_orchestrator.errors import SchemaError

T = TypeVar("T")

MAX_TEXT: Final = 300  # characters of any string from a file shown in the report


def clip(value: object, limit: int = MAX_TEXT) -> str:
    """A value from a file as text of at most ``limit`` characters (control characters as spaces)."""
    text = value if isinstance(value, str) else str(value)
    text = "".join(" " if (ord(c) < 32 or ord(c) == 127) else c for c in text[: limit + 1])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def number(value: object) -> float | None:
    """A finite number from a file, or None (booleans, strings, NaN and infinities are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    x = float(value)
    return x if x == x and abs(x) != float("inf") else None


def count(value: object) -> int | None:
    """A non-negative integer from a file, or None."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def interval(value: object) -> tuple[float, float] | None:
    """A ``[lo, hi]`` pair of finite numbers with lo ≤ hi, or None."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    lo, hi = number(value[0]), number(value[1])
    if lo is None or hi is None or lo > hi:
        return None
    return (lo, hi)


class Entry(NamedTuple):
    name: str
    mtime: float


class Reader:
    """Paths under one state directory, checked on the way; problems collected, not raised."""

    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir)
        self.problems: list[str] = []

    def rel(self, path: Path | str) -> str:
        """``path`` as ``state_dir/...``: the report never shows where on this machine it was made."""
        return str(path).replace(str(self.root), "state_dir")

    def problem(self, where: Path | str, text: str) -> None:
        self.problems.append(clip(f"{self.rel(where)}: {self.rel(text)}", 500))

    def path(self, *parts: str) -> Path | None:
        """``state_dir/parts...`` when every directory on the way is a real one; None when one is
        missing (nothing written yet) or is something else (a problem is noted)."""
        cur = self.root
        for part in parts[:-1]:
            cur = cur / part
            try:
                mode = os.lstat(cur).st_mode
            except FileNotFoundError:
                return None
            except OSError as e:
                self.problem(cur, f"cannot be read: {e.strerror or e}")
                return None
            if not stat.S_ISDIR(mode):
                what = "a symbolic link (never followed)" if stat.S_ISLNK(mode) else "not a directory"
                self.problem(cur, f"is {what}")
                return None
        return cur / parts[-1]

    def entries(self, *parts: str, dirs: bool) -> list[Entry]:
        """The real directories (``dirs``) or regular files in ``state_dir/parts...``, by name."""
        inside = self.path(*parts, "-")  # checks every directory down to parts[-1] itself
        if inside is None:
            return []
        where = inside.parent
        try:
            # Listed through a descriptor opened without following: a directory swapped for a link
            # since it was checked is refused (ELOOP), never listed.
            fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        except OSError as e:
            self.problem(where, f"cannot be listed: {e.strerror or e}")
            return []
        try:
            with os.scandir(fd) as it:
                found = [
                    Entry(e.name, e.stat(follow_symlinks=False).st_mtime)
                    for e in it
                    if (e.is_dir(follow_symlinks=False) if dirs else e.is_file(follow_symlinks=False))
                ]
        except OSError as e:
            self.problem(where, f"cannot be listed: {e.strerror or e}")
            return []
        finally:
            os.close(fd)
        return sorted(found, key=lambda e: e.name)

    def read(self, what: Callable[[Path], T], *parts: str) -> T | None:
        """``what(path)`` for ``state_dir/parts...``; None (and a problem) when it raises, None when
        the file is missing."""
        path = self.path(*parts)
        if path is None or not os.path.lexists(path):
            return None
        try:
            return what(path)
        except Exception as e:  # a reader's refusal (SchemaError, OSError, ValueError): one line
            self.problem(path, _reason(e))
            return None


def _reason(e: Exception) -> str:
    if isinstance(e, SchemaError):
        return f"{e.field}: {e.problem}"
    text = str(e)
    if isinstance(e, OSError) and e.strerror:
        text = e.strerror
    return text or type(e).__name__


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
