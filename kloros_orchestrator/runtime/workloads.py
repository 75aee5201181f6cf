"""Workload processes: the only place that spawns stress-ng (and command-domain workloads).

Theory of operation. Every run gets a private directory under ``workdir`` (its cwd and the home of
its ``--yaml`` file; stressors that write temp files write them there) that is deleted afterwards.
The process starts in a new session, so its pid is also its process-group id. While it runs we read
stdout and stderr concurrently (a full pipe would otherwise stall it) and snapshot its descendants
with psutil, because some stressors call setsid/setpgid and escape a group kill.

The run ends in exactly one of three ways:

* it exits by itself: anything left over (escaped descendants) is SIGKILLed, the exit is mapped
  to a typed error or, for exit 0, its YAML metrics are checked (present, complete, not short);
* it overruns our own deadline (stress-ng can overrun ``--timeout``): we stop it and raise
  ``WorkloadTimeout``;
* the enclosing scope is cancelled (daemon shutdown): we stop it and re-raise the cancellation.

"Stop" always runs in a shielded scope: SIGTERM to the group and every tracked descendant, a
bounded grace, SIGKILL to whatever is left, then reap our child, so neither a stress-ng process nor a
zombie of ours outlives the call.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import anyio
import anyio.abc
import msgspec
import psutil
import yaml
from loguru import logger

from kloros_orchestrator.errors import (
    CommandFailed,
    KilledBySignal,
    MissingMetrics,
    NotEnoughResources,
    ShortRun,
    StressorFailed,
    StressorNotImplemented,
    ToolMissing,
    UnexpectedExit,
    UntrustworthyMetrics,
    WorkloadAborted,
    WorkloadBadOptions,
    WorkloadFailed,
    WorkloadTimeout,
)
from kloros_orchestrator.model import StressorMetric, StressorSpec, WorkloadSpec

INSTALL_HINT: Final = (
    "stress-ng is not installed: run `apt-get update && apt-get install -y stress-ng` as root"
)
PROBE_STRESSOR: Final = "cyclic"  # the latency probe (runs in a stress-ng process of its own)
LOG_CAP_BYTES: Final = 64 * 1024
STDOUT_CAP_BYTES: Final = 4 * 1024 * 1024  # command domains print their results on stdout
ERROR_TAIL_BYTES: Final = 4096

_TRACK_INTERVAL_S: Final = 0.25
_PIPE_DRAIN_S: Final = 1.0  # an escaped descendant may hold our pipes open after the exit
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
# Options this module sets itself, or that would silently change what a run means
# (-q empties the metrics, --job/--dry-run replace the run): never accepted from a spec.
_RESERVED: Final = frozenset(
    {
        "timeout", "t", "yaml", "Y", "metrics", "metrics-brief", "M", "quiet", "q", "taskset",
        "sched", "sched-prio", "job", "j", "log-file", "dry-run", "n",
    }
)  # fmt: skip
_EXIT_ERRORS: Final[dict[int, tuple[type[WorkloadFailed], str]]] = {
    1: (WorkloadBadOptions, "stress-ng rejected its options"),
    2: (StressorFailed, "a stressor failed"),
    3: (NotEnoughResources, "not enough resources (ENOMEM, ENOSPC or a missing system call)"),
    4: (StressorNotImplemented, "a stressor is not implemented on this host"),
    5: (KilledBySignal, "stress-ng was killed by a signal"),
    6: (UnexpectedExit, "stress-ng exited unexpectedly"),
    7: (UntrustworthyMetrics, "bogo-ops are untrustworthy (for example after an OOM kill)"),
}

OnStarted = Callable[[int], object]


class StressRun(msgspec.Struct, frozen=True):
    """One finished workload process: what ran, how it ended, and what it printed."""

    argv: tuple[str, ...]
    returncode: int
    wall_s: float  # measured by us (monotonic), spawn to exit
    requested_s: float  # what stress-ng was told (integer seconds), or the command's duration
    started_at: float  # Unix time of the spawn
    yaml_text: str | None  # stress-ng's --yaml output; None when absent or for commands
    # What the caller parses. stress-ng: stderr then stdout, tail capped at LOG_CAP_BYTES (the cyclic
    # percentile lines live here). Command: its stdout (JSON lines), capped at STDOUT_CAP_BYTES.
    log_text: str
    stdout_text: str  # stdout alone, capped at STDOUT_CAP_BYTES (tail)
    stderr_text: str  # stderr alone, capped at LOG_CAP_BYTES (tail)
    metrics: tuple[StressorMetric, ...]  # parsed from yaml_text; empty for commands
    version: str | None  # stress-ng version; None for commands


# --- tools --------------------------------------------------------------------------------------------

_VERSIONS: dict[str, str] = {}


def find_stress_ng() -> str:
    path = shutil.which("stress-ng")
    if path is None:
        raise ToolMissing(INSTALL_HINT)
    return path


def stress_ng_version(path: str) -> str:
    """The version stress-ng reports (``"0.15.06"``); cached per executable."""
    cached = _VERSIONS.get(path)
    if cached is not None:
        return cached
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolMissing(f"cannot run {path} --version ({exc}); {INSTALL_HINT}") from exc
    match = re.search(r"\bversion\s+(\d[\w.+~-]*)", done.stdout + done.stderr)
    if match is None:
        raise ToolMissing(f"{path} --version printed no version: {done.stdout.strip()!r}")
    _VERSIONS[path] = match.group(1)
    return match.group(1)


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolMissing(f"{name} is not installed (needed to start workloads)")
    return path


# --- argv -------------------------------------------------------------------------------------------


def timeout_seconds(duration_s: float) -> int:
    """stress-ng's --timeout takes whole seconds, and a fraction like ``0.5s`` means *no* timeout."""
    if not math.isfinite(duration_s) or duration_s <= 0:
        raise ValueError(f"duration must be a positive number of seconds, got {duration_s!r}")
    return max(1, math.ceil(duration_s - 1e-9))


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"{what} {name!r} is not a plain stress-ng name (letters, digits, '-', '_', '.')")
    if name in _RESERVED:
        raise ValueError(f"{what} {name!r} is set by the runner itself and cannot be given")
    return name


