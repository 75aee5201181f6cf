"""The anyio driver in-process: a fake trial runner, a generic domain on a temporary sysfs_root,
a fake clock. Lifecycle (startup → main → shutdown), PHASE windows over the real status socket,
restarts inside and after a window, results left on disk, and the coordinator's refusals."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from fakes import FakeClock

from kloros_orchestrator.config import LoadedConfig, load_config
from kloros_orchestrator.core.coordinator import (
    PhaseComplete,
    ResultsCollapsed,
    Started,
    State,
    StopRequested,
)
from kloros_orchestrator.model import P50, P95, P99, REGIMES, TEMP, THROUGHPUT, WATTS, Genome, TrialResult
from kloros_orchestrator.phase.results import (
    DomainMetrics,
    PhaseResults,
    Qtime,
    Recommendation,
    write_results,
)
from kloros_orchestrator.phase.worker import AnalysisRequest
from kloros_orchestrator.runtime.control import query
from kloros_orchestrator.runtime.driver import Daemon
from kloros_orchestrator.runtime.evaluate import TrialCounters
from kloros_orchestrator.runtime.phase_runner import Analyzer, analyze_in_thread
from kloros_orchestrator.runtime.ports import EventLog
from kloros_orchestrator.runtime.records import OpenWindow, SavedState, load_saved_state, save_state
from kloros_orchestrator.spica.base import SpicaDomain
from kloros_orchestrator.spica.registry import unregister
from kloros_orchestrator.stop_signals import STOP_SIGNALS, EarlyStops

DOMAIN = "knobby"
KNOB_PATH = "proc/sys/kt/level"
STOCK_LEVEL = 50
T0 = 1_800_000_000.0
WINDOW_S = 600
WAIT_S = 15  # bound on every wait: a hang fails the test instead of stalling the run

CONTRACT_STATUS_FIELDS = {
    "state", "domain", "generation", "tournament", "next_window", "last_phase", "pacing", "domains",
    "pid", "uptime_s", "version", "counters",
}  # fmt: skip


class WatchedLog(EventLog):
    """The daemon's event log, which a test can also await: ``await log.wait_for("phase_complete")``."""

    def __init__(self, path: Path, clock: FakeClock) -> None:
        super().__init__(path, clock)
        self.names: list[str] = []
        self._changed = anyio.Event()

    def record(self, event: str, *, ts: float | None = None, **fields: Any) -> None:
        super().record(event, ts=ts, **fields)
        self.names.append(event)
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def wait_for(self, event: str, count: int = 1) -> None:
        with anyio.fail_after(WAIT_S):
            while self.names.count(event) < count:
                await self._changed.wait()


class FakeRunner:
    """A TrialRunner without stress-ng: applies the genome off the loop (as the real one does), notes
    the knob's value during the trial, and reports KPIs that favour a higher ``level``."""

    def __init__(self, knob_file: Path) -> None:
        self.knob_file = knob_file
        self.counters = TrialCounters()
        self.applied: list[int] = []
        self.rng = random.Random(11)
        self.hold_candidates = False  # park the first non-stock trial (its knob applied) forever
        self.holding = anyio.Event()

    async def run_trial(
        self,
        domain: SpicaDomain,
        genome: Genome,
        regime: str,
        *,
        cand_id: str,
        duration_s: float | None = None,
        cpus: tuple[int, ...] | None = None,
    ) -> TrialResult:
        await anyio.to_thread.run_sync(domain.apply, genome)
        level = int(self.knob_file.read_text())
        self.applied.append(level)
        if self.hold_candidates and level != STOCK_LEVEL:
            self.holding.set()
            await anyio.sleep_forever()
        self.counters.trials += 1
        noise = self.rng.gauss(1.0, 0.01)
        kpis = {
            THROUGHPUT: (1000.0 + 2.0 * level) * noise,
            P50: 20.0 * noise,
            P95: (60.0 - 0.1 * level) * noise,
            P99: (90.0 - 0.1 * level) * noise,
        }
        return TrialResult(domain=domain.name, cand_id=cand_id, regime=regime, ok=True, kpis=kpis)

    def missing_reasons(self) -> dict[str, str]:
        return {TEMP: "no thermal sensor in the test tree", WATTS: "no RAPL in the test tree"}


