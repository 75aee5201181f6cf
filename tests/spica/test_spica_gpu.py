from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from kloros_orchestrator.spica import KnobJournal, SpicaDomain
from kloros_orchestrator.spica.domains.gpu import SpicaGpu
from kloros_orchestrator.testing import SpicaDomainContract

TOOL = "nvidia-smi"


class FakeNvidiaSmi:
    """Just enough nvidia-smi: --query-gpu, -pl and -ac, with state; N/A fields; no GPU."""

    def __init__(self, *, present: bool = True) -> None:
        self.present = present
        self.calls: list[list[str]] = []
        self.state: dict[str, str] = {
            "power.limit": "250.00",
            "power.min_limit": "100.00",
            "power.max_limit": "300.00",
            "clocks.applications.memory": "5001",
            "clocks.applications.graphics": "1500",
            "clocks.max.graphics": "2100",
        }

    def __call__(self, argv: Sequence[str]) -> str:
        argv = list(argv)
        self.calls.append(argv)
        if not self.present:
            raise subprocess.CalledProcessError(9, argv, "", "No devices were found")
        assert argv[:3] == [TOOL, "-i", "0"], argv
        op = argv[3]
        if op.startswith("--query-gpu="):
            return ", ".join(self.state[f] for f in op.split("=", 1)[1].split(",")) + "\n"
        if op == "-pl":
            self.state["power.limit"] = f"{float(argv[4]):.2f}"
            return ""
        if op == "-ac":
            mem, gr = argv[4].split(",")
            assert mem == self.state["clocks.applications.memory"]
            self.state["clocks.applications.graphics"] = gr
            return ""
        raise AssertionError(f"unexpected argv {argv}")


class TestSpicaGpuContract(SpicaDomainContract):
    domain_cls = SpicaGpu
    options: ClassVar[dict[str, Any]] = {"nvidia_smi": TOOL}
    fake: FakeNvidiaSmi

    def populate(self, root: Path) -> None:
        self.fake.present = True

    @pytest.fixture(autouse=True)
    def _fake(self) -> None:
        self.fake = FakeNvidiaSmi(present=False)

    def make_journal(self, directory: Path) -> KnobJournal:
        return KnobJournal(directory, runner=self.fake)

    def snapshot(self, root: Path, domain: SpicaDomain) -> dict[str, Any]:
        return {**super().snapshot(root, domain), "gpu": dict(self.fake.state)}

    def break_knobs(self, root: Path, domain: SpicaDomain) -> dict[str, str]:
        self.fake.state["clocks.applications.graphics"] = "[N/A]"
        return {"graphics_clock_mhz": "N/A"}


def make(tmp_path: Path, fake: FakeNvidiaSmi) -> SpicaGpu:
    return SpicaGpu(
        sysfs_root=tmp_path,
        journal=KnobJournal(tmp_path / "journal", runner=fake),
        regimes={},
        scratch_dir=tmp_path / "scratch",
        options={"nvidia_smi": TOOL},
    )


def test_apply_and_restore_build_the_right_argv(tmp_path: Path) -> None:
    fake = FakeNvidiaSmi()
    dom = make(tmp_path, fake)
    dom.discover()
    assert dom.support == "ok"
    assert dom.stock_genome() == {"power_limit_w": 250.0, "graphics_clock_mhz": 1500}
    assert dom.search_space()["graphics_clock_mhz"]["low"] == 1050
    fake.calls.clear()
    dom.apply({"power_limit_w": 180.5, "graphics_clock_mhz": 1800})
    sets = [c for c in fake.calls if not c[3].startswith("--query")]
    assert sets == [[TOOL, "-i", "0", "-pl", "180.50"], [TOOL, "-i", "0", "-ac", "5001,1800"]]
    pending = {e.path: e.original for e in dom.journal.pending()}
    assert pending == {"nvidia-smi:gpu0:power_limit_w": "250.0", "nvidia-smi:gpu0:graphics_clock_mhz": "1500"}
    assert all(e.restore_argv is None for e in dom.journal.pending())  # values, never commands
    # The crash path: a fresh journal restores through a fresh instance's declared knobs, building
    # the argv from its own tool and index and the journaled value.
    journal = KnobJournal(tmp_path / "journal", runner=fake)
    journal.declare(make(tmp_path, fake).restore_targets())
    fake.calls.clear()
    assert journal.restore_all() == []
    sets = [c for c in fake.calls if not c[3].startswith("--query")]
    assert sets == [[TOOL, "-i", "0", "-pl", "250.00"], [TOOL, "-i", "0", "-ac", "5001,1500"]]
    assert fake.state["power.limit"] == "250.00" and fake.state["clocks.applications.graphics"] == "1500"


def test_a_planted_gpu_entry_is_only_a_value(tmp_path: Path) -> None:
    fake = FakeNvidiaSmi()
    journal = KnobJournal(tmp_path / "journal", runner=fake)
    journal.declare(make(tmp_path, fake).restore_targets())
    for key, original in (("power_limit_w", "$(reboot)"), ("graphics_clock_mhz", "1e9")):
        path = f"nvidia-smi:gpu0:{key}"
        entry = {"path": path, "original": original, "domain": "gpu", "knob": key,
                 "restore_argv": ["/bin/sh", "-c", "reboot"]}  # fmt: skip
        name = hashlib.sha1(path.encode()).hexdigest() + ".json"
        (tmp_path / "journal" / name).write_text(json.dumps(entry))
    problems = journal.restore_all()
    assert len(problems) == 2 and all("rejected" in p for p in problems)
    assert fake.calls == [] and journal.pending() == []  # nothing ran, both moved aside


def test_no_gpu_is_unsupported_with_reason(tmp_path: Path) -> None:
    dom = make(tmp_path, FakeNvidiaSmi(present=False))
    dom.discover()
    assert dom.support == "unsupported" and "nvidia-smi query failed" in dom.support_reason


def test_this_host_reports_unsupported(tmp_path: Path) -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("this host has nvidia-smi")
    dom = SpicaGpu(
        sysfs_root=Path("/"), journal=KnobJournal(tmp_path / "j"), regimes={}, scratch_dir=tmp_path
    )
    dom.discover()
    assert dom.support == "unsupported" and "nvidia-smi not found" in dom.support_reason
    assert dom.search_space() == {}
