from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kloros_orchestrator.errors import DomainError
from kloros_orchestrator.spica import Knob, KnobJournal, apply_system, discover_knob, probe
from kloros_orchestrator.spica import knobs as knobs_mod
from kloros_orchestrator.testing import write_tree

THP = Knob(
    "thp",
    "choice",
    choices=("always", "madvise", "never"),
    fmt="bracket",
    path="sys/kernel/mm/transparent_hugepage/enabled",
)
SWAP = Knob("swappiness", "int", low=0, high=100, path="proc/sys/vm/swappiness")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"type": "int", "low": 5, "high": 5}, "low < high"),
        ({"type": "int", "low": 0, "high": 5, "log": True}, "log scale"),
        ({"type": "float"}, "need low and high"),
        ({"type": "choice"}, "need choices"),
        ({"type": "choice", "choices": ("a", "a")}, "distinct"),
        ({"type": "bool", "low": 0, "high": 1}, "no low/high"),
        ({"type": "int", "low": 0, "high": 5, "scope": "process"}, "need a default"),
        ({"type": "int", "low": 0, "high": 5, "scope": "process", "default": 9}, "outside"),
        ({"type": "int", "low": 0, "high": 5, "path": "/proc/sys/vm/swappiness"}, "must be relative"),
        ({"type": "int", "low": 0, "high": 5, "path": "proc/sys/../../etc/shadow"}, "must be relative"),
        ({"type": "int", "low": 0, "high": 5, "path": "etc/passwd"}, "must be relative"),
        ({"type": "int", "low": 0, "high": 5, "env": "lower"}, "environment variable"),
        ({"type": "number", "low": 0, "high": 5}, "type must be"),
    ],
)
def test_bad_declarations_are_refused(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(DomainError, match=fragment):
        Knob("k", **kwargs)


def test_bracket_files_decode_to_the_active_value_and_restore_bare() -> None:
    text = "always [madvise] never\n"
    assert THP.decode(text) == "madvise"
    assert THP.host_choices(text) == ("always", "madvise", "never")
    assert THP.restore_text(text) == "madvise"
    assert THP.decode("never") == "never"  # what a regular file holds after a write
    assert SWAP.restore_text("60\n") == "60\n"  # plain files come back byte for byte
    assert THP.encode("never") == "never" and SWAP.encode(7) == "7"
    assert Knob("b", "bool").encode(True) == "1" and Knob("b", "bool").decode("Y\n") is True


def test_coerce_accepts_engine_numbers_and_refuses_the_rest() -> None:
    assert SWAP.coerce(np.int64(7)) == 7 and type(SWAP.coerce(np.int64(7))) is int
    assert SWAP.coerce(7.0) == 7
    for bad in (7.5, 101, -1, True, "7", float("nan")):
        with pytest.raises(DomainError):
            SWAP.coerce(bad)
    zone = Knob("zone", "choice", choices=(0, 1))
    assert zone.coerce("1") == 1 and zone.coerce(0) == 0
    assert Knob("f", "float", low=0.5, high=2.0).coerce(1) == 1.0
    assert Knob("b", "bool").coerce(np.bool_(True)) is True


def test_probe_reports_why_a_knob_is_unusable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tree(tmp_path, {"proc/sys/vm/swappiness": "60\n"})
    assert probe(SWAP, tmp_path) == (True, "60\n")
    assert probe(THP, tmp_path)[0] is False and "absent" in probe(THP, tmp_path)[1]
    (tmp_path / "sys/kernel/mm/transparent_hugepage/enabled").mkdir(parents=True)
    assert "not a regular file" in probe(THP, tmp_path)[1]
    (tmp_path / "proc/sys/vm/swappiness").write_text("sixty\n")
    assert "\"sixty\" does not parse" in probe(SWAP, tmp_path)[1]
    (tmp_path / "proc/sys/vm/swappiness").write_text("60\n")

    def refuse(path: Path, text: str, sysfs_root: Path) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(knobs_mod, "write_knob", refuse)
    ok, reason = probe(SWAP, tmp_path)
    assert not ok and "not writable" in reason and "Permission denied" in reason
    monkeypatch.setattr("kloros_orchestrator.spica.knobs.os.access", lambda p, mode: False)
    assert "read-only" in probe(SWAP, tmp_path)[1]


def test_probe_writes_back_only_the_same_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tree(tmp_path, {"sys/kernel/mm/transparent_hugepage/enabled": "always [madvise] never\n"})
    writes: list[str] = []
    real = knobs_mod.write_knob

    def recording_write(path: Path, text: str, sysfs_root: Path) -> None:
        writes.append(text)
        real(path, text, sysfs_root)

    monkeypatch.setattr(knobs_mod, "write_knob", recording_write)
    found = discover_knob(THP, tmp_path)
    assert found.stock == "madvise" and writes == ["madvise"]


def test_choices_are_intersected_with_the_host(tmp_path: Path) -> None:
    write_tree(tmp_path, {"sys/kernel/mm/transparent_hugepage/enabled": "[always] madvise\n"})
    found = discover_knob(THP, tmp_path)
    assert found.knob is not None and found.knob.choices == ("always", "madvise")
    write_tree(tmp_path, {"sys/kernel/mm/transparent_hugepage/enabled": "[always] sometimes\n"})
    assert "fewer than two" in discover_knob(THP, tmp_path).reason
    gov = Knob(
        "gov",
        "choice",
        choices=("performance", "powersave", "schedutil"),
        path="sys/cpu/cpu{cpu}/gov",
        choices_path="sys/cpu/cpu0/avail",
    )
    write_tree(
        tmp_path,
        {
            "sys/devices/system/cpu/cpu0/x": "",
            "sys/cpu/cpu0/gov": "ondemand\n",
            "sys/cpu/cpu0/avail": "ondemand performance schedutil\n",
        },
    )
    assert "not one of" in discover_knob(gov, tmp_path).reason  # stock value must be representable


def test_range_widens_to_hold_the_stock_value(tmp_path: Path) -> None:
    write_tree(tmp_path, {"proc/sys/vm/swappiness": "150\n"})
    found = discover_knob(SWAP, tmp_path)
    assert found.knob is not None and (found.knob.low, found.knob.high) == (0, 150) and found.stock == 150


def test_cpu_placeholder_expands_to_every_cpu(tmp_path: Path) -> None:
    knob = Knob("gov", "choice", choices=("a", "b"), path="sys/devices/system/cpu/cpu{cpu}/gov")
    write_tree(tmp_path, {f"sys/devices/system/cpu/cpu{i}/gov": "a\n" for i in (0, 1, 10)})
    (tmp_path / "sys/devices/system/cpu/cpufreq").mkdir()
    paths = knob.resolve_paths(tmp_path)
    assert [p.parent.name for p in paths] == ["cpu0", "cpu1", "cpu10"]
    journal = KnobJournal(tmp_path / "journal")
    apply_system(knob, "b", tmp_path, journal, "cpu")
    assert all(p.read_text() == "b" for p in paths) and len(journal.pending()) == 3


def test_apply_system_journals_durably_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(tmp_path, {"proc/sys/vm/swappiness": "60\n"})
    journal = KnobJournal(tmp_path / "journal")
    seen: list[int] = []
    real = knobs_mod.write_knob

    def checking_write(path: Path, text: str, sysfs_root: Path) -> None:
        seen.append(len(list((tmp_path / "journal").glob("*.json"))))
        real(path, text, sysfs_root)

    monkeypatch.setattr(knobs_mod, "write_knob", checking_write)
    apply_system(SWAP, 10, tmp_path, journal, "memory")
    assert seen == [1]
    assert (tmp_path / "proc/sys/vm/swappiness").read_text() == "10"
    with pytest.raises(DomainError):
        apply_system(SWAP, 1000, tmp_path, journal, "memory")