@dataclass
class Rig:
    root: Path
    loaded: LoadedConfig
    clock: FakeClock
    knob_file: Path
    runner: FakeRunner
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.loaded.state_dir

    def daemon(self, *, once: bool = False, analyze: Analyzer = analyze_in_thread) -> Daemon:
        d = Daemon(self.loaded, once=once, clock=self.clock, analyze=analyze, runner=self.runner)
        d.events = WatchedLog(d.paths.events, self.clock)  # before startup: D-REAM and PHASE share it
        self.daemons.append(d)
        return d

    def release(self, d: Daemon) -> None:
        """Close the state-dir lock (held for the life of the process otherwise), once."""
        self.daemons.remove(d)
        d.release_lock()

    def events(self) -> list[dict[str, Any]]:
        path = self.state_dir / "logs" / "events.jsonl"
        text = path.read_text() if path.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def names(self) -> list[str]:
        return [e["event"] for e in self.events()]

    def saved(self) -> SavedState:
        return load_saved_state(self.state_dir / "state.json", now=0.0)

    def save(self, state: SavedState) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        assert save_state(self.state_dir / "state.json", state)


@pytest.fixture
def rig() -> Iterator[Rig]:
    yield from new_rig()


def new_rig() -> Iterator[Rig]:
    """A rig on a fresh temporary tree, removed afterwards (the ``rig`` fixture; other modules too)."""
    root = Path(tempfile.mkdtemp(prefix="kd"))  # short: the socket path must fit in 107 bytes
    knob_file = root / "sys" / KNOB_PATH
    knob_file.parent.mkdir(parents=True)
    knob_file.write_text(f"{STOCK_LEVEL}\n")
    (root / "regimes").mkdir()
    regime = {"duration": 1, "stressors": [{"name": "cpu", "instances": 1}]}
    (root / "regimes" / f"{DOMAIN}.yaml").write_text(yaml.safe_dump(dict.fromkeys(REGIMES, regime)))
    cfg = {
        "state_dir": str(root / "state"),
        "socket": str(root / "k.sock"),
        "sysfs_root": str(root / "sys"),
        "seed": 5,
        "bootstrap_samples": 200,
        "dream": {
            "domains": [DOMAIN],
            "population": 2,
            "epochs_per_cycle": 1,
            "trials": 2,
            "trial_seconds": 1,
            # A long rest after each cycle: D-REAM is parked between tournaments unless resumed.
            "pacing": {"min_sleep_s": 600, "max_sleep_s": 900},
        },
        "phase": {
            "window": {"start": "now+3600", "duration": WINDOW_S},
            "qtime": {"epochs": 1, "slices": 4, "replicas": 1},
            "trial_seconds": 1,
        },
        "domain_options": {
            DOMAIN: {
                "kind": "generic",
                "knobs": {"level": {"type": "int", "low": 1, "high": 100, "path": KNOB_PATH}},
            }
        },
    }
    (root / "dream.yaml").write_text(yaml.safe_dump(cfg))
    r = Rig(root, load_config(root / "dream.yaml"), FakeClock(T0), knob_file, FakeRunner(knob_file))
    yield r
    for d in list(r.daemons):
        r.release(d)
    unregister(DOMAIN)
    shutil.rmtree(root, ignore_errors=True)


@contextlib.asynccontextmanager
async def running(d: Daemon) -> AsyncIterator[WatchedLog]:
    """startup → main in a task group (socket accepting once ``started`` is logged) → stop → shutdown."""
    log = d.events
    assert isinstance(log, WatchedLog)
    await d.startup()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(d.main)
            await log.wait_for("started")
            yield log
            d.dispatch(StopRequested(reason="test over", now=d.clock()))
    finally:
        with anyio.fail_after(WAIT_S):
            await d.shutdown()


