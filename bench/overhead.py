"""Daemon overhead, measured on the real daemon with real stress-ng.

The daemon runs as ``python -m kloros_orchestrator run --config <temp yaml>`` (a subprocess in its
own session, domain ``cpu``, fresh state directory each run, no ``NOTIFY_SOCKET``). What is measured:

1. **Duty cycle** (run A): one D-REAM generation with ``dream.trial_seconds`` = 10 s (quick: 3 s),
   population 3, 2 trials per regime. Duty cycle = Σ trial ``wall_s`` (``logs/trials.jsonl``; the
   evaluator's span per trial: knob apply, stress-ng spawn → exit, KPI parsing) over the tournament's
   wall time (``tournament_started`` → ``tournament_done`` in ``logs/events.jsonl``; includes the
   race bookkeeping, the candidate packs' bootstrap CIs and the breeding). Also shown: the nominal
   measurement share, trials × trial_seconds over the same wall time.
2. **Paced asleep** (run A, after that generation): ``dream.pacing.min_sleep_s = max_sleep_s = 600``
   and the next window a day away, so the daemon sleeps 600 s. Checked over the socket
   (``{"cmd":"status"}``: state ``evolving``, pacing 600 s, not deferred) before and after.
3. **Paused** (run B): D-REAM deferred to a PHASE window — the window ``now+W`` opens before the next
   tournament could finish, so D-REAM starts nothing and sleeps until the window (status: state
   ``evolving``, ``pacing.defer_to_window`` true). This is the only state in which D-REAM is paused
   *and* the daemon idle (in DRAINING/PHASE it runs trials).
   For 2 and 3: wake-ups = Δ(voluntary + nonvoluntary context switches) summed over every thread
   (``/proc/<pid>/task/*/status``), CPU% = Δ(utime + stime) of ``/proc/<pid>/stat`` over the wall
   time, measured over 60 s (quick: 20 s) with nothing talking to the daemon meanwhile.
4. **Resume latency** (run B): ``phase_complete`` → next ``tournament_started`` (and from
   ``results_collapsed``) in ``events.jsonl``: the scheduled window (QTIME 1×4×1, 1 s trials), then
   more windows opened with ``{"cmd":"phase-now"}`` while a tournament runs.
5. **SIGTERM-to-exit** mid-trial: SIGTERM while a stress-ng child of the daemon runs (≥ 0.5 s into
   it); time until the process has exited; afterwards no stress-ng of ours may be left. At the end
   of run B (2 s trials) and in extra short runs with 10 s trials.
6. **Peak RSS**: ``VmHWM`` of ``/proc/<pid>/status`` just before each stop; the maximum is reported.
   **RSS while pacing** (run B): ``VmRSS`` at the first ``pacing`` event after a whole cycle
   (generations, the scheduled PHASE window, its collapse, one more generation): the steady state.
7. **CI cost of a pack**: ``measure.packs.build_pack`` on a synthetic 4 regimes × 3 trials × 4 KPIs
   arm and stock, ``n_boot`` = 2000 (the daemon's default), median of many runs, in this process.

Never run this concurrently with another benchmark: it measures the machine's real daemon.
Run: ``.venv/bin/python bench/overhead.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml
from benchlib import (
    GoalResult,
    command_line,
    goal_rows_markdown,
    goals_payload,
    machine_info,
    machine_line,
    write_json,
)

GOAL_DUTY = 0.97
GOAL_WAKEUPS_PER_MIN = 1.0
GOAL_RSS_MB = 120.0
GOAL_PACING_RSS_MB = 60.0  # resident while pacing after a full D-REAM + PHASE cycle
GOAL_SIGTERM_S = 3.0
GOAL_RESUME_MS = 100.0
GOAL_CI_MS = 50.0

TAG_ENV = "KLR_BENCH_TAG"


class BenchError(RuntimeError):
    pass


# --- /proc -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcSnapshot:
    t: float  # monotonic
    ctx: dict[int, int]  # tid -> voluntary + nonvoluntary context switches
    cpu_ticks: int  # utime + stime of the process (all threads)


def snapshot(pid: int) -> ProcSnapshot:
    ctx: dict[int, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:  # the thread exited meanwhile
            continue
        n = 0
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                n += int(line.split()[1])
        ctx[int(task.name)] = n
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return ProcSnapshot(t=time.monotonic(), ctx=ctx, cpu_ticks=int(fields[11]) + int(fields[12]))


def _status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024.0
    raise BenchError(f"no {key} in /proc/<pid>/status")


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size so far."""
    return _status_mb(pid, "VmHWM")


