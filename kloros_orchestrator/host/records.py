"""Typed records of the host's configuration: knob settings, provenance, factory and adopted files.

A :class:`KnobSetting` is one knob's value together with where it lives: its files relative to
``sysfs_root`` (``proc/sys/vm/swappiness``; several for a per-CPU knob), the text written to each,
and the file format (``bracket`` files are compared by their active value). Process knobs (workers,
affinity, nice, scheduling policy) have no file: they shape a workload, not the host.

Files under ``state_dir/host/`` (README, "From verdict to host"):

* ``factory.json`` (``host_factory.v1``): per domain and knob, the text of every file as found
  before the daemon first wrote an adopted value there. An entry is added once and never changed.
* ``adopted.json`` (``host_adopted.v1``): per domain, the adopted configuration (genome, settings,
  provenance). A domain without an entry runs its factory configuration.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from kloros_orchestrator.model import Scalar

FACTORY_SCHEMA: Final = "host_factory.v1"
ADOPTED_SCHEMA: Final = "host_adopted.v1"

KnobScope = Literal["system", "process"]
KnobFormat = Literal["plain", "bracket"]
KnobKind = Literal["int", "float", "choice", "bool"]
AdoptedBy = Literal["auto", "operator"]
Interval = tuple[float, float]


class KnobSetting(msgspec.Struct, frozen=True, omit_defaults=True):
    """One knob's value and where it lives.

    ``paths`` are relative to ``sysfs_root`` (empty for a process knob or a knob its domain sets
    with a tool); ``text`` is what is written to each file (``Knob.encode``); ``cpus`` is the CPU
    list a process ``affinity`` layout stands for on this host.
    """

    knob: str
    scope: KnobScope
    type: KnobKind
    value: Scalar
    text: str
    paths: tuple[str, ...] = ()
    fmt: KnobFormat = "plain"
    cpus: tuple[int, ...] | None = None
    description: str = ""


class Provenance(msgspec.Struct, frozen=True, omit_defaults=True):
    """Where an adopted configuration comes from: who adopted it, when, and PHASE's evidence."""

    by: AdoptedBy
    at: str  # ISO-8601 UTC
    phase_run_id: str | None = None
    cand_id: str | None = None
    spica_id: str | None = None
    score_v2: float | None = None
    score_ci95: Interval | None = None
    evidence: str = ""  # PHASE's promotion reason, or why it was adopted without one
    forced: bool = False


class AdoptedConfig(msgspec.Struct, frozen=True):
    """A domain's adopted configuration: the full genome, its settings on this host, its provenance."""

    domain: str
    genome: dict[str, Scalar]
    settings: list[KnobSetting]
    provenance: Provenance


class FactoryKnob(msgspec.Struct, frozen=True):
    """A knob's files as found before the daemon first wrote an adopted value (text per path)."""

    knob: str
    type: KnobKind
    fmt: KnobFormat
    originals: dict[str, str]  # path relative to sysfs_root -> text as read
    recorded_at: str


class FactoryFile(msgspec.Struct, tag_field="schema", tag=FACTORY_SCHEMA):
    domains: dict[str, dict[str, FactoryKnob]] = msgspec.field(default_factory=dict)


class AdoptedFile(msgspec.Struct, tag_field="schema", tag=ADOPTED_SCHEMA):
    """``domains``: the adopted configurations. ``factory_pending``: domains rolled back whose files
    have not all been written back yet (finished at the next tournament boundary or start)."""

    domains: dict[str, AdoptedConfig] = msgspec.field(default_factory=dict)
    factory_pending: list[str] = msgspec.field(default_factory=list)


__all__ = [
    "ADOPTED_SCHEMA",
    "FACTORY_SCHEMA",
    "AdoptedConfig",
    "AdoptedFile",
    "FactoryFile",
    "FactoryKnob",
    "KnobSetting",
    "Provenance",
]
