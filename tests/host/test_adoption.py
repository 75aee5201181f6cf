"""``host/store.py`` and ``host/adoption.py``: the factory and adopted files, choosing a variant from
PHASE's results, and bringing a fake sysfs tree (the memory domain's files) to the adopted or the
factory configuration: enforce, rollback (now, or at the daemon's next boundary), verify, crashes in
between. Last, ``kloros-orchestrator verify`` on the same tree."""

from __future__ import annotations

import json
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from memory_tree import FACTORY, MEMINFO, MIN_FREE, PLAIN, SWAPPINESS, THP_DEFRAG, THP_ENABLED, VFS, ZONE

from kloros_orchestrator.host import adoption
from kloros_orchestrator.host.adoption import PROMOTION_RULE, AdoptionRefused, DomainCheck
from kloros_orchestrator.host.live import Drift, setting_files, settings_of, write_files
from kloros_orchestrator.host.records import AdoptedConfig, AdoptedFile, FactoryKnob, Provenance
from kloros_orchestrator.host.store import HostStateError, HostStore
from kloros_orchestrator.model import Genome
from kloros_orchestrator.phase.results import (
    DomainMetrics,
    FlaggedVariant,
    PhaseResults,
    PromotedVariant,
    Qtime,
    VariantSummary,
    write_results,
)
from kloros_orchestrator.runtime.records import DomainProgress, HallOfFameEntry, SavedState, save_state
from kloros_orchestrator.spica.base import SpicaDomain
from kloros_orchestrator.spica.domains.memory import SpicaMemory
from kloros_orchestrator.spica.knobs import KnobJournal
from kloros_orchestrator.store import StatePaths
from kloros_orchestrator.testing import write_tree

KNOB_OF = {
    THP_ENABLED: "thp_enabled", THP_DEFRAG: "thp_defrag", SWAPPINESS: "swappiness",
    VFS: "vfs_cache_pressure", MIN_FREE: "min_free_kbytes", ZONE: "zone_reclaim_mode",
}  # fmt: skip
ADOPTED: Genome = {
    "thp_enabled": "never", "thp_defrag": "defer", "swappiness": 10, "vfs_cache_pressure": 200,
    "min_free_kbytes": 32768, "zone_reclaim_mode": 1,
}  # fmt: skip
ADOPTED_TEXT = {
    THP_ENABLED: "never", THP_DEFRAG: "defer", SWAPPINESS: "10", VFS: "200", MIN_FREE: "32768", ZONE: "1",
}  # fmt: skip
RUN = "20260101T030000Z"
AT = "2026-01-01T04:00:00+00:00"


# --- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "sysfs"
    write_tree(root, {**FACTORY, **MEMINFO})
    return root


@pytest.fixture
def dom(root: Path, tmp_path: Path) -> SpicaDomain:
    d = SpicaMemory(
        sysfs_root=root,
        journal=KnobJournal(tmp_path / "journal"),
        regimes={},
        scratch_dir=tmp_path / "scratch",
        cpus=4,
    )
    d.discover()
    assert d.support == "ok", d.support_reason
    # Discovery's probe wrote each THP file's bare active value back; the kernel lists them again.
    write_tree(root, FACTORY)
    return d


@pytest.fixture
def paths(tmp_path: Path) -> StatePaths:
    return StatePaths(tmp_path / "state")


@pytest.fixture
def store(paths: StatePaths) -> HostStore:
    return HostStore(paths)


def config_of(dom: SpicaDomain, genome: Genome, cand_id: str = "g2c2") -> AdoptedConfig:
    """What the daemon persists for an adopted variant (``HostKeeper.adopt``)."""
    full = dom.validate_genome(genome)
    prov = Provenance(by="operator", at=AT, phase_run_id=RUN, cand_id=cand_id, score_v2=0.12,
                      score_ci95=(0.06, 0.2), evidence="score_v2 +12%")  # fmt: skip
    return AdoptedConfig(dom.name, full, settings_of(dom, full), prov)


def files(root: Path) -> dict[str, str]:
    return {rel: (root / rel).read_text() for rel in FACTORY}


def active(text: str) -> str:
    """A bracket file's active value (a regular file written with the bare value holds just that)."""
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else text.strip()


