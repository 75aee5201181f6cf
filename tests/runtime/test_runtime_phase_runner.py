"""PHASE end to end with a fake trial runner: whole windows through ``PhaseRunner.run_window`` on a
temporary sysfs_root, their results collapsed into D-REAM, and the analysis worker process."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from fakes import (
    START,
    TUNE,
    TUNE_STOCK,
    DreamRig,
    FakeRunner,
    RecordingEventLog,
    hof_entry,
    open_dream_rig,
    open_tune_domain,
)

from kloros_orchestrator.config import PhaseConfig, QtimeConfig
from kloros_orchestrator.core.coordinator import StartPhase
from kloros_orchestrator.model import REGIMES, STOCK_ARM, THROUGHPUT
from kloros_orchestrator.phase.records import DomainData, PhaseData, TrialRecord
from kloros_orchestrator.phase.results import PhaseResults, Qtime, TrialCounts, load_results
from kloros_orchestrator.phase.worker import AnalysisRequest
from kloros_orchestrator.runtime.phase_runner import (
    AnalysisFailed,
    PhaseRunner,
    PhaseSettings,
    analyze_in_thread,
    analyze_in_worker,
)
from kloros_orchestrator.runtime.records import DomainProgress
from kloros_orchestrator.spica import SpicaDomain
from kloros_orchestrator.testing import snapshot_files

GOOD = {**TUNE_STOCK, "swappiness": 10, "qdisc": "fq"}  # +14 % throughput in the fake's model
BAD = {**TUNE_STOCK, "qdisc": "pfifo_fast"}  # −30 %
REGIME_S = 10.0  # every regime of the cpu regime file the fake domain uses
WINDOW = "2026-09-21T14:00"


@pytest.fixture
def tune(tmp_path: Path) -> SpicaDomain:
    return open_tune_domain(tmp_path)


def dream_with_variants(tmp_path: Path, tune: SpicaDomain, runner: FakeRunner) -> DreamRig:
    """D-REAM after a few tournaments: a good variant, a lucky bad one, and one equal to stock."""
    rig = open_dream_rig(tmp_path / "state", {TUNE: tune}, runner=runner)
    hof = [hof_entry("good", GOOD, 0.1), hof_entry("bad", BAD, 0.08), hof_entry("same", TUNE_STOCK, 0.01)]
    rig.loop.restore({TUNE: DomainProgress(hall_of_fame=hof)})
    return rig


def open_phase(
    rig: DreamRig,
    *,
    qtime: QtimeConfig | None = None,
    trial_seconds: float | None = None,
    analyze: Callable[[AnalysisRequest], Any] = analyze_in_thread,
) -> tuple[PhaseRunner, RecordingEventLog, list[tuple[str, dict[str, Any]]]]:
    """A PhaseRunner sharing the rig's runner and clock; also returns its events and status lines
    (each with the progress as it stood then)."""
    events = RecordingEventLog(rig.paths.events, rig.clock)
    settings = PhaseSettings(
        phase=PhaseConfig(
            qtime=qtime or QtimeConfig(epochs=2, slices=2, replicas=3), trial_seconds=trial_seconds
        ),
        seed=7,
        n_boot=300,
        regime_seconds={TUNE: dict.fromkeys(REGIMES, REGIME_S)},
    )
    runner = PhaseRunner(
        settings,
        evaluator=rig.runner,
        phase_dir=rig.paths.phase,
        events=events,
        clock=rig.clock,
        analyze=analyze,
    )
    seen: list[tuple[str, dict[str, Any]]] = []
    runner.on_status = lambda text: seen.append((text, dict(runner.progress or {})))
    return runner, events, seen


def window(length_s: float) -> StartPhase:
    return StartPhase(window_id=WINDOW, start=START, end=START + length_s, catch_up=False, manual=False)


async def test_a_whole_window_measures_writes_results_and_collapses_into_dream(
    tmp_path: Path, tune: SpicaDomain
) -> None:
    rig = dream_with_variants(tmp_path, tune, FakeRunner(seed=3))
    phase, events, seen = open_phase(rig)
    before = snapshot_files(tune.sysfs_root)
    subjects = rig.loop.phase_subjects(3)
    assert sorted(subjects[TUNE][2]) == ["bad", "good"]

    with anyio.fail_after(30):
        outcome = await phase.run_window(window(3600.0), subjects)

    res = outcome.results
    run_id = "phase-20260921T141320-2026-09-21T1400"
    assert res.run_id == run_id and res.complete and res.stopped_reason is None
    assert res.qtime == res.qtime_requested == Qtime(2, 2, 3) and res.shrink is None
    assert res.trials == TrialCounts(planned=36, run=36, failed=0)
    assert res.window is not None and res.window.id == WINDOW
    assert res.domains_tested == [TUNE]
    assert [p.cand_id for p in res.promoted_variants] == ["good"]
    assert [f.cand_id for f in res.flagged_variants] == ["bad"]
    variants = res.metrics[TUNE].variants or {}
    good_score = variants["good"].score_v2
    assert good_score is not None and 0.1 < good_score < 0.2
    assert res.metrics[TUNE].best_cand_id == "good"

    # The files: results, phase/latest, the flag naming them.
    assert outcome.path == rig.paths.phase / run_id / "phase_results.json"
    assert load_results(outcome.path) == res
    assert os.readlink(rig.paths.phase / "latest") == run_id
    assert outcome.completed_at == rig.clock() == START + 36 * (REGIME_S + rig.runner.overhead_s)
    flag = rig.paths.phase / f"phase_complete_{int(outcome.completed_at)}"
    assert flag.read_text() == str(outcome.path.absolute())
    assert events.named("phase_started") == [
        {"event": "phase_started", "window_id": WINDOW, "run_id": run_id, "catch_up": False, "manual": False}
    ]
    assert events.named("qtime_shrunk") == []

    # Stock and both variants alternated; the knobs each wrote are back, and progress was visible.
    arms = [c.cand_id for c in rig.runner.calls]
    assert all(sorted(arms[i : i + 3]) == ["bad", "good", STOCK_ARM] for i in range(0, 36, 3))
    assert {a: arms.count(a) for a in set(arms)} == {STOCK_ARM: 12, "good": 12, "bad": 12}
    assert {c.knob_files["qdisc"].strip() for c in rig.runner.calls_of("bad")} == {"pfifo_fast"}
    assert all(c.duration_s is None for c in rig.runner.calls)  # the regimes' own durations
    assert snapshot_files(tune.sysfs_root) == before and tune.journal.pending() == []
    assert [p["done"] for _, p in seen] == list(range(36))
    assert {(p["run_id"], p["total"], p["window_id"]) for _, p in seen} == {(run_id, 36, WINDOW)}
    assert {p["epoch"] for _, p in seen} == {1, 2}
    assert all(1 <= p["replica"] <= p["replicas"] for _, p in seen)
    assert seen[0][1]["eta_s"] is None and all(p["eta_s"] >= 0 for _, p in seen[1:])
    assert {p["regime"] for _, p in seen} <= {"idle", "normal", "stress", "mixed"}
    assert seen[-1][0] == f"PHASE {run_id} trial 36/36"
    assert phase.progress is None

    changes = rig.loop.collapse(res, source=str(outcome.path))
    ch = changes["domains"][TUNE]
    assert ch["removed"] == [{"cand_id": "bad", "reasons": res.flagged_variants[0].reasons}]
    assert ch["seeded"] == ["good"] and "good" in ch["rescored"]
    assert ch["baseline_regimes"] == list(res.metrics[TUNE].baseline)
    hof = rig.loop.searches[TUNE].hall_of_fame
    assert [h.cand_id for h in hof] == ["good", "same"]
    assert (hof[0].score, hof[0].phase_run_id) == (good_score, run_id)


async def test_a_short_window_shrinks_the_plan_and_still_completes(tmp_path: Path, tune: SpicaDomain) -> None:
    rig = dream_with_variants(tmp_path, tune, FakeRunner(seed=4))
    phase, events, _ = open_phase(rig, trial_seconds=4.0)
    before = snapshot_files(tune.sysfs_root)
    # 36 planned trials need ~166 s; 100 s leave room for one replica per slice, not two.
    with anyio.fail_after(30):
        outcome = await phase.run_window(window(100.0), rig.loop.phase_subjects(3))
    res = outcome.results
    [shrunk] = events.named("qtime_shrunk")
    assert shrunk["run_id"] == res.run_id and shrunk["fits"] is True
    assert shrunk["from"] == {"epochs": 2, "slices": 2, "replicas": 3}
    assert shrunk["to"] == {"epochs": 2, "slices": 2, "replicas": 1}
    assert res.qtime == Qtime(2, 2, 1) and res.qtime_requested == Qtime(2, 2, 3)
    assert res.shrink is not None and res.shrink["to"] == shrunk["to"]
    assert res.complete and res.trials == TrialCounts(planned=12, run=12, failed=0)
    assert {c.duration_s for c in rig.runner.calls} == {4.0}  # PHASE's trial_seconds override
    assert rig.clock() <= START + 100.0
    assert snapshot_files(tune.sysfs_root) == before


async def test_a_window_that_closes_mid_plan_keeps_what_was_measured(
    tmp_path: Path, tune: SpicaDomain
) -> None:
    # Trials take 25 s of fake time where 10.6 s were planned: the window closes after 16 of 36.
    runner = FakeRunner(seed=5, overhead_s=15.0)
    runner.fail = lambda c: "workload_failed: stress-ng exited 2" if c.index == 4 else None
    rig = dream_with_variants(tmp_path, tune, runner)
    phase, events, seen = open_phase(rig)
    before = snapshot_files(tune.sysfs_root)
    with anyio.fail_after(30):
        outcome = await phase.run_window(window(400.0), rig.loop.phase_subjects(3))
    res = outcome.results
    assert events.named("qtime_shrunk") == []  # the plan fitted on paper
    assert res.complete is False and res.stopped_reason == "the window closed before the plan finished"
    assert res.trials == TrialCounts(planned=36, run=16, failed=1)
    assert len(rig.runner.calls) == 16 and len(seen) == 16
    assert rig.clock() == START + 16 * 25.0 <= START + 400.0 + 25.0
    assert load_results(rig.paths.phase / "latest") == res
    assert snapshot_files(tune.sysfs_root) == before and tune.journal.pending() == []
    assert phase.progress is None
    changes = rig.loop.collapse(res, source="latest")
    assert changes["complete"] is False and TUNE in changes["domains"]


async def test_the_worker_process_gives_the_same_results_as_the_thread(
    tmp_path: Path, tune: SpicaDomain
) -> None:
    requests: list[AnalysisRequest] = []

    async def capture(req: AnalysisRequest) -> PhaseResults:
        requests.append(req)
        return await analyze_in_thread(req)

    rig = dream_with_variants(tmp_path, tune, FakeRunner(seed=6))
    phase, _, _ = open_phase(rig, qtime=QtimeConfig(epochs=1, slices=1, replicas=3), analyze=capture)
    with anyio.fail_after(30):
        outcome = await phase.run_window(window(3600.0), rig.loop.phase_subjects(3))
    [req] = requests
    assert req.trials == TrialCounts(planned=9, run=9, failed=0)
    assert len(req.data.domains[TUNE].trials) == 9 and req.data.domains[TUNE].stock == TUNE_STOCK
    with anyio.fail_after(120):
        in_worker = await analyze_in_worker(req)
    assert in_worker == outcome.results
    assert msgspec.json.encode(in_worker) == msgspec.json.encode(await analyze_in_thread(req))


async def test_a_failing_worker_raises_analysis_failed(tmp_path: Path, tune: SpicaDomain) -> None:
    rig = dream_with_variants(tmp_path, tune, FakeRunner())
    _, stock, variants = rig.loop.phase_subjects(3)[TUNE]
    ghost = TrialRecord(epoch=0, regime="idle", variant_id="ghost", ok=True, kpis={THROUGHPUT: 1.0})
    req = AnalysisRequest(
        data=PhaseData(domains={TUNE: DomainData(stock=stock, variants=variants, trials=[ghost])}),
        seed=1,
        n_boot=50,
        run_id="phase-bad",
        timestamp="2026-09-21T03:00:00+00:00",
        qtime=Qtime(1, 1, 1),
        complete=True,
    )
    with pytest.raises(ValueError, match="unknown variant 'ghost'"):
        await analyze_in_thread(req)
    with anyio.fail_after(120), pytest.raises(AnalysisFailed, match="exited 1") as caught:
        await analyze_in_worker(req)
    assert "unknown variant 'ghost'" in str(caught.value)