def _check_token(value: str, what: str) -> str:
    if not value:
        raise ValueError(f"{what} is empty")
    if value.startswith("-"):
        raise ValueError(f"{what} {value!r} must not start with '-'")
    if any(ch.isspace() or ch == "\0" for ch in value):
        raise ValueError(f"{what} {value!r} must not contain whitespace or NUL")
    return value


def _format_value(value: str | int | float, what: str) -> str:
    # bool is handled by the caller (bare flag); numbers may be negative (e.g. --cpu-load-slice -10),
    # which cannot be mistaken for an option since they are formatted by us.
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{what} must be finite, got {value!r}")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return _check_token(value, what)
    raise ValueError(f"{what} has unsupported type {type(value).__name__}")


def _instances(stressor: StressorSpec) -> str:
    n = stressor.instances
    if isinstance(n, str):
        if not n.isdigit():
            raise ValueError(f"stressor {stressor.name!r}: instances {n!r} must be resolved to a number")
        n = int(n)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"stressor {stressor.name!r}: instances must be an integer >= 0, got {n!r}")
    return str(n)


def _check_extra_args(args: Sequence[str]) -> list[str]:
    out: list[str] = []
    for arg in args:
        if not isinstance(arg, str) or not arg or any(ch.isspace() or ch == "\0" for ch in arg):
            raise ValueError(f"extra argument {arg!r} is empty or contains whitespace/NUL")
        if arg.startswith("-"):
            if not arg.startswith("--"):
                raise ValueError(f"extra argument {arg!r}: only long options (--name) are accepted")
            name, _, value = arg[2:].partition("=")
            _check_name(name, "extra option")
            if value:
                _check_token(value, f"value of extra option {name!r}")
        out.append(arg)
    return out


def _prefix(spec: WorkloadSpec, nice_exe: str | None) -> list[str]:
    """``nice -n N`` in front of the workload: it execs, so every forked stressor inherits the niceness."""
    if spec.nice is None:
        return []
    if isinstance(spec.nice, bool) or not -20 <= spec.nice <= 19:
        raise ValueError(f"nice must be an integer in -20..19, got {spec.nice!r}")
    return [nice_exe or _require_tool("nice"), "-n", str(spec.nice)]


def _cpu_list(cpus: Sequence[int]) -> str:
    if not cpus or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in cpus):
        raise ValueError(f"cpus must be a non-empty list of CPU numbers >= 0, got {cpus!r}")
    return ",".join(str(c) for c in cpus)


