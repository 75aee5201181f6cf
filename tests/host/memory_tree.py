"""The fake memory-domain tree the host tests share: knob files as a kernel shows them."""

from __future__ import annotations

THP_ENABLED = "sys/kernel/mm/transparent_hugepage/enabled"
THP_DEFRAG = "sys/kernel/mm/transparent_hugepage/defrag"
SWAPPINESS = "proc/sys/vm/swappiness"
VFS = "proc/sys/vm/vfs_cache_pressure"
MIN_FREE = "proc/sys/vm/min_free_kbytes"
ZONE = "proc/sys/vm/zone_reclaim_mode"
FACTORY = {
    THP_ENABLED: "always [madvise] never\n",
    THP_DEFRAG: "always defer defer+madvise [madvise] never\n",
    SWAPPINESS: "60\n",
    VFS: "100\n",
    MIN_FREE: "67584\n",
    ZONE: "0\n",
}
PLAIN = (SWAPPINESS, VFS, MIN_FREE, ZONE)
BRACKET = (THP_ENABLED, THP_DEFRAG)
MEMINFO = {"proc/meminfo": "MemTotal:       16384000 kB\nMemFree:        1000 kB\n"}
MEMORY_TREE = {**FACTORY, **MEMINFO}
