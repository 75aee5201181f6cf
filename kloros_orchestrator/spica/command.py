"""Command domains: the workload is an operator-supplied argv; knobs reach it as environment variables.

The command prints its KPIs as JSON lines (``{"latency_ms": 41.2, "wer": 0.08}``); see
:func:`~kloros_orchestrator.spica.base.parse_command_output`. Nothing is ever passed to a shell.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from kloros_orchestrator import model
from kloros_orchestrator.errors import DomainError
from kloros_orchestrator.spica.base import Kind, SpicaDomain
from kloros_orchestrator.spica.knobs import Knob, knob_from_declaration

_KPI_RE = re.compile(r"^[a-z][a-z0-9_]*$")
DIRECTIONS = {"higher": 1, "lower": -1}


def parse_command(value: Any, where: str) -> tuple[str, ...]:
    """An argv list of strings; a single string is refused (it would need a shell to split)."""
    if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
        raise DomainError(f"{where}: command must be a non-empty argv list, e.g. [prog, --flag] (no shell)")
    if not all(isinstance(a, str) and a for a in value):
        raise DomainError(f"{where}: every command argument must be a non-empty string")
    return tuple(value)


def parse_knobs(value: Any, where: str, *, allow_system: bool) -> list[Knob]:
    """Knob declarations: a mapping name → declaration, or a list of declarations with ``name``."""
    if value is None:
        return []
    items: list[tuple[str, dict[str, Any]]]
    if isinstance(value, dict):
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, list):
        items = []
        for i, decl in enumerate(value):
            if not isinstance(decl, dict) or "name" not in decl:
                raise DomainError(f"{where}: knobs[{i}] must be a mapping with a name")
            items.append((str(decl["name"]), {k: v for k, v in decl.items() if k != "name"}))
    else:
        raise DomainError(f"{where}: knobs must be a mapping or a list")
    knobs = [knob_from_declaration(n, d, allow_system=allow_system, where=where) for n, d in items]
    names = [k.name for k in knobs]
    if len(set(names)) != len(names):
        raise DomainError(f"{where}: duplicate knob names")
    return knobs


def parse_kpis(value: Any, where: str) -> dict[str, int]:
    """KPI names → direction (+1 higher is better, -1 lower). A list takes the standard direction for
    standard names and "higher is better" otherwise; a mapping says ``higher``/``lower`` per KPI."""
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list):
        pairs = [(k, None) for k in value]
    else:
        raise DomainError(f"{where}: kpis must be a list of names or a mapping name → higher|lower")
    out: dict[str, int] = {}
    for name, direction in pairs:
        if not isinstance(name, str) or not _KPI_RE.match(name):
            raise DomainError(f"{where}: KPI name {name!r} must match [a-z][a-z0-9_]*")
        if direction is None:
            out[name] = model.KPI_DIRECTION.get(name, 1)
        elif direction in DIRECTIONS:
            out[name] = DIRECTIONS[direction]
        else:
            raise DomainError(f"{where}: kpis.{name} must be 'higher' or 'lower'")
    if not out:
        raise DomainError(f"{where}: kpis must name at least one KPI the command prints")
    return out


class CommandDomain(SpicaDomain):
    """Base of the command domains (audio, asr_tts, conversation).

    Options: ``command`` (argv list), ``knobs`` (engine-form declarations with a ``default``; each
    reaches the command as ``KLR_KNOB_<NAME>``), ``kpis`` (names the command prints). The command
    also gets ``KLR_REGIME`` and ``KLR_DURATION_S``. Without a command the domain is ``disabled``.
    """

    kind: ClassVar[Kind] = "command"
    option_keys: ClassVar[frozenset[str]] = frozenset({"command", "knobs", "kpis"})
    command: tuple[str, ...] | None = None
    _knobs: tuple[Knob, ...] = ()
    kpis: dict[str, int] | None = None

    def _validate_options(self) -> None:
        where = f"{self.name}"
        if self.options.get("command") is not None:
            self.command = parse_command(self.options["command"], where)
            self.kpis = parse_kpis(self.options.get("kpis"), where)
        self._knobs = tuple(parse_knobs(self.options.get("knobs"), where, allow_system=False))

    def disabled_reason(self) -> str | None:
        return None if self.command else "no command configured"

    def declare_knobs(self) -> list[Knob]:
        return list(self._knobs)

    def command_argv(self) -> tuple[str, ...] | None:
        return self.command

    def kpi_names(self) -> set[str]:
        # Temperature and power are sampled by the runtime around any workload.
        return set(self.kpis or ()) | {model.TEMP, model.WATTS}

    def kpi_directions(self) -> dict[str, int]:
        return {**{k: model.KPI_DIRECTION[k] for k in (model.TEMP, model.WATTS)}, **(self.kpis or {})}