def build_argv(
    spec: WorkloadSpec, *, exe: str, yaml_path: Path, timeout_s: float, nice_exe: str | None = None
) -> list[str]:
    """The stress-ng argv for ``spec``: every element a separate item, nothing for a shell."""
    if spec.command is not None:
        raise ValueError("a command workload is not a stress-ng run; use build_command_argv")
    if not spec.stressors:
        raise ValueError("a stress-ng workload needs at least one stressor")
    argv = [*_prefix(spec, nice_exe), exe]
    names: set[str] = set()
    for stressor in spec.stressors:
        name = _check_name(stressor.name, "stressor name")
        if name in names:
            raise ValueError(f"stressor {name!r} is listed twice")
        names.add(name)
        argv += [f"--{name}", _instances(stressor)]
        for option, value in stressor.options.items():
            opt = _check_name(option, f"option of stressor {name!r}")
            if isinstance(value, bool):
                if value:
                    argv.append(f"--{opt}")
                continue
            argv += [f"--{opt}", _format_value(value, f"value of option {opt!r}")]
    argv += ["--timeout", f"{timeout_seconds(timeout_s)}s", "--metrics-brief", "--yaml", str(yaml_path)]
    if spec.cpus is not None:
        argv += ["--taskset", _cpu_list(spec.cpus)]
    if spec.sched_policy is not None:
        argv += ["--sched", _check_token(spec.sched_policy, "sched_policy")]
        if spec.sched_prio is not None:
            argv += ["--sched-prio", str(int(spec.sched_prio))]
    elif spec.sched_prio is not None:
        raise ValueError("sched_prio needs sched_policy")
    argv += _check_extra_args(spec.extra_args)
    return argv


def build_probe_argv(exe: str, *, timeout_s: float) -> list[str]:
    """The latency probe: one SCHED_RR ``cyclic`` instance in a stress-ng process of its own.

    It runs beside the workload rather than inside it, so the candidate's placement knobs
    (``--taskset``, ``--sched``, ``nice``) shape the workload but never the probe: every arm is
    measured by the same observer (inside the workload, ``--sched idle`` even stops cyclic from
    reporting). SCHED_RR rather than cyclic's default SCHED_DEADLINE, which refuses a second
    deadline task on small hosts. The percentile lines it prints (``cyclic:   95.40%:  57635 ns``)
    are the latency KPIs.
    """
    return [
        exe, f"--{PROBE_STRESSOR}", "1", "--cyclic-method", "clock_ns", "--cyclic-policy", "rr",
        "--timeout", f"{timeout_seconds(timeout_s)}s",
    ]  # fmt: skip


def build_command_argv(
    spec: WorkloadSpec, *, nice_exe: str | None = None, taskset_exe: str | None = None
) -> list[str]:
    """The argv of a command-domain workload, with ``nice``/``taskset`` prefixes for nice and cpus."""
    if not spec.command:
        raise ValueError("not a command workload (spec.command is empty)")
    if any(not isinstance(a, str) or "\0" in a for a in spec.command) or not spec.command[0]:
        raise ValueError(f"command {spec.command!r}: every element must be a string without NUL")
    if spec.sched_policy is not None or spec.sched_prio is not None:
        raise ValueError("sched_policy/sched_prio are only supported for stress-ng workloads")
    argv = _prefix(spec, nice_exe)
    if spec.cpus is not None:
        argv += [taskset_exe or _require_tool("taskset"), "-c", _cpu_list(spec.cpus)]
    return [*argv, *spec.command]


def _check_env(env: Mapping[str, str]) -> dict[str, str]:
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise ValueError(f"environment variable {key!r} has an invalid name or value")
    return dict(env)


# --- process tracking -------------------------------------------------------------------------------


def live_children(pid: int) -> list[int]:
    """Pids of every live descendant of ``pid`` (empty when ``pid`` is gone)."""
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


