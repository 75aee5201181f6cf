"""The memory domain against this machine's real /proc and /sys (root only); always restored."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kloros_orchestrator.spica import KnobJournal
from kloros_orchestrator.spica.domains.memory import SpicaMemory

SWAPPINESS = Path("/proc/sys/vm/swappiness")
DEFRAG = Path("/sys/kernel/mm/transparent_hugepage/defrag")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(SWAPPINESS, os.W_OK), reason="needs root and a writable vm.swappiness"
)


def test_memory_domain_on_the_real_host(tmp_path: Path) -> None:
    original = SWAPPINESS.read_text()
    original_defrag = DEFRAG.read_text() if DEFRAG.exists() else None
    journal = KnobJournal(tmp_path / "journal")
    dom = SpicaMemory(sysfs_root=Path("/"), journal=journal, regimes={}, scratch_dir=tmp_path / "scratch")
    try:
        dom.discover()
        assert dom.support == "ok", dom.support_reason
        space = dom.search_space()
        assert {"swappiness", "vfs_cache_pressure", "min_free_kbytes"} <= set(space)
        stock = dom.stock_genome()
        assert stock["swappiness"] == int(original)
        changed: dict[str, object] = {"swappiness": 10 if stock["swappiness"] != 10 else 20}
        if "thp_defrag" in space:  # a kernel bracket file: restored with its bare value
            changed["thp_defrag"] = next(
                c for c in space["thp_defrag"]["choices"] if c != stock["thp_defrag"]
            )
        dom.apply(changed)
        assert SWAPPINESS.read_text().strip() == str(changed["swappiness"])
        if "thp_defrag" in changed:
            assert f"[{changed['thp_defrag']}]" in DEFRAG.read_text()
    finally:
        problems = dom.restore()
    assert problems == []
    assert SWAPPINESS.read_text() == original
    if original_defrag is not None:
        assert DEFRAG.read_text() == original_defrag
    assert journal.pending() == []
