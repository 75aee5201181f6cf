from __future__ import annotations

from pathlib import Path

from kloros_orchestrator.spica import SpicaDomain
from kloros_orchestrator.spica.domains.memory import SpicaMemory
from kloros_orchestrator.testing import SpicaDomainContract, write_tree

MEMORY_TREE = {
    "sys/kernel/mm/transparent_hugepage/enabled": "always [madvise] never\n",
    "sys/kernel/mm/transparent_hugepage/defrag": "always defer defer+madvise [madvise] never\n",
    "proc/sys/vm/swappiness": "60\n",
    "proc/sys/vm/vfs_cache_pressure": "100\n",
    "proc/sys/vm/min_free_kbytes": "67584\n",
    "proc/sys/vm/zone_reclaim_mode": "0\n",
    "proc/meminfo": "MemTotal:       16384000 kB\nMemFree:        1000 kB\n",
}


class TestSpicaMemoryContract(SpicaDomainContract):
    domain_cls = SpicaMemory

    def populate(self, root: Path) -> None:
        write_tree(root, MEMORY_TREE)


def test_min_free_kbytes_is_capped_at_one_percent_of_ram(tmp_path: Path) -> None:
    contract = TestSpicaMemoryContract()
    root = tmp_path / "sysfs"
    write_tree(
        root,
        {**MEMORY_TREE, "proc/meminfo": "MemTotal: 8000000 kB\n", "proc/sys/vm/min_free_kbytes": "45056\n"},
    )
    dom: SpicaDomain = contract.make_domain(root, tmp_path)
    dom.discover()
    assert dom.search_space()["min_free_kbytes"]["high"] == 80000
    assert dom.search_space()["min_free_kbytes"]["log"] is True


def test_thp_choices_are_what_the_host_offers(tmp_path: Path) -> None:
    contract = TestSpicaMemoryContract()
    root = tmp_path / "sysfs"
    write_tree(root, {**MEMORY_TREE, "sys/kernel/mm/transparent_hugepage/enabled": "[always] never\n"})
    dom = contract.make_domain(root, tmp_path)
    dom.discover()
    assert dom.search_space()["thp_enabled"]["choices"] == ["always", "never"]
    assert dom.stock_genome()["thp_enabled"] == "always"