@dataclass(eq=False)
class _Tracked:
    process: anyio.abc.Process
    root: psutil.Process | None = None
    descendants: dict[int, psutil.Process] = field(default_factory=dict)
    aborted: bool = False

    def __post_init__(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.root = psutil.Process(self.process.pid)

    @property
    def pgid(self) -> int:
        return self.process.pid  # start_new_session: the child leads its own session and group

    def snapshot(self) -> None:
        """Remember every descendant now alive, so one that leaves the group can still be killed."""
        roots = [self.root] if self.root is not None else []
        roots += self.descendants.values()
        for root in roots:
            try:
                # is_running() compares create times: a recycled pid's children are not ours.
                kids = root.children(recursive=True) if root.is_running() else []
            except psutil.Error:
                continue
            for kid in kids:
                self.descendants.setdefault(kid.pid, kid)

    def survivors(self) -> list[psutil.Process]:
        alive: list[psutil.Process] = []
        for proc in self.descendants.values():
            with contextlib.suppress(psutil.Error):
                # psutil compares create times, so a recycled pid is not mistaken for ours.
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
        return alive

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)
        for proc in self.survivors():
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)


_RUNNING: dict[int, _Tracked] = {}


def running_pids() -> list[int]:
    """Pids (= process-group ids) of the workload processes running now."""
    return list(_RUNNING)


async def _terminate(tracked: _Tracked, grace_s: float) -> None:
    """SIGTERM group + descendants, bounded grace, SIGKILL the rest, reap. Call shielded."""
    tracked.snapshot()
    tracked.signal(signal.SIGTERM)
    with anyio.move_on_after(max(0.0, grace_s)):
        await tracked.process.wait()
    tracked.snapshot()
    tracked.signal(signal.SIGKILL)
    # Unbounded on purpose: SIGKILL cannot be ignored, and returning earlier would leave a zombie.
    await tracked.process.wait()


async def kill_all_running(grace_s: float = 1.0) -> int:
    """Stop every running workload (daemon shutdown); their runs raise ``WorkloadAborted``.

    Returns how many were running.
    """
    victims = list(_RUNNING.values())
    with anyio.CancelScope(shield=True):
        for tracked in victims:
            tracked.aborted = True
        async with anyio.create_task_group() as tg:
            for tracked in victims:
                tg.start_soon(_terminate, tracked, grace_s)
    return len(victims)


def kill_all_running_now() -> int:
    """SIGKILL every running workload group and tracked descendant at once, without waiting.

    For a forced exit (second SIGINT) where the process is about to end anyway; the normal stop
    path is ``kill_all_running``. Returns how many were running.
    """
    victims = list(_RUNNING.values())
    for tracked in victims:
        tracked.aborted = True
        tracked.snapshot()
        tracked.signal(signal.SIGKILL)
    return len(victims)


# --- supervision ------------------------------------------------------------------------------------


