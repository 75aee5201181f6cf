"""Memory domain: transparent huge pages and the VM's reclaim/swap tunables."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import ClassVar

import psutil

from kloros_orchestrator.spica.base import SpicaDomain
from kloros_orchestrator.spica.knobs import Knob, read_text
from kloros_orchestrator.spica.registry import register

_THP = "sys/kernel/mm/transparent_hugepage"
_VM = "proc/sys/vm"


def total_ram_kb(sysfs_root: Path) -> int:
    """MemTotal of the host under ``sysfs_root`` (its proc/meminfo), else of this machine."""
    with contextlib.suppress(OSError, UnicodeDecodeError, ValueError):
        for line in read_text(Path(sysfs_root) / "proc/meminfo").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return int(psutil.virtual_memory().total // 1024)


@register
class SpicaMemory(SpicaDomain):
    """THP modes, swappiness, cache pressure, free-memory reserve and zone reclaim."""

    name: ClassVar[str] = "memory"
    description: ClassVar[str] = "transparent huge pages and VM reclaim tunables"

    def declare_knobs(self) -> list[Knob]:
        # A reserve above 1% of RAM starves the workload and can trigger the OOM killer.
        reserve_cap = max(1024, total_ram_kb(self.sysfs_root) // 100)
        min_free_high = min(262144, reserve_cap)
        min_free_low = min(16384, min_free_high // 2)
        return [
            Knob("thp_enabled", "choice", choices=("always", "madvise", "never"), fmt="bracket",
                 path=f"{_THP}/enabled", description="transparent huge pages"),
            Knob("thp_defrag", "choice", choices=("always", "defer", "defer+madvise", "madvise", "never"),
                 fmt="bracket", path=f"{_THP}/defrag", description="THP defragmentation on fault"),
            Knob("swappiness", "int", low=0, high=100, path=f"{_VM}/swappiness",
                 description="vm.swappiness: anon vs file reclaim balance"),
            Knob("vfs_cache_pressure", "int", low=10, high=500, log=True, path=f"{_VM}/vfs_cache_pressure",
                 description="vm.vfs_cache_pressure: dentry/inode cache reclaim"),
            Knob("min_free_kbytes", "int", low=min_free_low, high=min_free_high, log=True,
                 path=f"{_VM}/min_free_kbytes", description="vm.min_free_kbytes: free-memory reserve"),
            Knob("zone_reclaim_mode", "choice", choices=(0, 1), path=f"{_VM}/zone_reclaim_mode",
                 description="vm.zone_reclaim_mode: reclaim locally before allocating off-node"),
        ]
