"""``host/live.py``: a genome's settings on a host, comparing values by meaning, factory settings and
writing files with a best-effort undo, on a fake sysfs tree holding the memory domain's files."""

from __future__ import annotations

from pathlib import Path

import pytest
from memory_tree import MEMORY_TREE, MIN_FREE, SWAPPINESS, THP_DEFRAG, THP_ENABLED, VFS, ZONE

from kloros_orchestrator.errors import DomainError
from kloros_orchestrator.host.live import (
    declared_settings,
    drift_of,
    factory_genome,
    factory_knobs,
    factory_settings,
    same_value,
    setting_files,
    settings_of,
    write_files,
)
from kloros_orchestrator.host.records import FactoryKnob, KnobSetting
from kloros_orchestrator.spica.base import SpicaDomain
from kloros_orchestrator.spica.domains.memory import SpicaMemory
from kloros_orchestrator.spica.knobs import KnobJournal
from kloros_orchestrator.testing import write_tree

CPU = "sys/devices/system/cpu"
AT = "2026-01-01T00:00:00+00:00"


def _memory(root: Path, tmp_path: Path) -> SpicaMemory:
    return SpicaMemory(
        sysfs_root=root,
        journal=KnobJournal(tmp_path / "journal"),
        regimes={},
        scratch_dir=tmp_path / "scratch",
        cpus=4,
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "sysfs"
    write_tree(root, MEMORY_TREE)
    return root


@pytest.fixture
def dom(root: Path, tmp_path: Path) -> SpicaDomain:
    d = _memory(root, tmp_path)
    d.discover()
    assert d.support == "ok", d.support_reason
    # Discovery's probe wrote each THP file's bare active value back; the kernel lists them again.
    write_tree(root, MEMORY_TREE)
    return d


def _by_knob(settings: list[KnobSetting]) -> dict[str, KnobSetting]:
    out = {s.knob: s for s in settings}
    assert len(out) == len(settings), "one setting per knob"
    return out


def _read(root: Path, rel: str) -> str:
    return (root / rel).read_text()


# --- settings_of / declared_settings ---------------------------------------------------------------
def test_settings_of_gives_relative_paths_encoded_text_and_bracket_fmt(dom: SpicaDomain) -> None:
    s = _by_knob(settings_of(dom, {"swappiness": 10, "thp_enabled": "never", "zone_reclaim_mode": 1}))
    assert set(s) == {k.name for k in dom.knobs}  # every knob: the unnamed ones at their stock value
    assert s["swappiness"] == KnobSetting(
        knob="swappiness", scope="system", type="int", value=10, text="10", paths=(SWAPPINESS,),
        fmt="plain", description=s["swappiness"].description,
    )  # fmt: skip
    assert (s["thp_enabled"].text, s["thp_enabled"].fmt, s["thp_enabled"].paths) == (
        "never", "bracket", (THP_ENABLED,),
    )  # fmt: skip
    assert (s["thp_defrag"].text, s["thp_defrag"].fmt) == ("madvise", "bracket")  # stock: the active value
    assert (s["vfs_cache_pressure"].value, s["vfs_cache_pressure"].text) == (100, "100")
    assert s["zone_reclaim_mode"].text == "1"
    for setting in s.values():
        assert all(not p.startswith("/") for p in setting.paths), setting.paths


def test_settings_of_refuses_a_value_outside_the_discovered_range(dom: SpicaDomain) -> None:
    with pytest.raises(DomainError, match="swappiness"):
        settings_of(dom, {"swappiness": 101})


def test_declared_settings_of_an_undiscovered_domain(tmp_path: Path) -> None:
    dom = _memory(tmp_path / "elsewhere", tmp_path)  # no files at all: nothing is probed or read
    assert not dom.discovered
    settings = declared_settings(dom, {"swappiness": 150, "thp_enabled": "never"})
    assert [s.knob for s in settings] == ["swappiness", "thp_enabled"]  # the genome's knobs only
    swap, thp = settings
    # outside the declared 0..100 is allowed: discovery widens a range to the host's own value
    assert (swap.value, swap.text, swap.paths, swap.fmt) == (150, "150", (SWAPPINESS,), "plain")
    assert (thp.value, thp.text, thp.paths, thp.fmt) == ("never", "never", (THP_ENABLED,), "bracket")
    assert not (tmp_path / "elsewhere").exists()


def test_declared_settings_refuses_undeclared_knobs_and_values_of_another_type(tmp_path: Path) -> None:
    dom = _memory(tmp_path / "elsewhere", tmp_path)
    with pytest.raises(DomainError, match=r"memory: knob\(s\) \['governor'\] are not declared"):
        declared_settings(dom, {"swappiness": 10, "governor": "performance"})
    with pytest.raises(DomainError, match="swappiness"):
        declared_settings(dom, {"swappiness": "lots"})
    with pytest.raises(DomainError, match="swappiness"):
        declared_settings(dom, {"swappiness": True})


# --- same_value ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "fmt", "found", "expected", "same"),
    [
        ("int", "plain", "60\n", "60", True),
        ("int", "plain", "60", "60\n", True),
        ("int", "plain", " 60 \n", "60", True),
        ("int", "plain", "61\n", "60", False),
        ("choice", "bracket", "always [madvise] never\n", "madvise", True),
        ("choice", "bracket", "always [madvise] never\n", "never", False),
        ("choice", "bracket", "madvise", "always [madvise] never\n", True),
        ("choice", "bracket", "[always] madvise never\n", "always [madvise] never", False),
        ("choice", "bracket", "never\n", "never", True),  # a regular file written with the bare value
        ("choice", "plain", "0\n", "0", True),
        ("choice", "plain", "mq-deadline\n", "kyber", False),
        ("float", "plain", "0.30000000000000004\n", "0.3", True),
        ("float", "plain", "1e-3", "0.001", True),
        ("float", "plain", "0.31", "0.3", False),
        ("float", "plain", "0.0", "0", True),
        ("bool", "plain", "Y\n", "1", True),
        ("bool", "plain", "N\n", "0", True),
        ("bool", "plain", "1", "0", False),
        ("int", "plain", "sixty", "60", False),  # does not parse: compared as text
    ],
)
def test_same_value_compares_meaning_not_bytes(
    kind: str, fmt: str, found: str, expected: str, same: bool
) -> None:
    assert same_value(kind, fmt, found, expected) is same


