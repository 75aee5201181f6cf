"""SPICA: the one base class of every tuning domain, its knobs, restore journal and registry.

D-REAM spawns and PHASE evaluates only SPICA instances: :func:`register` refuses any class that is
not a :class:`SpicaDomain` subclass, and domains are looked up only through the registry.
"""

from __future__ import annotations

from kloros_orchestrator.spica.base import (
    AFFINITY,
    AFFINITY_LAYOUTS,
    NICE,
    SCHED_POLICY,
    WORKERS,
    Kind,
    Lineage,
    SpicaDomain,
    SpicaInstance,
    Support,
    affinity_layouts,
    code_hash,
    parse_command_output,
)
from kloros_orchestrator.spica.command import CommandDomain
from kloros_orchestrator.spica.knobs import (
    Discovered,
    JournalEntry,
    Knob,
    KnobJournal,
    Runner,
    apply_system,
    discover_knob,
    knob_from_declaration,
    probe,
    run_argv,
)
from kloros_orchestrator.spica.registry import (
    all_reachable_domains,
    available_domains,
    find_domain_classes,
    get_domain_class,
    register,
    unregister,
)


def make_generic_domain(name: str, options: dict[str, object]) -> type[SpicaDomain]:
    """Create and register a user-defined domain from YAML options (see domains/generic.py)."""
    from kloros_orchestrator.spica.domains.generic import make_generic_domain as _make

    return _make(name, dict(options))


__all__ = [
    "AFFINITY",
    "AFFINITY_LAYOUTS",
    "NICE",
    "SCHED_POLICY",
    "WORKERS",
    "CommandDomain",
    "Discovered",
    "JournalEntry",
    "Kind",
    "Knob",
    "KnobJournal",
    "Lineage",
    "Runner",
    "SpicaDomain",
    "SpicaInstance",
    "Support",
    "affinity_layouts",
    "all_reachable_domains",
    "apply_system",
    "available_domains",
    "code_hash",
    "discover_knob",
    "find_domain_classes",
    "get_domain_class",
    "knob_from_declaration",
    "make_generic_domain",
    "parse_command_output",
    "probe",
    "register",
    "run_argv",
    "unregister",
]
