"""Contaminated rounds: a D-REAM round or a PHASE replica with a trial run under outside CPU load above
the threshold is dropped (never in a score, a pack, the race or the analysis) and run again; past
``max_reruns`` the tournament stops unconcluded and PHASE stops with ``complete: false``. The fake
runner's ``outside`` hook plays the outside load; the real measurement is in test_outside_load.py."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from fakes import (
    TUNE,
    TUNE_STOCK,
    DreamRig,
    FakeRunner,
    TrialCall,
    dream_config,
    open_cpu_domain,
    open_dream_rig,
    open_tune_domain,
)

from kloros_orchestrator.cli import format_status
from kloros_orchestrator.config import ContaminationConfig, PhaseConfig, QtimeConfig, RacingConfig
from kloros_orchestrator.core.coordinator import StartPhase
from kloros_orchestrator.model import REGIMES, STOCK_ARM, THROUGHPUT, TrialResult
from kloros_orchestrator.phase.worker import AnalysisRequest
from kloros_orchestrator.runtime.dream import BUSY_BACKOFF_S
from kloros_orchestrator.runtime.driver import Daemon
from kloros_orchestrator.runtime.phase_runner import PhaseRunner, PhaseSettings, analyze_in_thread
from kloros_orchestrator.runtime.records import DomainProgress, HallOfFameEntry
from kloros_orchestrator.runtime.status import work_status
from kloros_orchestrator.runtime.tournament import TournamentOutcome
from kloros_orchestrator.store import read_jsonl

DIRTY, CLEAN = 0.6, 0.03  # outside CPU shares around the thresholds (default 0.10; 0.25 in some tests)


def tune_rig(tmp_path: Path, **config: Any) -> tuple[DreamRig, list[TournamentOutcome]]:
    """A D-REAM rig on the fake tune domain; the list fills with each concluded tournament's outcome."""
    rig = open_dream_rig(
        tmp_path / "state", {TUNE: open_tune_domain(tmp_path)}, config=dream_config(**config)
    )
    rig.loop.restore({})
    rig.gate.open()
    concluded: list[TournamentOutcome] = []
    conclude = rig.loop.concluder.conclude

    def spy(*args: Any) -> Any:
        concluded.append(args[3])
        return conclude(*args)

    rig.loop.concluder.conclude = spy  # type: ignore[method-assign]
    return rig, concluded


def every_trial(out: TournamentOutcome) -> list[TrialResult]:
    return [t for per_arm in out.results.values() for ts in per_arm.values() for t in ts]


async def test_a_contaminated_round_is_dropped_and_run_again_and_nothing_downstream_sees_it(
    tmp_path: Path,
) -> None:
    # A δ far below the fake domain's gaps keeps the race open to the cap: three rounds to look at.
    rig, concluded = tune_rig(tmp_path, racing=RacingConfig(indifference=1e-9))
    dirty: list[int] = []

    def outside(call: TrialCall) -> float:
        if rig.progress.round == 2 and not dirty:  # the first trial of round 2, once
            dirty.append(call.index)
            return DIRTY
        return CLEAN

    rig.runner.outside = outside
    with anyio.fail_after(20):
        await rig.loop.tournament(TUNE)

    [out] = concluded
    assert out.busy is None and rig.progress.stopped is None and rig.progress.contaminated_rounds == 1
    [dropped] = out.contaminated
    assert dropped.round == 2 and len(dropped.trials) == 1  # the round started no further trial
    arm, bad = dropped.trials[0]
    assert bad.contaminated and bad.outside_cpu == DIRTY and rig.runner.calls[dirty[0]].cand_id == arm

    kept = every_trial(out)
    assert all(not t.contaminated and t.outside_cpu == CLEAN for t in kept)
    assert all(t is not bad and t.started_at != bad.started_at for t in kept)
    assert len(rig.runner.calls) == len(kept) + 1  # every trial run is kept, but the dropped one
    # Three clean rounds all the same: the stock arm and every candidate the race kept.
    assert all(len(ts) == 3 for ts in out.stock.values())
    for c in out.candidates:
        rounds = {len(ts) for ts in out.results[c.cand_id].values()}
        assert rounds == {3} or (
            c.cand_id in out.race.eliminated and rounds == {len(out.race.samples(c.cand_id))}
        )
        assert len(out.race.samples(c.cand_id)) <= 3  # the race never saw a fourth round

    pack = json.loads((rig.paths.candidates(TUNE) / "gen0_best.json").read_text())
    assert all(r["trials"] == 3 for r in pack["regimes"])
    values = [v for r in pack["regimes"] for v in r["kpis"][THROUGHPUT]]
    assert bad.kpis[THROUGHPUT] not in values
    baselines = json.loads(rig.paths.baselines.read_text())
    assert {r: b["trials"] for r, b in baselines[TUNE].items()} == {"normal": 3, "stress": 3}

    [event] = rig.events.named("round_contaminated")
    assert event["round"] == 2 and event["generation"] == 0
    assert event["trials"] == [
        {"arm": arm, "regime": bad.regime, "started_at": bad.started_at, "outside_cpu": DIRTY}
    ]
    assert rig.events.named("tournament_not_concluded") == []
    assert rig.loop.searches[TUNE].generation == 1


