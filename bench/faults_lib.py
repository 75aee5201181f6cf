"""The fault campaign's harness: sandboxes, daemon processes, verdicts (see ``faults.py``).

Everything here reaches the product only through its public contract: ``python -m
kloros_orchestrator`` subprocesses, the files under ``state_dir``, the status socket and signals.
Each case gets a sandbox of its own (``tempfile.mkdtemp``) holding its config, its state directory,
a temporary ``sysfs_root`` with one knob, files "outside" the state directory that must never
change, and (for some cases) a fake ``stress-ng``. Every process a case starts carries
``KLR_FAULT_TAG=<uuid>`` in its environment, so whatever it leaves behind is found by that tag and
killed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

TAG_ENV = "KLR_FAULT_TAG"
DOMAIN = "fx"  # the generic domain every sandbox defines
KNOB_REL = "sys/kernel/fx/level"  # its one system knob, relative to sysfs_root
STOCK = "50"  # the knob's value as found at start-up
REGIMES = ("idle", "normal", "stress", "mixed")
AS_LIMIT = 4 << 30  # address-space cap of every product process: a runaway read cannot take the host
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ (\w+)\s+")
_QUIET_LEVELS = {"TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING"}


# --- verdicts and cases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    survived: bool
    reason: str


def ok(reason: str = "") -> Verdict:
    return Verdict(True, reason)


def fail(reason: str) -> Verdict:
    return Verdict(False, reason)


@dataclass(frozen=True)
class Case:
    """One generated input: ``fn`` runs it in a fresh sandbox and returns the verdict."""

    cls: str
    name: str
    fn: Callable[[Sandbox], Verdict]
    timeout: float  # the whole case, start to verdict; the runner kills it after this (+ slack)


@dataclass
class Result:
    """How one product process ended."""

    rc: int | None  # None: it hung and was killed
    out: str
    err: str
    seconds: float

    @property
    def hung(self) -> bool:
        return self.rc is None

    def last_line(self) -> str:
        """The exception of a traceback if there is one, else the last line of output."""
        text = self.err or self.out
        exc = traceback_line(text)
        if exc is not None:
            return exc
        lines = [x for x in text.splitlines() if x.strip()]
        return short(lines[-1]) if lines else "(no output)"

    def describe(self) -> str:
        """``exit N: <line>``, ``killed by SIGTERM``, or ``hang``."""
        if self.rc is None:
            log = log_summary(self.err)
            return f"hang (killed after {self.seconds:.0f} s)" + (f"; log: {log}" if log else "")
        if self.rc < 0:
            exc = traceback_line(self.err)
            with suppress(ValueError):
                return f"killed by {signal.Signals(-self.rc).name}" + (f": {exc}" if exc else "")
        return f"exit {self.rc}: {self.last_line()}"


def short(text: str, n: int = 140) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def has_traceback(text: str) -> bool:
    return "Traceback (most recent call last)" in text


_EXC_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*: .*|[A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit))$")


def traceback_line(text: str) -> str | None:
    """The exception line of the last (innermost) traceback in ``text`` (``KeyError: 'b'``), or None."""
    at = text.rfind("Traceback (most recent call last)")
    if at < 0:
        return None
    for line in text[at:].splitlines()[1:]:
        bare = re.sub(r"^[\s|+]*", "", line)
        if _EXC_LINE.match(bare) and not bare.startswith("File "):
            return short(bare)
    return "Traceback"


def log_summary(stderr: str) -> str:
    """The first error line of the daemon's log without its time stamp, plus the exception if any."""
    lines = error_lines(stderr)
    if not lines:
        return ""
    first = _LOG_LINE.sub("", lines[0]).strip() or lines[0]
    exc = traceback_line(stderr)
    return short(first + (f" ({exc})" if exc else ""), 160)


def error_lines(stderr: str) -> list[str]:
    """stderr lines that are not the daemon's own INFO/WARNING log lines (what an operator must read)."""
    out = []
    for line in stderr.splitlines():
        if not line.strip():
            continue
        m = _LOG_LINE.match(line)
        if m and m.group(1) in _QUIET_LEVELS:
            continue
        out.append(line)
    return out


# --- the sandbox -------------------------------------------------------------------------------------


