from __future__ import annotations

import types
from typing import ClassVar

import pytest

from kloros_orchestrator.errors import DomainError
from kloros_orchestrator.spica import (
    Knob,
    SpicaDomain,
    all_reachable_domains,
    available_domains,
    find_domain_classes,
    get_domain_class,
    register,
)

BUILTIN = {
    "cpu",
    "memory",
    "storage",
    "os_scheduler",
    "power_thermal",
    "gpu",
    "audio",
    "asr_tts",
    "conversation",
}


def test_every_reachable_domain_is_a_spica_derivative() -> None:
    """Fails the build when a non-SPICA domain class becomes reachable."""
    reachable = all_reachable_domains()
    offenders = [c for c in reachable if not issubclass(c, SpicaDomain)]
    assert offenders == []
    names = {getattr(c, "name", None) for c in reachable}
    assert names >= BUILTIN
    assert set(available_domains()) >= BUILTIN
    for name in BUILTIN:
        assert issubclass(get_domain_class(name), SpicaDomain)


def test_a_non_spica_class_is_refused() -> None:
    class SpicaImpostor:
        name = "impostor"

        def declare_knobs(self) -> list[Knob]:
            return []

    with pytest.raises(DomainError, match="not a SPICA domain"):
        register(SpicaImpostor)
    with pytest.raises(DomainError, match="not a SPICA domain"):
        register(len)
    assert "impostor" not in available_domains()


def test_the_reachability_scan_sees_a_rogue_class() -> None:
    module = types.ModuleType("kloros_orchestrator.spica.domains.rogue")

    class SpicaRogue:
        pass

    SpicaRogue.__module__ = module.__name__
    module.SpicaRogue = SpicaRogue  # type: ignore[attr-defined]
    found = find_domain_classes(module)
    assert found == [SpicaRogue] and not issubclass(found[0], SpicaDomain)


def test_duplicate_abstract_and_nameless_classes_are_refused() -> None:
    class SpicaOtherCpu(SpicaDomain):
        name: ClassVar[str] = "cpu"

        def declare_knobs(self) -> list[Knob]:
            return []

    with pytest.raises(DomainError, match="already registered"):
        register(SpicaOtherCpu)
    assert get_domain_class("cpu") is not SpicaOtherCpu

    class SpicaAbstract(SpicaDomain):
        name: ClassVar[str] = "abstract_one"

    with pytest.raises(DomainError, match="abstract"):
        register(SpicaAbstract)

    class SpicaNameless(SpicaDomain):
        def declare_knobs(self) -> list[Knob]:
            return []

    with pytest.raises(DomainError, match="name"):
        register(SpicaNameless)


def test_unknown_domain_names_the_available_ones() -> None:
    with pytest.raises(DomainError, match=r"available: .*cpu"):
        get_domain_class("warp_drive")
