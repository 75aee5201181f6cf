"""Durable file primitives: atomic JSON writes, whole-line JSONL appends, artifact paths."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()


def to_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so a reader sees the old or the new file, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
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
    return json.loads(Path(path).read_bytes())


def append_jsonl(path: Path, obj: Any) -> None:
    """Append one JSON object as one line with a single write(2) on an O_APPEND descriptor."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = _encoder.encode(to_builtins(obj)) + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file; a torn last line (crash mid-append) is skipped, not fatal."""
    path = Path(path)
    if not path.exists():
        return []
    out: list[dict[str, Any]] = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
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
    def journal(self) -> Path:
        return self.root / "journal"

    @property
    def runtime_state(self) -> Path:
        return self.root / "state.json"

    @property
    def scratch(self) -> Path:
        return self.root / "scratch"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def ensure(self) -> None:
        for p in (
            self.artifacts,
            self.manifests,
            self.phase,
            self.logs,
            self.journal,
            self.scratch,
            self.tmp,
        ):
            p.mkdir(parents=True, exist_ok=True)