@pytest.mark.parametrize("found", ["maybe\n", "\n"])
def test_same_value_a_bool_file_that_is_not_a_boolean_does_not_hold_false(found: str) -> None:
    assert same_value("bool", "plain", found, "0") is False


# --- drift_of --------------------------------------------------------------------------------------
def test_drift_of_finds_a_rewritten_file_with_path_expected_and_found(dom: SpicaDomain, root: Path) -> None:
    settings = settings_of(dom, {"swappiness": 10, "thp_enabled": "never"})
    write_files(setting_files(settings), root)
    assert drift_of(settings, root) == []

    (root / SWAPPINESS).write_text("33\n")
    [d] = drift_of(settings, root)
    assert (d.path, d.knob, d.expected, d.found) == (
        str(root.absolute() / SWAPPINESS),
        "swappiness",
        "10",
        "33",
    )
    assert d.line() == f"{root.absolute() / SWAPPINESS}, expected 10, found 33"

    (root / SWAPPINESS).write_text("10\n")
    (root / THP_ENABLED).write_text("[always] madvise never\n")  # the kernel's listing: active value
    [d] = drift_of(settings, root)
    assert (d.path, d.knob, d.expected, d.found) == (
        str(root.absolute() / THP_ENABLED), "thp_enabled", "never", "always",
    )  # fmt: skip


def test_drift_of_reports_an_unreadable_file(dom: SpicaDomain, root: Path) -> None:
    settings = settings_of(dom, {})
    assert drift_of(settings, root) == []
    (root / VFS).unlink()
    [d] = drift_of(settings, root)
    assert (d.path, d.knob, d.expected) == (str(root.absolute() / VFS), "vfs_cache_pressure", "100")
    assert d.found.startswith("unreadable (")


def test_drift_of_ignores_process_settings(root: Path) -> None:
    proc = KnobSetting("workers", "process", "int", 4, "4")
    assert drift_of([proc], root) == []
    assert setting_files([proc]) == []


