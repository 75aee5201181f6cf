"""The anyio driver: the only place that owns tasks, signals, sockets and clocks.

Theory of operation
-------------------
Lifecycle like uvicorn's: the constructor only stores its inputs; :meth:`Daemon.startup` does the
I/O (state-dir lock, saved state, knob restore after a crash, stress-ng, sensors, domains, the
collapse of results left on disk, the manifest); :meth:`Daemon.main` runs one task group — D-REAM,
PHASE, the control socket and the window timer — until the coordinator says ``Shutdown``;
:meth:`Daemon.shutdown` stops workloads, restores knobs and persists, shielded from cancellation.
:meth:`Daemon.serve` strings them together under the signal receiver.

The tasks never poll. Each turns what it observes into an *event* for the pure ``Coordinator``
(``core/coordinator.py``) through :meth:`Daemon.dispatch`, which carries out every command it gets
back under one ``match``:

* ``ResumeDream`` / ``PauseDream`` open and close D-REAM's gate; D-REAM looks at it only between
  tournaments, so a window opening mid-tournament drains the tournament instead of cutting it.
* ``StartPhase`` hands the window to the PHASE task and persists it as the open window.
* ``CollapseResults`` ingests PHASE's results into D-REAM (``DreamLoop.collapse``); the
  ``ResultsCollapsed`` that follows resumes D-REAM in the same event-loop turn.
* ``Shutdown`` cancels the task group; ``ForceExit`` (a second SIGINT) exits at once.

D-REAM and PHASE never see this object: they get a gate, an event log, a trial runner, paths and a
clock. Blocking work (knob writes, discovery probes, the PHASE analysis) runs off the loop.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, assert_never

import anyio
import anyio.abc
import msgspec
from anyio.abc import TaskStatus
from loguru import logger

from kloros_orchestrator import __version__
from kloros_orchestrator.config import LoadedConfig
from kloros_orchestrator.core.coordinator import (
    CollapseResults,
    Command,
    Coordinator,
    Event,
    ForceExit,
    PauseDream,
    PhaseComplete,
    RecordEvent,
    ResultsCollapsed,
    ResumeDream,
    Shutdown,
    Started,
    StartPhase,
    State,
    StopRequested,
    WindowOpened,
)
from kloros_orchestrator.core.schedule import Schedule, Window
from kloros_orchestrator.errors import SchemaError, state_dir_error
from kloros_orchestrator.host.store import HostStore
from kloros_orchestrator.measure.sensors import Sensors, discover_sensors
from kloros_orchestrator.model import REGIMES, TrialResult
from kloros_orchestrator.phase.results import PhaseResults, latest_results, load_results
from kloros_orchestrator.runtime.control import serve_control
from kloros_orchestrator.runtime.dream import DreamLoop, DreamSettings
from kloros_orchestrator.runtime.evaluate import Evaluator
from kloros_orchestrator.runtime.fleet_work import dream_factory, fleet_status
from kloros_orchestrator.runtime.host_keeper import HOST_COMMANDS, HostKeeper
from kloros_orchestrator.runtime.metrics import MetricsFile
from kloros_orchestrator.runtime.notify import Notifier, keep_watchdog
from kloros_orchestrator.runtime.phase_runner import (
    Analyzer,
    PhaseOutcome,
    PhaseRunner,
    PhaseSettings,
    analyze_in_worker,
)
from kloros_orchestrator.runtime.ports import DreamGate, EventLog, TrialRunner, jsonable
from kloros_orchestrator.runtime.processes import is_subreaper, set_child_subreaper
from kloros_orchestrator.runtime.records import LastPhase, OpenWindow, Progress, iso, save_state
from kloros_orchestrator.runtime.signals import receive_stop_signals
from kloros_orchestrator.runtime.startup import (
    host_timezone,
    manifest_fields,
    open_domains,
    open_state_dir,
    window_after_restart,
    write_run_manifest,
)
from kloros_orchestrator.runtime.status import metrics_status, window_status, work_status
from kloros_orchestrator.runtime.workloads import (
    become_subreaper,
    find_stress_ng,
    kill_all_running,
    kill_all_running_now,
    stress_ng_version,
)
from kloros_orchestrator.spica.registry import available_domains, open_journal
from kloros_orchestrator.stop_signals import EarlyStops
from kloros_orchestrator.store import StatePaths, append_jsonl

WINDOW_RECHECK_S = 600.0  # re-evaluate the calendar at least this often (clock jumps, DST)


class Daemon:
    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        once: bool = False,
        clock: Callable[[], float] = time.time,
        analyze: Analyzer = analyze_in_worker,
        runner: TrialRunner | None = None,
        hold_signals: bool = False,
        early: EarlyStops | None = None,
    ) -> None:
        """Stores its inputs; nothing here touches the host. ``runner`` replaces the real
        ``Evaluator`` (tests); ``analyze`` the PHASE analysis worker; ``hold_signals`` keeps the
        stop signals ignored after the daemon stopped (the process is about to exit: the CLI)."""
        self.loaded = loaded
        self.cfg = loaded.config
        self.once = once
        self.clock = clock
        self.analyze = analyze
        self._runner = runner
        self.hold_signals = hold_signals
        self.early = early  # stop signals recorded before the loop ran (replayed by _signals)
        self.paths = StatePaths(loaded.state_dir)
        self.run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{os.getpid()}"
        self.coord = Coordinator()
        self.gate = DreamGate()
        self.progress = Progress()
        self.events = EventLog(self.paths.events, clock)
        self.notifier = Notifier.from_env()
        self.stop_reason: str | None = None
        self._phase_request = anyio.Event()
        self._window_kick = anyio.Event()
        self._pending_window: StartPhase | None = None
        self._phase_outcome: PhaseOutcome | None = None
        self._phase_error: str | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._lock_fd: int | None = None
        self.host_lock = anyio.Lock()  # held by a tournament or a PHASE window: no config change then

    # --- start-up ---------------------------------------------------------------------------------

    async def startup(self) -> None:
        """Everything that touches the host before the loop runs; raises KlorosError when it cannot
        (a disk error at start-up is one line naming the path: exit 2, or 1 when it may pass — a
        full disk — so that systemd restarts the daemon once it has)."""
        try:
            await self._startup()
        except OSError as e:
            raise state_dir_error(e, self.paths.root) from e

    async def _startup(self) -> None:
        self.started_at = self.clock()
        self._lock_fd, self.saved = open_state_dir(
            self.paths, socket_dir=self.loaded.socket_path.parent, events=self.events, now=self.started_at
        )
        # Orphans of a workload (a stressor that daemonises) are re-parented to us, so every process
        # a trial starts can be found and killed when the trial ends.
        self._was_subreaper = is_subreaper()
        self.subreaper = become_subreaper()
        logger.info(
            "kloros-orchestrator {} starting (pid {}, state {})", __version__, os.getpid(), self.paths.root
        )
        # Restore targets come from the declared knobs of every registered domain, never from the
        # journal's own contents (entries are data: they only supply the value).
        self.journal = await anyio.to_thread.run_sync(
            partial(
                open_journal,
                self.paths.journal,
                sysfs_root=self.loaded.sysfs_root,
                scratch_root=self.paths.scratch,
                domain_options=self.cfg.domain_options,
            )
        )
        for p in await anyio.to_thread.run_sync(self.journal.restore_all):
            logger.error("knob restore at start-up: {}", p)
        self.stress_ng = find_stress_ng()
        self.stress_ng_version = await anyio.to_thread.run_sync(stress_ng_version, self.stress_ng)
        self.sensors: Sensors = await anyio.to_thread.run_sync(discover_sensors, self.loaded.sysfs_root)
        tf = self.cfg.metrics.textfile
        self.metrics, self._busy_s = (MetricsFile(Path(tf).absolute()) if tf else None), 0.0
        self.evaluator: TrialRunner = self._runner or Evaluator(
            workdir=self.paths.tmp,
            sensors=self.sensors,
            caps=self.loaded.caps,
            exe=self.stress_ng,
            on_spawn=lambda pid: self.notifier.status(f"{self.coord.state}: workload pid {pid} running"),
            on_trial=self._log_trial,
            outside_cpu_limit=self.cfg.dream.contamination.outside_cpu,
        )
        self.schedule = Schedule(
            self.cfg.phase.window.start,
            self.loaded.window_duration_s,
            host_timezone(self.cfg.timezone),
            origin=self.started_at,
        )
        domains = await anyio.to_thread.run_sync(open_domains, self.loaded, self.journal, self.paths)
        self._known_domains = await anyio.to_thread.run_sync(available_domains)
        self.dream = self._make_dream(domains)
        self.keeper = HostKeeper(
            store=HostStore(self.paths), sysfs_root=self.loaded.sysfs_root, mode=self.cfg.promotion.mode,
            events=self.events, lock=self.host_lock, set_current=self.dream.set_current,
            on_status=lambda text: self.notifier.status(f"{self.coord.state}: {text}"),
        )  # fmt: skip
        self.dream.bind_keeper(self.keeper)  # in a fleet, adoption follows the fleet's PHASE verdict
        current = await anyio.to_thread.run_sync(self.keeper.startup, domains)
        self.dream.restore(self.saved.engines, self.saved.domain_index, current)
        self.phase = self._make_phase()
        if not self.once:
            self._collapse_from_disk()
        write_run_manifest(
            self.paths.manifests / f"{self.run_id}.json",
            run_id=self.run_id,
            started_at=iso(self.started_at),
            fields=manifest_fields(self.loaded, self.stress_ng, self.stress_ng_version),
            domains=self.dream.domain_status(self._known_domains),
            sensors_missing=dict(self.sensors.missing),
        )

    def _make_dream(self, domains: dict[str, Any]) -> DreamLoop:
        return dream_factory(self.loaded, self.stress_ng, self.stress_ng_version)(  # fleet: a shared study
            DreamSettings(
                dream=self.cfg.dream,
                seed=self.cfg.seed,
                n_boot=self.cfg.bootstrap_samples,
                regimes={n: tuple(r for r in REGIMES if r in rs) for n, rs in self.loaded.regimes.items()},
            ),
            domains=domains,
            evaluator=self.evaluator,
            paths=self.paths,
            events=self.events,
            gate=self.gate,
            progress=self.progress,
            report=self.dispatch,
            checkpoint=self.save_state,
            time_to_window=self.time_to_window,
            clock=self.clock,
            run_id=self.run_id,
            stress_ng_version=self.stress_ng_version,
            on_status=lambda text: self.notifier.status(f"{self.coord.state}: {text}"),
            host_lock=self.host_lock,
            before_tournament=lambda: self.keeper.settle(),
        )

    def _make_phase(self) -> PhaseRunner:
        seconds = {
            n: {r: float(s.duration) for r, s in specs.items()} for n, specs in self.loaded.regimes.items()
        }
        return PhaseRunner(
            PhaseSettings(
                phase=self.cfg.phase,
                seed=self.cfg.seed,
                n_boot=self.cfg.bootstrap_samples,
                regime_seconds=seconds,
                contamination=self.cfg.dream.contamination,
            ),
            evaluator=self.evaluator,
            phase_dir=self.paths.phase,
            events=self.events,
            clock=self.clock,
            analyze=self.analyze,
            on_status=lambda text: self.notifier.status(f"{self.coord.state}: {text}"),
        )

    def _collapse_from_disk(self) -> None:
        """Ingest the latest PHASE results if this state has not yet (validated first)."""
        path = latest_results(self.paths.phase)
        if path is None:
            return
        try:
            results = load_results(path)
        except SchemaError as e:
            logger.error("PHASE results rejected, D-REAM continues on its own state: {}", e)
            self.events.record("phase_results_rejected", path=str(path), field=e.field, problem=e.problem)
            return
        if results.run_id == self.saved.last_collapsed:
            return
        changes = self._ingest(results, str(path))
        self.events.record("results_collapsed", changes=changes, from_disk=True)

    def _ingest(self, results: PhaseResults, source: str) -> dict[str, Any]:
        changes = self.dream.collapse(results, source=source)
        self.saved.last_collapsed = results.run_id
        self.save_state()
        self.keeper.collapsed(results)  # pending promotions; adopted at once in `promotion: auto`
        return changes

    # --- persistence and records ------------------------------------------------------------------

    def save_state(self) -> None:
        """Persist; a failing disk is logged, never allowed to leave the coordinator half-way."""
        self.saved.engines = self.dream.snapshot()
        self.saved.domain_index = self.dream.domain_index
        save_state(self.paths.runtime_state, self.saved)

    def _log_trial(self, tr: TrialResult) -> None:
        """Every trial, failed ones included, in ``logs/trials.jsonl`` (audit trail) and the metrics."""
        append_jsonl(self.paths.trials, {"ts": self.clock(), "state": str(self.coord.state), **jsonable(
            {f: getattr(tr, f) for f in tr.__struct_fields__})})  # fmt: skip
        self._busy_s += tr.wall_s
        if self.metrics is not None:
            self.metrics.trial(tr)
            self._write_metrics()

    def _write_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.write(metrics_status(self.status(), self.keeper.results, self._busy_s))

    # --- events and commands ----------------------------------------------------------------------

    def dispatch(self, event: Event) -> bool:
        """Feed the coordinator and carry out its commands (and the events they lead to, in order).

        False when the current state does not accept ``event`` (it is then ignored).
        """
        if not self.coord.accepts(type(event)):
            logger.debug("event {} ignored in state {}", event.name, self.coord.state)
            return False
        pending: list[Event] = [event]
        while pending:
            ev = pending.pop(0)
            before = self.coord.state
            for cmd in self.coord.handle(ev):
                follow = self._execute(cmd)
                if follow is not None:
                    pending.append(follow)
            if self.coord.state != before:
                logger.info("state {} -> {} on {}", before, self.coord.state, ev.name)
                self.notifier.status(f"{self.coord.state}: {self._status_line()}")
        self._write_metrics()
        return True

    def _execute(self, cmd: Command) -> Event | None:
        """Carry out one command; returns the event it leads to, if any."""
        match cmd:
            case RecordEvent(event_name=name, fields=fields):
                self.events.record(
                    name, ts=fields.get("ts", self.clock()), **{k: v for k, v in fields.items() if k != "ts"}
                )
            case ResumeDream():
                self.gate.open()
                self._window_kick.set()  # the calendar may have a window due now
            case PauseDream():
                self.gate.close()  # the running tournament finishes; no new one starts
            case StartPhase():
                self._pending_window = cmd
                self._phase_request.set()  # wake PHASE first: nothing below may leave it asleep
                self.saved.open_window = OpenWindow(
                    cmd.window_id, cmd.start, cmd.end, cmd.catch_up, cmd.manual
                )
                self.save_state()
            case CollapseResults():
                return self._collapse(cmd)
            case Shutdown(reason=reason):
                self.stop_reason = reason
                self.notifier.stopping()
                if self._tg is not None:
                    self._tg.cancel_scope.cancel()
            case ForceExit():
                logger.warning("second SIGINT: forcing exit")
                kill_all_running_now()
                self.journal.restore_all()
                os._exit(130)
            case _:
                assert_never(cmd)
        return None

    def _collapse(self, cmd: CollapseResults) -> ResultsCollapsed:
        outcome, self._phase_outcome = self._phase_outcome, None
        if outcome is None or cmd.results_path is None or str(outcome.path) != cmd.results_path:
            return ResultsCollapsed(now=self.clock(), changes={"error": self._phase_error or "no results"})
        try:
            changes = self._ingest(outcome.results, cmd.results_path)
        except Exception as e:
            # A full disk or a bug must not leave D-REAM paused for good: report it and resume.
            logger.exception("collapse of {} failed", cmd.results_path)
            changes = {"error": repr(e)[:500]}
        return ResultsCollapsed(now=self.clock(), changes=changes)

    # --- windows ----------------------------------------------------------------------------------

    def time_to_window(self) -> float | None:
        if self.once:
            return None
        now = self.clock()
        return max(0.0, self.schedule.next_start(now, self.saved.last_opened_start) - now)

    def open_window(self, w: Window, *, manual: bool = False) -> bool:
        manual = manual or w.manual
        if not self.dispatch(
            WindowOpened(
                window_id=w.window_id,
                start=w.start,
                end=w.end,
                catch_up=w.catch_up,
                manual=manual,
                now=self.clock(),
            )
        ):
            return False
        if not manual:
            # Scheduled or catch-up: the high-water mark the schedule uses so no window opens twice.
            self.saved.last_opened_start = w.start
            self.saved.last_opened_id = w.window_id
        self.save_state()
        return True

    async def _window_timer(self) -> None:
        while True:
            delay = WINDOW_RECHECK_S  # in a window: the collapse kicks us when D-REAM resumes
            if self.coord.window_may_open:
                s = self.saved
                w = self.schedule.due(self.clock(), s.last_opened_id, s.last_opened_start, s.first_seen)
                if w is not None:
                    logger.info("PHASE window {} opens ({} → {})", w.window_id, iso(w.start), iso(w.end))
                    self.open_window(w)
                if self.coord.window_may_open:
                    nxt = self.schedule.next_start(self.clock(), self.saved.last_opened_start)
                    delay = min(WINDOW_RECHECK_S, max(0.05, nxt - self.clock()))
            self._window_kick = anyio.Event()
            with anyio.move_on_after(delay):
                await self._window_kick.wait()

    def _resume_open_window(self) -> None:
        """A restart inside a window whose PHASE never completed resumes it; never runs one twice."""
        event = window_after_restart(self.saved, self.clock(), self.schedule.duration_s)
        if event is not None:
            self.dispatch(event)

    # --- status and requests ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "state": str(self.coord.state),
            **work_status(self.progress, self.evaluator.counters),
            "next_window": window_status(self.saved, self.schedule, now),
            "last_phase": msgspec.to_builtins(self.saved.last_phase),
            "domains": self.dream.domain_status(self._known_domains),
            "pid": os.getpid(),
            "uptime_s": round(now - self.started_at, 3),
            "version": __version__,
            "sensors": {"missing": dict(self.sensors.missing)},
            "stress_ng": self.stress_ng_version,
            "phase": self.phase.progress,
            "host": self.keeper.status(),
            **fleet_status(self.dream),
        }

    def _status_line(self) -> str:
        return f"domain={self.progress.domain or '-'} gen={self.progress.generation}"

    async def handle_request(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        if cmd == "phase-now":
            if self.once:
                return {"ok": False, "error": "running with --once: no PHASE windows"}
            w = self.schedule.manual(self.clock())
            if not self.coord.window_may_open or not self.open_window(w, manual=True):
                return {"ok": False, "error": f"cannot open a window in state {self.coord.state}"}
            return {"ok": True, "message": f"PHASE window {w.window_id} opened", "window_id": w.window_id}
        if cmd in HOST_COMMANDS:
            return await self.keeper.request(req)
        known = ", ".join(("status", "phase-now", *HOST_COMMANDS))
        return {"ok": False, "error": f"unknown command {cmd!r} (known: {known})"}

    # --- tasks ------------------------------------------------------------------------------------

    async def _phase_task(self) -> None:
        while True:
            await self._phase_request.wait()
            self._phase_request = anyio.Event()
            w, self._pending_window = self._pending_window, None
            if w is not None:
                await self._run_phase(w)

    async def _run_phase(self, w: StartPhase) -> None:
        self._phase_error = None
        try:
            async with self.host_lock:  # a configuration change waits for the window's end
                await self.keeper.settle()
                subjects = self.dream.phase_subjects(self.cfg.phase.max_variants)
                outcome = await self.phase.run_window(w, subjects)
        except Exception as e:
            # Never leave D-REAM paused behind a failed PHASE: report it; the collapse resumes D-REAM.
            logger.exception("PHASE for window {} failed", w.window_id)
            self._phase_error = repr(e)[:500]
            self.saved.open_window = None
            self.save_state()
            self.events.record("phase_failed", window_id=w.window_id, error=self._phase_error)
            self.dispatch(PhaseComplete(results_path=None, complete=False, now=self.clock()))
            return
        r = outcome.results
        self.dream.phase_measured(outcome.data, run_id=r.run_id, finished_at=outcome.completed_at)
        self.saved.last_phase = LastPhase(
            completed_at=iso(outcome.completed_at) or "", results=str(outcome.path), window_id=w.window_id,
            complete=r.complete, run_id=r.run_id,
        )  # fmt: skip
        self.saved.open_window = None
        self.save_state()
        self._phase_outcome = outcome
        self.notifier.status(f"PHASE {r.run_id} complete: {outcome.path}")
        self.dispatch(
            PhaseComplete(results_path=str(outcome.path), complete=r.complete, now=outcome.completed_at)
        )

    async def _dream_task(self) -> None:
        await self.dream.run(once=self.once)
        if self.once:
            self.dispatch(StopRequested(reason="--once pass complete", now=self.clock()))

    async def _serve_socket(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await serve_control(self.loaded.socket_path, self.handle_request, task_status=task_status)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        # Once stopping, more signals are expected (impatient operators): quietly.
        level = "DEBUG" if self.coord.state is State.STOPPING else "INFO"
        logger.log(level, "{} received in state {}", name, self.coord.state)
        self.dispatch(StopRequested(reason=name, interrupt=signum == signal.SIGINT, now=self.clock()))

    async def _signals(self) -> None:
        await receive_stop_signals(self._on_signal, early=self.early, hold_signals=self.hold_signals)

    # --- lifecycle --------------------------------------------------------------------------------

    async def main(self) -> None:
        """The task group, until the coordinator says ``Shutdown`` (or ``--once`` is done)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(keep_watchdog, self.notifier)  # WATCHDOG=1 while this loop turns
            if self.stop_reason is not None:  # a stop signal arrived during start-up
                return
            await tg.start(self._serve_socket)
            self.keeper.bind(lambda: tg.start_soon(self.keeper.settle_when_free))
            self.dispatch(Started(now=self.clock()))
            self.notifier.ready()
            if not self.once:
                tg.start_soon(self._window_timer)
                tg.start_soon(self._phase_task)
                self._resume_open_window()
            tg.start_soon(self._dream_task)

    async def shutdown(self) -> None:
        """Stop workloads, restore every knob, persist; shielded so a cancellation cannot cut it."""
        with anyio.CancelScope(shield=True):
            await kill_all_running(1.0)
            for p in await anyio.to_thread.run_sync(self.journal.restore_all):
                logger.error("knob restore at stop: {}", p)
            try:
                self.save_state()
                self.events.record("stopped", reason=self.stop_reason or "done")
            except OSError as e:  # a full disk must not turn a clean stop into a traceback
                logger.error("cannot record the stop: {}", e)
            logger.info("stopped ({})", self.stop_reason or "done")
            self._write_metrics()
            self.release_lock()
            set_child_subreaper(self._was_subreaper)  # no workload is left: as we found the process

    def release_lock(self) -> None:
        """Let another daemon use this state_dir (idempotent; the process's exit releases it too)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    async def serve(self) -> int:
        await self.startup()
        # The signal receiver lives in an outer group that outlasts the shutdown: leaving
        # open_signal_receiver restores the default handlers, and a second SIGTERM during the
        # shielded cleanup would then kill us half-way (orphaned stress-ng, no state saved).
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._signals)
            try:
                await self.main()
            finally:
                await self.shutdown()
                outer.cancel_scope.cancel()
        return 0


def run_daemon(loaded: LoadedConfig, *, once: bool = False, early: EarlyStops | None = None) -> int:
    return anyio.run(Daemon(loaded, once=once, hold_signals=True, early=early).serve)


__all__ = ["Daemon", "run_daemon"]
