"""D-REAM end to end with a fake trial runner: whole tournaments through ``DreamLoop`` on a temporary
sysfs_root, its artifacts, racing, failures, pacing, persistence, and PHASE's collapse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import numpy as np
import pytest
from fakes import (
    START,
    TUNE,
    TUNE_STOCK,
    TUNE_TREE,
    DreamRig,
    FakeRunner,
    TrialCall,
    dream_config,
    hof_entry,
    open_cpu_domain,
    open_dream_rig,
    open_tune_domain,
    settle,
)

from kloros_orchestrator.config import PacingConfig
from kloros_orchestrator.core.coordinator import TournamentDone, TournamentStarted
from kloros_orchestrator.engine import Evolution
from kloros_orchestrator.measure.packs import baseline_entry, load_pack, read_baselines, write_baselines
from kloros_orchestrator.model import STOCK_ARM, THROUGHPUT, TrialResult
from kloros_orchestrator.phase.results import (
    DomainMetrics,
    FlaggedVariant,
    PhaseResults,
    PromotedVariant,
    Qtime,
    Recommendation,
    VariantSummary,
)
from kloros_orchestrator.runtime.ports import EventLog
from kloros_orchestrator.runtime.records import DomainProgress, SavedState, iso, load_saved_state, save_state
from kloros_orchestrator.spica import SpicaDomain
from kloros_orchestrator.store import read_jsonl
from kloros_orchestrator.testing import snapshot_files


@pytest.fixture
def tune(tmp_path: Path) -> SpicaDomain:
    return open_tune_domain(tmp_path)


@pytest.fixture
def rig(tmp_path: Path, tune: SpicaDomain) -> DreamRig:
    r = open_dream_rig(tmp_path / "state", {TUNE: tune})
    r.loop.restore({})
    return r


def history(rig: DreamRig, kind: str = "candidate") -> list[dict[str, object]]:
    return [line for line in read_jsonl(rig.paths.fitness_history) if line["kind"] == kind]


async def test_a_whole_tournament_reports_writes_every_artifact_and_restores_the_knobs(
    rig: DreamRig, tune: SpicaDomain
) -> None:
    before = snapshot_files(tune.sysfs_root)
    old = baseline_entry(
        [TrialResult(domain=TUNE, cand_id=STOCK_ARM, regime="normal", ok=True, kpis={THROUGHPUT: 1.0})],
        baseline_id="old", code_hash="x", measured_at="2020-01-01T00:00:00+00:00",
        rng=np.random.default_rng(0), n_boot=10,
    )  # fmt: skip
    write_baselines(rig.paths.baselines, {TUNE: {"idle": old, "normal": old}, "other": {"idle": old}})
    asked = rig.loop.searches[TUNE].engine.ask()

    with anyio.fail_after(10):
        await rig.loop.tournament(TUNE)

    started, done = rig.reports.events
    assert isinstance(started, TournamentStarted) and isinstance(done, TournamentDone)
    assert rig.reports.summary() == [("tournament_started", TUNE, 0), ("tournament_done", TUNE, 0)]
    assert started.now == START and done.now == rig.clock() > started.now  # trials took fake time

    pack = load_pack(rig.paths.candidates(TUNE) / "gen0_best.json")
    assert (pack.domain, pack.generation, pack.run_id, pack.stress_ng_version) == (
        TUNE, 0, "run-test", "0.17.08"
    )  # fmt: skip
    assert pack.safe and pack.aggregate.scored and pack.aggregate.improves_over_baseline
    assert pack.missing_kpis == ["temp_c", "watts"] and pack.missing_reasons == rig.runner.missing
    assert [r.regime for r in pack.regimes] == ["normal", "stress"]

    lines = history(rig)
    assert [line["cand_id"] for line in lines] == [c.cand_id for c in asked]
    assert {line["generation"] for line in lines} == {0} and all(line["ts"] == done.now for line in lines)
    best = max(lines, key=lambda line: float(line["score"]))
    assert best["cand_id"] == pack.cand_id and pack.genome == best["genome"]

    [top] = rig.loop.searches[TUNE].hall_of_fame
    assert (top.cand_id, top.score, top.genome) == (pack.cand_id, pack.aggregate.score_v2, pack.genome)
    assert top.score is not None and top.score > 0.05 and top.genome != TUNE_STOCK

    entries, problem = read_baselines(rig.paths.baselines)
    assert problem is None and entries["other"] == {"idle": old}
    assert set(entries[TUNE]) == {"idle", "normal", "stress"} and entries[TUNE]["idle"] == old
    for regime in ("normal", "stress"):
        fresh = entries[TUNE][regime]
        assert fresh.baseline_id == f"{TUNE}_{regime}_run-test_g0" and fresh.genome == TUNE_STOCK
        # One stock trial per round run (the tournament ends once the race is decided).
        assert fresh.trials == rig.progress.round >= 2 and fresh.kpis[THROUGHPUT] > 100.0

    # Every candidate's genome was really written while its trials ran; everything is back now.
    for call in rig.runner.calls:
        assert int(call.knob_files["swappiness"]) == call.genome["swappiness"]
        assert call.knob_files["qdisc"].strip() == call.genome["qdisc"]
    assert snapshot_files(tune.sysfs_root) == before and tune.journal.pending() == []

    pr = rig.progress
    assert (pr.domain, pr.tournaments) == (TUNE, 1)
    assert pr.tournament_done == pr.tournament_total == len(rig.runner.calls) == rig.runner.counters.trials
    assert rig.loop.searches[TUNE].generation == 1 and rig.loop.searches[TUNE].engine.generation == 1
    assert rig.checkpoints == [done.now]
    assert rig.status[0] == f"tournament {TUNE} gen 0 started"
    assert rig.status[1].startswith(f"{TUNE} gen 0 trial 1/")
    # Only the race's eliminations, each with its reason (t and p), are events of a plain tournament.
    elim = rig.events.records
    assert {e["event"] for e in elim} <= {"race_eliminated"}
    assert all(e["domain"] == TUNE and e["generation"] == 0 and "behind" in e["reason"] for e in elim)


async def test_racing_stops_measuring_a_clearly_worse_candidate(rig: DreamRig) -> None:
    asked = rig.loop.searches[TUNE].engine.ask()
    loser = asked[1]
    rig.runner.effect = lambda g: -0.4 if dict(g) == loser.genome else 0.05
    with anyio.fail_after(10):
        await rig.loop.tournament(TUNE)
    # Two regimes per round: the loser stopped after the race's two minimum rounds; the others run on
    # while the race is open, and the tournament ends once it is decided (never past dream.trials).
    assert len(rig.runner.calls_of(loser.cand_id)) == 4
    rounds = rig.progress.round
    assert 2 <= rounds <= 3 and len(rig.runner.calls_of(STOCK_ARM)) == 2 * rounds
    assert max(len(rig.runner.calls_of(c.cand_id)) for c in asked) == 2 * rounds
    line = next(x for x in history(rig) if x["cand_id"] == loser.cand_id)
    assert line["eliminated"] is True and line["trials_used"] == 4
    assert str(line["elimination"]).startswith("behind ")
    assert float(line["score"]) < -0.3
    assert loser.genome not in [h.genome for h in rig.loop.searches[TUNE].hall_of_fame]


async def test_a_cap_breach_makes_the_best_candidate_unsafe(rig: DreamRig) -> None:
    asked = rig.loop.searches[TUNE].engine.ask()
    star = asked[2]
    rig.runner.effect = lambda g: 0.5 if dict(g) == star.genome else 0.02
    rig.runner.breach = lambda c: (
        "temp_c 96.0 > 90.0" if (c.cand_id, c.regime) == (star.cand_id, "stress") else None
    )
    with anyio.fail_after(10):
        await rig.loop.tournament(TUNE)
    assert len(rig.runner.calls_of(star.cand_id)) == 2  # its first round, then out of the race
    line = next(x for x in history(rig) if x["cand_id"] == star.cand_id)
    assert line["safe"] is False and line["elimination"] == "unsafe: stress: temp_c 96.0 > 90.0"
    s = rig.loop.searches[TUNE]
    assert s.engine.fitness(star.genome) == []  # told as failed, never as a fitness
    assert s.hall_of_fame and star.genome not in [h.genome for h in s.hall_of_fame]
    assert load_pack(rig.paths.candidates(TUNE) / "gen0_best.json").cand_id != star.cand_id


async def test_a_candidate_the_domain_refuses_is_told_as_failed_without_a_pack(
    rig: DreamRig, tune: SpicaDomain
) -> None:
    # A search wider than the host allows (as after a host change): the domain refuses some genomes.
    wide = {**tune.search_space(), "swappiness": {"type": "int", "low": 0, "high": 200}}
    s = rig.loop.searches[TUNE]
    s.engine = Evolution(wide, population=4, seed=3, initial=[{**TUNE_STOCK, "swappiness": 150}])
    refused = [c for c in s.engine.ask() if int(c.genome["swappiness"]) > 100]
    rig.paths.baselines.parent.mkdir(parents=True)
    rig.paths.baselines.write_text("{torn")  # unreadable: rewritten, not fatal
    with anyio.fail_after(10):
        await rig.loop.tournament(TUNE)
    assert refused and len(history(rig)) == 4 - len(refused)  # no pack, no fitness line
    assert not {c.cand_id for c in refused} & {str(x["cand_id"]) for x in history(rig)}
    assert all(s.engine.fitness(c.genome) == [] for c in refused)
    assert rig.runner.counters.failed_trials == 2 * len(refused)  # one round, then out of the race
    entries, problem = read_baselines(rig.paths.baselines)
    assert problem is None and set(entries) == {TUNE}


async def test_a_tournament_where_every_trial_fails_is_recorded_and_backs_off(
    rig: DreamRig, tune: SpicaDomain
) -> None:
    before = snapshot_files(tune.sysfs_root)
    rig.runner.fail = lambda c: "tool_missing: stress-ng not found on PATH"
    finished = anyio.Event()

    async def one() -> None:
        await rig.loop.tournament(TUNE)
        finished.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            event = await rig.events.wait_for("tournament_all_failed")
            assert event == {
                "event": "tournament_all_failed",
                "domain": TUNE,
                "generation": 0,
                "reasons": ["tool_missing: stress-ng not found on PATH"],
            }
            await settle()
            assert not finished.is_set()  # backing off, not spinning into the next tournament
            rig.gate.open()  # a resume ends the back-off at once
            await finished.wait()
    assert rig.reports.summary() == [("tournament_started", TUNE, 0), ("tournament_done", TUNE, 0)]
    assert rig.loop.searches[TUNE].hall_of_fame == [] and not rig.paths.baselines.exists()
    assert all(line["score"] is None for line in history(rig))
    assert snapshot_files(tune.sysfs_root) == before


async def test_an_exception_inside_a_tournament_is_recorded_and_still_reports_done(
    rig: DreamRig, tune: SpicaDomain
) -> None:
    before = snapshot_files(tune.sysfs_root)

    def crash(call: TrialCall) -> BaseException | None:
        return RuntimeError("sensor bus vanished") if call.index == 3 else None

    rig.runner.crash = crash
    finished = anyio.Event()

    async def one() -> None:
        await rig.loop.tournament(TUNE)
        finished.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            event = await rig.events.wait_for("tournament_failed")
            assert event["domain"] == TUNE and event["generation"] == 0
            assert "sensor bus vanished" in str(event["error"])
            assert rig.reports.summary() == [("tournament_started", TUNE, 0), ("tournament_done", TUNE, 0)]
            await settle()
            assert not finished.is_set()
            rig.gate.open()
            await finished.wait()
    assert snapshot_files(tune.sysfs_root) == before and tune.journal.pending() == []
    s = rig.loop.searches[TUNE]
    assert s.generation == 0 and rig.checkpoints == [] and not rig.paths.fitness_history.exists()
    assert [c.cand_id for c in s.engine.ask()] == [f"g0c{i}" for i in range(4)]  # the same generation again


async def test_pacing_after_a_cycle_is_recorded_and_a_resume_ends_it(
    tmp_path: Path, tune: SpicaDomain
) -> None:
    cfg = dream_config(pacing=PacingConfig(min_sleep_s=600.0, max_sleep_s=900.0))
    rig = open_dream_rig(tmp_path / "state", {TUNE: tune}, config=cfg)
    rig.loop.restore({})
    rig.gate.open()
    before = snapshot_files(tune.sysfs_root)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: rig.loop.run(once=False))
            first = await rig.events.wait_for("pacing")
            assert first["sleep_s"] == 600.0 and first["defer_to_window"] is False
            assert "no tournament history" not in str(first["reason"])  # paced on the measured duration
            assert rig.progress.pacing == {
                "last_sleep_s": 600.0, "reason": first["reason"], "defer_to_window": False
            }  # fmt: skip
            await settle()
            assert len(rig.reports.events) == 2  # still resting after the first tournament
            rig.gate.open()
            second = await rig.events.wait_for("pacing", 2)
            assert len(second["inputs"]["recent_durations_s"]) == 2
            assert rig.reports.summary()[2:] == [
                ("tournament_started", TUNE, 1),
                ("tournament_done", TUNE, 1),
            ]
            tg.cancel_scope.cancel()
    logged = [e for e in read_jsonl(rig.paths.events) if e["event"] == "pacing"]
    assert [e["sleep_s"] for e in logged] == [600.0, 600.0] and logged[0]["ts"] > START
    assert snapshot_files(tune.sysfs_root) == before


async def test_a_tournament_that_would_overrun_the_window_waits_for_the_resume(
    tmp_path: Path, tune: SpicaDomain
) -> None:
    rig = open_dream_rig(tmp_path / "state", {TUNE: tune})
    rig.loop.restore({TUNE: DomainProgress(durations=[100.0])})
    rig.ttw[0] = 10.0
    rig.gate.open()
    before = snapshot_files(tune.sysfs_root)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: rig.loop.run(once=False))
            deferred = await rig.events.wait_for("pacing")
            assert deferred["defer_to_window"] is True
            assert deferred["inputs"] == {"estimate_s": 100.0, "time_to_window_s": 10.0}
            await settle()
            assert rig.reports.events == [] and rig.progress.pacing["defer_to_window"] is True
            rig.ttw[0] = None  # the window's PHASE is over
            rig.gate.open()
            await rig.reports.wait_for(1)
            tg.cancel_scope.cancel()  # mid-tournament: the knobs must still come back
    assert rig.reports.summary()[0] == ("tournament_started", TUNE, 0)
    assert snapshot_files(tune.sysfs_root) == before and tune.journal.pending() == []


async def test_run_once_waits_for_the_gate_then_walks_every_domain_with_parallel_trials(
    tmp_path: Path, tune: SpicaDomain
) -> None:
    cpu = open_cpu_domain(tmp_path)
    assert cpu.process_scoped()
    rig = open_dream_rig(
        tmp_path / "state",
        {TUNE: tune, "cpu": cpu},
        config=dream_config(domains=[TUNE, "cpu"], max_parallel=2),
    )
    rig.loop.restore({}, domain_index=1)
    rig.gate.open()
    rig.gate.close()
    assert not rig.gate.is_open
    assert rig.loop.domain_status(["cpu", TUNE, "gpu"]) == {"cpu": "ok", TUNE: "ok", "gpu": "disabled"}
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: rig.loop.run(once=True))
            await settle()
            assert rig.reports.events == []  # D-REAM is paused until the gate opens
            rig.gate.open()
    # Resumed at the saved domain index: cpu first, then back to the first domain on the next cycle.
    assert rig.reports.summary() == [("tournament_started", "cpu", 0), ("tournament_done", "cpu", 0)]
    assert rig.loop.domain_index == 0
    slices = {c.cpus for c in rig.runner.calls if c.domain == "cpu"}
    assert len(slices) == 2 and None not in slices
    a, b = (set(s or ()) for s in slices)
    assert a and b and not a & b  # disjoint CPU sets for trials running side by side
    assert (rig.paths.candidates("cpu") / "gen0_best.json").is_file()
    with anyio.fail_after(10):
        await rig.loop.run(once=True)
    assert [s[1] for s in rig.reports.summary()] == ["cpu", "cpu", TUNE, TUNE, "cpu", "cpu"]
    assert all(c.cpus is None for c in rig.runner.calls if c.domain == TUNE)  # system knobs: one at a time


async def test_run_without_a_runnable_domain_returns(tmp_path: Path) -> None:
    rig = open_dream_rig(tmp_path / "state", {})
    rig.loop.restore({})
    with anyio.fail_after(5):
        await rig.loop.run(once=True)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: rig.loop.run(once=False))  # nothing to do until stopped
            await settle()
            tg.cancel_scope.cancel()
    assert rig.reports.events == [] and rig.loop.snapshot() == {}


async def test_a_snapshot_resumes_numbering_hall_of_fame_and_search_after_a_restart(
    tmp_path: Path, rig: DreamRig, tune: SpicaDomain
) -> None:
    rig.gate.open()
    with anyio.fail_after(10):
        await rig.loop.run(once=True)
    state_file = tmp_path / "state" / "state.json"
    assert save_state(state_file, SavedState(first_seen=START, engines=rig.loop.snapshot()))
    saved = load_saved_state(state_file, now=START)  # through JSON, as after a restart
    best = rig.loop.searches[TUNE].hall_of_fame[0]

    again = open_dream_rig(tmp_path / "state", {TUNE: tune}, runner=FakeRunner(seed=5))
    again.loop.restore(saved.engines, saved.domain_index)
    s = again.loop.searches[TUNE]
    assert (s.generation, s.engine.generation) == (1, 1)
    assert s.hall_of_fame == rig.loop.searches[TUNE].hall_of_fame and list(s.durations) == list(
        rig.loop.searches[TUNE].durations
    )
    asked = s.engine.ask()
    assert best.genome in [c.genome for c in asked]  # the restored search keeps its elite
    with anyio.fail_after(10):
        await again.loop.tournament(TUNE)
    assert again.reports.summary() == [("tournament_started", TUNE, 1), ("tournament_done", TUNE, 1)]
    assert load_pack(again.paths.candidates(TUNE) / "gen1_best.json").generation == 1
    assert {line["generation"] for line in history(again)} == {0, 1}

    # Without state.json the numbering continues after the packs on disk; a corrupted one is skipped.
    (again.paths.candidates(TUNE) / "gen7_best.json").write_text("{not json")
    fresh = open_dream_rig(tmp_path / "state", {TUNE: tune})
    fresh.loop.restore({})
    f = fresh.loop.searches[TUNE]
    assert f.generation == 8 and f.engine.generation == 0
    assert {h.generation for h in f.hall_of_fame} == {0, 1}
    assert [h.score for h in f.hall_of_fame] == sorted((h.score for h in f.hall_of_fame), reverse=True)
    [rejected] = fresh.events.named("pack_rejected")
    assert rejected["path"].endswith("gen7_best.json")


async def test_an_adapted_search_space_is_recorded_and_survives_a_restart(
    tmp_path: Path, rig: DreamRig, tune: SpicaDomain
) -> None:
    rig.gate.open()
    with anyio.fail_after(20):
        while not rig.events.named("search_space_adapted") and rig.loop.searches[TUNE].generation < 8:
            await rig.loop.run(once=True)
    adapted = rig.events.named("search_space_adapted")
    assert adapted and all(str(e["change"]).startswith(f"gen {e['generation']}: ") for e in adapted)
    path = tmp_path / "state.json"
    assert save_state(path, SavedState(first_seen=START, engines=rig.loop.snapshot()))
    again = open_dream_rig(tmp_path / "state", {TUNE: tune})
    again.loop.restore(load_saved_state(path, now=START).engines)
    assert again.loop.searches[TUNE].engine.space == rig.loop.searches[TUNE].engine.space
    assert again.events.named("search_restarted") == []


def test_saved_state_that_cannot_be_read_or_written_is_survived(tmp_path: Path) -> None:
    garbage = tmp_path / "state.json"
    garbage.write_text('{"first_seen": "yesterday"}')
    assert load_saved_state(garbage, now=START) == SavedState(first_seen=START)
    assert load_saved_state(tmp_path, now=START + 1) == SavedState(first_seen=START + 1)  # a directory
    assert save_state(garbage / "state.json", SavedState(first_seen=START)) is False
    assert iso(None) is None and iso(0.0) == "1970-01-01T00:00:00+00:00"
    log = EventLog(tmp_path / "events.jsonl", lambda: START)
    log.record("odd", value=object(), n=1)
    [line] = read_jsonl(tmp_path / "events.jsonl")
    assert line["ts"] == START and line["n"] == 1 and str(line["value"]).startswith("<object object")


async def test_a_saved_search_that_no_longer_fits_the_host_starts_again(tmp_path: Path) -> None:
    first = open_tune_domain(tmp_path / "a")
    rig = open_dream_rig(tmp_path / "state", {TUNE: first})
    rig.loop.restore({})
    rig.gate.open()
    with anyio.fail_after(10):
        await rig.loop.run(once=True)
    snap = rig.loop.snapshot()

    smaller = {k: v for k, v in TUNE_TREE.items() if "dirty_ratio" not in k}
    host = open_tune_domain(tmp_path / "b", tree=smaller)
    assert "dirty_ratio" in host.dropped
    moved = open_dream_rig(tmp_path / "state", {TUNE: host})
    moved.loop.restore(snap)
    s = moved.loop.searches[TUNE]
    assert s.generation == 1 and s.engine.generation == 0
    assert set(s.engine.space.names) == {"swappiness", "qdisc", "threads"}
    assert moved.events.named("search_restarted") == [
        {"event": "search_restarted", "domain": TUNE, "reason": "search space changed"}
    ]

    broken = open_dream_rig(tmp_path / "state", {TUNE: first})
    broken.loop.restore({TUNE: DomainProgress(engine={"schema": "nonsense"}, generation=4)})
    assert broken.loop.searches[TUNE].generation == 4 and broken.loop.searches[TUNE].engine.generation == 0

    # A snapshot whose values make the engine's own decoder fail in any way (a fault campaign found
    # AttributeError from released_at = -1e300) is a fresh search, not a crash loop.
    hostile = {**snap[TUNE].engine, "released_at": -1e300} if snap[TUNE].engine else {}
    again = open_dream_rig(tmp_path / "state", {TUNE: first})
    again.loop.restore({TUNE: DomainProgress(engine=hostile, generation=2)})
    assert again.loop.searches[TUNE].generation == 2


def test_phase_subjects_leave_out_variants_equal_to_stock(tmp_path: Path, tune: SpicaDomain) -> None:
    good = {**TUNE_STOCK, "swappiness": 10}
    other = {**TUNE_STOCK, "qdisc": "fq"}
    rig = open_dream_rig(tmp_path / "state", {TUNE: tune})
    hof = [hof_entry("good", good, 0.2), hof_entry("other", other, 0.1), hof_entry("same", TUNE_STOCK, 0.01)]
    rig.loop.restore({TUNE: DomainProgress(hall_of_fame=hof)})
    dom, stock, variants = rig.loop.phase_subjects(3)[TUNE]
    assert dom is tune and stock == TUNE_STOCK
    assert sorted(variants) == ["good", "other"]
    assert variants["good"].genome == good and variants["good"].spica_id == f"spica-{TUNE}-good"
    assert list(rig.loop.phase_subjects(1)[TUNE][2]) == ["good"]


def test_a_stock_equal_entry_does_not_take_a_variant_place(tmp_path: Path, tune: SpicaDomain) -> None:
    good, other = {**TUNE_STOCK, "swappiness": 10}, {**TUNE_STOCK, "qdisc": "fq"}
    rig = open_dream_rig(tmp_path / "state", {TUNE: tune})
    hof = [hof_entry("good", good, 0.2), hof_entry("same", TUNE_STOCK, 0.1), hof_entry("other", other, 0.05)]
    rig.loop.restore({TUNE: DomainProgress(hall_of_fame=hof)})
    assert sorted(rig.loop.phase_subjects(2)[TUNE][2]) == ["good", "other"]


def test_hall_of_fame_entries_whose_knobs_no_longer_fit_are_dropped(
    tmp_path: Path, tune: SpicaDomain
) -> None:
    good = {**TUNE_STOCK, "swappiness": 10}
    gone = {**TUNE_STOCK, "nr_hugepages": 8}  # a knob this host does not (or no longer) offer
    rig = open_dream_rig(tmp_path / "state", {TUNE: tune})
    rig.loop.restore(
        {TUNE: DomainProgress(hall_of_fame=[hof_entry("gone", gone, 0.5), hof_entry("good", good, 0.2)])}
    )
    assert [h.cand_id for h in rig.loop.searches[TUNE].hall_of_fame] == ["good"]
    assert list(rig.loop.phase_subjects(3)[TUNE][2]) == ["good"]


def results_for(domain: str, **fields: Any) -> PhaseResults:
    base: dict[str, Any] = {
        "timestamp": "2026-09-21T03:00:00+00:00",
        "run_id": "phase-test",
        "qtime": Qtime(2, 2, 3),
        "domains_tested": [domain],
        "metrics": {},
        "promoted_variants": [],
        "flagged_variants": [],
        "search_space_recommendations": {},
        "complete": True,
    }
    base.update(fields)
    return PhaseResults(**base)


async def test_collapse_rescores_removes_seeds_and_adapts_the_search(
    tmp_path: Path, tune: SpicaDomain
) -> None:
    a, b, c = ({**TUNE_STOCK, "swappiness": v} for v in (30, 90, 10))
    rig = open_dream_rig(tmp_path / "state", {TUNE: tune})
    rig.loop.restore(
        {
            TUNE: DomainProgress(
                hall_of_fame=[hof_entry("a", a, 0.3), hof_entry("b", b, 0.2), hof_entry("c", c, 0.1)]
            )
        }
    )
    rig.gate.open()
    with anyio.fail_after(10):
        await rig.loop.run(once=True)  # generation 0 told: the next one is bred and takes seeds
    results = results_for(
        TUNE,
        domains_tested=[TUNE, "not_here"],
        metrics={
            TUNE: DomainMetrics(
                fitness=0.5,
                ci95=(0.45, 0.55),
                insights=[],
                best_cand_id="c",
                baseline={"normal": {THROUGHPUT: 4000.0}, "stress": {THROUGHPUT: 9000.0}},
                variants={
                    "c": VariantSummary(score_v2=0.5, score_ci95=(0.45, 0.55), safe=True, trials=12, failed=0)
                },
            )
        },
        promoted_variants=[
            PromotedVariant(TUNE, "c", f"spica-{TUNE}-c", c, 0.5, (0.45, 0.55), "beats stock")
        ],
        flagged_variants=[
            FlaggedVariant(TUNE, "b", b, ["score CI (-0.2, -0.1) below 0"]),
            FlaggedVariant("elsewhere", "a", a, ["not this domain's"]),
        ],
        search_space_recommendations={
            TUNE: {
                "swappiness": Recommendation(action="narrow", reason="best near 10", low=0, high=30),
                "qdisc": Recommendation(action="keep", reason="no measurable effect"),
            }
        },
    )
    changes = rig.loop.collapse(results, source="phase/phase-test/phase_results.json")
    assert {k: changes[k] for k in ("source", "run_id", "complete")} == {
        "source": "phase/phase-test/phase_results.json", "run_id": "phase-test", "complete": True
    }  # fmt: skip
    domains = changes["domains"]
    assert isinstance(domains, dict) and list(domains) == [TUNE]
    ch = domains[TUNE]
    assert ch["baseline_regimes"] == ["normal", "stress"] and ch["rescored"] == ["c"]
    assert ch["removed"] == [{"cand_id": "b", "reasons": ["score CI (-0.2, -0.1) below 0"]}]
    assert ch["seeded"] == ["c"] and ch["rejected"] == []
    assert len(ch["space"]) == 1 and "swappiness" in ch["space"][0]

    s = rig.loop.searches[TUNE]
    assert s.hall_of_fame[0].cand_id == "c" and s.hall_of_fame[0].score == 0.5
    assert s.hall_of_fame[0].phase_run_id == "phase-test" and s.hall_of_fame[0].score_ci95 == (0.45, 0.55)
    assert "b" not in [h.cand_id for h in s.hall_of_fame]
    scores = [h.score for h in s.hall_of_fame]
    assert scores == sorted(scores, reverse=True)
    assert [(x["regime"], x["phase_run_id"]) for x in history(rig, "phase_baseline")] == [
        ("normal", "phase-test"), ("stress", "phase-test")
    ]  # fmt: skip
    swap = s.engine.space.param("swappiness")
    assert (swap.low, swap.high) == (0, 30)
    assert rig.loop.snapshot()[TUNE].engine == s.engine.state()  # the collapse is what a restart resumes
    seeded = [x for x in s.engine.ask() if x.genome == c]
    assert seeded and seeded[0].mutations == ("seed",) and seeded[0].generation == 1


async def test_collapse_of_results_that_do_not_fit_keeps_each_domain_apart(
    tmp_path: Path, tune: SpicaDomain
) -> None:
    cpu = open_cpu_domain(tmp_path)
    rig = open_dream_rig(
        tmp_path / "state", {TUNE: tune, "cpu": cpu}, config=dream_config(domains=[TUNE, "cpu"])
    )
    hof = [
        hof_entry("a", {**TUNE_STOCK, "swappiness": 30}, 0.3),
        hof_entry("b", {**TUNE_STOCK, "qdisc": "fq"}, 0.2),
    ]
    rig.loop.restore({TUNE: DomainProgress(hall_of_fame=hof)})

    # From another host: a seed without this host's knobs, advice about a knob it does not have.
    foreign = results_for(
        TUNE,
        promoted_variants=[PromotedVariant(TUNE, "x", "spica-x", {"swappiness": 10}, 0.2, (0.1, 0.3), "r")],
        search_space_recommendations={TUNE: {"rmem_max": Recommendation(action="drop", reason="r", value=1)}},
    )
    ch = rig.loop.collapse(foreign, source="disk")["domains"][TUNE]
    assert ch["seeded"] == [] and ch["space"] == []
    seeds, advice = ch["rejected"]
    assert seeds == {"seeds": 1, "error": "knob 'dirty_ratio': genome: missing from the genome"}
    assert advice["knob"] == "rmem_max" and advice["error"].startswith("unknown knob 'rmem_max'")
    assert [h.cand_id for h in rig.loop.searches[TUNE].hall_of_fame] == ["a", "b"]

    # A document whose numbers are not numbers fails for its domain only; the other still collapses.
    bad = results_for(
        TUNE,
        domains_tested=[TUNE, "cpu"],
        metrics={
            TUNE: DomainMetrics(
                fitness=None,
                ci95=None,
                baseline={},
                insights=[],
                variants={
                    "a": VariantSummary(score_v2="high", score_ci95=None, safe=True, trials=1, failed=0)
                },
            ),
            "cpu": DomainMetrics(
                fitness=None, ci95=None, baseline={"idle": {THROUGHPUT: 800.0}}, insights=[]
            ),
        },
    )
    domains = rig.loop.collapse(bad, source="disk")["domains"]
    assert isinstance(domains, dict)
    assert set(domains[TUNE]) == {"error"} and "not supported" in domains[TUNE]["error"]
    assert domains["cpu"]["baseline_regimes"] == ["idle"]
    assert [x["domain"] for x in history(rig, "phase_baseline")] == ["cpu"]


async def test_a_race_decided_early_still_gives_the_winner_min_trials_rounds(tmp_path: Path) -> None:
    # Every candidate but one fails in round 1: the race is decided (a lone survivor) after one round,
    # but a pack needs min_trials successful trials per regime, so the tournament runs on to them.
    tune = open_tune_domain(tmp_path)
    rig = open_dream_rig(tmp_path / "state", {TUNE: tune}, config=dream_config(trials=5, min_trials=3))
    rig.loop.restore({})
    asked = rig.loop.searches[TUNE].engine.ask()
    keep = asked[0].cand_id
    rig.runner.fail = lambda c: "boom" if c.cand_id not in (keep, STOCK_ARM) else None
    with anyio.fail_after(10):
        await rig.loop.tournament(TUNE)
    assert len(rig.runner.calls_of(keep)) == 2 * 3  # three rounds of two regimes, not one, not five
    assert len(rig.runner.calls_of(STOCK_ARM)) == 2 * 3
    pack = load_pack(rig.paths.candidates(TUNE) / "gen0_best.json")
    assert pack.cand_id == keep and pack.aggregate.score_v2 is not None


async def test_a_failed_stock_trial_does_not_take_the_candidates_out_of_the_race(tmp_path: Path) -> None:
    # The stock arm's first trial fails (a flaky stress-ng): the round still judges the candidates on
    # the regime the stock arm did measure, instead of recording "no usable sample" for every one.
    tune = open_tune_domain(tmp_path)
    rig = open_dream_rig(tmp_path / "state", {TUNE: tune}, config=dream_config(trials=3, min_trials=2))
    rig.loop.restore({})
    failed: list[int] = []

    def flaky(c: Any) -> str | None:
        if c.cand_id == STOCK_ARM and not failed:
            failed.append(c.index)
            return "stress-ng exited 3 (not enough resources)"
        return None

    rig.runner.fail = flaky
    with anyio.fail_after(10):
        await rig.loop.tournament(TUNE)
    assert failed
    lines = [x for x in history(rig) if x["kind"] == "candidate"]
    assert lines and not any("no usable sample" in str(x.get("elimination")) for x in lines)