def assert_factory(root: Path) -> None:
    now = files(root)
    for rel in PLAIN:
        assert (root / rel).read_bytes() == FACTORY[rel].encode(), rel  # byte-identical
    assert active(now[THP_ENABLED]) == "madvise"
    assert active(now[THP_DEFRAG]) == "madvise"


def assert_adopted(root: Path) -> None:
    assert {rel: active(t) for rel, t in files(root).items()} == ADOPTED_TEXT


def adopt_and_enforce(store: HostStore, dom: SpicaDomain, root: Path) -> list[str]:
    adoption.adopt(store, config_of(dom, ADOPTED))
    return adoption.enforce(store, "memory", root)


# --- store -------------------------------------------------------------------------------------------
def _fk(knob: str, text: str, at: str = AT, path: str = SWAPPINESS) -> FactoryKnob:
    return FactoryKnob(knob, "int", "plain", {path: text}, at)


def test_store_missing_files_read_as_empty(store: HostStore, paths: StatePaths) -> None:
    assert store.factory().domains == {}
    assert store.adopted().domains == {}
    assert store.adopted().factory_pending == []
    assert store.adopted_config("memory") is None
    assert not paths.host.exists()  # reading creates nothing


def test_store_add_factory_adds_only_new_knobs_and_never_changes_an_entry(
    store: HostStore, paths: StatePaths
) -> None:
    assert store.add_factory("memory", [_fk("swappiness", "60\n", at="first")]) == ["swappiness"]
    added = store.add_factory(
        "memory", [_fk("swappiness", "10\n", at="second"), _fk("vfs_cache_pressure", "100\n", path=VFS)]
    )
    assert added == ["vfs_cache_pressure"]
    recorded = store.factory().domains["memory"]
    assert recorded["swappiness"] == _fk("swappiness", "60\n", at="first")  # the first text stays
    assert recorded["vfs_cache_pressure"].originals == {VFS: "100\n"}

    inode = paths.factory.stat().st_ino
    assert store.add_factory("memory", [_fk("swappiness", "33\n")]) == []
    assert paths.factory.stat().st_ino == inode  # nothing new: the file is not rewritten
    assert store.add_factory("other", [_fk("swappiness", "5\n")]) == ["swappiness"]  # per domain
    assert store.factory().domains["memory"]["swappiness"].originals == {SWAPPINESS: "60\n"}
    assert json.loads(paths.factory.read_bytes())["schema"] == "host_factory.v1"


def test_store_set_adopted_and_factory_pending(store: HostStore, dom: SpicaDomain, paths: StatePaths) -> None:
    config = config_of(dom, ADOPTED)
    store.set_adopted("memory", config)
    assert store.adopted_config("memory") == config  # round trip: settings, provenance, interval
    store.set_adopted("memory", None)
    store.set_adopted("memory", None)
    assert store.adopted() == AdoptedFile(domains={}, factory_pending=["memory"])  # listed once
    store.factory_done("memory")
    assert store.adopted().factory_pending == []

    store.set_adopted("memory", None)
    store.set_adopted("memory", config)  # adopting again ends a rollback not yet carried out
    assert store.adopted().factory_pending == []
    inode = paths.adopted.stat().st_ino
    store.factory_done("memory")  # not pending: nothing to write
    assert paths.adopted.stat().st_ino == inode
    assert json.loads(paths.adopted.read_bytes())["schema"] == "host_adopted.v1"


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b'{"schema": "host_factory.v0", "domains": {}}',
        b'{"schema": "host_factory.v1", "domains": 3}',
    ],
)
def test_store_a_corrupt_factory_file_is_an_error_naming_it_and_is_never_overwritten(
    store: HostStore, paths: StatePaths, content: bytes
) -> None:
    paths.host.mkdir(parents=True)
    paths.factory.write_bytes(content)
    with pytest.raises(HostStateError, match=re.escape(str(paths.factory))) as info:
        store.factory()
    assert "move it aside" in str(info.value)
    with pytest.raises(HostStateError, match=re.escape(str(paths.factory))):
        store.add_factory("memory", [_fk("swappiness", "60\n")])
    assert paths.factory.read_bytes() == content


