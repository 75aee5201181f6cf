from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from kloros_orchestrator.spica.domains.cpu import SpicaCpu
from kloros_orchestrator.testing import SpicaDomainContract, write_tree

CPUS = 4


def cpu_tree() -> dict[str, str]:
    files = {
        "sys/devices/system/cpu/smt/control": "on\n",
        "sys/devices/system/cpu/cpufreq/boost": "1\n",
    }
    for i in range(CPUS):
        base = f"sys/devices/system/cpu/cpu{i}/cpufreq"
        files[f"{base}/scaling_governor"] = "powersave\n"
        files[f"{base}/scaling_available_governors"] = "performance powersave\n"
        files[f"{base}/energy_performance_preference"] = "balance_performance\n"
        files[f"{base}/energy_performance_available_preferences"] = (
            "default performance balance_performance balance_power power \n"
        )
    return files


class TestSpicaCpuContract(SpicaDomainContract):
    domain_cls = SpicaCpu
    cpus = CPUS
    # Workers, affinity, nice and policy are process knobs: they exist on every host.
    empty_tree_support: ClassVar[str] = "ok"

    def populate(self, root: Path) -> None:
        write_tree(root, cpu_tree())


def test_governor_applies_to_every_cpu_and_epp_follows_performance(tmp_path: Path) -> None:
    contract = TestSpicaCpuContract()
    root = tmp_path / "sysfs"
    write_tree(root, cpu_tree())
    dom = contract.make_domain(root, tmp_path)
    dom.discover()
    assert dom.search_space()["governor"]["choices"] == ["performance", "powersave"]
    dom.apply({"governor": "performance", "epp": "power"})
    for i in range(CPUS):
        base = root / f"sys/devices/system/cpu/cpu{i}/cpufreq"
        assert (base / "scaling_governor").read_text() == "performance"
        # intel_pstate refuses other EPP values under the performance governor
        assert (base / "energy_performance_preference").read_text() == "performance"
    assert dom.restore() == []
    assert (root / "sys/devices/system/cpu/cpu3/cpufreq/scaling_governor").read_text() == "powersave\n"


def test_process_knobs_shape_the_workload(tmp_path: Path) -> None:
    contract = TestSpicaCpuContract()
    dom = contract.make_domain(tmp_path / "nothing", tmp_path)
    dom.discover()
    assert dom.support == "ok" and dom.process_scoped()
    assert set(dom.search_space()["affinity"]["choices"]) == {"all", "first_half", "second_half", "spread"}
    stock = dom.build_workload("stress", dom.stock_genome())
    assert stock.stressors[0].instances == CPUS and stock.cpus is None
    assert stock.nice == 0 and stock.sched_policy == "other"
    spec = dom.build_workload(
        "stress", {"workers": 2, "affinity": "spread", "nice": 5, "sched_policy": "batch"}
    )
    assert spec.stressors[0].instances == 2
    assert spec.nice == 5 and spec.sched_policy == "batch"
    assert spec.cpus is not None and len(spec.cpus) == 2 and spec.cpus[1] - spec.cpus[0] == 2
    idle = dom.build_workload("idle", {"workers": 2})
    assert idle.stressors[0].instances == 1  # a fixed count is not the worker knob's business


def test_smt_not_supported_value_is_dropped(tmp_path: Path) -> None:
    contract = TestSpicaCpuContract()
    root = tmp_path / "sysfs"
    write_tree(root, {**cpu_tree(), "sys/devices/system/cpu/smt/control": "notsupported\n"})
    dom = contract.make_domain(root, tmp_path)
    dom.discover()
    assert "smt" in dom.dropped and "notsupported" in dom.dropped["smt"]
    assert (root / "sys/devices/system/cpu/smt/control").read_text() == "notsupported\n"