async def test_past_max_reruns_the_tournament_stops_unconcluded_and_asks_the_same_again(
    tmp_path: Path,
) -> None:
    rig, concluded = tune_rig(tmp_path, contamination=ContaminationConfig(outside_cpu=0.25, max_reruns=2))
    rig.runner.outside = lambda call: DIRTY if rig.progress.round >= 2 else CLEAN
    s = rig.loop.searches[TUNE]
    committed = s.committed
    with anyio.fail_after(20):
        await rig.loop.tournament(TUNE)

    first = list(rig.runner.calls)
    arms = 1 + rig.loop.cfg.population
    assert len(first) == arms * 2 + 3  # round 1 clean; round 2 contaminated three times, one trial each
    assert concluded == []  # no pack, no baseline, the engine not told
    assert not rig.paths.baselines.exists() and list(rig.paths.candidates(TUNE).glob("*.json")) == []
    assert s.generation == 0 and s.committed == committed and s.engine.state() == committed
    assert len(rig.events.named("round_contaminated")) == 3
    [stop] = rig.events.named("tournament_not_concluded")
    reason = stop["reason"]
    assert reason.startswith(
        "host too busy: 3 contaminated round(s) in this tournament, the last at round 2/3"
    )
    assert "outside CPU 60% of the host > 25%" in reason
    assert rig.reports.summary() == [("tournament_started", TUNE, 0), ("tournament_done", TUNE, 0)]

    # status says so, in JSON and for people
    st = work_status(rig.progress, rig.runner.counters)
    assert st["tournament"]["stopped"] == reason and st["tournament"]["contaminated_rounds"] == 3
    assert st["tournament"]["done"] == st["tournament"]["total"] == len(first)
    assert st["counters"]["contaminated_trials"] == 3
    text = format_status({"state": "evolving", **st, "contamination": {"detectable": True, "problem": None}})
    assert f"stopped: {reason}" in text and "3 contaminated round(s) dropped" in text
    assert "cannot be detected" not in text

    # Rather than run stress-ng back to back on a host it cannot measure on, the domain sits out
    # (doubling like the knob-drift back-off), and the stopped tournament's time counts for pacing.
    backed = rig.progress.backoff[TUNE]
    assert backed["until_ts"] - rig.clock() == pytest.approx(BUSY_BACKOFF_S)
    assert backed["reason"].startswith("tournaments stop as host too busy: 3 contaminated round(s)")
    [sat_out] = rig.events.named("domain_backoff")
    assert sat_out["seconds"] == BUSY_BACKOFF_S and len(s.durations) == 1

    # The host calms down: the same generation's candidates are measured again, and concluded.
    rig.runner.outside = lambda call: CLEAN
    with anyio.fail_after(20):
        await rig.loop.tournament(TUNE)
    again = rig.runner.calls[len(first) :]
    genomes = {c.cand_id: c.genome for c in first}
    assert all(genomes[c.cand_id] == c.genome for c in again if c.cand_id in genomes)
    assert {c.cand_id for c in again} == {c.cand_id for c in first}
    assert len(concluded) == 1 and s.generation == 1 and rig.progress.stopped is None
    assert (rig.paths.candidates(TUNE) / "gen0_best.json").exists()


async def test_parallel_trials_in_flight_finish_and_are_dropped_with_their_round(tmp_path: Path) -> None:
    domains = {"cpu": open_cpu_domain(tmp_path)}
    rig = open_dream_rig(tmp_path / "state", domains, config=dream_config(domains=["cpu"], max_parallel=2))
    rig.loop.restore({})
    rig.gate.open()
    rig.runner.outside = lambda call: DIRTY if call.index == 1 else CLEAN  # in the first batch of two
    with anyio.fail_after(20):
        await rig.loop.tournament("cpu")
    [event] = rig.events.named("round_contaminated")
    assert event["round"] == 1 and len(event["trials"]) == 2  # its batch partner ran and was dropped
    assert sorted(t["outside_cpu"] for t in event["trials"]) == [CLEAN, DIRTY]
    assert rig.loop.searches["cpu"].generation == 1 and rig.progress.stopped is None


async def test_with_max_reruns_0_the_first_contaminated_round_stops_the_tournament(tmp_path: Path) -> None:
    rig, concluded = tune_rig(tmp_path, contamination=ContaminationConfig(max_reruns=0))
    rig.runner.outside = lambda call: DIRTY if call.index == 4 else CLEAN
    with anyio.fail_after(20):
        await rig.loop.tournament(TUNE)
    assert len(rig.runner.calls) == 5 and concluded == []
    assert rig.progress.stopped is not None and "1 contaminated round(s)" in rig.progress.stopped


async def test_an_unmeasured_outside_load_contaminates_nothing(tmp_path: Path) -> None:
    rig, concluded = tune_rig(tmp_path)
    rig.runner.outside = lambda call: None
    with anyio.fail_after(20):
        await rig.loop.tournament(TUNE)
    [out] = concluded
    assert out.contaminated == [] and all(t.outside_cpu is None for t in every_trial(out))


