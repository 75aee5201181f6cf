"""A run killed with SIGKILL mid-candidate: the next start restores every knob from the journal, through
the knobs every registered domain declares (none of the crashed run's objects)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from test_spica_memory import MEMORY_TREE
from test_spica_os_scheduler import SCHED_TREE

from kloros_orchestrator.spica import get_domain_class
from kloros_orchestrator.spica.registry import open_journal
from kloros_orchestrator.testing import comparable, write_tree

CHILD = """
import sys
from pathlib import Path
from kloros_orchestrator.spica import KnobJournal, get_domain_class

root, journal_dir, scratch = map(Path, sys.argv[1:4])
dom = get_domain_class("memory")(
    sysfs_root=root, journal=KnobJournal(journal_dir), regimes={}, scratch_dir=scratch
)
dom.discover()
dom.apply({"thp_enabled": "never", "thp_defrag": "always", "swappiness": 1,
           "vfs_cache_pressure": 400, "min_free_kbytes": 20000, "zone_reclaim_mode": 1})
print("applied", flush=True)
sys.stdin.read()  # hold the knobs until killed
"""

BRACKET_FILES = ("sys/kernel/mm/transparent_hugepage/enabled", "sys/kernel/mm/transparent_hugepage/defrag")


def test_sigkilled_run_is_restored_at_the_next_start_up(tmp_path: Path) -> None:
    root = tmp_path / "sysfs"
    write_tree(root, {**MEMORY_TREE, **SCHED_TREE})
    bracket = {(root / rel).absolute() for rel in BRACKET_FILES}
    before = comparable(root, bracket)
    journal_dir = tmp_path / "journal"

    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), str(journal_dir), str(tmp_path / "scratch")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "applied"
        assert (root / "proc/sys/vm/swappiness").read_text() == "1"
        assert comparable(root, bracket) != before
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    # Start-up of the next run: a different domain set, a new journal object on the same directory.
    journal = open_journal(journal_dir, sysfs_root=root, scratch_root=tmp_path / "scratch")
    other = get_domain_class("os_scheduler")(
        sysfs_root=root, journal=journal, regimes={}, scratch_dir=tmp_path / "scratch"
    )
    other.discover()
    assert other.restore() == []  # its own (empty) share only: memory's entries stay
    assert {e.domain for e in journal.pending()} == {"memory"} and len(journal.pending()) == 6
    assert journal.restore_all() == []
    assert comparable(root, bracket) == before
    assert journal.pending() == [] and list(journal_dir.iterdir()) == []
