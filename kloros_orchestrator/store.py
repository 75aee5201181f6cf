"""Durable file primitives: atomic JSON writes, whole-line JSONL appends, artifact paths.

Nothing here follows a symbolic link at the file it writes: a temporary file is created with
``O_EXCL|O_NOFOLLOW`` (mkstemp) and renamed over the target (which replaces a link, never writes
through it), and appends go through :func:`kloros_orchestrator.safefs.open_append`. The directories
above are trusted because ``check_state_dir`` refused the state directory otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Final

import msgspec

from kloros_orchestrator.safefs import (
    fsync_dir,
    make_dirs,
    nesting_exceeds,
    open_append,
    read_bounded,
)

MAX_JSON_BYTES: Final = 16 * 2**20  # read_json's bound
MAX_JSONL_BYTES: Final = 256 * 2**20  # read_jsonl's

_encoder = msgspec.json.Encoder()


def to_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so a reader sees the old or the new file, never a torn one."""
    path = Path(path)
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)  # on the descriptor: the name could be swapped meanwhile
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    data = json.dumps(to_builtins(obj), indent=2, sort_keys=False, allow_nan=False).encode() + b"\n"
    atomic_write_bytes(path, data)


def read_json(path: Path) -> Any:
    """A JSON file read through :func:`read_bounded`; too deep a file raises ValueError."""
    raw = read_bounded(Path(path), max_bytes=MAX_JSON_BYTES)
    if nesting_exceeds(raw):
        raise ValueError(f"{path}: nested too deeply")
    return json.loads(raw)


def append_jsonl(path: Path, obj: Any) -> None:
    """Append one JSON object as one line with a single write(2) on an O_APPEND descriptor.

    A symbolic link, a directory or a FIFO at ``path`` raises ``RefusedFile`` (an OSError).
    """
    path = Path(path)
    make_dirs(path.parent)
    line = _encoder.encode(to_builtins(obj)) + b"\n"
    fd = open_append(path)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file; a torn last line (crash mid-append) is skipped, not fatal.

    Read through :func:`read_bounded`: a link, a FIFO or a file over MAX_JSONL_BYTES raises OSError.
    """
    try:
        raw = read_bounded(Path(path), max_bytes=MAX_JSONL_BYTES)
    except FileNotFoundError:
        return []
    out: list[dict[str, Any]] = []
    for line in raw.splitlines():
        if not line.strip() or nesting_exceeds(line):
            continue
        try:
            obj = json.loads(line)
        except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


class StatePaths:
    """Every path under ``state_dir`` in one place (contract: README, "Files under state_dir")."""

    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir)

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def baselines(self) -> Path:
        return self.artifacts / "baselines.json"

    def candidates(self, domain: str) -> Path:
        return self.artifacts / "candidates" / domain

    @property
    def manifests(self) -> Path:
        return self.artifacts / "manifests"

    @property
    def phase(self) -> Path:
        return self.root / "phase"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def events(self) -> Path:
        return self.logs / "events.jsonl"

    @property
    def fitness_history(self) -> Path:
        return self.logs / "fitness_history.jsonl"

    @property
    def trials(self) -> Path:
        return self.logs / "trials.jsonl"

    @property
    def daemon_log(self) -> Path:
        return self.logs / "daemon.log"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def journal(self) -> Path:
        return self.root / "journal"

    @property
    def host(self) -> Path:
        return self.root / "host"

    @property
    def factory(self) -> Path:
        return self.host / "factory.json"

    @property
    def adopted(self) -> Path:
        return self.host / "adopted.json"

    @property
    def runtime_state(self) -> Path:
        return self.root / "state.json"

    @property
    def scratch(self) -> Path:
        return self.root / "scratch"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"


__all__ = [
    "MAX_JSONL_BYTES",
    "MAX_JSON_BYTES",
    "StatePaths",
    "append_jsonl",
    "atomic_write_bytes",
    "atomic_write_json",
    "fsync_dir",
    "read_json",
    "read_jsonl",
    "to_builtins",
]