@dataclass
class Sandbox:
    """One case's private directory and the processes it started."""

    wd: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    path_prefix: Path | None = None  # a directory put first on PATH (fake stress-ng)
    overdue: bool = False  # set by the runner's watchdog

    @classmethod
    def create(cls) -> Sandbox:
        return cls(Path(tempfile.mkdtemp(prefix="kf")))  # short: Unix socket paths are ~107 bytes

    @property
    def state(self) -> Path:
        return self.wd / "state"

    @property
    def sock(self) -> Path:
        return self.wd / "k.sock"

    @property
    def cfg(self) -> Path:
        return self.wd / "dream.yaml"

    @property
    def knob(self) -> Path:
        return self.wd / "sys" / KNOB_REL

    @property
    def outside(self) -> Path:
        return self.wd / "outside"

    @property
    def marker(self) -> Path:
        return self.outside / "MARKER"

    def knob_value(self) -> str | None:
        try:
            return self.knob.read_text().strip()
        except OSError:
            return None

    def setup(
        self,
        *,
        workload: str = "command",
        window: str = "now+3600",
        stressors: tuple[str, ...] = ("cpu",),
        probe: bool = False,
        **dream: Any,
    ) -> Path:
        """Knob tree, regimes, workload script, outside files and a valid config; returns the config."""
        self.knob.parent.mkdir(parents=True)
        self.knob.write_text(STOCK + "\n")
        (self.wd / "regimes").mkdir()
        regime = {
            "duration": 1,
            "stressors": [{"name": s, "instances": 1} for s in stressors],
            "probe": probe,
        }
        (self.wd / "regimes" / f"{DOMAIN}.yaml").write_text(yaml.safe_dump(dict.fromkeys(REGIMES, regime)))
        work = self.wd / "work.sh"
        work.write_text('#!/bin/sh\necho "{\\"score\\": 1$$}"\n')
        work.chmod(0o755)
        self.outside.mkdir()
        (self.outside / "victim.txt").write_text("SAFE\n")
        (self.outside / "dir").mkdir()
        (self.outside / "dir" / "inner.txt").write_text("SAFE\n")
        self.write_config(self.config(workload=workload, window=window, **dream))
        return self.cfg

    def config(self, *, workload: str = "command", window: str = "now+3600", **dream: Any) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "kind": "generic",
            "knobs": {"level": {"type": "int", "low": 1, "high": 100, "path": KNOB_REL}},
        }
        if workload == "command":
            opts["workload"] = {"command": [str(self.wd / "work.sh")]}
            opts["kpis"] = {"score": "higher"}
        return {
            "state_dir": str(self.state),
            "socket": str(self.sock),
            "sysfs_root": str(self.wd / "sys"),
            "seed": 7,
            "bootstrap_samples": 200,
            "dream": {
                "domains": [DOMAIN],
                "population": 2,
                "epochs_per_cycle": 1,
                "trials": 2,
                "min_trials": 2,
                "trial_seconds": 1,
                "pacing": {"min_sleep_s": 600, "max_sleep_s": 900},
                **dream,
            },
            "phase": {
                "window": {"start": window, "duration": 600},
                "qtime": {"epochs": 1, "slices": 4, "replicas": 1},
                "trial_seconds": 1,
            },
            "domain_options": {DOMAIN: opts},
        }

    def write_config(self, cfg: dict[str, Any] | str | bytes) -> Path:
        if isinstance(cfg, dict):
            cfg = yaml.safe_dump(cfg, sort_keys=False)
        self.cfg.write_bytes(cfg.encode() if isinstance(cfg, str) else cfg)
        return self.cfg

    # --- processes -------------------------------------------------------------------------------

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "KLR_DREAM_TRIALS")}
        env[TAG_ENV] = self.tag
        if self.path_prefix is not None:
            env["PATH"] = f"{self.path_prefix}{os.pathsep}{env.get('PATH', '')}"
        return {**env, **(extra or {})}

    def spawn(self, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """``python -m kloros_orchestrator <args>`` in its own session; output to files in the sandbox."""
        n = len(self.procs)
        out = open(self.wd / f"p{n}.out", "wb")  # noqa: SIM115 - closed right after the spawn
        err = open(self.wd / f"p{n}.err", "wb")  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "kloros_orchestrator", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.env(env),
                cwd=self.wd,
                start_new_session=True,
            )
        finally:
            out.close()
            err.close()
        with suppress(OSError, ProcessLookupError):
            resource.prlimit(proc.pid, resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
            resource.prlimit(proc.pid, resource.RLIMIT_CORE, (0, 0))
        self.procs.append(proc)
        return proc

    def output(self, proc: subprocess.Popen[bytes]) -> tuple[str, str]:
        n = self.procs.index(proc)
        read = lambda p: p.read_bytes().decode(errors="replace") if p.exists() else ""  # noqa: E731
        return read(self.wd / f"p{n}.out"), read(self.wd / f"p{n}.err")

    def finish(self, proc: subprocess.Popen[bytes], timeout: float, t0: float | None = None) -> Result:
        """Wait for ``proc``; after ``timeout`` seconds its whole session is killed (a hang)."""
        t0 = time.monotonic() if t0 is None else t0
        try:
            rc: int | None = proc.wait(timeout=max(0.1, timeout))
        except subprocess.TimeoutExpired:
            killpg(proc)
            rc = None
        if self.overdue:
            rc = None
        out, err = self.output(proc)
        return Result(rc, out, err, time.monotonic() - t0)

    def cli(self, args: list[str], timeout: float, env: dict[str, str] | None = None) -> Result:
        t0 = time.monotonic()
        return self.finish(self.spawn(args, env), timeout, t0)

    def run_once(self, timeout: float = 30.0) -> Result:
        return self.cli(["run", "--config", str(self.cfg), "--once"], timeout)

    def start_daemon(self) -> subprocess.Popen[bytes]:
        return self.spawn(["run", "--config", str(self.cfg)])

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 15.0, sig: int = signal.SIGTERM) -> Result:
        """Signal a running daemon and wait for its exit (a hang past ``timeout`` is killed)."""
        t0 = time.monotonic()
        if proc.poll() is None:
            with suppress(ProcessLookupError):
                proc.send_signal(sig)
        return self.finish(proc, timeout, t0)

    def leftovers(self, wait_s: float = 1.0) -> list[str]:
        """Processes carrying this sandbox's tag that are still alive once its daemons have exited."""
        end = time.monotonic() + wait_s
        while True:
            live = tagged(self.tag)
            if not live or time.monotonic() >= end:
                break
            time.sleep(0.1)
        names = []
        for p in live:
            with suppress(psutil.Error):
                names.append(f"{p.name()}[{p.pid}]")
        return sorted(names)

    def cleanup(self, keep: bool = False) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                killpg(proc)
        kill_tagged(self.tag)
        if keep:
            return
        for p in self.wd.rglob("*"):  # a fault may have left a directory unwritable or foreign
            with suppress(OSError):
                if p.is_dir() and not p.is_symlink():
                    p.chmod(0o755)
        shutil.rmtree(self.wd, ignore_errors=True)

    # --- the status socket -----------------------------------------------------------------------

    def status(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The status object, or None when the daemon does not answer ok within ``timeout``."""
        try:
            reply = query(self.sock, {"cmd": "status"}, timeout)
        except (OSError, ValueError):
            return None
        st = reply.get("status") if reply.get("ok") else None
        return st if isinstance(st, dict) else None

    def wait_status(
        self, proc: subprocess.Popen[bytes], pred: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any] | None:
        """Poll status until ``pred`` holds; None when the daemon exits or the time is up first."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and not self.overdue:
            if proc.poll() is not None:
                return None
            st = self.status(timeout=2.0)
            if st is not None and pred(st):
                return st
            time.sleep(0.1)
        return None


def killpg(proc: subprocess.Popen[bytes]) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def tagged(tag: str) -> list[psutil.Process]:
    """Live processes (zombies excluded) whose environment carries ``KLR_FAULT_TAG=tag``."""
    found = []
    for p in psutil.process_iter(["status"]):
        if p.info["status"] == psutil.STATUS_ZOMBIE or p.pid == os.getpid():
            continue
        with suppress(psutil.Error):
            if p.environ().get(TAG_ENV) == tag:
                found.append(p)
    return found


def kill_tagged(tag: str) -> None:
    for p in tagged(tag):
        with suppress(psutil.Error):
            p.kill()


def query(path: Path, req: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """One NDJSON request on a fresh connection; the first answer line, decoded."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(os.fspath(path))
        s.sendall(json.dumps(req).encode() + b"\n")
        return read_answer(s)


def read_answer(s: socket.socket) -> dict[str, Any]:
    buf = b""
    while b"\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed without an answer")
        buf += chunk
    out = json.loads(buf.split(b"\n", 1)[0])
    if not isinstance(out, dict):
        raise ValueError("answer is not an object")
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Whole JSON lines of ``path`` (a regular file only; anything else reads as empty)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return []
        text = path.read_text(errors="replace")
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        with suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict):
                rows.append(obj)
    return rows


# --- things that must not change ---------------------------------------------------------------------


def tree_snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Type, mode, owner and content hash of everything under ``root`` (symlinks not followed)."""
    snap: dict[str, tuple[Any, ...]] = {}
    for p in [root, *sorted(root.rglob("*"))]:
        try:
            st = os.lstat(p)
        except OSError:
            continue
        digest = ""
        if stat.S_ISREG(st.st_mode):
            with suppress(OSError):
                digest = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        snap[str(p.relative_to(root))] = (
            stat.S_IFMT(st.st_mode),
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            digest,
        )
    return snap


def tree_changes(before: dict[str, tuple[Any, ...]], after: dict[str, tuple[Any, ...]]) -> list[str]:
    keys = sorted(set(before) | set(after))
    return [k for k in keys if before.get(k) != after.get(k)]


def raise_fd_limit() -> None:
    """Socket cases hold over a thousand connections from this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
