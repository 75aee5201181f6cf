"""The anyio driver: the only place that owns tasks, signals, sockets and clocks.

Theory of operation
-------------------
One task group runs five tasks: D-REAM, PHASE, the control socket, the signal receiver and the
window timer. They never poll. Each turns what it observes into an *event* for the pure
``Coordinator`` (``core/coordinator.py``) through ``Daemon.dispatch``, which carries out the
returned commands:

* ``ResumeDream`` / ``PauseDream`` open and close the D-REAM gate (an ``anyio.Event`` made anew
  for every pause, since anyio events are one-shot). D-REAM checks the gate only between
  tournaments, so a window opening mid-tournament drains it instead of cutting it.
* ``StartPhase`` hands the window to the PHASE task (an event it waits on).
* ``CollapseResults`` is carried out by the PHASE task right after it reports completion; the
  ``ResultsCollapsed`` it then dispatches resumes D-REAM in the same event-loop turn.
* ``Shutdown`` cancels the task group. Cleanup that must survive cancellation (killing stress-ng
  groups, restoring knobs, persisting state, removing the socket) runs in shielded scopes.

Sleeps are deadlines (next window start, pacing interval) raced against events, never loops
that wake to look.
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskStatus
from loguru import logger

from kloros_orchestrator import __version__
from kloros_orchestrator.config import LoadedConfig
from kloros_orchestrator.core.coordinator import (
    CollapseResults,
    Coordinator,
    Event,
    PauseDream,
    RecordEvent,
    ResumeDream,
    Shutdown,
    Started,
    StartPhase,
    State,
    StopRequested,
    WindowOpened,
)
from kloros_orchestrator.core.schedule import Schedule, Window
from kloros_orchestrator.errors import KlorosError
from kloros_orchestrator.measure.sensors import discover_sensors
from kloros_orchestrator.runtime.control import serve_control
from kloros_orchestrator.runtime.evaluate import Evaluator
from kloros_orchestrator.runtime.notify import Notifier
from kloros_orchestrator.runtime.workloads import find_stress_ng, kill_all_running, stress_ng_version
from kloros_orchestrator.spica.knobs import KnobJournal
from kloros_orchestrator.store import StatePaths, append_jsonl, atomic_write_json, read_json

WINDOW_RECHECK_S = 600.0  # re-evaluate the calendar at least this often (clock jumps, DST)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat()


class PersistentState(msgspec.Struct):
    """What survives a restart (``state_dir/state.json``)."""

    first_seen: float
    last_opened_id: str | None = None
    last_opened_start: float | None = None
    open_window: dict[str, Any] | None = None  # a window opened but whose PHASE has not completed
    last_phase: dict[str, Any] | None = None
    domain_index: int = 0
    last_collapsed: str | None = None  # run_id of the last PHASE results ingested by D-REAM
    engines: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)


@dataclass
class StatusView:
    domain: str | None = None
    generation: int = 0
    tournament_done: int = 0
    tournament_total: int = 0
    pacing: dict[str, Any] = field(default_factory=lambda: {"last_sleep_s": None, "reason": "not paced yet"})
    tournaments: int = 0


class Daemon:
    def __init__(self, loaded: LoadedConfig, *, once: bool = False, clock: Callable[[], float] = time.time):
        self.loaded = loaded
        self.cfg = loaded.config
        self.once = once
        self.clock = clock
        self.started_at = clock()
        self.paths = StatePaths(loaded.state_dir)
        self.paths.ensure()
        self._lock_fd = _lock_state_dir(self.paths.root)  # before touching the journal or state
        self.coord = Coordinator()
        self.notifier = Notifier.from_env()
        self.status_view = StatusView()
        self.state = self._load_state()
        self.journal = KnobJournal(self.paths.journal)
        self.stress_ng = find_stress_ng()
        self.stress_ng_version = stress_ng_version(self.stress_ng)
        self.sensors = discover_sensors(loaded.sysfs_root)
        self.evaluator = Evaluator(
            workdir=self.paths.tmp,
            sensors=self.sensors,
            caps=loaded.caps,
            exe=self.stress_ng,
            on_spawn=lambda pid: self.notifier.status(f"{self.coord.state}: workload pid {pid} running"),
            on_trial=self._log_trial,
        )
        self.schedule = Schedule(
            self.cfg.phase.window.start,
            loaded.window_duration_s,
            _timezone(self.cfg.timezone),
            origin=self.started_at,
        )
        self._next_resume = anyio.Event()  # set (and replaced) on every ResumeDream
        self._phase_request = anyio.Event()
        self._window_kick = anyio.Event()
        self.pending_window: StartPhase | None = None
        self.stop_reason: str | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._sigint_count = 0
        # Built lazily so importing the driver stays cheap; see runtime/dream.py and runtime/phase.py.
        from kloros_orchestrator.runtime.dream import DreamLoop
        from kloros_orchestrator.runtime.phase import PhaseRunner

        self.dream = DreamLoop(self)
        self.phase = PhaseRunner(self)

    # --- persistence ------------------------------------------------------------------------------

    def _load_state(self) -> PersistentState:
        path = self.paths.runtime_state
        if path.exists():
            try:
                return msgspec.convert(read_json(path), type=PersistentState)
            except (ValueError, msgspec.ValidationError) as e:
                logger.error("state file {} is unreadable ({}); starting from a fresh state", path, e)
        return PersistentState(first_seen=self.started_at)

    def save_state(self) -> None:
        """Persist; a failing disk is logged, never allowed to leave the coordinator half-way."""
        self.state.engines = self.dream.engine_states()
        try:
            atomic_write_json(self.paths.runtime_state, self.state)
        except OSError as e:
            logger.error(
                "cannot persist {}: {} (continuing; a restart would lose recent progress)",
                self.paths.runtime_state,
                e,
            )

    # --- events -----------------------------------------------------------------------------------

    def record(self, event: str, **fields: Any) -> None:
        """Append one structured event to ``logs/events.jsonl`` (ts = Unix seconds, float)."""
        append_jsonl(self.paths.events, {"ts": self.clock(), "event": event, **fields})

    def _log_trial(self, tr: Any) -> None:
        """Every trial, failed ones included, in ``logs/trials.jsonl`` (audit trail)."""
        append_jsonl(
            self.paths.trials,
            {
                "ts": self.clock(),
                "state": str(self.coord.state),
                **_jsonable({f: getattr(tr, f) for f in tr.__struct_fields__}),
            },
        )

    def dispatch(self, event: Event) -> bool:
        """Feed the coordinator; carry out its commands. False if the state does not accept it."""
        if not self.coord.accepts(type(event)):
            logger.debug("event {} ignored in state {}", event.name, self.coord.state)
            return False
        before = self.coord.state
        for cmd in self.coord.handle(event):
            self._execute(cmd)
        if self.coord.state != before:
            logger.info("state {} -> {} on {}", before, self.coord.state, event.name)
            self.notifier.status(f"{self.coord.state}: {self._status_line()}")
        return True

    def _execute(self, cmd: Any) -> None:
        if isinstance(cmd, RecordEvent):
            fields = {k: v for k, v in cmd.fields.items() if k != "ts"}
            append_jsonl(
                self.paths.events,
                {"ts": cmd.fields.get("ts", self.clock()), "event": cmd.event_name, **_jsonable(fields)},
            )
        elif isinstance(cmd, ResumeDream):
            # anyio events are one-shot: wake everyone waiting on this one, arm a fresh one.
            woken, self._next_resume = self._next_resume, anyio.Event()
            woken.set()
        elif isinstance(cmd, PauseDream):
            pass  # D-REAM checks the state between tournaments; the running one finishes
        elif isinstance(cmd, StartPhase):
            self.pending_window = cmd
            self._phase_request.set()  # wake PHASE first: nothing below may leave it asleep
            self.state.open_window = {
                "window_id": cmd.window_id,
                "start": cmd.start,
                "end": cmd.end,
                "catch_up": cmd.catch_up,
                "manual": cmd.manual,
            }
            self.save_state()
        elif isinstance(cmd, CollapseResults):
            pass  # carried out by the PHASE task right after it dispatched PhaseComplete
        elif isinstance(cmd, Shutdown):
            self.stop_reason = cmd.reason
            self.notifier.stopping()
            if self._tg is not None:
                self._tg.cancel_scope.cancel()

    # --- gates used by the D-REAM task -----------------------------------------------------------

    @property
    def dream_allowed(self) -> bool:
        return self.coord.state == State.EVOLVING

    async def wait_dream_allowed(self) -> None:
        """Return when D-REAM may start a tournament (at once if it may now)."""
        while not self.dream_allowed:
            await self._next_resume.wait()

    async def pace(self, seconds: float) -> None:
        """Sleep up to ``seconds``; D-REAM being resumed after a PHASE ends the sleep at once."""
        resumed = self._next_resume
        with anyio.move_on_after(max(0.0, seconds)):
            await resumed.wait()

    async def phase_requested(self) -> None:
        """Return once a window has been handed to PHASE (``StartPhase``); re-arms the request."""
        await self._phase_request.wait()
        self._phase_request = anyio.Event()

    # --- windows ----------------------------------------------------------------------------------

    def time_to_window(self) -> float | None:
        if self.once:
            return None
        now = self.clock()
        return max(0.0, self.schedule.next_start(now, self.state.last_opened_start) - now)

    def open_window(self, w: Window, *, manual: bool = False) -> bool:
        ev = WindowOpened(
            now=self.clock(),
            window_id=w.window_id,
            start=w.start,
            end=w.end,
            catch_up=w.catch_up,
            manual=manual or w.manual,
        )
        if not self.dispatch(ev):
            return False
        if not (manual or w.manual):
            # Scheduled or catch-up: the high-water mark the schedule uses so no window opens twice.
            self.state.last_opened_start = w.start
            self.state.last_opened_id = w.window_id
        self.save_state()
        self._window_kick.set()
        return True

    async def _window_timer(self) -> None:
        while True:
            now = self.clock()
            if self.coord.accepts(WindowOpened) and self.coord.state in (State.EVOLVING, State.STARTING):
                w = self.schedule.due(
                    now, self.state.last_opened_id, self.state.last_opened_start, self.state.first_seen
                )
                if w is not None:
                    logger.info("PHASE window {} opens ({} → {})", w.window_id, iso(w.start), iso(w.end))
                    self.open_window(w)
            if self.coord.state in (State.EVOLVING, State.STARTING):
                nxt = self.schedule.next_start(self.clock(), self.state.last_opened_start)
                delay = min(WINDOW_RECHECK_S, max(0.05, nxt - self.clock()))
            else:
                delay = WINDOW_RECHECK_S  # in a window: the collapse kicks us when D-REAM resumes
            self._window_kick = anyio.Event()
            with anyio.move_on_after(delay):
                await self._window_kick.wait()

    def kick_windows(self) -> None:
        self._window_kick.set()

    # --- status -----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = self.clock()
        nw = self.schedule.next_window(now, self.state.last_opened_start)
        if self.state.open_window is not None:
            nw_dict = {
                "start": iso(self.state.open_window["start"]),
                "end": iso(self.state.open_window["end"]),
                "open": True,
                "window_id": self.state.open_window["window_id"],
            }
        else:
            nw_dict = {"start": iso(nw.start), "end": iso(nw.end), "open": False, "window_id": nw.window_id}
        sv = self.status_view
        return {
            "state": str(self.coord.state),
            "domain": sv.domain,
            "generation": sv.generation,
            "tournament": {"done": sv.tournament_done, "total": sv.tournament_total},
            "next_window": nw_dict,
            "last_phase": self.state.last_phase,
            "pacing": sv.pacing,
            "domains": self.dream.domain_status(),
            "pid": os.getpid(),
            "uptime_s": round(now - self.started_at, 3),
            "version": __version__,
            "counters": {
                "tournaments": sv.tournaments,
                "trials": self.evaluator.counters.trials,
                "failed_trials": self.evaluator.counters.failed_trials,
            },
            "sensors": {"missing": dict(self.sensors.missing)},
            "stress_ng": self.stress_ng_version,
            "phase": self.phase.progress(),
        }

    def _status_line(self) -> str:
        sv = self.status_view
        return f"domain={sv.domain or '-'} gen={sv.generation} trials={self.evaluator.counters.trials}"

    async def handle_request(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        if cmd == "phase-now":
            if self.once:
                return {"ok": False, "error": "running with --once: no PHASE windows"}
            if not self.coord.accepts(WindowOpened) or self.coord.state == State.STOPPING:
                return {"ok": False, "error": f"cannot open a window in state {self.coord.state}"}
            w = self.schedule.manual(self.clock())
            if not self.open_window(w, manual=True):
                return {"ok": False, "error": f"cannot open a window in state {self.coord.state}"}
            return {"ok": True, "message": f"PHASE window {w.window_id} opened", "window_id": w.window_id}
        return {"ok": False, "error": f"unknown command {cmd!r} (known: status, phase-now)"}

    # --- signals ----------------------------------------------------------------------------------

    async def _signals(self) -> None:
        # Signals can only be received in the main thread; open_signal_receiver replaces handlers.
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGINT:
                    self._sigint_count += 1
                    if self._sigint_count >= 2:
                        logger.warning("second SIGINT: forcing exit")
                        self._force_exit()
                if self.coord.state == State.STOPPING:
                    logger.info("{} received: already stopping (a second SIGINT forces)", name)
                    continue
                logger.info("{} received: stopping", name)
                self.dispatch(StopRequested(now=self.clock(), reason=name))

    def _force_exit(self) -> None:
        from kloros_orchestrator.runtime.workloads import kill_all_running_now

        kill_all_running_now()
        self.journal.restore_all()
        os._exit(130)

    # --- lifecycle --------------------------------------------------------------------------------

    async def serve(self) -> int:
        logger.info(
            "kloros-orchestrator {} starting (pid {}, state {})", __version__, os.getpid(), self.paths.root
        )
        problems = self.journal.restore_all()
        for p in problems:
            logger.error("knob restore at start-up: {}", p)
        self.dream.setup()
        if not self.once:
            self.dream.collapse_from_disk()
        self.write_manifest()
        # The signal receiver lives in an outer group that outlasts the shutdown: leaving
        # open_signal_receiver restores the default handlers, and a second SIGTERM during the
        # shielded cleanup would then kill us half-way (orphaned stress-ng, no state saved).
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._signals)
            try:
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    await tg.start(self._serve_socket)
                    self.dispatch(Started(now=self.clock()))
                    self.notifier.ready()
                    if not self.once:
                        tg.start_soon(self._window_timer)
                        tg.start_soon(self.phase.run_forever)
                        self._resume_open_window()
                    tg.start_soon(self._dream_task)
            finally:
                with anyio.CancelScope(shield=True):
                    await kill_all_running(1.0)
                    for p in self.journal.restore_all():
                        logger.error("knob restore at stop: {}", p)
                    self.save_state()
                    self.record("stopped", reason=self.stop_reason or "done")
                    logger.info("stopped ({})", self.stop_reason or "done")
                outer.cancel_scope.cancel()
        return 0

    def _resume_open_window(self) -> None:
        """A restart inside a window whose PHASE never completed resumes it; never runs one twice."""
        ow = self.state.open_window
        if ow is None:
            return
        now = self.clock()
        if now < float(ow["end"]):
            logger.info("resuming PHASE for window {} opened before the restart", ow["window_id"])
            w = Window(
                ow["window_id"], float(ow["start"]), float(ow["end"]), catch_up=bool(ow.get("catch_up"))
            )
            self.dispatch(
                WindowOpened(
                    now=now,
                    window_id=w.window_id,
                    start=w.start,
                    end=w.end,
                    catch_up=w.catch_up,
                    manual=bool(ow.get("manual")),
                )
            )
        else:
            self.state.open_window = None
            if ow.get("manual"):
                logger.warning("manual window {} closed while the daemon was down", ow["window_id"])
                return
            # Its PHASE never completed: one catch-up now (DESIGN: Persistent-style), never a burst.
            w = Window(f"{ow['window_id']}+catchup", now, now + self.schedule.duration_s, catch_up=True)
            logger.warning(
                "window {} closed while its PHASE was interrupted; catching up now", ow["window_id"]
            )
            self.dispatch(
                WindowOpened(now=now, window_id=w.window_id, start=w.start, end=w.end, catch_up=True)
            )

    async def _serve_socket(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await serve_control(self.loaded.socket_path, self.handle_request, task_status=task_status)

    async def _dream_task(self) -> None:
        await self.dream.run(once=self.once)
        if self.once:
            self.dispatch(StopRequested(now=self.clock(), reason="--once pass complete"))

    def write_manifest(self) -> None:
        from kloros_orchestrator.runtime.manifest import write_run_manifest

        write_run_manifest(self)

    @property
    def run_id(self) -> str:
        return self.dream.run_id


def _lock_state_dir(root: Path) -> int:
    """One daemon per state_dir: a second one would restore the first one's knobs mid-trial."""
    path = root / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise KlorosError(
            f"another kloros-orchestrator (pid {holder}) is running on {root}; "
            "stop it or use another state_dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _timezone(name: str | None) -> Any:
    """The zone for "HH:MM" windows, with its DST rules (a fixed UTC offset would drift by an hour)."""
    import zoneinfo

    if name:
        return zoneinfo.ZoneInfo(name)
    tz_env = os.environ.get("TZ", "").lstrip(":")
    if tz_env:
        try:
            return zoneinfo.ZoneInfo(tz_env)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            logger.warning("TZ={!r} is not a known zone; using /etc/localtime", tz_env)
    try:
        with open("/etc/localtime", "rb") as f:
            return zoneinfo.ZoneInfo.from_file(f, key="localtime")
    except OSError:
        logger.warning("no /etc/localtime: PHASE windows use UTC")
        return zoneinfo.ZoneInfo("UTC")


def _jsonable(fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in fields.items():
        try:
            out[k] = msgspec.to_builtins(v)
        except TypeError:
            out[k] = str(v)
    return out


def run_daemon(loaded: LoadedConfig, *, once: bool = False) -> int:
    daemon = Daemon(loaded, once=once)
    return anyio.run(daemon.serve)


__all__ = ["Daemon", "PersistentState", "iso", "run_daemon"]

_ = Path  # re-exported type used in annotations elsewhere
