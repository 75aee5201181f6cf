from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import pytest

from kloros_orchestrator.errors import DomainError
from kloros_orchestrator.model import RegimeSpec, StressorSpec
from kloros_orchestrator.spica import Knob, KnobJournal, SpicaDomain, affinity_layouts, code_hash
from kloros_orchestrator.spica import knobs as knobs_mod
from kloros_orchestrator.testing import comparable, load_regimes, write_tree


class Bare(SpicaDomain):
    """Not registered: a test double whose knobs come from a class attribute."""

    name: ClassVar[str] = "bare"
    declared: ClassVar[list[Knob]] = []

    def declare_knobs(self) -> list[Knob]:
        return list(self.declared)


class TwoFiles(Bare):
    declared: ClassVar[list[Knob]] = [
        Knob("a", "int", low=0, high=100, path="proc/sys/a"),
        Knob("b", "int", low=0, high=100, path="proc/sys/b"),
    ]


class ProcessOnly(Bare):
    declared: ClassVar[list[Knob]] = [Knob("workers", "int", low=1, high=8, scope="process", default=8)]


def make(cls: type[Bare], tmp_path: Path, **kw: Any) -> Bare:
    kwargs: dict[str, Any] = {
        "sysfs_root": tmp_path / "root",
        "journal": KnobJournal(tmp_path / "journal"),
        "regimes": load_regimes("cpu"),
        "scratch_dir": tmp_path / "scratch",
        "cpus": 4,
    }
    return cls(**{**kwargs, **kw})


def test_no_knob_means_unsupported(tmp_path: Path) -> None:
    dom = make(Bare, tmp_path)
    with pytest.raises(DomainError, match="discover"):
        dom.search_space()
    dom.discover()
    assert dom.support == "unsupported" and dom.support_reason
    assert not dom.process_scoped() and dom.parallel_limit(4) == 1
    assert dom.status()["support"] == "unsupported"


def test_parallel_only_for_process_scoped_domains(tmp_path: Path) -> None:
    write_tree(tmp_path / "root", {"proc/sys/a": "1\n", "proc/sys/b": "2\n"})
    proc = make(ProcessOnly, tmp_path)
    proc.discover()
    assert proc.process_scoped() and proc.parallel_limit(16) == 4 and proc.parallel_limit(2) == 2
    system = make(TwoFiles, tmp_path)
    system.discover()
    assert not system.process_scoped() and system.parallel_limit(16) == 1


def test_failed_apply_restores_what_was_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    write_tree(root, {"proc/sys/a": "1\n", "proc/sys/b": "2\n"})
    dom = make(TwoFiles, tmp_path)
    dom.discover()
    before = comparable(root, set())
    real = knobs_mod.write_knob

    def fail_on_b(path: Path, text: str, sysfs_root: Path) -> None:
        if path.name == "b" and text == "50":
            raise OSError(22, "Invalid argument")
        real(path, text, sysfs_root)

    monkeypatch.setattr(knobs_mod, "write_knob", fail_on_b)
    with pytest.raises(DomainError, match="applying b failed"):
        dom.apply({"a": 50, "b": 50})
    assert comparable(root, set()) == before
    assert dom.journal.pending() == []


def test_unknown_options_and_regimes(tmp_path: Path) -> None:
    with pytest.raises(DomainError, match="unknown option"):
        make(Bare, tmp_path, options={"colour": "red"})
    dom = make(ProcessOnly, tmp_path)
    dom.discover()
    with pytest.raises(DomainError, match="no regime"):
        dom.build_workload("lunch", {})


def test_auto_instances_and_bad_instances(tmp_path: Path) -> None:
    dom = make(
        ProcessOnly,
        tmp_path,
        regimes={
            "x": RegimeSpec(duration=2, stressors=[StressorSpec("cpu", "auto"), StressorSpec("vm", 0)]),
            "bad": RegimeSpec(duration=2, stressors=[StressorSpec("cpu", "many")]),
        },
    )
    dom.discover()
    spec = dom.build_workload("x", {"workers": 3})
    assert [s.instances for s in spec.stressors] == [3, 0]
    with pytest.raises(DomainError, match="instances"):
        dom.build_workload("bad", {})


def test_affinity_layouts_are_distinct() -> None:
    assert affinity_layouts([0, 1, 2, 3]) == {
        "all": (0, 1, 2, 3),
        "first_half": (0, 1),
        "second_half": (2, 3),
        "spread": (0, 2),
    }
    assert affinity_layouts([0, 1]) == {"all": (0, 1), "first_half": (0,), "second_half": (1,)}
    assert affinity_layouts([0]) == {"all": (0,)}


def test_code_hash_covers_the_package_sources() -> None:
    first = code_hash()
    assert re.fullmatch(r"[0-9a-f]{64}", first) and code_hash() == first
