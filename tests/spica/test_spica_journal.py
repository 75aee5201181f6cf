from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

from kloros_orchestrator.spica import Knob, KnobJournal
from kloros_orchestrator.spica.journal import RestoreTarget
from kloros_orchestrator.spica.knobs import file_target
from kloros_orchestrator.testing import write_tree


def knob(name: str) -> Knob:
    return Knob(name, "int", low=0, high=100, path=f"proc/sys/kl/{name}")


def declared(tmp_path: Path, knobs: dict[str, str], **kw: object) -> tuple[Path, KnobJournal]:
    """A tree ``tmp_path/tree`` with one file per knob name (domain given by ``knobs``), declared."""
    tree = tmp_path / "tree"
    write_tree(tree, {f"proc/sys/kl/{name}": "0\n" for name in knobs})
    journal = KnobJournal(tmp_path / "journal", **kw)  # type: ignore[arg-type]
    journal.declare(file_target(domain, knob(name), tree) for name, domain in knobs.items())
    return tree / "proc/sys/kl", journal


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
    kl, journal = declared(tmp_path, {"a": "one", "b": "two"})
    journal.record(kl / "a", "1\n", "one", "a")
    journal.record(kl / "b", "2\n", "two", "b")
    (kl / "a").write_text("9")
    (kl / "b").write_text("9")
    assert journal.restore("one") == []
    assert (kl / "a").read_text() == "1\n" and (kl / "b").read_text() == "9"
    assert [e.knob for e in journal.pending()] == ["b"]
    assert journal.restore_all() == []
    assert (kl / "b").read_text() == "2\n" and journal.pending() == []


def test_failed_restore_is_reported_and_kept(tmp_path: Path) -> None:
    kl, journal = declared(tmp_path, {"gone": "d"})
    gone = kl / "gone"
    gone.unlink()
    journal.record(gone, "1\n", "d", "gone")
    problems = journal.restore_all()
    assert len(problems) == 1 and str(gone) in problems[0] and "could not restore" in problems[0]
    assert len(journal.pending()) == 1
    assert not gone.exists()  # restore never creates files
    gone.write_text("9")
    assert journal.restore_all() == [] and gone.read_text() == "1\n"


def test_restore_runs_in_recording_order(tmp_path: Path) -> None:
    names = ["z", "y", "x", "w"]  # hash order of the file names differs from this order
    written: list[str] = []
    journal = KnobJournal(tmp_path / "journal")
    journal.declare(
        RestoreTarget("d", n, frozenset({f"tool:{n}"}), lambda key, _original: written.append(key))
        for n in names
    )
    for name in names:
        journal.record(f"tool:{name}", "1", "d", name)
    assert [e.knob for e in journal.pending()] == names
    assert journal.restore_all() == []
    assert written == [f"tool:{n}" for n in names]


def test_restore_commands_run_from_memory_only(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def runner(argv: Sequence[str]) -> str:
        calls.append(list(argv))
        if "fail" in argv:
            raise subprocess.CalledProcessError(1, list(argv))
        return ""

    journal = KnobJournal(tmp_path / "journal", runner=runner)
    journal.record("tool:gpu0:x", "250.0", "gpu", "x", restore_argv=["tool", "-pl", "250.00"])
    journal.record("tool:gpu0:y", "1", "gpu", "y", restore_argv=["tool", "fail"])
    assert all(e.restore_argv is None for e in journal.pending())  # never written to disk
    problems = journal.restore_all()
    assert calls == [["tool", "-pl", "250.00"], ["tool", "fail"]]
    assert len(problems) == 1 and "tool:gpu0:y" in problems[0]
    assert [e.knob for e in journal.pending()] == ["y"]
    # The next start-up knows no command for it and no declared knob: never run, moved aside.
    calls.clear()
    problems = KnobJournal(tmp_path / "journal", runner=runner).restore_all()
    assert calls == [] and len(problems) == 1 and "not a declared" in problems[0]
    assert journal.pending() == [] and len(list((tmp_path / "journal").glob("*.rejected-*"))) == 1


def test_crash_leftovers_and_garbage(tmp_path: Path) -> None:
    jdir = tmp_path / "journal"
    journal = KnobJournal(jdir)
    (jdir / ".abc.json.123.tmp").write_text("{")  # a record interrupted before its rename
    (jdir / "0000.json").write_text("not json")
    problems = journal.restore_all()
    assert len(problems) == 1 and "unreadable journal entry" in problems[0]
    assert not (jdir / ".abc.json.123.tmp").exists()
    assert not (jdir / "0000.json").exists()
    assert [p.name.split(".rejected-")[0] for p in jdir.iterdir()] == ["0000.json"]
    assert journal.restore_all() == []  # reported once


def test_a_bad_file_under_a_recorded_name_is_moved_aside_by_record(tmp_path: Path) -> None:
    kl, journal = declared(tmp_path, {"a": "d"})
    journal.record(kl / "a", "1\n", "d", "a")
    entry_file = next((tmp_path / "journal").glob("*.json"))
    journal.restore_all()
    entry_file.write_text("garbage")  # a bad file where the next record of this path goes
    assert journal.record(kl / "a", "5\n", "d", "a") is True
    assert [e.original for e in journal.pending()] == ["5\n"]
    assert len(list((tmp_path / "journal").glob("*.rejected-*"))) == 1


def test_a_file_two_domains_recorded_is_restored_by_either(tmp_path: Path) -> None:
    kl, journal = declared(tmp_path, {"a": "two"})  # only the second recorder is in use in this run
    journal.record(kl / "a", "1\n", "one", "a")
    journal.record(kl / "a", "1\n", "two", "a")
    (kl / "a").write_text("9")
    assert journal.restore("two") == [] and (kl / "a").read_text() == "1\n"