async def ask(d: Daemon, cmd: str) -> dict[str, Any]:
    with anyio.fail_after(WAIT_S):
        return await anyio.to_thread.run_sync(query, d.loaded.socket_path, {"cmd": cmd})


def knobs_restored(rig: Rig) -> None:
    assert rig.knob_file.read_text().strip() == str(STOCK_LEVEL)
    assert list((rig.state_dir / "journal").glob("*.json")) == []


# --- lifecycle ---------------------------------------------------------------------------------------


async def test_once_runs_one_tournament_and_exits_by_itself_with_knobs_restored(rig: Rig) -> None:
    d = rig.daemon(once=True)
    await d.startup()
    with anyio.fail_after(WAIT_S):
        await d.main()  # returns on its own: --once stops after one pass
        await d.shutdown()
    names = rig.names()
    assert names.count("tournament_started") == 1 and names.count("tournament_done") == 1
    assert names[-2:] == ["stop_requested", "stopped"]
    assert rig.events()[-1]["reason"] == "--once pass complete"
    assert d.coord.state is State.STOPPING
    assert any(v != STOCK_LEVEL for v in rig.runner.applied), "no candidate knob was ever applied"
    knobs_restored(rig)
    assert (rig.state_dir / "artifacts" / "candidates" / DOMAIN / "gen0_best.json").is_file()
    assert not d.loaded.socket_path.exists()  # removed on exit
    assert rig.saved().engines[DOMAIN].generation == 1


async def test_phase_now_over_the_socket_runs_phase_collapses_and_resumes_dream(rig: Rig) -> None:
    d = rig.daemon()
    async with running(d) as log:
        await log.wait_for("pacing")  # first tournament done, D-REAM resting
        reply = await ask(d, "phase-now")
        assert reply["ok"] is True, reply
        await log.wait_for("results_collapsed")
        status = (await ask(d, "status"))["status"]
        await log.wait_for("tournament_started", 2)  # D-REAM resumed after the collapse
        assert d.coord.state is State.EVOLVING
    names = rig.names()
    order = [
        names.index(n) for n in ("window_opened", "phase_started", "phase_complete", "results_collapsed")
    ]
    assert order == sorted(order), names
    opened = next(e for e in rig.events() if e["event"] == "window_opened")
    assert opened["manual"] is True and opened["window_id"] == reply["window_id"]
    assert status["state"] == "evolving"
    last = status["last_phase"]
    assert last is not None and set(last) >= {"completed_at", "results"}
    results = Path(last["results"])
    assert results.is_file() and results.resolve() == (d.paths.phase / "latest" / results.name).resolve()
    assert (d.paths.phase / f"phase_complete_{int(rig.clock())}").is_file()
    saved = rig.saved()
    assert saved.open_window is None and saved.last_collapsed == json.loads(results.read_text())["run_id"]
    assert saved.last_opened_start is None  # a manual window never moves the schedule's high-water mark
    knobs_restored(rig)