def test_store_a_factory_file_that_is_a_link_is_refused_not_followed_or_replaced(
    store: HostStore, paths: StatePaths, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_bytes(b'{"schema": "host_factory.v1", "domains": {}}')
    paths.host.mkdir(parents=True)
    paths.factory.symlink_to(elsewhere)
    with pytest.raises(HostStateError, match=re.escape(f"{paths.factory}: cannot be read")):
        store.add_factory("memory", [_fk("swappiness", "60\n")])
    assert paths.factory.is_symlink()
    assert elsewhere.read_bytes() == b'{"schema": "host_factory.v1", "domains": {}}'


def test_store_a_corrupt_adopted_file_is_an_error_and_is_never_overwritten(
    store: HostStore, paths: StatePaths
) -> None:
    paths.host.mkdir(parents=True)
    paths.adopted.write_bytes(b"[]")
    for call in (
        store.adopted,
        lambda: store.set_adopted("memory", None),
        lambda: store.factory_done("memory"),
    ):
        with pytest.raises(HostStateError, match=re.escape(str(paths.adopted))):
            call()
    assert paths.adopted.read_bytes() == b"[]"


def test_store_files_are_written_mode_0600(store: HostStore, dom: SpicaDomain, paths: StatePaths) -> None:
    store.add_factory("memory", [_fk("swappiness", "60\n")])
    store.set_adopted("memory", config_of(dom, ADOPTED))
    for path in (paths.factory, paths.adopted):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


# --- choose ------------------------------------------------------------------------------------------
def _summary(
    score: float, ci: tuple[float, float], epochs: list[float | None] | None = None
) -> VariantSummary:
    return VariantSummary(score_v2=score, score_ci95=ci, safe=True, trials=8, failed=0, epoch_scores=epochs)


def results(**overrides: Any) -> PhaseResults:
    """A PHASE verdict on memory: g2c2 and g2c1 promoted, g1c3 measured only, g1c4 flagged."""
    fields: dict[str, Any] = {
        "timestamp": AT,
        "run_id": RUN,
        "qtime": Qtime(epochs=2, slices=4, replicas=2),
        "domains_tested": ["memory", "cpu"],
        "metrics": {
            "memory": DomainMetrics(
                fitness=0.12, ci95=(0.06, 0.2), baseline={}, insights=["memory: 2 promoted"],
                best_cand_id="g2c2",
                variants={
                    "g2c1": _summary(0.1, (0.05, 0.15)),
                    "g2c2": _summary(0.12, (0.06, 0.2)),
                    "g1c3": _summary(0.01, (-0.02, 0.04), [0.03, -0.01]),
                },
            ),
            "cpu": DomainMetrics(fitness=None, ci95=None, baseline={}, insights=["cpu: nothing scored"]),
        },
        "promoted_variants": [
            PromotedVariant("memory", "g2c1", "spica-m-1", {"swappiness": 30}, 0.1, (0.05, 0.15), "+10%"),
            PromotedVariant("memory", "g2c2", "spica-m-2", dict(ADOPTED), 0.12, (0.06, 0.2), "+12%"),
        ],
        "flagged_variants": [
            FlaggedVariant("memory", "g1c4", {"swappiness": 90}, ["cap breach: temp_c", "2 failed trials"]),
        ],
        "search_space_recommendations": {},
        "complete": True,
    }  # fmt: skip
    fields.update(overrides)
    return PhaseResults(**fields)


def hall_of_fame(paths: StatePaths, *entries: HallOfFameEntry) -> None:
    now = time.time()
    state = SavedState(first_seen=now, engines={"memory": DomainProgress(hall_of_fame=list(entries))})
    assert save_state(paths.runtime_state, state)


def test_choose_without_phase_results_is_refused(paths: StatePaths) -> None:
    with pytest.raises(AdoptionRefused, match="no PHASE has completed yet"):
        adoption.choose(paths, "memory", variant=None, force=False)
    with pytest.raises(AdoptionRefused, match="no PHASE has completed yet"):
        adoption.choose(paths, "memory", variant="g2c2", force=True)


def test_choose_unreadable_results_are_refused_and_left_in_place(paths: StatePaths) -> None:
    path = write_results(paths.phase, results(), now=1_767_240_000)
    path.write_text("{torn")
    with pytest.raises(AdoptionRefused, match="cannot be used"):
        adoption.choose(paths, "memory", variant=None, force=False)
    assert path.read_text() == "{torn"


def test_choose_picks_the_best_promoted_variant(paths: StatePaths) -> None:
    write_results(paths.phase, results(), now=1_767_240_000)
    choice = adoption.choose(paths, "memory", variant=None, force=False)
    assert (choice.domain, choice.genome) == ("memory", ADOPTED)
    p = choice.provenance
    assert (p.by, p.phase_run_id, p.cand_id, p.spica_id) == ("operator", RUN, "g2c2", "spica-m-2")
    assert (p.score_v2, p.score_ci95, p.evidence, p.forced) == (0.12, (0.06, 0.2), "+12%", False)


def test_choose_breaks_a_score_tie_by_the_ci_lower_bound(paths: StatePaths) -> None:
    tie = [
        PromotedVariant("memory", "a", "spica-a", {"swappiness": 1}, 0.1, (0.01, 0.3), "a"),
        PromotedVariant("memory", "b", "spica-b", {"swappiness": 2}, 0.1, (0.05, 0.15), "b"),
        PromotedVariant("memory", "c", "spica-c", {"swappiness": 3}, 0.1, (0.02, 0.2), "c"),
    ]
    write_results(paths.phase, results(promoted_variants=tie), now=1)
    assert adoption.choose(paths, "memory", variant=None, force=False).provenance.cand_id == "b"


def test_choose_a_promoted_variant_by_id(paths: StatePaths) -> None:
    write_results(paths.phase, results(), now=1)
    choice = adoption.choose(paths, "memory", variant="g2c1", force=False, by="auto")
    assert (choice.genome, choice.provenance.cand_id, choice.provenance.by) == (
        {"swappiness": 30},
        "g2c1",
        "auto",
    )
    assert not choice.provenance.forced


def test_choose_refuses_a_domain_phase_did_not_test_or_promoted_nothing_in(paths: StatePaths) -> None:
    write_results(paths.phase, results(), now=1)
    with pytest.raises(AdoptionRefused, match=rf"PHASE {RUN} did not test storage \(tested: memory, cpu\)"):
        adoption.choose(paths, "storage", variant=None, force=False)
    with pytest.raises(AdoptionRefused) as info:
        adoption.choose(paths, "cpu", variant=None, force=False)
    assert f"PHASE {RUN} promoted no variant of cpu" in str(info.value)
    assert PROMOTION_RULE in str(info.value)
    assert "--force" in str(info.value)


def test_choose_refuses_a_measured_but_not_promoted_variant_with_its_score_and_the_rule(
    paths: StatePaths,
) -> None:
    write_results(paths.phase, results(), now=1)
    with pytest.raises(AdoptionRefused) as info:
        adoption.choose(paths, "memory", variant="g1c3", force=False)
    msg = str(info.value)
    assert f"PHASE {RUN} did not promote g1c3" in msg
    assert "score +0.0100" in msg
    assert "CI [-0.0200, +0.0400]" in msg
    assert "per epoch +0.0300, -0.0100" in msg
    assert PROMOTION_RULE in msg
    assert msg.endswith("add --force to adopt it anyway")


def test_choose_force_adopts_a_measured_variant_from_the_hall_of_fame(paths: StatePaths) -> None:
    write_results(paths.phase, results(), now=1)
    hall_of_fame(paths, HallOfFameEntry("g1c3", "spica-memory-3", {"swappiness": 20}, 1, 0.02))
    choice = adoption.choose(paths, "memory", variant="g1c3", force=True)
    assert (choice.domain, choice.genome) == ("memory", {"swappiness": 20})
    p = choice.provenance
    assert p.forced is True
    assert p.evidence.startswith("forced: ")
    assert "did not promote g1c3 (score +0.0100, CI [-0.0200, +0.0400]" in p.evidence
    assert (p.phase_run_id, p.cand_id, p.score_v2, p.score_ci95) == (RUN, "g1c3", 0.01, (-0.02, 0.04))


def test_choose_refuses_a_flagged_variant_with_its_reasons(paths: StatePaths) -> None:
    write_results(paths.phase, results(), now=1)
    with pytest.raises(AdoptionRefused) as info:
        adoption.choose(paths, "memory", variant="g1c4", force=False)
    assert f"PHASE {RUN} flagged g1c4: cap breach: temp_c; 2 failed trials" in str(info.value)
    forced = adoption.choose(paths, "memory", variant="g1c4", force=True)  # its genome from the results
    assert forced.genome == {"swappiness": 90}
    assert forced.provenance.forced
    assert (
        forced.provenance.evidence == f"forced: PHASE {RUN} flagged g1c4: cap breach: temp_c; 2 failed trials"
    )
    assert (forced.provenance.score_v2, forced.provenance.score_ci95) == (None, None)  # not measured


def test_choose_refuses_an_unknown_variant_even_forced(paths: StatePaths) -> None:
    write_results(paths.phase, results(), now=1)
    hall_of_fame(paths, HallOfFameEntry("g1c3", "spica-memory-3", {"swappiness": 20}, 1, 0.02))
    with pytest.raises(AdoptionRefused, match=f"PHASE {RUN} did not measure nope in memory"):
        adoption.choose(paths, "memory", variant="nope", force=False)
    with pytest.raises(AdoptionRefused, match=r"genome of nope \(memory\) is not known here"):
        adoption.choose(paths, "memory", variant="nope", force=True)
    with pytest.raises(AdoptionRefused, match="did not measure g2c1 in cpu"):
        adoption.choose(paths, "cpu", variant="g2c1", force=False)  # promoted in memory, not in cpu


# --- enforce -----------------------------------------------------------------------------------------
def test_enforce_after_adopt_writes_the_adopted_values_and_records_the_factory_first(
    store: HostStore, dom: SpicaDomain, root: Path
) -> None:
    written = adopt_and_enforce(store, dom, root)
    assert sorted(written) == sorted(FACTORY)
    assert_adopted(root)
    recorded = store.factory().domains["memory"]
    assert {k: fk.originals for k, fk in recorded.items()} == {
        KNOB_OF[rel]: {rel: text} for rel, text in FACTORY.items()
    }  # the bracket files' whole listing, as read
    assert recorded["thp_enabled"].fmt == "bracket"
    assert recorded["swappiness"].type == "int"


def test_a_second_enforce_writes_nothing(store: HostStore, dom: SpicaDomain, root: Path) -> None:
    adopt_and_enforce(store, dom, root)
    before = {rel: (root / rel).stat().st_mtime_ns for rel in FACTORY}
    (root / SWAPPINESS).write_text("10\n")  # holds 10 all the same: not rewritten
    assert adoption.enforce(store, "memory", root) == []
    assert (root / SWAPPINESS).read_text() == "10\n"
    assert {rel: (root / rel).stat().st_mtime_ns for rel in FACTORY if rel != SWAPPINESS} == {
        rel: t for rel, t in before.items() if rel != SWAPPINESS
    }


def test_enforce_writes_only_the_files_that_differ(store: HostStore, dom: SpicaDomain, root: Path) -> None:
    adoption.adopt(store, config_of(dom, {"swappiness": 10}))  # every other knob at its stock value
    assert adoption.enforce(store, "memory", root) == [SWAPPINESS]
    assert (root / SWAPPINESS).read_text() == "10"
    assert (root / THP_ENABLED).read_text() == FACTORY[THP_ENABLED]  # the listing was never rewritten
    assert set(store.factory().domains["memory"]) == set(KNOB_OF.values())  # all recorded all the same


def test_enforce_on_a_domain_without_adopted_or_pending_config_does_nothing(
    store: HostStore, dom: SpicaDomain, root: Path, paths: StatePaths
) -> None:
    adoption.capture_factory(store, "memory", settings_of(dom, dom.stock_genome()), root)
    (root / SWAPPINESS).write_text("33\n")  # an operator's own change: not ours to undo
    assert adoption.enforce(store, "memory", root) == []
    assert (root / SWAPPINESS).read_text() == "33\n"


def test_a_later_adoption_keeps_the_first_factory_values(
    store: HostStore, dom: SpicaDomain, root: Path
) -> None:
    adopt_and_enforce(store, dom, root)
    adoption.adopt(store, config_of(dom, {**ADOPTED, "swappiness": 20}, cand_id="g3c1"))
    assert adoption.enforce(store, "memory", root) == [SWAPPINESS]
    assert (root / SWAPPINESS).read_text() == "20"
    assert store.factory().domains["memory"]["swappiness"].originals == {SWAPPINESS: "60\n"}  # not "10"
    adoption.rollback(store, "memory", root)
    assert_factory(root)


def test_enforce_writes_nothing_when_the_factory_cannot_be_recorded(
    store: HostStore, dom: SpicaDomain, root: Path, paths: StatePaths
) -> None:
    adoption.adopt(store, config_of(dom, ADOPTED))
    paths.factory.write_bytes(b"{torn")
    with pytest.raises(HostStateError, match=re.escape(str(paths.factory))):
        adoption.enforce(store, "memory", root)
    assert files(root) == FACTORY
    assert paths.factory.read_bytes() == b"{torn"


# --- rollback ----------------------------------------------------------------------------------------
def test_rollback_now_brings_back_the_factory_values(store: HostStore, dom: SpicaDomain, root: Path) -> None:
    adopt_and_enforce(store, dom, root)
    written = adoption.rollback(store, "memory", root)
    assert sorted(written) == sorted(FACTORY)
    assert_factory(root)
    recorded = store.adopted()
    assert "memory" not in recorded.domains
    assert recorded.factory_pending == []
    assert adoption.verify(store, root) == [DomainCheck("memory", "factory", 6, [])]
    assert adoption.enforce(store, "memory", root) == []  # nothing left to do


def test_rollback_for_the_daemon_leaves_the_files_until_enforce(
    store: HostStore, dom: SpicaDomain, root: Path
) -> None:
    adopt_and_enforce(store, dom, root)
    assert adoption.rollback(store, "memory", None) == []
    assert_adopted(root)  # the files change at the daemon's next boundary, not now
    recorded = store.adopted()
    assert "memory" not in recorded.domains
    assert recorded.factory_pending == ["memory"]
    [check] = adoption.verify(store, root)
    assert (check.config, len(check.drift)) == ("factory", 6)

    assert sorted(adoption.enforce(store, "memory", root)) == sorted(FACTORY)  # the boundary (or a start)
    assert_factory(root)
    assert store.adopted().factory_pending == []


def test_rollback_of_a_domain_that_never_adopted_writes_nothing(
    store: HostStore, dom: SpicaDomain, root: Path
) -> None:
    adoption.capture_factory(store, "memory", settings_of(dom, dom.stock_genome()), root)
    assert adoption.rollback(store, "memory", root) == []
    assert files(root) == FACTORY
    assert store.adopted() == AdoptedFile()


# --- verify ------------------------------------------------------------------------------------------
def test_verify_after_adopt_and_enforce_finds_no_drift(
    store: HostStore, dom: SpicaDomain, root: Path
) -> None:
    adopt_and_enforce(store, dom, root)
    assert adoption.verify(store, root) == [DomainCheck("memory", "adopted", 6, [])]
    assert adoption.verify(store, root, ["memory"]) == [DomainCheck("memory", "adopted", 6, [])]


def test_verify_reports_one_rewritten_file(store: HostStore, dom: SpicaDomain, root: Path) -> None:
    adopt_and_enforce(store, dom, root)
    (root / SWAPPINESS).write_text("33\n")
    [check] = adoption.verify(store, root)
    assert (check.domain, check.config, check.files) == ("memory", "adopted", 6)
    assert check.drift == [Drift(str(root.absolute() / SWAPPINESS), "swappiness", "10", "33")]


def test_verify_a_domain_with_only_factory_values(store: HostStore, dom: SpicaDomain, root: Path) -> None:
    adoption.capture_factory(store, "memory", settings_of(dom, dom.stock_genome()), root)  # as start-up does
    assert adoption.verify(store, root) == [DomainCheck("memory", "factory", 6, [])]
    (root / THP_ENABLED).write_text("[always] madvise never\n")
    [check] = adoption.verify(store, root)
    assert check.config == "factory"
    assert check.drift == [Drift(str(root.absolute() / THP_ENABLED), "thp_enabled", "madvise", "always")]


def test_verify_with_nothing_recorded_checks_nothing(store: HostStore, root: Path) -> None:
    assert adoption.verify(store, root) == []


# --- crash safety ------------------------------------------------------------------------------------
def test_a_crash_after_set_adopted_is_finished_by_enforce_at_start(
    store: HostStore, dom: SpicaDomain, root: Path
) -> None:
    store.set_adopted("memory", config_of(dom, ADOPTED))  # persisted; the crash came before any write
    assert files(root) == FACTORY
    [check] = adoption.verify(store, root)
    assert len(check.drift) == 6
    assert sorted(adoption.enforce(store, "memory", root)) == sorted(FACTORY)  # what start-up does
    assert_adopted(root)
    assert store.factory().domains["memory"]["swappiness"].originals == {SWAPPINESS: "60\n"}


def test_a_crash_between_writes_keeps_the_factory_recorded_before_them(
    store: HostStore, dom: SpicaDomain, root: Path
) -> None:
    config = config_of(dom, ADOPTED)
    store.set_adopted("memory", config)
    adoption.capture_factory(store, "memory", config.settings, root)
    write_files([f for f in setting_files(config.settings) if f[0] == SWAPPINESS], root)  # then the crash
    assert sorted(adoption.enforce(store, "memory", root)) == sorted(set(FACTORY) - {SWAPPINESS})
    assert_adopted(root)
    assert store.factory().domains["memory"]["swappiness"].originals == {SWAPPINESS: "60\n"}  # not "10"
    adoption.rollback(store, "memory", root)
    assert_factory(root)


def test_a_crash_after_a_rollback_record_is_finished_by_enforce(
    store: HostStore, dom: SpicaDomain, root: Path
) -> None:
    adopt_and_enforce(store, dom, root)
    store.set_adopted("memory", None)  # rollback persisted; the crash came before any write
    assert sorted(adoption.enforce(store, "memory", root)) == sorted(FACTORY)
    assert_factory(root)
    assert store.adopted().factory_pending == []


# --- the command line --------------------------------------------------------------------------------
def _config(tmp_path: Path, root: Path, paths: StatePaths) -> Path:
    cfg = {
        "state_dir": str(paths.root),
        "socket": str(tmp_path / "k.sock"),
        "sysfs_root": str(root),
        "dream": {"domains": ["memory"]},
    }
    path = tmp_path / "dream.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_verify_exit_0_without_drift_and_1_with_it(
    tmp_path: Path,
    store: HostStore,
    dom: SpicaDomain,
    root: Path,
    paths: StatePaths,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from kloros_orchestrator.cli import main

    cfg = str(_config(tmp_path, root, paths))
    adopt_and_enforce(store, dom, root)
    assert main(["verify", "--config", cfg]) == 0
    assert "memory: adopted configuration holds (6 file(s))" in capsys.readouterr().out

    (root / SWAPPINESS).write_text("33\n")
    assert main(["verify", "--config", cfg]) == 1
    out = capsys.readouterr().out
    assert "memory: 1 of 6 file(s) drifted from the adopted configuration" in out
    assert f"drift: {root.absolute() / SWAPPINESS}, expected 10, found 33" in out.splitlines()

    assert main(["verify", "--config", cfg, "--json"]) == 1
    [check] = json.loads(capsys.readouterr().out)
    assert check["drift"] == [
        {"path": str(root.absolute() / SWAPPINESS), "knob": "swappiness", "expected": "10", "found": "33"}
    ]


def test_cli_verify_with_nothing_recorded_exits_0(
    tmp_path: Path, root: Path, paths: StatePaths, capsys: pytest.CaptureFixture[str]
) -> None:
    from kloros_orchestrator.cli import main

    assert main(["verify", "--config", str(_config(tmp_path, root, paths))]) == 0
    assert "nothing to verify" in capsys.readouterr().out
    assert not os.path.exists(paths.host)


def test_concurrent_adoptions_are_all_kept(tmp_path: Path) -> None:
    import threading

    store = HostStore(StatePaths(tmp_path / "state"))
    names = [f"d{i}" for i in range(8)]
    barrier = threading.Barrier(len(names))

    def adopt(name: str) -> None:
        barrier.wait()
        store.set_adopted(name, AdoptedConfig(name, {"x": 1}, [], Provenance(by="operator", at="now")))

    threads = [threading.Thread(target=adopt, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(store.adopted().domains) == names
