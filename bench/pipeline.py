"""Shared code of the pipeline benchmarks (``pipeline_aa.py``, ``pipeline_planted.py``).

Both run the real daemon (``python -m kloros_orchestrator run --config <temp yaml>``) on a generic
domain whose knob files live in a temporary ``sysfs_root``, with real stress-ng, and read it only
through its contract: the config keys, the status socket (``{"cmd": "phase-now"}``), the files under
``state_dir`` (``logs/events.jsonl``, ``logs/trials.jsonl``, ``logs/fitness_history.jsonl``,
``artifacts/candidates/<domain>/gen<N>_best.json``, ``phase/<run_id>/phase_results.json``) and
SIGTERM. Nothing here imports the daemon's code, so the benchmarks keep measuring whatever the
racing rule, the score or the contamination check become.

Theory of operation of one run (:func:`run_schedule`): the daemon starts with the next scheduled
window a day away, so D-REAM runs tournament after tournament, resting 10 s between them (pacing
pinned). After the ``k``-th *concluded* tournament since the last window (one the daemon stopped
without a conclusion, e.g. ``host too busy``, does not count: it gave PHASE nothing to test) the
benchmark asks for a window (``phase-now``) while D-REAM rests, so the window opens at once; PHASE
evaluates the hall of fame, collapses, and D-REAM resumes. After the last window, or when the run's
wall-time budget is spent, the daemon is stopped with SIGTERM (exit 0 required) and every stress-ng
the run started is accounted for. Waiting is event-driven: the daemon's ``NOTIFY_SOCKET`` datagrams
(a socket of our own) wake the reader, which then reads the new lines of ``events.jsonl``; the 1 s
receive timeout only bounds how late a quiet daemon is noticed.

:class:`OutsideLoad` is the noisy neighbour of the A/A benchmark: a stress-ng of its own (its own
session and process group, outside the daemon's tree) switched on and off at random.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml
from benchlib import wilson_ci

TAG_ENV = "KLR_BENCH_TAG"  # inherited by every process a benchmark starts: ours are told apart by it
REGIMES = ("idle", "normal", "stress", "mixed")


class PipelineError(RuntimeError):
    """The daemon did not do what the contract says within the time allowed."""


# --- proportions ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    """k of n with its Wilson 95% interval (absent when n = 0: nothing was measured)."""

    k: int
    n: int
    rate: float | None
    ci95: tuple[float, float] | None

    def text(self) -> str:
        if self.rate is None or self.ci95 is None:
            return f"{self.k} of {self.n} (nothing measured)"
        lo, hi = self.ci95
        return f"{self.k} of {self.n} = {100 * self.rate:.1f}% [{100 * lo:.1f}%, {100 * hi:.1f}%]"


def rate(k: int, n: int) -> Rate:
    if n == 0:
        return Rate(k, n, None, None)
    return Rate(k, n, k / n, wilson_ci(k, n))


# --- the daemon -----------------------------------------------------------------------------------------


def new_workdir(prefix: str) -> Path:
    """A fresh temporary directory with a short name (Unix socket paths are limited to ~107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            with suppress(json.JSONDecodeError):  # a line being appended right now
                out.append(json.loads(line))
    return out


class EventTail:
    """The lines appended to ``events.jsonl`` since the last read (whole lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.seen: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        new = [json.loads(x) for x in data[:end].splitlines() if x.strip()]
        self.seen.extend(new)
        return new


@dataclass
class Daemon:
    """One daemon process under the benchmark, with its notify socket and its events."""

    workdir: Path
    proc: subprocess.Popen[bytes]
    notify: socket.socket
    tail: EventTail
    tag: str
    pending: list[dict[str, Any]] = field(default_factory=list)  # read from the file, not yet waited on

    @property
    def state(self) -> Path:
        return self.workdir / "state"

    def wait_event(self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        """The first new event matching ``pred``; woken by the daemon's notify datagrams."""
        end = time.monotonic() + timeout
        while True:
            self.pending.extend(self.tail.poll())
            while self.pending:
                e = self.pending.pop(0)
                if pred(e):
                    return e
            if self.proc.poll() is not None:
                raise PipelineError(f"daemon exited ({self.proc.returncode}) while waiting for {what}")
            left = end - time.monotonic()
            if left <= 0:
                raise PipelineError(f"no {what} within {timeout:.0f} s")
            self.notify.settimeout(min(1.0, left))
            with suppress(TimeoutError):
                self.notify.recv(65536)
                self.notify.settimeout(0.05)
                for _ in range(100):  # drain what queued up: one read of the file serves them all
                    self.notify.recv(65536)

    def wait_ready(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise PipelineError(f"daemon exited ({self.proc.returncode}) before READY=1")
            self.notify.settimeout(max(0.01, end - time.monotonic()))
            try:
                if b"READY=1" in self.notify.recv(65536):
                    return
            except TimeoutError:
                break
        raise PipelineError(f"no READY=1 within {timeout:.0f} s")

    def query(self, req: dict[str, Any]) -> dict[str, Any]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect(str(self.workdir / "k.sock"))
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

    def stop(self, timeout: float = 30.0) -> tuple[float, int]:
        """SIGTERM; seconds to exit and the exit code."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        return time.monotonic() - t0, rc


def tagged_stress_ng(tag: str) -> list[int]:
    """Live stress-ng processes carrying ``tag`` in their environment (another user's never do)."""
    found = []
    for p in psutil.process_iter(["name", "status"]):
        if p.info["name"] != "stress-ng" or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        with suppress(psutil.Error):
            if p.environ().get(TAG_ENV) == tag:
                found.append(p.pid)
    return found


def kill_tagged(tag: str) -> int:
    pids = tagged_stress_ng(tag)
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


@contextmanager
def daemon(cfg: Path, tag: str, *, keep: bool) -> Iterator[Daemon]:
    """Start the daemon on ``cfg`` (its workdir is ``cfg.parent``); always gone afterwards."""
    workdir = cfg.parent
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(workdir / "n.sock"))
    log = open(workdir / "daemon.log", "wb")  # noqa: SIM115 - closed below, after the process
    env = {**os.environ, "NOTIFY_SOCKET": str(workdir / "n.sock"), TAG_ENV: tag}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kloros_orchestrator", "run", "--config", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        cwd=workdir,
    )
    d = Daemon(workdir, proc, notify, EventTail(workdir / "state" / "logs" / "events.jsonl"), tag)
    try:
        yield d
    finally:
        if proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        kill_tagged(tag)
        notify.close()
        log.close()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def base_config(
    workdir: Path,
    domain: str,
    options: dict[str, Any],
    *,
    seed: int,
    trial_seconds: float,
    outside_cpu: float | None = None,
) -> dict[str, Any]:
    """Default sizes everywhere (population, trials, racing, QTIME, variants) except the trial length,
    pacing pinned to 10 s and windows opened by the benchmark (the scheduled one is a day away).
    ``outside_cpu`` sets ``dream.contamination.outside_cpu`` (only when given)."""
    cfg: dict[str, Any] = {
        "state_dir": str(workdir / "state"),
        "socket": str(workdir / "k.sock"),
        "sysfs_root": str(workdir / "root"),
        "regimes_dir": str(workdir / "regimes"),
        "seed": seed,
        "dream": {
            "domains": [domain],
            "epochs_per_cycle": 1,
            "trial_seconds": trial_seconds,
            # Long enough that a window asked for right after a tournament opens before the next one.
            "pacing": {"min_sleep_s": 10, "max_sleep_s": 10},
        },
        "phase": {"window": {"start": "now+86400", "duration": 7200}, "trial_seconds": trial_seconds},
        "domain_options": {domain: options},
    }
    if outside_cpu is not None:  # only when asked: the daemon's default is what is benchmarked
        cfg["dream"]["contamination"] = {"outside_cpu": outside_cpu}
    return cfg


def write_tree(workdir: Path, files: dict[str, str], regimes: dict[str, str], cfg: dict[str, Any]) -> Path:
    """Knob files under ``root/``, ``regimes/<domain>.yaml`` files, and the config; returns its path."""
    for rel, text in files.items():
        p = workdir / "root" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    (workdir / "regimes").mkdir(exist_ok=True)
    for dom, text in regimes.items():
        (workdir / "regimes" / f"{dom}.yaml").write_text(text)
    path = workdir / "dream.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# --- one run's schedule --------------------------------------------------------------------------------


@dataclass
class Schedule:
    tournaments_per_window: int
    windows: int
    deadline_s: float = 86400.0  # the whole run's wall-time budget
    tournament_timeout_s: float = 1800.0
    window_timeout_s: float = 3600.0


ENDS = ("tournament_done", "tournament_not_concluded")  # the second precedes the first of its tournament


@dataclass
class RunLog:
    """What the driver saw: how many tournaments and windows, wall time, the stop."""

    tournaments_concluded: int = 0
    tournaments_not_concluded: int = 0
    windows_requested: int = 0
    windows_collapsed: int = 0
    wall_s: float = 0.0
    stop_s: float | None = None
    exit_code: int | None = None
    leftover_stress_ng: int | None = None
    notes: list[str] = field(default_factory=list)


class DeadlineReached(PipelineError):
    """The run's wall-time budget ran out: stop the daemon and report what was measured."""


def run_schedule(d: Daemon, plan: Schedule, log: RunLog, *, say: Callable[[str], None]) -> None:
    """Tournaments and windows as in the module docstring, then SIGTERM (also when the budget runs out)."""
    t0 = time.monotonic()
    end = t0 + plan.deadline_s

    def wait(pred: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        left = end - time.monotonic()
        if left <= 0:
            raise DeadlineReached(f"wall-time budget of {plan.deadline_s:.0f} s spent before {what}")
        try:
            return d.wait_event(pred, min(timeout, left), what)
        except PipelineError:
            if time.monotonic() >= end and d.proc.poll() is None:
                raise DeadlineReached(
                    f"wall-time budget of {plan.deadline_s:.0f} s spent waiting for {what}"
                ) from None
            raise

    d.wait_ready()
    try:
        for w in range(plan.windows):
            concluded = 0
            while concluded < plan.tournaments_per_window:
                e = wait(lambda e: e.get("event") in ENDS, plan.tournament_timeout_s, "a tournament's end")
                if e["event"] == "tournament_not_concluded":
                    log.tournaments_not_concluded += 1
                    say(f"tournament gen {e.get('generation')} not concluded: {e.get('reason')}")
                    wait(lambda e: e.get("event") == "tournament_done", 60.0, "tournament_done")
                    continue
                concluded += 1
                log.tournaments_concluded += 1
                say(f"tournament gen {e.get('generation')} concluded ({time.monotonic() - t0:.0f} s)")
            r = d.query({"cmd": "phase-now"})
            if not r.get("ok"):
                raise PipelineError(f"phase-now refused: {r}")
            log.windows_requested += 1
            wait(lambda e: e.get("event") == "results_collapsed", plan.window_timeout_s, "results_collapsed")
            log.windows_collapsed += 1
            say(f"window {w + 1} of {plan.windows} collapsed ({time.monotonic() - t0:.0f} s)")
    except DeadlineReached as e:
        log.notes.append(str(e))
        say(str(e))
    finally:
        log.wall_s = time.monotonic() - t0
        if d.proc.poll() is None:
            log.stop_s, log.exit_code = d.stop()
            log.leftover_stress_ng = len(tagged_stress_ng(d.tag))


# --- what the run left under state_dir -------------------------------------------------------------------


def packs(state: Path, domain: str) -> list[dict[str, Any]]:
    """Every generation's best pack, by generation."""
    out = []
    for p in (state / "artifacts" / "candidates" / domain).glob("gen*_best.json"):
        out.append(json.loads(p.read_text()))
    return sorted(out, key=lambda x: int(x.get("generation", 0)))


def candidate_lines(state: Path, domain: str) -> list[dict[str, Any]]:
    return [
        x
        for x in read_jsonl(state / "logs" / "fitness_history.jsonl")
        if x.get("kind") == "candidate" and x.get("domain") == domain
    ]


def phase_results(state: Path) -> list[dict[str, Any]]:
    """Every window's ``phase_results.json``, oldest first."""
    runs = [p for p in (state / "phase").glob("*/phase_results.json") if not p.parent.is_symlink()]
    out = [json.loads(p.read_text()) for p in runs]  # ``latest`` is a link to one of them
    return sorted(out, key=lambda x: str(x.get("timestamp", "")))


def trials(state: Path) -> list[dict[str, Any]]:
    return read_jsonl(state / "logs" / "trials.jsonl")


def improves(pack: dict[str, Any]) -> bool:
    return bool((pack.get("aggregate") or {}).get("improves_over_baseline"))


def tested_variants(res: dict[str, Any], domain: str) -> list[str]:
    """cand_ids PHASE evaluated for ``domain`` in one window (additive ``variants`` summary)."""
    m = (res.get("metrics") or {}).get(domain) or {}
    return sorted((m.get("variants") or {}).keys())


def promoted(res: dict[str, Any], domain: str) -> list[dict[str, Any]]:
    return [v for v in res.get("promoted_variants", []) if v.get("domain") == domain]


def tournaments(state: Path, domain: str) -> tuple[int, list[str]]:
    """Tournaments done, and the reasons of those that were stopped without a conclusion (additive
    ``tournament_not_concluded`` event, e.g. a host too busy to measure)."""
    ev = read_jsonl(state / "logs" / "events.jsonl")
    done = sum(1 for e in ev if e.get("event") == "tournament_done" and e.get("domain") == domain)
    stopped = [
        str(e.get("reason"))
        for e in ev
        if e.get("event") == "tournament_not_concluded" and e.get("domain") == domain
    ]
    return done, stopped


def phase_spans(state: Path) -> list[tuple[float, float]]:
    """(phase_started, phase_complete) Unix times of every window, from ``events.jsonl``."""
    spans, start = [], None
    for e in read_jsonl(state / "logs" / "events.jsonl"):
        if e.get("event") == "phase_started":
            start = float(e["ts"])
        elif e.get("event") == "phase_complete" and start is not None:
            spans.append((start, float(e["ts"])))
            start = None
    return spans


def trial_outside_share(tr: list[dict[str, Any]]) -> list[float]:
    """Per trial, the outside-CPU share the daemon measured, where it records one (additive field)."""
    return [float(t["outside_cpu"]) for t in tr if isinstance(t.get("outside_cpu"), int | float)]


# --- the noisy neighbour ---------------------------------------------------------------------------------


class OutsideLoad:
    """A CPU load outside the daemon, switched on and off at random.

    Each on and off stretch lasts a uniform ``span_s`` draw (a local Generator), so a load may cover
    part of a round, a whole round, or several: the case a claim must not rest on. The stress-ng runs
    in a session of its own with ``--timeout`` a little past its stretch, so even a killed benchmark
    leaves nothing running for long; :meth:`close` kills its process group and reaps it.
    """

    def __init__(
        self, rng: np.random.Generator, tag: str, *, span_s: tuple[float, float], workers: int
    ) -> None:
        self.rng, self.tag, self.span_s, self.workers = rng, tag, span_s, workers
        self.intervals: list[tuple[float, float]] = []  # Unix seconds (comparable with trials.jsonl)
        self._stop = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._loop, name="outside-load", daemon=True)

    def __enter__(self) -> OutsideLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _span(self) -> float:
        return float(self.rng.uniform(*self.span_s))

    def _loop(self) -> None:
        on = bool(self.rng.integers(2))
        while not self._stop.is_set():
            span = self._span()
            if not on:
                self._stop.wait(span)
            else:
                started = time.time()
                self._proc = subprocess.Popen(
                    ["stress-ng", "--cpu", str(self.workers), "--timeout", f"{int(span) + 5}s", "-q"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env={**os.environ, TAG_ENV: self.tag},
                    start_new_session=True,
                )
                self._stop.wait(span)
                self._kill()
                self.intervals.append((started, time.time()))
            on = not on

    def _kill(self) -> None:
        p, self._proc = self._proc, None
        if p is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._kill()
        kill_tagged(self.tag)

    def on_share(self, t0: float, t1: float) -> float:
        """Share of [t0, t1] (Unix seconds) during which the load was on."""
        if t1 <= t0:
            return 0.0
        covered = sum(max(0.0, min(b, t1) - max(a, t0)) for a, b in self.intervals)
        return covered / (t1 - t0)


def overlapped(tr: dict[str, Any], intervals: list[tuple[float, float]]) -> bool:
    """Whether a trial (``started_at``, ``wall_s`` in trials.jsonl) overlapped an outside-load stretch."""
    try:
        a = float(tr["started_at"])
        b = a + float(tr["wall_s"])
    except (KeyError, TypeError, ValueError):
        return False
    return any(min(b, y) > max(a, x) for x, y in intervals)


def on_sigterm_exit() -> None:
    """SIGTERM to the benchmark unwinds like Ctrl-C, so every ``finally`` stops what it started."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
