"""The study key: which hosts may share one study (one hardware class, one domain, one knob space).

Theory of operation. Trials are only comparable between hosts that would run the same workloads on
the same hardware with the same measuring tool: a host joins a study only when every field of its
key equals the study's. The key is built from what the run manifest records (domain, kernel,
CPU count, stress-ng version) plus two host facts read here (CPU model, memory size) and the
domain's knob space as discovered on this host (a knob that is absent here changes the space, and
with it the study). ``measurement`` is a digest of how the domain is measured and judged — its
regime definitions, trial lengths, caps and race settings (:func:`measurement_hash`) — so a host
given other workloads never pools its scores with the study's, although its hardware is the same,
and every leader of a study replays the same race.

Memory is keyed in whole GiB, rounded: ``MemTotal`` differs by a few MiB between identical hosts
(firmware and kernel reservations), which must not split a fleet. The hash is sha256 over the
key's JSON with sorted keys, so it is the same on every host and in every Python version.

Nothing here imports psycopg: the local store (the default) uses none of this module's callers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import msgspec

from kloros_orchestrator.fleet.errors import KeyUnavailable

KEY_SCHEMA: Final = "study_key.v2"  # v2 added ``measurement``: a v1 study is not rejoined
GIB: Final = 2**30


class StudyKey(msgspec.Struct, frozen=True, kw_only=True):
    """The fields two hosts must share to pool their trials in one study."""

    domain: str
    knob_space_hash: str
    cpu_model: str
    cpu_count: int
    memory_gib: int
    kernel: str
    stress_ng_version: str
    measurement: str = ""  # measurement_hash: regimes, trial lengths, caps
    schema: str = KEY_SCHEMA

    def digest(self) -> str:
        """sha256 (hex) of the key: the same fields give the same digest on every host."""
        return hashlib.sha256(msgspec.json.encode(self, order="sorted")).hexdigest()

    def differences(self, other: StudyKey) -> list[str]:
        """The fields whose values differ, as ``field: ours != theirs`` (empty when equal)."""
        out: list[str] = []
        for name in self.__struct_fields__:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                out.append(f"{name}: {mine!r} != {theirs!r}")
        return out


def knob_space_hash(space: Mapping[str, Mapping[str, Any]]) -> str:
    """sha256 (hex) of a domain's search space in the engine's declaration form (name → entry)."""
    return hashlib.sha256(msgspec.json.encode(dict(space), order="sorted")).hexdigest()


def measurement_hash(
    regimes: Mapping[str, Any], caps: Mapping[str, Any], settings: Mapping[str, Any]
) -> str:
    """sha256 (hex) of how a domain is measured and judged: its regime specs, caps and ``settings``
    (trial-length overrides, the race's settings)."""
    doc = {"regimes": msgspec.to_builtins(dict(regimes)), "caps": msgspec.to_builtins(dict(caps)),
           "settings": msgspec.to_builtins(dict(settings))}  # fmt: skip
    return hashlib.sha256(msgspec.json.encode(doc, order="sorted")).hexdigest()


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The first ``model name`` of /proc/cpuinfo (x86) or ``Hardware``/``CPU part`` elsewhere; None
    when the file names none (a key without a CPU model would join unlike hosts: the caller refuses)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    found: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and value.strip():
            found.setdefault(name.strip(), " ".join(value.split()))
    for field in ("model name", "Hardware", "CPU part"):
        if field in found:
            return found[field]
    return None


def memory_gib(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """``MemTotal`` of /proc/meminfo in whole GiB, rounded (see the module docstring); None if unread."""
    try:
        text = meminfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return round(int(parts[1]) * 1024 / GIB)
    return None


def study_key(
    *,
    domain: str,
    space: Mapping[str, Mapping[str, Any]],
    manifest: Mapping[str, Any],
    cpu_model_name: str | None,
    memory: int | None,
    measurement: str = "",
) -> StudyKey:
    """The key from a run manifest (``runtime.startup.manifest_fields``: kernel, cpus,
    stress_ng_version), the domain's discovered search space and the two host facts above.

    A missing field raises :class:`KeyUnavailable` naming it: an unknown value is absent, never a
    default that could match another host's.
    """
    cpus = manifest.get("cpus")
    kernel = manifest.get("kernel")
    version = manifest.get("stress_ng_version")
    missing = [
        name
        for name, value in (
            ("cpu_model", cpu_model_name),
            ("memory_gib", memory),
            ("cpus", cpus),
            ("kernel", kernel),
            ("stress_ng_version", version),
        )
        if value in (None, "")
    ]
    if missing:
        raise KeyUnavailable(f"study key: unknown on this host: {', '.join(missing)}")
    return StudyKey(
        domain=domain,
        knob_space_hash=knob_space_hash(space),
        cpu_model=str(cpu_model_name),
        cpu_count=int(cpus or 0),  # checked above: never 0 here
        memory_gib=int(memory or 0),
        kernel=str(kernel),
        stress_ng_version=str(version),
        measurement=measurement,
    )


__all__ = [
    "KEY_SCHEMA",
    "KeyUnavailable",
    "StudyKey",
    "cpu_model",
    "knob_space_hash",
    "measurement_hash",
    "memory_gib",
    "study_key",
]
