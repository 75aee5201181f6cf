"""Reading and writing ``state_dir/host/factory.json`` and ``adopted.json`` (see ``host/records.py``).

Both are written atomically (a reader sees the old or the new file) and read bounded (no link, no
FIFO, at most :data:`MAX_HOST_BYTES`). A file that exists but does not decode is an error naming the
file, never silently replaced: the factory values in it may be the only record of what the host ran
before the daemon changed it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Final, TypeVar

import msgspec

from kloros_orchestrator.errors import KlorosError
from kloros_orchestrator.host.records import AdoptedConfig, AdoptedFile, FactoryFile, FactoryKnob
from kloros_orchestrator.safefs import nesting_exceeds, read_bounded
from kloros_orchestrator.store import StatePaths, atomic_write_bytes

MAX_HOST_BYTES: Final = 4 * 2**20

_encoder = msgspec.json.Encoder(order="sorted")
F = TypeVar("F", FactoryFile, AdoptedFile)


class HostStateError(KlorosError):
    """``state_dir/host/*.json`` cannot be read; the message names the file and what to do."""


def _read(path: Path, kind: type[F]) -> F:
    try:
        raw = read_bounded(path, max_bytes=MAX_HOST_BYTES)
    except FileNotFoundError:
        return kind()
    except OSError as e:
        raise HostStateError(f"{path}: cannot be read: {e.strerror or e}") from None
    if nesting_exceeds(raw):
        raise HostStateError(f"{path}: nested too deeply: not a file the daemon wrote")
    try:
        return msgspec.json.decode(raw, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise HostStateError(
            f"{path}: unreadable ({e}); move it aside to start over (its values are then forgotten)"
        ) from None


class HostStore:
    """The factory and adopted configurations of one state_dir."""

    def __init__(self, paths: StatePaths) -> None:
        self.paths = paths
        # Every change is read-modify-write of one file, from worker threads (socket requests, the
        # boundary's enforce): serialised, or two adoptions at once would lose one.
        self._lock = threading.Lock()

    def factory(self) -> FactoryFile:
        return _read(self.paths.factory, FactoryFile)

    def adopted(self) -> AdoptedFile:
        return _read(self.paths.adopted, AdoptedFile)

    def adopted_config(self, domain: str) -> AdoptedConfig | None:
        return self.adopted().domains.get(domain)

    def add_factory(self, domain: str, knobs: list[FactoryKnob]) -> list[str]:
        """Record the knobs that have no factory entry yet (existing entries never change); returns
        the names added. Durable before it returns: call it before the first write of an adopted value."""
        with self._lock:
            return self._add_factory(domain, knobs)

    def _add_factory(self, domain: str, knobs: list[FactoryKnob]) -> list[str]:
        current = self.factory()
        have = current.domains.setdefault(domain, {})
        added = [k.knob for k in knobs if k.knob not in have]
        if not added:
            return []
        for k in knobs:
            have.setdefault(k.knob, k)
        atomic_write_bytes(self.paths.factory, _encoder.encode(current) + b"\n", mode=0o600)
        return added

    def set_adopted(self, domain: str, config: AdoptedConfig | None) -> None:
        """Adopt ``config`` for ``domain``, or (None) go back to factory: the domain is then listed
        as ``factory_pending`` until :meth:`factory_done`. Atomic."""
        with self._lock:
            self._set_adopted(domain, config)

    def _set_adopted(self, domain: str, config: AdoptedConfig | None) -> None:
        current = self.adopted()
        pending = [d for d in current.factory_pending if d != domain]
        if config is None:
            current.domains.pop(domain, None)
            pending.append(domain)
        else:
            current.domains[domain] = config
        current.factory_pending = pending
        self._write_adopted(current)

    def factory_done(self, domain: str) -> None:
        """The domain's files hold their factory values again."""
        with self._lock:
            current = self.adopted()
            if domain in current.factory_pending:
                current.factory_pending = [d for d in current.factory_pending if d != domain]
                self._write_adopted(current)

    def _write_adopted(self, current: AdoptedFile) -> None:
        atomic_write_bytes(self.paths.adopted, _encoder.encode(current) + b"\n", mode=0o600)


__all__ = ["MAX_HOST_BYTES", "HostStateError", "HostStore"]