class _Tail:
    """Keeps the last ``cap`` bytes of a stream."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.buf = bytearray()
        self.truncated = False

    def add(self, chunk: bytes) -> None:
        self.buf += chunk
        if len(self.buf) > 2 * self.cap:
            del self.buf[: -self.cap]
            self.truncated = True

    def text(self) -> str:
        data = bytes(self.buf)
        if len(data) > self.cap:
            data = data[-self.cap :]
            self.truncated = True
        if self.truncated:
            # Drop the partial first line, so line-based parsers only ever see whole lines.
            newline = data.find(b"\n")
            data = data[newline + 1 :] if newline >= 0 else data
        return data.decode("utf-8", errors="replace")


def _tail_text(text: str, cap: int) -> str:
    data = text.encode("utf-8", errors="replace")
    if len(data) <= cap:
        return text
    data = data[-cap:]
    newline = data.find(b"\n")
    return data[newline + 1 :].decode("utf-8", errors="replace")


@dataclass
class _Outcome:
    argv: list[str]
    returncode: int
    wall_s: float
    started_at: float
    stdout_text: str
    stderr_text: str
    log_text: str
    timed_out: bool
    aborted: bool

    @property
    def error_tail(self) -> str:
        return _tail_text(self.log_text, ERROR_TAIL_BYTES)


async def _drain(stream: anyio.abc.ByteReceiveStream | None, sink: _Tail) -> None:
    if stream is None:
        return
    with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
        async for chunk in stream:
            sink.add(chunk)


async def _track(tracked: _Tracked) -> None:
    while True:
        tracked.snapshot()
        await anyio.sleep(_TRACK_INTERVAL_S)


async def _pump(tracked: _Tracked, out: _Tail, err: _Tail) -> float:
    """Read both pipes and track descendants until the process exits; returns the exit time."""
    process = tracked.process
    readers_done = anyio.Event()

    async def read_both() -> None:
        async with anyio.create_task_group() as readers:
            readers.start_soon(_drain, process.stdout, out)
            readers.start_soon(_drain, process.stderr, err)
        readers_done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(read_both)
        tg.start_soon(_track, tracked)
        await process.wait()
        exited_at = time.monotonic()
        # stress-ng reaps its own stressors before it exits: whatever is still alive escaped.
        tracked.snapshot()
        leftovers = tracked.survivors()
        if leftovers:
            logger.warning(
                "workload {} left {} process(es) behind: {}; killing them",
                process.pid,
                len(leftovers),
                [p.pid for p in leftovers],
            )
        tracked.signal(signal.SIGKILL)
        with anyio.move_on_after(_PIPE_DRAIN_S):
            await readers_done.wait()
        tg.cancel_scope.cancel()
    return exited_at


async def _supervise(
    argv: list[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    deadline_s: float,
    grace_s: float,
    on_started: OnStarted | None,
) -> _Outcome:
    started_at = time.time()
    t0 = time.monotonic()
    process = await anyio.open_process(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )
    tracked = _Tracked(process)
    _RUNNING[process.pid] = tracked
    logger.debug("workload {} started: {}", process.pid, argv)
    out, err = _Tail(STDOUT_CAP_BYTES), _Tail(LOG_CAP_BYTES)
    exited_at: float | None = None
    try:
        if on_started is not None:
            on_started(process.pid)
        with anyio.move_on_after(deadline_s):
            exited_at = await _pump(tracked, out, err)
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                logger.info("stopping workload {} (process group and descendants)", process.pid)
                await _terminate(tracked, grace_s)
            await process.aclose()
            _RUNNING.pop(process.pid, None)
    returncode = process.returncode
    assert returncode is not None  # reaped above
    stdout_text = out.text()
    log_text = err.text()
    if stdout_text.strip():
        separator = "\n" if log_text and not log_text.endswith("\n") else ""
        log_text = f"{log_text}{separator}{stdout_text}"
    return _Outcome(
        argv=argv,
        returncode=returncode,
        wall_s=(exited_at if exited_at is not None else time.monotonic()) - t0,
        started_at=started_at,
        stdout_text=stdout_text,
        stderr_text=err.text(),
        log_text=_tail_text(log_text, LOG_CAP_BYTES),
        timed_out=exited_at is None,
        aborted=tracked.aborted,
    )


def _raise_for_stop(outcome: _Outcome, label: str, deadline_s: float) -> None:
    if outcome.aborted:
        raise WorkloadAborted(
            f"{label} was stopped by the daemon",
            returncode=outcome.returncode,
            stderr_tail=outcome.error_tail,
        )
    if outcome.timed_out:
        raise WorkloadTimeout(
            f"{label} overran its deadline of {deadline_s:.1f}s and was killed",
            returncode=outcome.returncode,
            stderr_tail=outcome.error_tail,
        )


# --- metrics ----------------------------------------------------------------------------------------


_OPTIONAL_METRICS: Final = {
    "bogo-ops-per-second-usr-sys-time": "bogo_ops_per_s_usr_sys",
    "user-time": "user_time_s",
    "system-time": "system_time_s",
    "cpu-usage-per-instance": "cpu_usage_per_instance",
    "max-rss": "max_rss_kb",
}


def _number(text: object) -> float:
    value = float(str(text))
    if not math.isfinite(value):
        raise ValueError(f"non-finite value {text!r}")
    return value


def _optional_number(entry: Mapping[str, object], key: str) -> float | None:
    """A key this stress-ng version did not write (or wrote unreadably) is absent, never 0."""
    if key not in entry:
        return None
    try:
        return _number(entry[key])
    except ValueError:
        return None


def _parse_metrics(yaml_text: str) -> tuple[list[StressorMetric], list[str]]:
    """Minimal reader of stress-ng's ``metrics:`` list; returns the metrics and the problems seen.

    BaseLoader keeps every scalar a string, so ``2026:11:22``-style values are never read as
    sexagesimal integers; the few numbers needed here are converted explicitly.
    """
    try:
        doc = yaml.load(yaml_text, Loader=yaml.BaseLoader)
    except yaml.YAMLError as exc:
        return [], [f"unreadable YAML: {exc}"]
    if not isinstance(doc, dict):
        return [], ["the YAML is not a mapping"]
    entries = doc.get("metrics")
    if not isinstance(entries, list) or not entries:
        return [], ["the YAML has no metrics entries"]
    metrics: list[StressorMetric] = []
    problems: list[str] = []
    for entry in entries:
        if not isinstance(entry, dict):
            problems.append(f"metrics entry {entry!r} is not a mapping")
            continue
        try:
            keys = ("bogo-ops", "bogo-ops-per-second-real-time", "wall-clock-time")
            values = [_number(entry[k]) for k in keys]
            metrics.append(
                StressorMetric(
                    stressor=str(entry["stressor"]),
                    bogo_ops=values[0],
                    bogo_ops_per_s_real=values[1],
                    wall_clock_s=values[2],
                    **{field: _optional_number(entry, key) for key, field in _OPTIONAL_METRICS.items()},
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"metrics entry for {entry.get('stressor', '?')!r} is incomplete: {exc}")
    return metrics, problems


def _single_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error inside nested single-member groups (cancellation is not unwrapped away)."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _expected_stressors(spec: WorkloadSpec) -> set[str]:
    # The probe is not required: without CAP_SYS_NICE (or under RestrictRealtime=) stress-ng skips
    # cyclic and exits 0; the throughput is still valid and the latency KPIs are simply absent.
    return {s.name for s in spec.stressors}


def _check_stress_ng(
    run: StressRun, spec: WorkloadSpec, problems: list[str], min_wall_fraction: float, error_tail: str
) -> None:
    rc = run.returncode
    if rc < 0:
        raise KilledBySignal(
            f"stress-ng was killed by {_signal_name(-rc)}", returncode=rc, stderr_tail=error_tail
        )
    if rc != 0:
        cls, message = _EXIT_ERRORS.get(rc, (UnexpectedExit, "stress-ng exited with an undocumented code"))
        raise cls(message, returncode=rc, stderr_tail=error_tail)
    if run.yaml_text is None:
        raise MissingMetrics("stress-ng exited 0 but wrote no YAML", returncode=rc, stderr_tail=error_tail)
    if not run.metrics:
        raise MissingMetrics(
            f"stress-ng exited 0 without metrics ({'; '.join(problems)})",
            returncode=rc,
            stderr_tail=error_tail,
        )
    # A signalled stress-ng exits 0 with "successful run completed" and shortened metrics.
    floor = min_wall_fraction * run.requested_s
    measured = min(max(m.wall_clock_s for m in run.metrics), run.wall_s)
    if measured < floor:
        raise ShortRun(
            f"run lasted {measured:.2f}s of the requested {run.requested_s:g}s (below {floor:.2f}s); "
            "stress-ng stops early and exits 0 when signalled",
            returncode=rc,
            stderr_tail=error_tail,
        )
    missing = sorted(_expected_stressors(spec) - {m.stressor for m in run.metrics})
    if missing:
        detail = f"; {'; '.join(problems)}" if problems else ""
        raise MissingMetrics(
            f"no metrics for stressor(s) {', '.join(missing)}{detail}", returncode=rc, stderr_tail=error_tail
        )


# --- entry point ------------------------------------------------------------------------------------


def _deadline(requested_s: float, slack_s: float | None) -> float:
    slack = max(2.0, requested_s) if slack_s is None else slack_s
    if not math.isfinite(slack) or slack < 0:
        raise ValueError(f"deadline_slack_s must be >= 0, got {slack_s!r}")
    return requested_s + slack


def _make_rundir(workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="run-", dir=workdir))


async def run_stress_ng(
    spec: WorkloadSpec,
    *,
    workdir: Path,
    exe: str | None = None,
    grace_s: float = 1.0,
    deadline_slack_s: float | None = None,
    min_wall_fraction: float = 0.9,
    on_started: OnStarted | None = None,
) -> StressRun:
    """Run one workload to completion and return it, or raise a ``WorkloadFailed`` subclass.

    ``spec.command`` set: that argv runs instead of stress-ng (no YAML; its stdout is returned).
    The deadline is ``requested + max(2, requested)`` seconds unless ``deadline_slack_s`` is given.
    ``on_started(pid)`` is called right after the spawn (pid = process-group id).
    Cancellation stops the process group (SIGTERM, ``grace_s``, SIGKILL), reaps it and re-raises.
    """
    env = os.environ | _check_env(spec.env)
    if spec.command is not None:
        return await _run_command(
            spec,
            workdir=workdir,
            env=env,
            grace_s=grace_s,
            deadline_slack_s=deadline_slack_s,
            on_started=on_started,
        )
    exe = exe or find_stress_ng()
    version = _VERSIONS.get(exe) or await anyio.to_thread.run_sync(stress_ng_version, exe)
    requested = float(timeout_seconds(spec.duration_s))
    deadline = _deadline(requested, deadline_slack_s)
    rundir = _make_rundir(workdir)
    try:
        yaml_path = rundir / "metrics.yaml"
        argv = build_argv(spec, exe=exe, yaml_path=yaml_path, timeout_s=spec.duration_s)
        probe: _Outcome | None = None
        try:
            async with anyio.create_task_group() as tg:
                if spec.probe:

                    async def run_probe() -> None:
                        nonlocal probe
                        probe = await _supervise(
                            build_probe_argv(exe, timeout_s=spec.duration_s), cwd=rundir, env=env,
                            deadline_s=deadline, grace_s=grace_s, on_started=None,
                        )

                    tg.start_soon(run_probe)
                outcome = await _supervise(
                    argv, cwd=rundir, env=env, deadline_s=deadline, grace_s=grace_s, on_started=on_started
                )
                if outcome.returncode != 0 or outcome.timed_out or outcome.aborted:
                    tg.cancel_scope.cancel()  # the trial is lost: do not wait out the probe
        except BaseExceptionGroup as group:
            # The task group wraps what its tasks raise: unwrap so callers can catch it by type.
            leaf = _single_error(group)
            if isinstance(leaf, FileNotFoundError):
                raise ToolMissing(f"{leaf}; {INSTALL_HINT}") from leaf
            raise leaf from group
        yaml_text: str | None
        try:
            yaml_text = yaml_path.read_text(errors="replace")
        except OSError:
            yaml_text = None
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
    _raise_for_stop(outcome, "stress-ng", deadline)
    metrics, problems = _parse_metrics(yaml_text) if yaml_text is not None else ([], ["no YAML"])
    run = StressRun(
        argv=tuple(argv),
        returncode=outcome.returncode,
        wall_s=outcome.wall_s,
        requested_s=requested,
        started_at=outcome.started_at,
        yaml_text=yaml_text,
        # The probe's lines follow the workload's; a failed probe only leaves latency absent.
        log_text=outcome.log_text + ("\n" + probe.log_text if probe is not None else ""),
        stdout_text=outcome.stdout_text,
        stderr_text=outcome.stderr_text,
        metrics=tuple(metrics),
        version=version,
    )
    _check_stress_ng(run, spec, problems, min_wall_fraction, outcome.error_tail)
    logger.debug("stress-ng {} finished in {:.2f}s with {} metrics", argv[0], run.wall_s, len(metrics))
    return run


async def _run_command(
    spec: WorkloadSpec,
    *,
    workdir: Path,
    env: Mapping[str, str],
    grace_s: float,
    deadline_slack_s: float | None,
    on_started: OnStarted | None,
) -> StressRun:
    if not math.isfinite(spec.duration_s) or spec.duration_s <= 0:
        raise ValueError(f"duration must be a positive number of seconds, got {spec.duration_s!r}")
    argv = build_command_argv(spec)
    deadline = _deadline(spec.duration_s, deadline_slack_s)
    rundir = _make_rundir(workdir)
    try:
        try:
            outcome = await _supervise(
                argv, cwd=rundir, env=env, deadline_s=deadline, grace_s=grace_s, on_started=on_started
            )
        except OSError as exc:
            raise CommandFailed(f"cannot start command {argv[0]!r}: {exc}") from exc
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
    _raise_for_stop(outcome, f"command {spec.command[0]!r}" if spec.command else "command", deadline)
    rc = outcome.returncode
    if rc < 0:
        raise KilledBySignal(
            f"command was killed by {_signal_name(-rc)}", returncode=rc, stderr_tail=outcome.error_tail
        )
    if rc != 0:
        raise CommandFailed("command exited non-zero", returncode=rc, stderr_tail=outcome.error_tail)
    return StressRun(
        argv=tuple(argv),
        returncode=rc,
        wall_s=outcome.wall_s,
        requested_s=spec.duration_s,
        started_at=outcome.started_at,
        yaml_text=None,
        log_text=outcome.stdout_text,
        stdout_text=outcome.stdout_text,
        stderr_text=outcome.stderr_text,
        metrics=(),
        version=None,
    )
