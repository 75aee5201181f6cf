"""Knob drift during measurement: a knob rewritten under a trial fails it as ``knob drift`` (a real
Evaluator running a tiny Python command on a temporary sysfs_root), and a tournament meeting
DRIFT_LIMIT such failures stops starting trials instead of fighting the other tool."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import numpy as np
import pytest
from fakes import FakeRunner, TrialCall, open_cpu_domain, open_tune_domain
from loguru import logger

from kloros_orchestrator.engine import Candidate
from kloros_orchestrator.measure.sensors import discover_sensors
from kloros_orchestrator.model import STOCK_ARM, Genome, TrialResult
from kloros_orchestrator.runtime.evaluate import DRIFT_PREFIX, Evaluator, is_drift
from kloros_orchestrator.runtime.records import Progress
from kloros_orchestrator.runtime.tournament import DRIFT_LIMIT, Tournament, TournamentOutcome
from kloros_orchestrator.runtime.workloads import running_pids
from kloros_orchestrator.spica import KnobJournal, SpicaDomain, make_generic_domain, unregister
from kloros_orchestrator.testing import load_regimes, snapshot_files, write_tree

# The benchmark: writes each (path, text) pair of its arguments, then prints its KPI line.
BENCHMARK = (
    "import json, sys\n"
    "args = sys.argv[1:]\n"
    "for path, text in zip(args[::2], args[1::2]):\n"
    "    with open(path, 'w') as f:\n"
    "        f.write(text)\n"
    "print(json.dumps({'score': 42.0}))\n"
)
SWAPPINESS = "proc/sys/vm/swappiness"
OPTIONS = {
    "knobs": {"swappiness": {"type": "int", "low": 0, "high": 100, "path": SWAPPINESS}},
    "workload": {"command": [sys.executable, "-c", BENCHMARK]},
    "kpis": ["score"],
}
GENOME: Genome = {"swappiness": 30}


@pytest.fixture
def domain_name() -> Iterator[str]:
    name = "drift_cmd"
    yield name
    unregister(name)


def command_domain(tmp_path: Path, name: str, *extra_args: str) -> SpicaDomain:
    """The generic command domain on ``tmp_path/sysfs``; ``extra_args`` go to the benchmark."""
    root = tmp_path / "sysfs"
    write_tree(root, {SWAPPINESS: "60\n"})
    cls = make_generic_domain(name, OPTIONS)
    dom = cls(
        sysfs_root=root,
        journal=KnobJournal(tmp_path / "journal"),
        regimes=load_regimes("audio"),
        scratch_dir=tmp_path / "scratch",
        options={"workload": {"command": [sys.executable, "-c", BENCHMARK, *extra_args]}},
    )
    dom.discover()
    assert dom.support == "ok"
    return dom


async def one_trial(tmp_path: Path, dom: SpicaDomain) -> tuple[TrialResult, Evaluator]:
    ev = Evaluator(workdir=tmp_path / "work", sensors=discover_sensors(tmp_path / "none"), caps={})
    with anyio.fail_after(20):
        tr = await ev.run_trial(dom, GENOME, "normal", cand_id="c1", duration_s=1)
    assert running_pids() == []
    return tr, ev


async def test_a_knob_rewritten_during_the_trial_fails_it_as_knob_drift(
    tmp_path: Path, domain_name: str
) -> None:
    knob_file = (tmp_path / "sysfs" / SWAPPINESS).absolute()
    dom = command_domain(tmp_path, domain_name, str(knob_file), "60\n")  # the "other tool" mid-trial
    tr, ev = await one_trial(tmp_path, dom)
    assert not tr.ok and tr.kpis == {} and tr.cap_breach is None
    assert tr.failure == f"knob drift: {knob_file}, expected 30, found 60"
    assert is_drift(tr) and is_drift(tr.failure)
    assert ev.counters.trials == 1 and ev.counters.failed_trials == 1
    assert dom.restore() == []


async def test_the_same_trial_without_the_rewrite_succeeds(tmp_path: Path, domain_name: str) -> None:
    dom = command_domain(tmp_path, domain_name)
    tr, ev = await one_trial(tmp_path, dom)
    assert tr.ok, tr.failure
    assert tr.kpis["score"] == 42.0 and not is_drift(tr)
    assert (tmp_path / "sysfs" / SWAPPINESS).read_text() == "30"
    assert ev.counters.failed_trials == 0
    assert dom.restore() == []


async def test_a_knob_rewritten_right_after_apply_fails_before_the_workload_starts(
    tmp_path: Path, domain_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "workload-ran"
    dom = command_domain(tmp_path, domain_name, str(marker), "yes")
    knob_file = (tmp_path / "sysfs" / SWAPPINESS).absolute()
    apply = dom.apply

    def apply_then_rewritten(genome: Genome) -> None:
        apply(genome)
        knob_file.write_text("[oops]\n")

    monkeypatch.setattr(dom, "apply", apply_then_rewritten)
    tr, _ = await one_trial(tmp_path, dom)
    assert tr.failure == f"knob drift: {knob_file}, expected 30, found [oops]"
    assert tr.kpis == {} and not marker.exists()
    assert dom.restore() == []


def test_is_drift_reads_the_failure_text() -> None:
    assert DRIFT_PREFIX == "knob drift: "
    assert not is_drift(None) and not is_drift("command_failed: knob drift: no")
    ok = TrialResult(domain="d", cand_id="c", regime="r", ok=True)
    assert not is_drift(ok)


# --- the tournament ---------------------------------------------------------------------------------


def drifting(call: TrialCall) -> str:
    return f"{DRIFT_PREFIX}/fake/{SWAPPINESS}, expected 0, found 60 (trial {call.index})"


def tournament(dom: SpicaDomain, runner: FakeRunner, progress: Progress, max_parallel: int = 1) -> Tournament:
    stock = dom.stock_genome()
    cands = [Candidate(f"c{i}", dict(stock), 0) for i in range(3)]
    return Tournament(
        domain=dom, stock=stock, candidates=cands, regimes=("normal", "stress"), evaluator=runner,
        progress=progress, rng=np.random.default_rng(0), trials=3, max_parallel=max_parallel,
        trial_seconds=5.0,
    )  # fmt: skip


async def run_logged(t: Tournament) -> tuple[TournamentOutcome, list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m).strip()), level="WARNING", format="{message}")
    try:
        with anyio.fail_after(10):
            out = await t.run()
    finally:
        logger.remove(sink)
    return out, lines


async def test_a_tournament_stops_after_drift_limit_drift_failures(tmp_path: Path) -> None:
    dom = open_tune_domain(tmp_path)
    before = snapshot_files(dom.sysfs_root)
    runner, progress = FakeRunner(fail=drifting), Progress()
    out, lines = await run_logged(tournament(dom, runner, progress))
    assert len(runner.calls) == DRIFT_LIMIT  # 8 trials in the first round; no fourth one started
    assert out.drift == [drifting(c) for c in runner.calls] and out.drift_stopped
    assert progress.tournament_done == progress.tournament_total == DRIFT_LIMIT
    assert snapshot_files(dom.sysfs_root) == before  # knobs restored however it ends
    stopped = [line for line in lines if "knob-drift" in line]
    assert len(stopped) == 1 and f"stopped after {DRIFT_LIMIT} knob-drift failures" in stopped[0]
    assert out.all_failed() is not None


async def test_in_flight_parallel_trials_finish_before_the_tournament_stops(tmp_path: Path) -> None:
    dom = open_cpu_domain(tmp_path)  # process knobs only: two trials at a time
    runner = FakeRunner(fail=drifting)
    out, _ = await run_logged(tournament(dom, runner, Progress(), max_parallel=2))
    # Two batches of two: the limit is met in the second batch, whose other trial still finishes.
    assert len(runner.calls) == 4 and len(out.drift) == 4 and out.drift_stopped


async def test_drift_below_the_limit_is_counted_and_the_tournament_goes_on(tmp_path: Path) -> None:
    dom = open_tune_domain(tmp_path)
    runner = FakeRunner(fail=lambda call: drifting(call) if call.index < DRIFT_LIMIT - 1 else None)
    out, lines = await run_logged(tournament(dom, runner, Progress()))
    assert len(out.drift) == DRIFT_LIMIT - 1 and not out.drift_stopped
    # Not a drift stop: the tournament ran rounds until the race was decided (the candidates whose
    # trials failed left it), with the stock arm in each and the survivor given its scoring rounds.
    assert out.race.finished and len(out.race.survivors()) <= 1
    assert len({len(out.stock[r]) for r in out.regimes}) == 1 and len(out.stock["normal"]) >= 2
    assert out.results[STOCK_ARM] is out.stock
    assert not [line for line in lines if "knob-drift" in line]