async def test_status_over_the_socket_has_every_contract_field(rig: Rig) -> None:
    d = rig.daemon()
    async with running(d) as log:
        await log.wait_for("pacing")
        rig.clock.advance(12.5)
        reply = await ask(d, "status")
        bad = await ask(d, "reboot")
    assert reply["ok"] is True
    st = reply["status"]
    assert set(st) >= CONTRACT_STATUS_FIELDS, CONTRACT_STATUS_FIELDS - set(st)
    assert st["state"] == "evolving" and st["domain"] == DOMAIN and st["generation"] == 0
    assert st["tournament"]["total"] > 0 and st["tournament"]["done"] == st["tournament"]["total"]
    # "now+3600" counts from the daemon's start (the fake clock), not from the wall clock.
    assert st["next_window"]["start"] == datetime.fromtimestamp(T0 + 3600, UTC).isoformat()
    assert st["next_window"]["end"] == datetime.fromtimestamp(T0 + 3600 + WINDOW_S, UTC).isoformat()
    assert st["last_phase"] is None
    assert st["pacing"]["last_sleep_s"] >= 600 and st["pacing"]["reason"]
    assert st["domains"][DOMAIN] == "ok" and st["domains"]["cpu"] == "disabled"
    assert st["pid"] == os.getpid() and st["uptime_s"] == 12.5
    assert st["counters"] == {
        "tournaments": 1, "trials": rig.runner.counters.trials, "failed_trials": 0, "contaminated_trials": 0
    }  # fmt: skip
    assert st["contamination"] == {"detectable": True, "problem": None}
    assert isinstance(st["version"], str) and st["version"]
    assert bad["ok"] is False and "reboot" in bad["error"]


async def test_unknown_command_is_refused_and_the_daemon_stays_usable(rig: Rig) -> None:
    d = rig.daemon()
    await d.startup()
    reply = await d.handle_request({"cmd": "selfdestruct"})
    assert reply["ok"] is False and "selfdestruct" in reply["error"]
    assert (await d.handle_request({"cmd": "status"}))["ok"] is True
    assert d.coord.state is State.STARTING


async def test_phase_now_is_refused_with_once(rig: Rig) -> None:
    d = rig.daemon(once=True)
    await d.startup()
    assert d.dispatch(Started(now=rig.clock()))
    reply = await d.handle_request({"cmd": "phase-now"})
    assert reply["ok"] is False and "--once" in reply["error"]
    assert d.coord.state is State.EVOLVING and d.saved.open_window is None


async def test_phase_now_is_refused_while_a_window_is_open(rig: Rig) -> None:
    d = rig.daemon()
    await d.startup()
    assert d.dispatch(Started(now=rig.clock()))
    first = await d.handle_request({"cmd": "phase-now"})
    assert first["ok"] is True and d.coord.state is State.PHASE
    second = await d.handle_request({"cmd": "phase-now"})
    assert second["ok"] is False and "phase" in second["error"]
    assert rig.names().count("window_opened") == 1
    ow = rig.saved().open_window
    assert ow is not None and ow.manual and ow.window_id == first["window_id"]
    assert ow.end - ow.start == WINDOW_S


# --- restarts around a window --------------------------------------------------------------------------


async def test_restart_inside_an_open_window_resumes_its_phase_before_any_tournament(rig: Rig) -> None:
    rig.save(
        SavedState(
            first_seen=T0 - 5000,
            last_opened_id="rel-1799999900",
            last_opened_start=T0 - 100,
            open_window=OpenWindow("rel-1799999900", T0 - 100, T0 + 500),
        )
    )
    d = rig.daemon()
    async with running(d) as log:
        await log.wait_for("results_collapsed")
        await log.wait_for("tournament_started")
    events = rig.events()
    names = [e["event"] for e in events]
    assert names.count("window_opened") == 1
    started = next(e for e in events if e["event"] == "phase_started")
    assert started["window_id"] == "rel-1799999900" and started["catch_up"] is False
    assert names.index("results_collapsed") < names.index("tournament_started")
    assert rig.saved().open_window is None and rig.saved().last_phase is not None


async def test_window_closed_during_downtime_gets_exactly_one_catch_up(rig: Rig) -> None:
    rig.save(
        SavedState(first_seen=T0 - 90000, open_window=OpenWindow("rel-1799900000", T0 - 9000, T0 - 8400))
    )
    d = rig.daemon()
    await d.startup()
    d._resume_open_window()
    assert d.coord.state is State.PHASE
    ow = d.saved.open_window
    assert ow is not None and ow.window_id == "rel-1799900000+catchup" and ow.catch_up and not ow.manual
    assert (ow.start, ow.end) == (T0, T0 + WINDOW_S)
    d._resume_open_window()  # a second look finds the catch-up already open: nothing more opens
    assert rig.names().count("window_opened") == 1
    assert rig.saved().open_window == ow  # persisted: a crash now resumes the catch-up, not a new one


