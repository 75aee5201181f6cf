"""The start-up check of ``state_dir``: ssh's StrictModes for a daemon that runs as root.

Theory of operation
-------------------
Everything the daemon keeps lives under ``state_dir``; it writes there as root and reads back what
it finds at the next start. If another user created the directory first (``/tmp/klr-demo``), or
can write to it or to a directory above it, that user decides what root truncates, appends to and
decodes. :func:`check_state_dir` runs before anything is written and tells two cases apart:

* **Another user could be steering it: refuse.** UnsafeStateDir, one line naming the path and the
  reason, and the daemon exits 2 until the operator acts (the message says what to run):
  a directory above ``state_dir`` or the socket's directory owned by anyone but root or us, or
  writable by group or others without the sticky bit (``/tmp`` is fine: nobody else can rename
  our entry there); ``state_dir`` or the socket's directory a symbolic link, not a directory,
  owned by another user or writable by group or others; any entry under ``state_dir`` owned by
  another user, or (the 0660 status socket excepted) writable by group or others.
* **Our own entry, of the wrong kind: move it aside** (``<name>.rejected-<unix_ts>``, never
  followed) and go on, so a bad state never fails two starts in a row: a symbolic link anywhere
  under ``state_dir`` (only root could have made it; ``phase/latest`` naming a run directory
  beside it is the one legitimate link), ``lock`` or ``state.json`` a directory or a FIFO,
  ``journal`` or ``tmp`` a file. Each move is returned for the caller's log line and event.

Then the directories that are missing are created (0755, the journal 0700). The walk is bounded:
it lists the layout's own levels (``artifacts/candidates/<domain>/<pack>``; below
``scratch/<domain>`` and ``tmp`` lie the workloads' files) and at most ``WALK_LIMIT`` entries. What
it does not reach is still opened safely: every file is read back through ``safefs.read_bounded``
and appended to through ``safefs.open_append``.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from pathlib import Path
from typing import Final

from kloros_orchestrator.errors import UnsafeStateDir
from kloros_orchestrator.safefs import (
    DIR_MODE,
    PRIVATE_DIR_MODE,
    Rejected,
    is_rejected,
    kind,
    make_dirs,
    quarantine,
)
from kloros_orchestrator.store import StatePaths

WALK_LIMIT: Final = 20_000  # entries looked at; a longer PHASE history is not walked to its end

# How many levels below state_dir the walk lists, per top-level directory.
_LIST_DEPTH: Final = {"artifacts": 3, "phase": 2, "logs": 1, "journal": 1, "scratch": 1, "tmp": 1, "host": 1}
_LATEST: Final = re.compile(r"phase/(latest|\.latest\.\d+\.tmp)")  # the link and its staging copy


class _Layout:
    """The known entries of one state_dir, relative to it, from StatePaths (one list of paths)."""

    def __init__(self, root: Path) -> None:
        p = StatePaths(root)
        files = (
            p.lock, p.runtime_state, p.baselines, p.events, p.trials, p.fitness_history, p.daemon_log,
            p.factory, p.adopted,
        )  # fmt: skip
        self.files = frozenset(str(f.relative_to(root)) for f in files)
        dirs = [p.artifacts, p.artifacts / "candidates", p.manifests, p.phase, p.logs, p.scratch, p.tmp]
        dirs.append(p.host)
        self.dirs = {str(d.relative_to(root)): DIR_MODE for d in dirs}
        self.dirs[str(p.journal.relative_to(root))] = PRIVATE_DIR_MODE


def check_state_dir(root: Path, *, socket_dir: Path | None) -> list[Rejected]:
    """Refuse (UnsafeStateDir) a state directory another user could steer; move our own wrong
    entries aside and return them; create the directories that are missing.

    ``socket_dir`` is the status socket's directory (None, or ``root`` itself: nothing more to check).
    An OSError (a read-only or full disk) propagates.
    """
    root = Path(os.path.abspath(root))
    _check_parents(root)
    if not os.path.lexists(root):
        make_dirs(root)
    _check_dir(root, what="state_dir")
    if socket_dir is not None and Path(os.path.abspath(socket_dir)) != root:
        socket_dir = Path(os.path.abspath(socket_dir))
        _check_parents(socket_dir)
        if not os.path.lexists(socket_dir):
            make_dirs(socket_dir)
        _check_dir(socket_dir, what="socket directory", root_may_own=True)
    layout = _Layout(root)
    moved = _walk(root, layout)
    for rel, mode in layout.dirs.items():
        with contextlib.suppress(FileExistsError):
            os.mkdir(root / rel, mode)
    return moved


def _check_parents(path: Path) -> None:
    euid = os.geteuid()
    real = Path(os.path.realpath(path.parent))
    for parent in (real, *real.parents):
        try:
            st = os.stat(parent)
        except FileNotFoundError:
            continue  # make_dirs creates it, 0755
        if st.st_uid not in (0, euid):
            raise UnsafeStateDir(parent, f"owned by uid {st.st_uid}, who could replace {path}")
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise UnsafeStateDir(
                parent, f"writable by {_writers(st.st_mode)} without the sticky bit, who could replace {path}"
            )


def _writers(mode: int) -> str:
    return " and ".join(w for bit, w in ((0o020, "group"), (0o002, "others")) if mode & bit)


def _check_dir(path: Path, *, what: str, root_may_own: bool = False) -> None:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeStateDir(
            path, f"{what} is a symbolic link (to {os.readlink(path)}): name the real directory instead"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeStateDir(path, f"{what} is {kind(st.st_mode)}, not a directory")
    if not (root_may_own and st.st_uid == 0):
        _check_owner(path, st)
    _check_mode(path, st)


def _check_owner(path: Path, st: os.stat_result) -> None:
    euid = os.geteuid()
    if st.st_uid != euid:
        raise UnsafeStateDir(
            path, f"owned by uid {st.st_uid}, not by the daemon's uid {euid}: remove it or chown it"
        )


def _check_mode(path: Path, st: os.stat_result) -> None:
    if st.st_mode & 0o022 and not stat.S_ISSOCK(st.st_mode):  # the status socket is 0660 on purpose
        raise UnsafeStateDir(path, f"writable by {_writers(st.st_mode)}: run chmod go-w {path}")


def _walk(root: Path, layout: _Layout) -> list[Rejected]:
    moved: list[Rejected] = []
    pending = [""]
    seen = 0
    while pending and seen < WALK_LIMIT:
        rel = pending.pop()
        with os.scandir(root / rel) as entries:
            for entry in entries:
                seen += 1
                if is_rejected(entry.name):
                    continue  # moved aside before: inert, the operator's to look at
                sub = f"{rel}/{entry.name}" if rel else entry.name
                st = entry.stat(follow_symlinks=False)
                wrong = _check_entry(root, sub, st, layout)
                if wrong is not None:
                    moved.append(Rejected(root / sub, wrong, quarantine(root / sub, wrong)))
                elif stat.S_ISDIR(st.st_mode) and sub.count("/") < _LIST_DEPTH.get(sub.split("/", 1)[0], 0):
                    pending.append(sub)
    return moved


def _check_entry(root: Path, rel: str, st: os.stat_result, layout: _Layout) -> str | None:
    """Refuse an entry another user could steer; say what is wrong with one of ours (None: fine)."""
    path = root / rel
    _check_owner(path, st)  # a link's own owner: another user's link is theirs to steer
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        if _LATEST.fullmatch(rel) and _names_a_run(path, target):
            return None
        return f"a symbolic link (to {target}) where the daemon keeps its own files"
    _check_mode(path, st)
    if rel in layout.files and not stat.S_ISREG(st.st_mode):
        return f"{kind(st.st_mode)} where a regular file belongs"
    if rel in layout.dirs and not stat.S_ISDIR(st.st_mode):
        return f"{kind(st.st_mode)} where a directory belongs"
    return None


def _names_a_run(link: Path, target: str) -> bool:
    """``phase/latest`` names a run directory beside it, relatively (readers follow it)."""
    if not target or "/" in target or target in (".", "..", link.name):
        return False
    sibling = link.parent / target
    return not os.path.lexists(sibling) or stat.S_ISDIR(os.lstat(sibling).st_mode)


__all__ = ["WALK_LIMIT", "check_state_dir"]
