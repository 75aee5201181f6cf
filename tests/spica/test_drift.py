"""SpicaDomain.drift: the knob files read back and compared, by value, with what apply wrote."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest

from kloros_orchestrator.errors import KnobDrift, WorkloadFailed
from kloros_orchestrator.model import Scalar
from kloros_orchestrator.spica import Knob, KnobJournal, SpicaDomain
from kloros_orchestrator.spica.knobs import Discovered
from kloros_orchestrator.testing import load_regimes, write_tree

THP = "sys/kernel/mm/transparent_hugepage/enabled"
GOV = "sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"
TREE = {
    "proc/sys/vm/swappiness": "60\n",
    THP: "always [madvise] never\n",
    "proc/sys/vm/ratio": "0.25\n",
    "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor": "powersave\n",
    "sys/devices/system/cpu/cpu1/cpufreq/scaling_governor": "powersave\n",
}


class Drifty(SpicaDomain):
    """Not registered: one knob of every kind drift() looks at, and two it skips."""

    name: ClassVar[str] = "drifty"
    applied_externally: Scalar | None = None

    def declare_knobs(self) -> list[Knob]:
        return [
            Knob("swappiness", "int", low=0, high=100, path="proc/sys/vm/swappiness"),
            Knob("thp", "choice", fmt="bracket", path=THP),
            Knob("ratio", "float", low=0.0, high=1.0, path="proc/sys/vm/ratio"),
            Knob("governor", "choice", choices=("powersave", "performance"), path=GOV),
            Knob("workers", "int", low=1, high=8, scope="process", default=2),
            Knob("power", "choice", choices=("low", "high")),  # file-less: applied by a "tool"
        ]

    def discover_external(self, knob: Knob) -> Discovered:
        return Discovered(knob, "low")

    def journal_external(self, knob: Knob) -> None:
        return None

    def apply_external(self, knob: Knob, value: Scalar) -> None:
        self.applied_externally = value


@pytest.fixture
def dom(tmp_path: Path) -> Drifty:
    root = tmp_path / "root"
    write_tree(root, dict(TREE))
    d = Drifty(
        sysfs_root=root,
        journal=KnobJournal(tmp_path / "journal"),
        regimes=load_regimes("cpu"),
        scratch_dir=tmp_path / "scratch",
        cpus=2,
    )
    d.discover()
    assert d.support == "ok" and not d.dropped, d.dropped
    return d


GENOME = {"swappiness": 30, "thp": "madvise", "ratio": 0.5, "governor": "performance", "workers": 4}


def file_of(dom: SpicaDomain, rel: str) -> Path:
    return (dom.sysfs_root / rel).absolute()


def test_no_drift_right_after_apply(dom: Drifty) -> None:
    dom.apply(GENOME)
    assert dom.drift(GENOME) == []
    dom.apply({**GENOME, "power": "high"})
    assert dom.applied_externally == "high"
    assert dom.drift({**GENOME, "power": "low"}) == []  # a file-less knob is never read back
    assert dom.restore() == []


def test_a_rewritten_plain_file_is_one_line_with_path_expected_and_found(dom: Drifty) -> None:
    dom.apply(GENOME)
    path = file_of(dom, "proc/sys/vm/swappiness")
    path.write_text("60\n")  # sysctl --system puts its own value back
    assert dom.drift(GENOME) == [f"{path}, expected 30, found 60"]


def test_the_same_value_in_another_spelling_is_no_drift(dom: Drifty) -> None:
    stock = dom.stock_genome()
    assert stock["swappiness"] == 60
    dom.apply(stock)
    file_of(dom, "proc/sys/vm/swappiness").write_text("60\n")  # the kernel's spelling of the 60 written
    file_of(dom, THP).write_text("always [madvise] never\n")
    file_of(dom, "proc/sys/vm/ratio").write_text("0.2500000000001\n")  # within the float tolerance
    assert dom.drift(stock) == []


def test_a_bracket_file_drifts_by_its_active_value(dom: Drifty) -> None:
    dom.apply(GENOME)
    path = file_of(dom, THP)
    assert path.read_text() == "madvise"
    path.write_text("always [madvise] never\n")
    assert dom.drift(GENOME) == []
    path.write_text("[always] madvise never\n")  # TuneD's profile turned THP on
    assert dom.drift(GENOME) == [f"{path}, expected madvise, found [always] madvise never"]


def test_a_float_outside_the_tolerance_drifts(dom: Drifty) -> None:
    dom.apply(GENOME)
    path = file_of(dom, "proc/sys/vm/ratio")
    path.write_text("0.51\n")
    assert dom.drift(GENOME) == [f"{path}, expected 0.5, found 0.51"]


def test_every_file_of_a_per_cpu_knob_is_checked(dom: Drifty) -> None:
    dom.apply(GENOME)
    cpu1 = file_of(dom, GOV.format(cpu=1))
    cpu1.write_text("powersave\n")
    assert dom.drift(GENOME) == [f"{cpu1}, expected performance, found powersave"]


def test_an_unparseable_or_unreadable_file_is_a_drift(dom: Drifty) -> None:
    dom.apply(GENOME)
    swap = file_of(dom, "proc/sys/vm/swappiness")
    swap.write_text("thirty\n")
    ratio = file_of(dom, "proc/sys/vm/ratio")
    ratio.unlink()
    lines = dom.drift(GENOME)
    assert lines[0] == f"{swap}, expected 30, found thirty"
    assert lines[1].startswith(f"{ratio}, expected 0.5, found unreadable: ")
    assert len(lines) == 2


def test_knob_drift_failure_text() -> None:
    lines = ["/a, expected 1, found 2", "/b, expected x, found y"]
    exc = KnobDrift(lines)
    assert isinstance(exc, WorkloadFailed) and exc.drift == lines
    assert f"{exc.reason}: {exc}" == "knob drift: /a, expected 1, found 2; /b, expected x, found y"