def vm_rss_mb(pid: int) -> float:
    """Resident set size now."""
    return _status_mb(pid, "VmRSS")


@dataclass(frozen=True)
class IdleMeasure:
    state: str  # what was measured, as the status socket reported it
    seconds: float
    wakeups: int
    wakeups_per_min: float
    cpu_percent: float
    threads: int
    status_before: dict[str, Any]
    status_after: dict[str, Any]


def measure_idle(pid: int, seconds: float) -> tuple[float, int, float, int]:
    """(wall s, context switches, CPU %, threads) of ``pid`` over ``seconds`` of doing nothing to it."""
    a = snapshot(pid)
    time.sleep(seconds)
    b = snapshot(pid)
    # Threads alive at both ends count their delta; threads born meanwhile count everything.
    switches = sum(n - a.ctx.get(tid, 0) for tid, n in b.ctx.items())
    wall = b.t - a.t
    cpu = (b.cpu_ticks - a.cpu_ticks) / os.sysconf("SC_CLK_TCK") / wall * 100.0
    return wall, switches, cpu, len(b.ctx)


# --- one daemon --------------------------------------------------------------------------------------


@dataclass
class Daemon:
    workdir: Path
    proc: subprocess.Popen[bytes]
    tag: str
    log: Any = field(repr=False)

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def sock(self) -> str:
        return str(self.workdir / "k.sock")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self) -> list[dict[str, Any]]:
        p = self.state_dir / "logs" / "events.jsonl"
        if not p.exists():
            return []
        return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]

    def trials(self) -> list[dict[str, Any]]:
        p = self.state_dir / "logs" / "trials.jsonl"
        if not p.exists():
            return []
        return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]

    def wait_event(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str, start: int = 0
    ) -> tuple[int, dict[str, Any]]:
        """Index and body of the first event from ``start`` on matching ``pred`` (polls the file)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise BenchError(f"daemon exited ({self.proc.returncode}) while waiting for {what}")
            for i, e in enumerate(self.events()[start:], start):
                if pred(e):
                    return i, e
            time.sleep(0.1)
        raise BenchError(f"no {what} within {timeout:.0f} s")

    def query(self, req: dict[str, Any]) -> dict[str, Any]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect(self.sock)
            s.sendall((json.dumps(req) + "\n").encode())
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            out: dict[str, Any] = json.loads(buf)
            return out
        finally:
            s.close()

    def status(self) -> dict[str, Any]:
        r = self.query({"cmd": "status"})
        if not r.get("ok"):
            raise BenchError(f"status query failed: {r}")
        st: dict[str, Any] = r["status"]
        return st

    def stress_children(self) -> list[psutil.Process]:
        try:
            kids = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        out = []
        for k in kids:
            try:
                if k.name() == "stress-ng" and k.status() != psutil.STATUS_ZOMBIE:
                    out.append(k)
            except psutil.Error:
                continue
        return out

    def wait_mid_trial(self, timeout: float, into_s: float = 0.5) -> float:
        """Wait until a stress-ng child has been running for ``into_s`` (by our own observation:
        psutil's create_time is only accurate to about a second); returns its observed age."""
        first_seen: dict[int, float] = {}
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise BenchError("daemon exited while waiting for a trial")
            now = time.monotonic()
            for k in self.stress_children():
                seen = first_seen.setdefault(k.pid, now)
                if now - seen >= into_s and k.is_running():
                    return now - seen
            time.sleep(0.02)
        raise BenchError(f"no stress-ng trial running within {timeout:.0f} s")

    def sigterm(self, timeout: float = 30.0) -> tuple[float, int]:
        """SIGTERM; seconds until the process has exited, and its exit code."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        return time.monotonic() - t0, rc


def our_stress_ng(tag: str) -> list[int]:
    """Live stress-ng processes started by a daemon of this benchmark run (by environment tag)."""
    found = []
    for p in psutil.process_iter(["name", "status"]):
        if p.info["name"] != "stress-ng" or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if p.environ().get(TAG_ENV) == tag:
                found.append(p.pid)
        except psutil.Error:
            continue
    return found


def make_config(workdir: Path, *, dream: dict[str, Any], window_start: str, pacing_s: float) -> Path:
    cfg = {
        "state_dir": str(workdir / "state"),
        "socket": str(workdir / "k.sock"),
        "seed": 11,
        "dream": {
            "domains": ["cpu"],
            "epochs_per_cycle": 1,
            "pacing": {"min_sleep_s": pacing_s, "max_sleep_s": pacing_s},
            **dream,
        },
        "phase": {
            "window": {"start": window_start, "duration": 600},
            "qtime": {"epochs": 1, "slices": 4, "replicas": 1, "min_replicas": 1},
            "trial_seconds": 1,
        },
    }
    p = workdir / "dream.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@contextmanager
def daemon(cfg: Path, tag: str, keep: bool) -> Iterator[Daemon]:
    workdir = cfg.parent
    log = open(workdir / "daemon.log", "wb")  # noqa: SIM115 - closed below, after the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "kloros_orchestrator", "run", "--config", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**{k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}, TAG_ENV: tag},
        start_new_session=True,
        cwd=workdir,
    )
    d = Daemon(workdir=workdir, proc=proc, tag=tag, log=log)
    try:
        yield d
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in our_stress_ng(tag):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.close()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def new_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="kb"))  # short: Unix socket paths are limited to ~107 bytes


# --- the measurements --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DutyCycle:
    trial_seconds: float
    trials: int
    failed_trials: int
    tournament_wall_s: float
    trial_wall_sum_s: float
    duty_cycle: float  # Σ trial wall_s / tournament wall time
    nominal_share: float  # trials × trial_seconds / tournament wall time
    mean_trial_overrun_s: float  # mean (wall_s − trial_seconds)


@dataclass(frozen=True)
class StopSample:
    where: str
    seconds: float
    exit_code: int
    trial_age_s: float  # how long the killed stress-ng had been running (at least; seen by polling)
    leftover_stress_ng: int


@dataclass
class Report:
    mode: str
    duty: DutyCycle | None = None
    asleep: IdleMeasure | None = None
    paused: IdleMeasure | None = None
    resume_from_phase_complete_ms: list[float] = field(default_factory=list)
    resume_from_collapsed_ms: list[float] = field(default_factory=list)
    stops: list[StopSample] = field(default_factory=list)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    pacing_rss_mb: float | None = None  # VmRSS while pacing after a D-REAM + PHASE cycle
    ci_pack_ms: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def duty_cycle(d: Daemon, trial_seconds: float) -> DutyCycle:
    ev = d.events()
    i0 = next(i for i, e in enumerate(ev) if e["event"] == "tournament_started")
    i1 = next(i for i, e in enumerate(ev) if e["event"] == "tournament_done" and i > i0)
    t0, t1 = float(ev[i0]["ts"]), float(ev[i1]["ts"])
    trials = [t for t in d.trials() if t0 <= float(t["started_at"]) <= t1]
    wall = sum(float(t["wall_s"]) for t in trials)
    return DutyCycle(
        trial_seconds=trial_seconds,
        trials=len(trials),
        failed_trials=sum(1 for t in trials if not t["ok"]),
        tournament_wall_s=t1 - t0,
        trial_wall_sum_s=wall,
        duty_cycle=wall / (t1 - t0),
        nominal_share=len(trials) * trial_seconds / (t1 - t0),
        mean_trial_overrun_s=float(np.mean([float(t["wall_s"]) - trial_seconds for t in trials])),
    )


def idle(d: Daemon, seconds: float, label: str, check: Callable[[dict[str, Any]], str | None]) -> IdleMeasure:
    before = d.status()
    problem = check(before)
    if problem:
        raise BenchError(f"{label}: daemon not in the expected state before measuring: {problem}")
    time.sleep(1.0)  # let the status request's own work settle before the first snapshot
    wall, switches, cpu, threads = measure_idle(d.pid, seconds)
    after = d.status()
    problem = check(after)
    if problem:
        raise BenchError(f"{label}: daemon left the expected state during the measurement: {problem}")
    if after["counters"] != before["counters"] or after["generation"] != before["generation"]:
        raise BenchError(f"{label}: the daemon worked during the measurement: {before} → {after}")
    keep = ("state", "domain", "generation", "pacing", "next_window", "counters", "uptime_s")
    return IdleMeasure(
        state=label,
        seconds=wall,
        wakeups=switches,
        wakeups_per_min=switches / wall * 60.0,
        cpu_percent=cpu,
        threads=threads,
        status_before={k: before.get(k) for k in keep},
        status_after={k: after.get(k) for k in keep},
    )


def _asleep_check(st: dict[str, Any]) -> str | None:
    p = st.get("pacing") or {}
    if st.get("state") != "evolving":
        return f"state {st.get('state')}"
    if p.get("defer_to_window") or (p.get("last_sleep_s") or 0) < 590:
        return f"pacing {p}"
    return None


def _paused_check(st: dict[str, Any]) -> str | None:
    p = st.get("pacing") or {}
    if st.get("state") != "evolving" or not p.get("defer_to_window"):
        return f"state {st.get('state')}, pacing {p}"
    return None


def run_a(rep: Report, *, quick: bool, keep: bool, tag: str) -> None:
    """Duty cycle of one generation, then the paced-asleep measurement."""
    trial_s = 3.0 if quick else 10.0
    measure_s = 20.0 if quick else 60.0
    wd = new_workdir()
    cfg = make_config(
        wd,
        dream={"population": 3, "trials": 2, "min_trials": 2, "trial_seconds": trial_s},
        window_start="now+86400",
        pacing_s=600.0,
    )
    arms, regimes, rounds = 4, 4, 2
    budget = arms * regimes * rounds * (trial_s + 6.0) + 120.0
    print(f"  overhead A: one generation with {trial_s:g} s trials (≤ {budget:.0f} s) …", file=sys.stderr)
    with daemon(cfg, tag, keep) as d:
        i, _ = d.wait_event(lambda e: e["event"] == "tournament_done", budget, "tournament_done")
        d.wait_event(lambda e: e["event"] == "pacing", 60, "pacing after the generation", start=i)
        rep.duty = duty_cycle(d, trial_s)
        print(f"  overhead A: paced asleep, measuring {measure_s:g} s …", file=sys.stderr)
        rep.asleep = idle(d, measure_s, "paced asleep (evolving, pacing 600 s, not deferred)", _asleep_check)
        rep.peak_rss_mb["A: one generation + asleep"] = vm_hwm_mb(d.pid)
        secs, rc = d.sigterm()
        rep.notes.append(f"run A: SIGTERM while asleep (no trial running): exit {rc} after {secs:.3f} s")
        if keep:
            rep.notes.append(f"run A kept in {wd}")


def _resume_samples(ev: Sequence[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """(phase_complete → next tournament_started, results_collapsed → next tournament_started), in ms."""
    from_pc, from_rc = [], []
    for i, e in enumerate(ev):
        if e["event"] not in ("phase_complete", "results_collapsed"):
            continue
        nxt = next((x for x in ev[i + 1 :] if x["event"] == "tournament_started"), None)
        if nxt is None:
            continue
        ms = (float(nxt["ts"]) - float(e["ts"])) * 1000.0
        (from_pc if e["event"] == "phase_complete" else from_rc).append(ms)
    return from_pc, from_rc


def run_b(rep: Report, *, quick: bool, keep: bool, tag: str) -> None:
    """Paused (deferred to a window), resume latency over several windows, SIGTERM mid-trial."""
    measure_s = 20.0 if quick else 60.0
    extra_windows = 1 if quick else 4
    first_tournament_s = 60.0  # generous: 3 arms × 4 regimes × one 2 s trial take ~30 s here
    window_in = first_tournament_s + measure_s + 20.0
    wd = new_workdir()
    cfg = make_config(
        wd,
        dream={"population": 2, "trials": 1, "min_trials": 1, "trial_seconds": 2},
        window_start=f"now+{window_in:.0f}",
        pacing_s=600.0,
    )
    print(
        f"  overhead B: window in {window_in:.0f} s; paused measurement of {measure_s:g} s …", file=sys.stderr
    )
    with daemon(cfg, tag, keep) as d:
        i, _ = d.wait_event(
            lambda e: e["event"] == "tournament_done", first_tournament_s + 60, "tournament_done"
        )
        _, pe = d.wait_event(lambda e: e["event"] == "pacing", 60, "pacing after the generation", start=i)
        if not pe.get("defer_to_window"):
            raise BenchError(f"run B: D-REAM did not defer to the window: {pe}")
        ttw = float(pe["sleep_s"])
        seconds = min(measure_s, ttw - 8.0)
        if seconds < measure_s:
            rep.notes.append(f"paused: only {seconds:.1f} s measured (window too close)")
        rep.paused = idle(
            d, seconds, "paused (evolving, D-REAM deferred until the PHASE window)", _paused_check
        )
        # The scheduled window, then more opened with phase-now while a tournament runs.
        j, _ = d.wait_event(lambda e: e["event"] == "results_collapsed", ttw + 300, "results_collapsed")
        j, _ = d.wait_event(
            lambda e: e["event"] == "tournament_started", 60, "tournament after PHASE", start=j
        )
        # A full cycle is behind us (D-REAM generations, a PHASE window, its collapse, another
        # generation): what the daemon keeps resident while it paces is its steady-state footprint.
        j, _ = d.wait_event(lambda e: e["event"] == "pacing", 120, "pacing after the cycle", start=j)
        rep.pacing_rss_mb = vm_rss_mb(d.pid)
        for k in range(extra_windows):
            print(f"  overhead B: phase-now {k + 1}/{extra_windows} …", file=sys.stderr)
            r = d.query({"cmd": "phase-now"})
            if not r.get("ok"):
                raise BenchError(f"phase-now refused: {r}")
            j, _ = d.wait_event(
                lambda e: e["event"] == "results_collapsed", 300, "results_collapsed", start=j
            )
            j, _ = d.wait_event(
                lambda e: e["event"] == "tournament_started", 60, "tournament after PHASE", start=j
            )
        age = d.wait_mid_trial(60)
        rep.peak_rss_mb["B: windows + PHASE runs"] = vm_hwm_mb(d.pid)
        secs, rc = d.sigterm()
        rep.stops.append(StopSample("run B, 2 s D-REAM trial", secs, rc, age, len(our_stress_ng(tag))))
        pc, rc_ = _resume_samples(d.events())
        rep.resume_from_phase_complete_ms.extend(pc)
        rep.resume_from_collapsed_ms.extend(rc_)
        if keep:
            rep.notes.append(f"run B kept in {wd}")


def run_stops(rep: Report, *, n: int, keep: bool, tag: str) -> None:
    """Extra SIGTERM-mid-trial samples: fresh daemons, 10 s trials, SIGTERM ≥ 1 s into a trial."""
    for k in range(n):
        wd = new_workdir()
        cfg = make_config(
            wd,
            dream={"population": 2, "trials": 1, "min_trials": 1, "trial_seconds": 10},
            window_start="now+86400",
            pacing_s=600.0,
        )
        print(f"  overhead: SIGTERM mid-trial {k + 1}/{n} …", file=sys.stderr)
        with daemon(cfg, tag, keep) as d:
            age = d.wait_mid_trial(60, into_s=1.0 + 2.0 * k)
            rep.peak_rss_mb[f"stop run {k + 1}"] = vm_hwm_mb(d.pid)
            secs, rc = d.sigterm()
            rep.stops.append(
                StopSample(f"fresh daemon, 10 s trial #{k + 1}", secs, rc, age, len(our_stress_ng(tag)))
            )


def ci_pack_cost(runs: int) -> list[float]:
    """Milliseconds per ``build_pack`` on 4 regimes × 3 trials × 4 KPIs, n_boot = 2000."""
    from kloros_orchestrator.measure.packs import PackContext, build_pack
    from kloros_orchestrator.model import P50, P95, P99, REGIMES, STANDARD_KPIS, THROUGHPUT, TrialResult

    rng = np.random.default_rng(5)

    def trials(cand: str, scale: float) -> dict[str, list[TrialResult]]:
        out: dict[str, list[TrialResult]] = {}
        for r in REGIMES:
            out[r] = [
                TrialResult(
                    domain="cpu",
                    cand_id=cand,
                    regime=r,
                    ok=True,
                    kpis={
                        THROUGHPUT: float(scale * rng.normal(10000, 300)),
                        P50: float(rng.normal(60, 5)),
                        P95: float(rng.normal(120, 10)),
                        P99: float(rng.normal(300, 30)),
                    },
                    wall_s=10.0,
                    started_at=0.0,
                )
                for _ in range(3)
            ]
        return out

    arm, stock = trials("g1c0", 1.03), trials("stock", 1.0)
    ctx = PackContext(
        run_id="bench",
        domain="cpu",
        generation=1,
        baseline_ids={r: f"b_{r}" for r in REGIMES},
        expected_kpis=STANDARD_KPIS,
        missing_reasons={"temp_c": "no sensor", "watts": "no RAPL"},
        min_trials=2,
        code_hash="bench",
        n_boot=2000,
        stress_ng_version=None,
    )
    times = []
    for k in range(runs + 3):
        t0 = time.perf_counter()
        build_pack(
            ctx,
            cand_id="g1c0",
            spica_id="spica-bench",
            genome={"workers": 2},
            arm=arm,
            stock=stock,
            unsafe_reasons=[],
            rng=np.random.default_rng(k),
        )
        if k >= 3:  # the first calls warm imports and caches
            times.append((time.perf_counter() - t0) * 1000.0)
    return times


# --- report ------------------------------------------------------------------------------------------


def _fmt_idle(m: IdleMeasure | None) -> str:
    if m is None:
        return "not measured"
    return (
        f"{m.wakeups_per_min:.2f} wake-ups/min ({m.wakeups} in {m.seconds:.0f} s, {m.threads} threads), "
        f"CPU {m.cpu_percent:.3f}%"
    )


def markdown(rep: Report) -> str:
    out = ["", "| figure | value |", "|---|---|"]
    if rep.duty:
        du = rep.duty
        out.append(
            f"| duty cycle, one generation, {du.trial_seconds:g} s trials | {du.duty_cycle:.2%} "
            f"(Σ trial wall {du.trial_wall_sum_s:.1f} s / tournament {du.tournament_wall_s:.1f} s, "
            f"{du.trials} trials, {du.failed_trials} failed) |"
        )
        out.append(
            f"| nominal measurement share (trials × {du.trial_seconds:g} s / tournament) | "
            f"{du.nominal_share:.2%} (mean trial overrun {du.mean_trial_overrun_s * 1000:.0f} ms) |"
        )
    out.append(f"| paced asleep | {_fmt_idle(rep.asleep)} |")
    out.append(f"| paused (deferred to window) | {_fmt_idle(rep.paused)} |")
    if rep.pacing_rss_mb is not None:
        out.append(f"| RSS while pacing after a D-REAM + PHASE cycle (VmRSS) | {rep.pacing_rss_mb:.1f} MB |")
    if rep.peak_rss_mb:
        k = max(rep.peak_rss_mb, key=lambda x: rep.peak_rss_mb[x])
        allr = ", ".join(f"{n}: {v:.1f}" for n, v in rep.peak_rss_mb.items())
        out.append(f"| peak RSS (VmHWM) | {rep.peak_rss_mb[k]:.1f} MB max ({allr}) |")
    for s in rep.stops:
        out.append(
            f"| SIGTERM-to-exit ({s.where}, trial {s.trial_age_s:.1f} s old) | {s.seconds:.3f} s, exit "
            f"{s.exit_code}, {s.leftover_stress_ng} stress-ng left |"
        )
    if rep.resume_from_phase_complete_ms:
        pc, rc = rep.resume_from_phase_complete_ms, rep.resume_from_collapsed_ms
        out.append(
            f"| resume latency phase_complete → tournament_started | median {np.median(pc):.1f} ms, max "
            f"{max(pc):.1f} ms over {len(pc)} windows ({', '.join(f'{x:.1f}' for x in pc)}) |"
        )
        if rc:
            out.append(
                f"| resume latency results_collapsed → tournament_started | median {np.median(rc):.1f} ms, "
                f"max {max(rc):.1f} ms |"
            )
    if rep.ci_pack_ms:
        c = rep.ci_pack_ms
        out.append(
            f"| build_pack (4 regimes × 3 trials × 4 KPIs, n_boot 2000) | median {np.median(c):.2f} ms, "
            f"p95 {np.percentile(c, 95):.2f} ms over {len(c)} runs |"
        )
    for n in rep.notes:
        out.append(f"| note | {n} |")
    return "\n".join(out)


def goals(rep: Report, cmd: str) -> list[GoalResult]:
    rows: list[GoalResult] = []

    def add(figure: str, measured: str, goal: str, met: bool | None, margin: str) -> None:
        rows.append(GoalResult("overhead", figure, measured, goal, met, margin, cmd))

    if rep.duty:
        du = rep.duty
        add(
            f"duty cycle, D-REAM generation, {du.trial_seconds:g} s trials",
            f"{du.duty_cycle:.2%} (nominal {du.nominal_share:.2%})",
            f"≥ {GOAL_DUTY:.0%}",
            du.duty_cycle >= GOAL_DUTY,
            f"{100 * (du.duty_cycle - GOAL_DUTY):+.2f} points",
        )
    for label, m in (("paced asleep", rep.asleep), ("paused", rep.paused)):
        if m is None:
            add(f"wake-ups/min {label}", "not measured", f"≤ {GOAL_WAKEUPS_PER_MIN:g}", None, "")
            continue
        add(
            f"wake-ups/min {label}",
            f"{m.wakeups_per_min:.2f} (CPU {m.cpu_percent:.3f}%, {m.seconds:.0f} s)",
            f"≤ {GOAL_WAKEUPS_PER_MIN:g}",
            m.wakeups_per_min <= GOAL_WAKEUPS_PER_MIN,
            f"{m.wakeups_per_min - GOAL_WAKEUPS_PER_MIN:+.2f}/min",
        )
    if rep.pacing_rss_mb is not None:
        add(
            "RSS while pacing after a D-REAM + PHASE cycle (VmRSS)",
            f"{rep.pacing_rss_mb:.1f} MB",
            f"≤ {GOAL_PACING_RSS_MB:g} MB",
            rep.pacing_rss_mb <= GOAL_PACING_RSS_MB,
            f"{rep.pacing_rss_mb - GOAL_PACING_RSS_MB:+.1f} MB",
        )
    if rep.peak_rss_mb:
        peak = max(rep.peak_rss_mb.values())
        add(
            "peak RSS (VmHWM)",
            f"{peak:.1f} MB",
            f"≤ {GOAL_RSS_MB:g} MB",
            peak <= GOAL_RSS_MB,
            f"{peak - GOAL_RSS_MB:+.1f} MB",
        )
    if rep.stops:
        worst = max(s.seconds for s in rep.stops)
        clean = all(s.exit_code == 0 and s.leftover_stress_ng == 0 for s in rep.stops)
        add(
            "SIGTERM-to-exit mid-trial (max)",
            f"{worst:.2f} s max, median {np.median([s.seconds for s in rep.stops]):.2f} s over "
            f"{len(rep.stops)} stops" + ("" if clean else " (an exit was not clean!)"),
            f"≤ {GOAL_SIGTERM_S:g} s",
            worst <= GOAL_SIGTERM_S and clean,
            f"{worst - GOAL_SIGTERM_S:+.2f} s",
        )
    if rep.resume_from_phase_complete_ms:
        pc = rep.resume_from_phase_complete_ms
        add(
            "resume latency phase_complete → tournament_started (max)",
            f"{max(pc):.1f} ms max, median {np.median(pc):.1f} ms over {len(pc)} windows",
            f"≤ {GOAL_RESUME_MS:g} ms",
            max(pc) <= GOAL_RESUME_MS,
            f"{max(pc) - GOAL_RESUME_MS:+.1f} ms",
        )
    if rep.ci_pack_ms:
        med = float(np.median(rep.ci_pack_ms))
        add(
            "bootstrap CI cost per candidate pack (median)",
            f"{med:.2f} ms",
            f"≤ {GOAL_CI_MS:g} ms",
            med <= GOAL_CI_MS,
            f"{med - GOAL_CI_MS:+.2f} ms",
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="daemon overhead benchmark (real daemon, real stress-ng)")
    ap.add_argument("--quick", action="store_true", help="3 s trials for the duty cycle, 20 s idle windows")
    ap.add_argument("--keep", action="store_true", help="keep the daemons' temporary directories")
    ap.add_argument("--only", default="ci,a,b,stops", help="subset of ci,a,b,stops")
    args = ap.parse_args(argv)
    if shutil.which("stress-ng") is None:
        raise SystemExit("stress-ng is not installed: sudo apt-get install -y stress-ng")
    parts = set(args.only.split(","))
    machine = machine_info()
    print(machine_line(machine))
    rep = Report(mode="quick" if args.quick else "full")
    tag = f"klr-bench-{uuid.uuid4().hex[:12]}"
    t0 = time.monotonic()
    try:
        if "ci" in parts:
            rep.ci_pack_ms = ci_pack_cost(60 if args.quick else 400)
        if "a" in parts:
            run_a(rep, quick=args.quick, keep=args.keep, tag=tag)
        if "b" in parts:
            run_b(rep, quick=args.quick, keep=args.keep, tag=tag)
        if "stops" in parts:
            run_stops(rep, n=2 if args.quick else 4, keep=args.keep, tag=tag)
    except BenchError as e:
        rep.notes.append(f"INCOMPLETE: {e}")
        print(f"overhead: {e}", file=sys.stderr)
    elapsed = time.monotonic() - t0
    cmd = command_line()
    print(markdown(rep))
    rows = goals(rep, cmd)
    print()
    print(goal_rows_markdown(rows))
    print(f"\noverhead: {elapsed:.0f} s wall")
    payload = {
        "schema": "bench.overhead.v1",
        "mode": rep.mode,
        "command": cmd,
        "machine": machine,
        "elapsed_s": elapsed,
        "report": asdict(rep),
        "goals": goals_payload(rows),
    }
    print(f"wrote {write_json('overhead', payload)}")
    return 0 if not any(n.startswith("INCOMPLETE") for n in rep.notes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
