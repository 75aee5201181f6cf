"""A state_dir (and so the journal) created first by another user: its entries are data, never instructions.

Planted entries must not run a command, must not write outside ``sysfs_root``, must not be written
through a symlink out of it, and must not crash or hang the start-up restore; the journal directory
ends up private.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from test_spica_memory import MEMORY_TREE

from kloros_orchestrator.errors import DomainError, KlorosError
from kloros_orchestrator.spica import Knob, KnobJournal, SpicaDomain, apply_system
from kloros_orchestrator.spica.domains.memory import SpicaMemory
from kloros_orchestrator.spica.domains.storage import SpicaStorage
from kloros_orchestrator.spica.registry import open_journal
from kloros_orchestrator.testing import comparable, snapshot_files, write_tree

SWAPPINESS = "proc/sys/vm/swappiness"
KL = Knob("a", "int", low=0, high=100, path="proc/sys/kl/a")


class SpicaKl(SpicaDomain):
    """Not registered: one file knob, ``proc/sys/kl/a``."""

    name: ClassVar[str] = "kl"

    def declare_knobs(self) -> list[Knob]:
        return [KL]


def plant(journal_dir: Path, **entry: Any) -> Path:
    """An entry file as another user would write it, under the name the journal looks for."""
    journal_dir.mkdir(parents=True, exist_ok=True)
    file = journal_dir / (hashlib.sha1(str(entry["path"]).encode()).hexdigest() + ".json")
    file.write_text(json.dumps(entry))
    return file


def start_up(tmp_path: Path, root: Path) -> tuple[KnobJournal, list[str]]:
    journal = open_journal(tmp_path / "journal", sysfs_root=root, scratch_root=tmp_path / "scratch")
    return journal, journal.restore_all()


def bounded(call: Callable[[], list[str]], seconds: float = 20.0) -> list[str]:
    """``call()`` in a thread that must finish within ``seconds`` (a hang fails the test, not the run)."""
    out: list[list[str]] = []
    worker = threading.Thread(target=lambda: out.append(call()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"restore still running after {seconds} s"
    return out[0]


def rejected(journal_dir: Path) -> list[str]:
    return sorted(p.name.split(".rejected-")[0] for p in journal_dir.iterdir() if ".rejected-" in p.name)


def test_a_planted_restore_command_is_never_run(tmp_path: Path) -> None:
    root = tmp_path / "sysfs"
    write_tree(root, {**MEMORY_TREE, SWAPPINESS: "1"})
    marker = tmp_path / "MARKER"
    shell = ["/bin/sh", "-c", f"touch {marker}"]
    declared = plant(tmp_path / "journal", path=str(root / SWAPPINESS), original="60\n", domain="memory",
                     knob="swappiness", restore_argv=shell)  # fmt: skip
    unknown = plant(tmp_path / "journal", path="tool:x", original="1", domain="rogue", knob="x",
                    restore_argv=shell)  # fmt: skip
    journal, problems = start_up(tmp_path, root)
    assert not marker.exists()
    assert (root / SWAPPINESS).read_text() == "60\n"  # the declared knob got its value, nothing else
    assert len(problems) == 1 and "not a declared" in problems[0]
    assert not declared.exists() and rejected(tmp_path / "journal") == [unknown.name]
    assert journal.restore_all() == []  # a rejected entry is reported once


def test_a_planted_entry_outside_sysfs_root_is_never_written(tmp_path: Path) -> None:
    root = tmp_path / "sysfs"
    write_tree(root, MEMORY_TREE)
    outside = tmp_path / "etc/shadow"
    write_tree(tmp_path, {"etc/shadow": "root:x:0\n"})
    paths_and_values = [
        (str(outside), "0\n"),
        (str(root / "proc/sys/vm/../../../etc/shadow"), "0\n"),
        # A declared file, but another knob's: the entry names the knob it may write.
        (str(root / "proc/sys/vm/min_free_kbytes"), "0\n"),
        # The right file, a value the knob cannot hold.
        (str(root / SWAPPINESS), "60\nkernel.x=1\n"),
    ]
    planted = [
        plant(tmp_path / "journal", path=path, original=value, domain="memory", knob="swappiness")
        for path, value in paths_and_values
    ]
    before = snapshot_files(tmp_path / "sysfs")
    _, problems = start_up(tmp_path, root)
    assert outside.read_text() == "root:x:0\n"
    assert snapshot_files(tmp_path / "sysfs") == before
    assert len(problems) == 4 and all("rejected" in p for p in problems)
    assert rejected(tmp_path / "journal") == sorted(p.name for p in planted)


def kl_domain(tmp_path: Path, root: Path) -> SpicaKl:
    return SpicaKl(sysfs_root=root, journal=KnobJournal(tmp_path / "journal"), regimes={},
                   scratch_dir=tmp_path / "scratch")  # fmt: skip


@pytest.mark.parametrize("link", ["file", "directory"])
def test_a_symlink_out_of_sysfs_root_is_never_written_through(tmp_path: Path, link: str) -> None:
    root = tmp_path / "sysfs"
    write_tree(tmp_path, {"outside/a": "secret\n"})
    if link == "file":
        (root / "proc/sys/kl").mkdir(parents=True)
        (root / "proc/sys/kl/a").symlink_to(tmp_path / "outside/a")
    else:
        (root / "proc/sys").mkdir(parents=True)
        (root / "proc/sys/kl").symlink_to(tmp_path / "outside")
    dom = kl_domain(tmp_path, root)
    dom.discover()
    assert dom.support == "unsupported" and "refused" in dom.dropped["a"]
    with pytest.raises(DomainError, match="refused"):
        apply_system(KL, 5, root, dom.journal, "kl")
    assert (tmp_path / "outside/a").read_text() == "secret\n"
    assert dom.journal.pending() == []


def test_apply_refuses_a_file_swapped_for_a_symlink_and_restore_never_follows_it(tmp_path: Path) -> None:
    root = tmp_path / "sysfs"
    write_tree(root, {"proc/sys/kl/a": "7\n"})
    write_tree(tmp_path, {"outside/a": "secret\n"})
    dom = kl_domain(tmp_path, root)
    dom.discover()
    assert dom.support == "ok"
    dom.apply({"a": 9})  # journaled "7\n", wrote 9
    (root / "proc/sys/kl").rename(tmp_path / "old-kl")
    (root / "proc/sys/kl").symlink_to(tmp_path / "outside")  # the directory now leads out
    with pytest.raises(DomainError, match="refused") as failed:
        dom.apply({"a": 3})
    # The failed apply's restore refused the journaled file as well: moved aside, never followed.
    assert "restore problems" in str(failed.value) and "refused" in str(failed.value).split("restore")[-1]
    assert (tmp_path / "outside/a").read_text() == "secret\n"
    assert dom.journal.pending() == [] and dom.restore() == []
    assert len(rejected(tmp_path / "journal")) == 1


def test_a_symlink_within_the_tree_still_works(tmp_path: Path) -> None:
    """``sys/block/sda -> ../devices/...`` as on a real host: the real path stays in the tree."""
    root = tmp_path / "sysfs"
    q = "sys/devices/pci0/block/sda/queue"
    write_tree(root, {f"{q}/scheduler": "none [mq-deadline] kyber\n", f"{q}/read_ahead_kb": "128\n",
                      f"{q}/nr_requests": "64\n", "proc/sys/vm/dirty_ratio": "20\n",
                      "proc/sys/vm/dirty_background_ratio": "10\n",
                      "proc/sys/vm/dirty_expire_centisecs": "3000\n"})  # fmt: skip
    (root / "sys/block").mkdir(parents=True)
    (root / "sys/block/sda").symlink_to("../devices/pci0/block/sda")
    before = comparable(root, {root / f"{q}/scheduler"})
    dom = SpicaStorage(sysfs_root=root, journal=KnobJournal(tmp_path / "journal"), regimes={},
                       scratch_dir=tmp_path / "scratch", options={"device": "sda"})  # fmt: skip
    dom.discover()
    assert dom.support == "ok" and dom.dropped == {}, dom.dropped
    dom.apply({"io_scheduler": "kyber", "read_ahead_kb": 512, "dirty_ratio": 40})
    assert (root / f"{q}/read_ahead_kb").read_text() == "512"
    # A crash, then the next start-up: restored through the declared (symlinked) paths.
    _, problems = start_up(tmp_path, root)
    assert problems == []
    assert comparable(root, {root / f"{q}/scheduler"}) == before


def test_bad_entry_files_are_moved_aside_and_the_good_ones_restored(tmp_path: Path) -> None:
    root = tmp_path / "sysfs"
    write_tree(root, MEMORY_TREE)
    before = comparable(root, {root / "sys/kernel/mm/transparent_hugepage/enabled",
                               root / "sys/kernel/mm/transparent_hugepage/defrag"})  # fmt: skip
    dom = SpicaMemory(sysfs_root=root, journal=KnobJournal(tmp_path / "journal"), regimes={},
                      scratch_dir=tmp_path / "scratch")  # fmt: skip
    dom.discover()
    dom.apply({"swappiness": 1, "thp_enabled": "never"})
    jdir = tmp_path / "journal"
    deep = '{"x":' + "[" * 20000 + "]" * 20000 + ', "path": "p", "original": "1", "domain": "d", "knob": "k"}'
    (jdir / "deep.json").write_text(deep)
    (jdir / "zero.json").symlink_to("/dev/zero")
    os.mkfifo(jdir / "fifo.json")
    (jdir / "huge.json").write_text(" " * 70000)
    (jdir / "dir.json").mkdir()
    problems = bounded(lambda: start_up(tmp_path, root)[1])
    assert len(problems) == 5, problems
    assert rejected(jdir) == ["deep.json", "dir.json", "fifo.json", "huge.json", "zero.json"]
    assert comparable(root, {root / "sys/kernel/mm/transparent_hugepage/enabled",
                             root / "sys/kernel/mm/transparent_hugepage/defrag"}) == before  # fmt: skip
    assert not [p for p in jdir.iterdir() if p.name.endswith(".json")]


def test_the_journal_directory_is_private(tmp_path: Path) -> None:
    pre = tmp_path / "pre/journal"
    pre.mkdir(parents=True, mode=0o755)
    os.chmod(pre, 0o777)
    KnobJournal(pre)
    assert stat.S_IMODE(pre.stat().st_mode) == 0o700
    old = os.umask(0)
    try:
        KnobJournal(tmp_path / "fresh/journal")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "fresh/journal").stat().st_mode) == 0o700
    (tmp_path / "elsewhere").mkdir(mode=0o755)
    (tmp_path / "linked").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(KlorosError, match="cannot open it as a directory"):
        KnobJournal(tmp_path / "linked")
    assert stat.S_IMODE((tmp_path / "elsewhere").stat().st_mode) == 0o755


def test_a_journal_replaced_after_opening_is_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "sysfs"
    write_tree(root, {"proc/sys/kl/a": "7\n"})
    dom = kl_domain(tmp_path, root)
    dom.discover()
    (tmp_path / "journal").rename(tmp_path / "moved")
    (tmp_path / "journal").mkdir()
    dom.apply({"a": 9})
    assert list((tmp_path / "journal").iterdir()) == []  # the entry went to the directory it opened
    assert len(list((tmp_path / "moved").glob("*.json"))) == 1
    assert dom.restore() == [] and (root / "proc/sys/kl/a").read_text() == "7\n"
