from __future__ import annotations

from pathlib import Path

import pytest

from kloros_orchestrator.spica import KnobJournal
from kloros_orchestrator.spica.domains.power_thermal import SpicaPowerThermal
from kloros_orchestrator.testing import SpicaDomainContract, write_tree

POWER_TREE = {
    "sys/class/powercap/intel-rapl:0/constraint_0_power_limit_uw": "15000000\n",
    "sys/class/powercap/intel-rapl:0/constraint_0_max_power_uw": "25000000\n",
    "sys/class/powercap/intel-rapl:0:0/constraint_0_power_limit_uw": "0\n",
    "sys/devices/system/cpu/cpufreq/boost": "1\n",
    "sys/devices/system/cpu/intel_pstate/no_turbo": "0\n",
    "sys/firmware/acpi/platform_profile": "balanced\n",
    "sys/firmware/acpi/platform_profile_choices": "low-power balanced performance\n",
}


class TestSpicaPowerThermalContract(SpicaDomainContract):
    domain_cls = SpicaPowerThermal

    def populate(self, root: Path) -> None:
        write_tree(root, POWER_TREE)


def test_power_limit_range_comes_from_the_zone(tmp_path: Path) -> None:
    root = tmp_path / "sysfs"
    write_tree(root, POWER_TREE)
    dom = TestSpicaPowerThermalContract().make_domain(root, tmp_path)
    dom.discover()
    space = dom.search_space()
    assert space["rapl0_limit_uw"]["low"] == 7_500_000 and space["rapl0_limit_uw"]["high"] == 25_000_000
    assert "rapl0_0_limit_uw" not in space  # sub-zones are not package limits
    assert space["platform_profile"]["choices"] == ["low-power", "balanced", "performance"]


def test_unsupported_on_this_host_says_why(tmp_path: Path) -> None:
    # The real host: no RAPL, no boost. Discovery must not write anything there.
    dom = SpicaPowerThermal(
        sysfs_root=Path("/"), journal=KnobJournal(tmp_path / "j"), regimes={}, scratch_dir=tmp_path
    )
    dom.discover()
    if dom.support == "ok":
        pytest.skip("this host has power knobs")
    assert dom.support == "unsupported"
    assert "boost" in dom.support_reason and "absent" in dom.support_reason