# --- factory_settings ------------------------------------------------------------------------------
def test_factory_settings_groups_per_cpu_files_by_their_text() -> None:
    gov = FactoryKnob(
        "governor", "choice", "plain",
        {
            f"{CPU}/cpu0/cpufreq/scaling_governor": "performance\n",
            f"{CPU}/cpu1/cpufreq/scaling_governor": "powersave\n",
            f"{CPU}/cpu2/cpufreq/scaling_governor": "performance\n",
        },
        AT,
    )  # fmt: skip
    out = sorted(factory_settings({"governor": gov}), key=lambda s: s.text)
    assert [(s.knob, s.value, s.text, s.paths) for s in out] == [
        ("governor", "performance", "performance\n",
         (f"{CPU}/cpu0/cpufreq/scaling_governor", f"{CPU}/cpu2/cpufreq/scaling_governor")),
        ("governor", "powersave", "powersave\n", (f"{CPU}/cpu1/cpufreq/scaling_governor",)),
    ]  # fmt: skip
    assert all(s.scope == "system" for s in out)


def test_factory_settings_restore_exact_plain_text_and_a_bracket_files_active_value() -> None:
    factory = {
        "swappiness": FactoryKnob("swappiness", "int", "plain", {SWAPPINESS: "60\n"}, AT),
        "thp_enabled": FactoryKnob(
            "thp_enabled", "choice", "bracket", {THP_ENABLED: "always [madvise] never\n"}, AT
        ),
    }
    s = _by_knob(factory_settings(factory))
    assert (s["swappiness"].value, s["swappiness"].text, s["swappiness"].fmt) == (60, "60\n", "plain")
    assert (s["thp_enabled"].value, s["thp_enabled"].text, s["thp_enabled"].fmt) == (
        "madvise",
        "madvise",
        "bracket",
    )
    assert s["thp_enabled"].paths == (THP_ENABLED,)


# --- write_files -----------------------------------------------------------------------------------
def test_write_files_writes_in_order(root: Path) -> None:
    write_files([(SWAPPINESS, "10"), (THP_ENABLED, "never")], root)
    assert _read(root, SWAPPINESS) == "10"
    assert _read(root, THP_ENABLED) == "never"


@pytest.mark.parametrize("broken", ["missing", "directory"])
def test_write_files_puts_back_what_it_wrote_when_a_later_write_fails(root: Path, broken: str) -> None:
    bad = "proc/sys/vm/not_a_knob"
    if broken == "directory":
        (root / bad).mkdir()
    with pytest.raises(DomainError) as info:
        write_files([(SWAPPINESS, "10"), (THP_ENABLED, "never"), (bad, "1"), (VFS, "200")], root)
    assert str(root.absolute() / bad) in str(info.value)
    assert (root / SWAPPINESS).read_bytes() == b"60\n"  # byte-identical
    assert _read(root, THP_ENABLED).strip() == "madvise"  # a bracket file gets its active value back
    assert _read(root, VFS) == "100\n"  # after the failure: never written
    assert (root / bad).is_dir() == (broken == "directory")  # nothing created in its place


# --- factory_knobs / factory_genome ----------------------------------------------------------------
def test_factory_knobs_read_every_file_as_it_is_and_factory_genome_parses_them(
    dom: SpicaDomain, root: Path
) -> None:
    factory = {fk.knob: fk for fk in factory_knobs(dom, AT)}
    assert {k: fk.originals for k, fk in factory.items()} == {
        "thp_enabled": {THP_ENABLED: "always [madvise] never\n"},
        "thp_defrag": {THP_DEFRAG: "always defer defer+madvise [madvise] never\n"},
        "swappiness": {SWAPPINESS: "60\n"},
        "vfs_cache_pressure": {VFS: "100\n"},
        "min_free_kbytes": {MIN_FREE: "67584\n"},
        "zone_reclaim_mode": {ZONE: "0\n"},
    }
    assert {p: _read(root, p) for p in MEMORY_TREE} == MEMORY_TREE  # read only, nothing written
    assert factory_genome(dom, factory) == dom.stock_genome()
    # a knob without a factory entry takes its value found at discovery
    partial = {"swappiness": FactoryKnob("swappiness", "int", "plain", {SWAPPINESS: "5\n"}, AT)}
    assert factory_genome(dom, partial) == {**dom.stock_genome(), "swappiness": 5}
    bad = {"swappiness": FactoryKnob("swappiness", "int", "plain", {SWAPPINESS: "lots\n"}, AT)}
    with pytest.raises(DomainError, match="swappiness: factory value 'lots' does not parse"):
        factory_genome(dom, bad)