# --- PHASE ---------------------------------------------------------------------------------------------

GOOD = {**TUNE_STOCK, "swappiness": 10, "qdisc": "fq"}
BAD = {**TUNE_STOCK, "qdisc": "pfifo_fast"}


def phase_rig(
    tmp_path: Path, max_reruns: int = 3
) -> tuple[PhaseRunner, DreamRig, list[AnalysisRequest], Any]:
    rig = open_dream_rig(tmp_path / "state", {TUNE: open_tune_domain(tmp_path)}, runner=FakeRunner(seed=3))
    hof = [
        HallOfFameEntry(cand_id=c, spica_id=f"spica-{c}", genome=g, generation=0, score=0.1)
        for c, g in (("good", GOOD), ("bad", BAD))
    ]
    rig.loop.restore({TUNE: DomainProgress(hall_of_fame=hof)})
    requests: list[AnalysisRequest] = []

    async def analyze(req: AnalysisRequest) -> Any:
        requests.append(req)
        return await analyze_in_thread(req)

    runner = PhaseRunner(
        PhaseSettings(
            phase=PhaseConfig(qtime=QtimeConfig(epochs=1, slices=2, replicas=2)),
            seed=7,
            n_boot=200,
            regime_seconds={TUNE: dict.fromkeys(REGIMES, 10.0)},
            contamination=ContaminationConfig(max_reruns=max_reruns),
        ),
        evaluator=rig.runner, phase_dir=rig.paths.phase, events=rig.events, clock=rig.clock, analyze=analyze,
    )  # fmt: skip
    window = StartPhase(
        window_id="w", start=rig.clock(), end=rig.clock() + 3600, catch_up=False, manual=False
    )
    return runner, rig, requests, window


def replica_of(index: int) -> int:
    return index // 3  # three arms per replica: stock, good, bad


async def test_phase_runs_a_contaminated_replica_again_and_the_analysis_never_sees_it(tmp_path: Path) -> None:
    phase, rig, requests, window = phase_rig(tmp_path)
    # The second trial of the second replica, once: its replica is dropped and run again.
    rig.runner.outside = lambda call: DIRTY if call.index == 4 else CLEAN
    with anyio.fail_after(30):
        outcome = await phase.run_window(window, rig.loop.phase_subjects(3))

    calls = rig.runner.calls
    assert len(calls) == 12 + 2  # the plan, plus the dropped replica's two trials
    first, rerun = calls[3:5], calls[5:8]
    assert [c.cand_id for c in rerun][:2] == [c.cand_id for c in first]  # the replica again, in order
    assert {c.regime for c in [*first, *rerun]} == {calls[3].regime}
    [req] = requests
    records = req.data.domains[TUNE].trials
    assert len(records) == 12
    keys = [(r.epoch, r.regime, r.replica, r.variant_id) for r in records]
    assert len(set(keys)) == 12 and {r.variant_id for r in records} == {STOCK_ARM, "good", "bad"}
    res = outcome.results
    assert res.complete and res.stopped_reason is None
    [event] = rig.events.named("replica_contaminated")
    assert event["cand_id"] == calls[4].cand_id and event["outside_cpu"] == DIRTY and event["replica"] == 1


async def test_phase_stops_as_host_too_busy_when_a_replica_stays_contaminated(tmp_path: Path) -> None:
    phase, rig, requests, window = phase_rig(tmp_path, max_reruns=1)
    rig.runner.outside = lambda call: DIRTY if call.index >= 3 else CLEAN  # from the second replica on
    with anyio.fail_after(30):
        outcome = await phase.run_window(window, rig.loop.phase_subjects(3))
    assert len(rig.runner.calls) == 3 + 2  # one clean replica, then one trial per attempt (1 + 1 re-run)
    res = outcome.results
    assert not res.complete and res.stopped_reason is not None
    assert res.stopped_reason.startswith("host too busy: outside CPU 60% of the host > 10%")
    [req] = requests
    assert len(req.data.domains[TUNE].trials) == 3  # the clean replica only
    assert len(rig.events.named("replica_contaminated")) == 2


# --- trials.jsonl ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("share", [0.4, 0.1, None])
def test_trials_jsonl_carries_outside_cpu_and_contaminated(tmp_path: Path, share: float | None) -> None:
    """The daemon's own writer (``Daemon._log_trial``, the evaluator's ``on_trial``) on a trial."""
    trials = tmp_path / "trials.jsonl"
    daemon = SimpleNamespace(
        paths=SimpleNamespace(trials=trials), clock=lambda: 5.0, coord=SimpleNamespace(state="evolving"),
        _busy_s=0.0, metrics=None,
    )  # fmt: skip
    tr = TrialResult(
        domain=TUNE, cand_id="g0c1", regime="normal", ok=True, kpis={THROUGHPUT: 1.0},
        outside_cpu=share, contaminated=share is not None and share > 0.25,
    )  # fmt: skip
    Daemon._log_trial(daemon, tr)  # type: ignore[arg-type]
    [line] = read_jsonl(trials)
    assert line["outside_cpu"] == share and line["contaminated"] is (share == 0.4)
