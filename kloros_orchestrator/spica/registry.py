"""The domain registry: the only way D-REAM and PHASE find a domain, and it holds SPICA classes only.

It also opens the start-up journal (:func:`open_journal`): the knobs of every registered domain
class are declared as restore targets before a crashed run's journal is restored, so that journal
is restored from declarations, never from what its files say to do.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from loguru import logger

from kloros_orchestrator.config import class_options
from kloros_orchestrator.errors import DomainError
from kloros_orchestrator.spica.base import SpicaDomain
from kloros_orchestrator.spica.journal import KnobJournal, Runner

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_REGISTRY: dict[str, type[SpicaDomain]] = {}
_DOMAINS_PACKAGE = "kloros_orchestrator.spica.domains"

T = TypeVar("T")


def register(cls: T) -> T:
    """Class decorator adding a domain to the registry.

    Refuses (DomainError) anything that is not a concrete SpicaDomain subclass with a valid,
    unused ``name``.
    """
    if not (isinstance(cls, type) and issubclass(cls, SpicaDomain)):
        raise DomainError(
            f"{cls!r} is not a SPICA domain: every domain must derive from "
            "kloros_orchestrator.spica.SpicaDomain"
        )
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise DomainError(f"{cls.__qualname__}: domain name must match [a-z][a-z0-9_]* (got {name!r})")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise DomainError(f"{cls.__qualname__}: abstract domain cannot be registered (missing {missing})")
    existing = _REGISTRY.get(name)
    if existing is not None and _qualname(existing) != _qualname(cls):
        raise DomainError(
            f"domain name {name!r} is already registered by {_qualname(existing)}; "
            f"{_qualname(cls)} must use another name"
        )
    _REGISTRY[name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a domain (used for user-defined generic domains when a config is reloaded)."""
    _REGISTRY.pop(name, None)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _domain_modules() -> list[ModuleType]:
    pkg = importlib.import_module(_DOMAINS_PACKAGE)
    return [
        importlib.import_module(f"{_DOMAINS_PACKAGE}.{info.name}")
        for info in pkgutil.iter_modules(pkg.__path__)
    ]


def get_domain_class(name: str) -> type[SpicaDomain]:
    """The registered class of domain ``name``; DomainError naming the known ones otherwise."""
    _domain_modules()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DomainError(f"unknown domain {name!r}; available: {', '.join(available_domains())}") from None


def available_domains() -> list[str]:
    """Names of every registered domain (built-in ones are imported first), sorted."""
    _domain_modules()
    return sorted(_REGISTRY)


def find_domain_classes(module: ModuleType) -> list[type]:
    """Classes a module defines that look like domains: named ``Spica*`` or with ``declare_knobs``."""
    out: list[type] = []
    for attr, obj in vars(module).items():
        if not isinstance(obj, type) or obj.__module__ != module.__name__:
            continue
        if attr.startswith("Spica") or hasattr(obj, "declare_knobs"):
            out.append(obj)
    return out


def all_reachable_domains() -> list[type]:
    """Every domain-like class reachable from ``spica.domains`` plus the registry's contents.

    A test asserts each one is a SpicaDomain subclass, so a non-SPICA domain fails the build.
    """
    seen: dict[str, type] = {}
    for module in _domain_modules():
        for cls in find_domain_classes(module):
            seen[_qualname(cls)] = cls
    for cls in _REGISTRY.values():
        seen[_qualname(cls)] = cls
    return list(seen.values())


def declare_restore_targets(
    journal: KnobJournal,
    *,
    sysfs_root: Path,
    scratch_root: Path,
    domain_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[str]:
    """Declare in ``journal`` the restorable knobs of every registered domain; return problems.

    Each class is built with its ``domain_options`` (``kind`` and ``unit`` dropped) but not
    discovered: nothing is probed or written. A domain that cannot be built is reported and skipped;
    its journal entries are then rejected by the restore, the others' still restored.
    """
    problems: list[str] = []
    options = domain_options or {}
    for name in available_domains():
        opts = class_options(dict(options.get(name, {})))
        try:
            dom = _REGISTRY[name](
                sysfs_root=Path(sysfs_root),
                journal=journal,
                regimes={},
                scratch_dir=Path(scratch_root) / name,
                options=opts,
            )
            journal.declare(dom.restore_targets())
        except Exception as exc:  # any domain's bug must not stop the other domains' knobs coming back
            problems.append(f"domain {name}: its knobs cannot be declared for restore: {exc!r}")
    return problems


def open_journal(
    directory: Path,
    *,
    sysfs_root: Path,
    scratch_root: Path,
    domain_options: Mapping[str, Mapping[str, Any]] | None = None,
    runner: Runner | None = None,
) -> KnobJournal:
    """The journal in ``directory`` with every registered domain's knobs declared (start-up).

    Call it after every domain the configuration defines is registered, before restoring the
    journal of a crashed run (``restore_all``) and before any domain is discovered.
    """
    journal = KnobJournal(directory, runner=runner)
    for problem in declare_restore_targets(
        journal, sysfs_root=sysfs_root, scratch_root=scratch_root, domain_options=domain_options
    ):
        logger.error("{}", problem)
    return journal
