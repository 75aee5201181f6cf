from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

from kloros_orchestrator.spica import KnobJournal
from kloros_orchestrator.testing import write_tree


def test_first_original_wins_and_entries_are_self_contained(tmp_path: Path) -> None:
    target = tmp_path / "tree/proc/sys/vm/swappiness"
    write_tree(tmp_path / "tree", {"proc/sys/vm/swappiness": "60\n"})
    journal = KnobJournal(tmp_path / "journal")
    assert journal.record(target, "60\n", "memory", "swappiness") is True
    assert journal.record(target, "10", "memory", "swappiness") is False
    assert journal.record(target, "10", "storage", "swappiness") is False
    files = list((tmp_path / "journal").glob("*.json"))
    assert len(files) == 1
    entry = json.loads(files[0].read_text())
    assert entry["path"] == str(target) and entry["original"] == "60\n"
    assert entry["domain"] == "memory" and entry["knob"] == "swappiness"
    assert entry["domains"] == ["memory", "storage"]
    assert [e.path for e in journal.pending("storage")] == [str(target)]
    assert journal.pending("cpu") == []


def test_restore_by_domain_and_all(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write_tree(tree, {"a": "1\n", "b": "2\n"})
    journal = KnobJournal(tmp_path / "journal")
    journal.record(tree / "a", "1\n", "one", "a")
    journal.record(tree / "b", "2\n", "two", "b")
    (tree / "a").write_text("9")
    (tree / "b").write_text("9")
    assert journal.restore("one") == []
    assert (tree / "a").read_text() == "1\n" and (tree / "b").read_text() == "9"
    assert [e.knob for e in journal.pending()] == ["b"]
    assert journal.restore_all() == []
    assert (tree / "b").read_text() == "2\n" and journal.pending() == []


def test_failed_restore_is_reported_and_kept(tmp_path: Path) -> None:
    journal = KnobJournal(tmp_path / "journal")
    gone = tmp_path / "gone"
    journal.record(gone, "1\n", "d", "k")
    problems = journal.restore_all()
    assert len(problems) == 1 and str(gone) in problems[0]
    assert len(journal.pending()) == 1
    assert not gone.exists()  # restore never creates files
    gone.write_text("9")
    assert journal.restore_all() == [] and gone.read_text() == "1\n"


def test_restore_runs_in_recording_order(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write_tree(tree, {name: "x" for name in "zyxw"})
    order: list[str] = []
    journal = KnobJournal(tmp_path / "journal")
    for name in "zyxw":  # hash order of the file names differs from this order
        journal.record(tree / name, name, "d", name)
    real_pending = [e.knob for e in journal.pending()]
    assert real_pending == list("zyxw")
    assert journal.restore_all() == []
    order = [(tree / n).read_text() for n in "zyxw"]
    assert order == list("zyxw")


def test_argv_entries_restore_through_the_runner(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def runner(argv: Sequence[str]) -> str:
        calls.append(list(argv))
        if "fail" in argv:
            raise subprocess.CalledProcessError(1, list(argv))
        return ""

    journal = KnobJournal(tmp_path / "journal", runner=runner)
    journal.record("tool:gpu0:x", "250.0", "gpu", "x", restore_argv=["tool", "-pl", "250.00"])
    journal.record("tool:gpu0:y", "1", "gpu", "y", restore_argv=["tool", "fail"])
    problems = KnobJournal(tmp_path / "journal", runner=runner).restore_all()
    assert calls == [["tool", "-pl", "250.00"], ["tool", "fail"]]
    assert len(problems) == 1 and "tool:gpu0:y" in problems[0]
    assert [e.knob for e in journal.pending()] == ["y"]


def test_crash_leftovers_and_garbage(tmp_path: Path) -> None:
    jdir = tmp_path / "journal"
    journal = KnobJournal(jdir)
    (jdir / ".abc.json.123.tmp").write_text("{")  # a record interrupted before its rename
    (jdir / "0000.json").write_text("not json")
    problems = journal.restore_all()
    assert len(problems) == 1 and "unreadable journal entry" in problems[0]
    assert not (jdir / ".abc.json.123.tmp").exists()
    assert (jdir / "0000.json").exists()