async def test_manual_window_closed_during_downtime_is_not_caught_up(rig: Rig) -> None:
    rig.save(
        SavedState(
            first_seen=T0 - 90000, open_window=OpenWindow("manual-1", T0 - 9000, T0 - 8400, manual=True)
        )
    )
    d = rig.daemon()
    await d.startup()
    d._resume_open_window()
    assert d.coord.state is State.STARTING
    assert d.saved.open_window is None
    assert "window_opened" not in rig.names()


# --- PHASE results on disk -------------------------------------------------------------------------------


def results_for(run_id: str) -> PhaseResults:
    return PhaseResults(
        timestamp="2027-01-15T03:00:00+00:00",
        run_id=run_id,
        qtime=Qtime(1, 4, 1),
        domains_tested=[DOMAIN],
        metrics={
            DOMAIN: DomainMetrics(
                fitness=0.02, ci95=(0.01, 0.03), baseline={"stress": {THROUGHPUT: 1100.0}}, insights=["ok"]
            )
        },
        promoted_variants=[],
        flagged_variants=[],
        search_space_recommendations={
            DOMAIN: {"level": Recommendation(action="narrow", reason="best near the top", low=40, high=100)}
        },
        complete=True,
    )


async def test_results_on_disk_are_collapsed_once_across_restarts(rig: Rig) -> None:
    write_results(rig.state_dir / "phase", results_for("phase-disk-1"), now=T0 - 60)
    first = rig.daemon()
    await first.startup()
    with anyio.fail_after(WAIT_S):
        await first.shutdown()
    rig.release(first)  # the restart below takes the same state-dir lock
    collapsed = [e for e in rig.events() if e["event"] == "results_collapsed"]
    assert len(collapsed) == 1 and collapsed[0]["from_disk"] is True
    assert collapsed[0]["changes"]["run_id"] == "phase-disk-1"
    assert collapsed[0]["changes"]["domains"][DOMAIN]["baseline_regimes"] == ["stress"]
    assert rig.saved().last_collapsed == "phase-disk-1"
    history = (rig.state_dir / "logs" / "fitness_history.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["kind"] == "phase_baseline" for line in history) == 1

    second = rig.daemon()
    await second.startup()
    assert rig.names().count("results_collapsed") == 1  # the same run_id is never ingested twice
    assert len((rig.state_dir / "logs" / "fitness_history.jsonl").read_text().splitlines()) == len(history)


async def test_malformed_results_on_disk_are_rejected_with_an_event(rig: Rig) -> None:
    run_dir = rig.state_dir / "phase" / "phase-bad"
    run_dir.mkdir(parents=True)
    (run_dir / "phase_results.json").write_text(json.dumps({"schema": "phase_results.v1", "run_id": "x"}))
    (rig.state_dir / "phase" / "latest").symlink_to("phase-bad")
    d = rig.daemon()
    await d.startup()
    rejected = [e for e in rig.events() if e["event"] == "phase_results_rejected"]
    assert len(rejected) == 1
    assert rejected[0]["path"].endswith("/phase_results.json")
    assert rejected[0]["field"] == "timestamp" and "missing" in rejected[0]["problem"]
    assert "results_collapsed" not in rig.names()
    assert d.saved.last_collapsed is None and d.dream.searches[DOMAIN].generation == 0


# --- failures, stop and refusals ---------------------------------------------------------------------------


async def exploding_analysis(req: AnalysisRequest) -> PhaseResults:
    raise RuntimeError(f"analysis of {req.run_id} exploded")


async def test_a_failing_phase_still_resumes_dream(rig: Rig) -> None:
    d = rig.daemon(analyze=exploding_analysis)
    async with running(d) as log:
        await log.wait_for("pacing")
        assert (await ask(d, "phase-now"))["ok"] is True
        await log.wait_for("results_collapsed")
        await log.wait_for("tournament_started", 2)
        assert d.coord.state is State.EVOLVING
    events = rig.events()
    failed = [e for e in events if e["event"] == "phase_failed"]
    assert len(failed) == 1 and "exploded" in failed[0]["error"]
    complete = next(e for e in events if e["event"] == "phase_complete")
    assert complete["results_path"] is None and complete["complete"] is False
    collapsed = next(e for e in events if e["event"] == "results_collapsed")
    assert "exploded" in collapsed["changes"]["error"]
    saved = rig.saved()
    assert saved.open_window is None and saved.last_phase is None
    knobs_restored(rig)


async def test_a_collapse_that_raises_still_resumes_dream(rig: Rig) -> None:
    d = rig.daemon()
    async with running(d) as log:

        def disk_full(results: object, *, source: str) -> dict[str, object]:
            raise OSError(28, "No space left on device")

        d.dream.collapse = disk_full  # type: ignore[method-assign]
        await log.wait_for("pacing")
        assert (await ask(d, "phase-now"))["ok"] is True
        await log.wait_for("results_collapsed")
        await log.wait_for("tournament_started", 2)
        assert d.coord.state is State.EVOLVING
    collapsed = next(e for e in rig.events() if e["event"] == "results_collapsed")
    assert "No space left" in collapsed["changes"]["error"]


async def test_stop_requested_mid_trial_restores_knobs_and_persists_state(rig: Rig) -> None:
    rig.runner.hold_candidates = True
    d = rig.daemon()
    await d.startup()
    async with anyio.create_task_group() as tg:
        tg.start_soon(d.main)
        with anyio.fail_after(WAIT_S):
            await rig.runner.holding.wait()
        assert rig.knob_file.read_text().strip() != str(STOCK_LEVEL)  # a candidate is applied now
        assert list((rig.state_dir / "journal").glob("*.json"))
        assert d.dispatch(StopRequested(reason="operator", now=rig.clock()))
        assert d.coord.state is State.STOPPING
    with anyio.fail_after(WAIT_S):
        await d.shutdown()
    knobs_restored(rig)
    saved = json.loads((rig.state_dir / "state.json").read_text())
    assert DOMAIN in saved["engines"] and saved["first_seen"] == T0
    last = rig.events()[-1]
    assert last["event"] == "stopped" and last["reason"] == "operator"


async def test_dispatch_of_an_event_the_state_does_not_accept_returns_false(rig: Rig) -> None:
    d = rig.daemon()
    await d.startup()
    now = rig.clock()
    states = []
    assert d.dispatch(PhaseComplete(results_path=None, complete=False, now=now)) is False
    states.append(d.coord.state)
    assert d.dispatch(Started(now=now)) is True
    states.append(d.coord.state)
    assert d.dispatch(ResultsCollapsed(now=now)) is False
    assert d.dispatch(Started(now=now)) is False
    states.append(d.coord.state)
    assert states == [State.STARTING, State.EVOLVING, State.EVOLVING] and d.gate.is_open
    assert rig.names() == ["started"]  # refused events leave no trace in events.jsonl


async def test_a_stop_signal_during_start_up_is_replayed_and_ends_cleanly(rig: Rig) -> None:
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        early = EarlyStops().install()
        os.kill(os.getpid(), signal.SIGTERM)  # before any event loop receiver exists: recorded
        d = rig.daemon()
        d.early = early
        with anyio.fail_after(WAIT_S):
            rc = await d.serve()
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    assert rc == 0
    stops = [e for e in rig.events() if e["event"] == "stop_requested"]
    assert [e["reason"] for e in stops] == ["SIGTERM"]
    assert rig.names()[-1] == "stopped"
    knobs_restored(rig)
