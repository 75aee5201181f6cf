"""Generic domains: a user-defined domain from YAML alone, still a SPICA class in the registry."""

from __future__ import annotations

from typing import Any, ClassVar

from kloros_orchestrator import model
from kloros_orchestrator.errors import DomainError
from kloros_orchestrator.spica.base import Kind, SpicaDomain
from kloros_orchestrator.spica.command import parse_command, parse_knobs, parse_kpis
from kloros_orchestrator.spica.knobs import Knob
from kloros_orchestrator.spica.registry import _REGISTRY, register

GENERIC_OPTION_KEYS = frozenset({"description", "knobs", "workload", "kpis"})


class SpicaGeneric(SpicaDomain):
    """Knobs, workload and KPIs all come from options (see :func:`make_generic_domain`).

    ``knobs``: declarations (system knobs with ``path`` relative to sysfs_root and optional
    ``format: bracket``; process knobs with ``default`` and optional ``env``). ``workload``:
    ``stressors`` (the regimes' stressors, the default) or ``{command: [argv...]}``. ``kpis``:
    names (or name → higher|lower); default the standard stress-ng KPIs.
    """

    kind: ClassVar[Kind] = "generic"
    option_keys: ClassVar[frozenset[str]] = GENERIC_OPTION_KEYS
    generic_options: ClassVar[dict[str, Any]] = {}
    command: tuple[str, ...] | None = None
    kpis: dict[str, int] | None = None
    _knobs: tuple[Knob, ...] = ()

    def __init__(self, **kwargs: Any) -> None:
        # Options baked in by the factory; per-instance options override them key by key.
        kwargs["options"] = {**self.generic_options, **(kwargs.get("options") or {})}
        super().__init__(**kwargs)

    def _validate_options(self) -> None:
        self._knobs, self.command, self.kpis = parse_generic_options(self.name, self.options)

    def declare_knobs(self) -> list[Knob]:
        return list(self._knobs)

    def command_argv(self) -> tuple[str, ...] | None:
        return self.command

    def kpi_names(self) -> set[str]:
        if self.kpis is None:
            return set(model.STANDARD_KPIS)
        return set(self.kpis) | {model.TEMP, model.WATTS}

    def kpi_directions(self) -> dict[str, int]:
        base = {k: v for k, v in model.KPI_DIRECTION.items() if k in self.kpi_names()}
        return {**base, **(self.kpis or {})}


def parse_generic_options(
    name: str, options: dict[str, Any]
) -> tuple[tuple[Knob, ...], tuple[str, ...] | None, dict[str, int] | None]:
    """Knobs, command (None: the regimes' stressors) and KPIs of a generic domain; DomainError if bad."""
    where = f"domain {name}"
    knobs = tuple(parse_knobs(options.get("knobs"), where, allow_system=True))
    workload = options.get("workload", "stressors")
    command: tuple[str, ...] | None = None
    if isinstance(workload, dict) and set(workload) == {"command"}:
        command = parse_command(workload["command"], where)
    elif workload != "stressors":
        raise DomainError(f"{where}: workload must be 'stressors' or {{command: [argv...]}}")
    kpis: dict[str, int] | None = None
    if options.get("kpis") is not None:
        kpis = parse_kpis(options["kpis"], where)
    elif command is not None:
        raise DomainError(f"{where}: a command workload needs kpis (the names it prints)")
    return knobs, command, kpis


def make_generic_domain(name: str, options: dict[str, Any]) -> type[SpicaDomain]:
    """Create and register ``Spica<name>`` from ``options``.

    Calling it again with the same name and options returns the same class; other options under a
    taken name are refused (DomainError), as is every name of a built-in domain.
    """
    if not isinstance(options, dict):
        raise DomainError(f"domain {name}: options must be a mapping")
    unknown = sorted(set(options) - GENERIC_OPTION_KEYS)
    if unknown:
        allowed = sorted(GENERIC_OPTION_KEYS)
        raise DomainError(f"domain {name}: unknown option(s) {unknown}; allowed: {allowed}")
    existing = _REGISTRY.get(name)
    if existing is not None:
        if issubclass(existing, SpicaGeneric) and existing.generic_options == options:
            return existing
        raise DomainError(f"domain name {name!r} is already registered by {existing.__qualname__}")
    parse_generic_options(name, options)  # refuse bad options now, not at the first instance
    cls = type(
        f"SpicaGeneric_{name}",
        (SpicaGeneric,),
        {
            "name": name,
            "description": str(options.get("description", f"user-defined domain {name}")),
            "generic_options": dict(options),
            "__module__": __name__,
        },
    )
    return register(cls)
