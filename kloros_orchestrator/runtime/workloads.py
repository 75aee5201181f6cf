"""Run one workload to completion: the only entry point that spawns stress-ng (and command workloads).

Theory of operation. Every run gets a private directory under ``workdir`` (its cwd and the home of
its ``--yaml`` file; stressors that write temp files write them there) that is deleted afterwards.
The latency probe, when asked for, is a stress-ng process of its own beside the workload. Processes
are spawned, tracked, stopped and reaped by ``runtime.processes`` (every process a run starts is
gone when it ends, daemonised ones included; the daemon calls ``become_subreaper`` at start-up);
argv comes from ``runtime.stressng_argv``; stress-ng's output is read by ``measure.stressng_output``.

The run ends in exactly one of three ways:

* it exits by itself: the exit is mapped to a typed error or, for exit 0, its YAML metrics are
  checked (present, usable, every requested stressor there, not short);
* it overruns our own deadline (stress-ng can overrun ``--timeout``): it is stopped and we raise
  ``WorkloadTimeout``;
* the enclosing scope is cancelled (daemon shutdown): it is stopped and the cancellation re-raised.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import anyio
import msgspec
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
from kloros_orchestrator.measure.stressng_output import (
    MIN_WALL_FRACTION,
    PROBE_STRESSOR,
    parse_yaml_metrics,
    short_run_reason,
)
from kloros_orchestrator.model import StressorMetric, WorkloadSpec
from kloros_orchestrator.runtime.processes import (
    ERROR_TAIL_BYTES,
    LOG_CAP_BYTES,
    RUN_TOKEN_ENV,
    STDOUT_CAP_BYTES,
    OnStarted,
    Outcome,
    become_subreaper,
    is_subreaper,
    kill_all_running,
    kill_all_running_now,
    live_children,
    running_pids,
    supervise,
)
from kloros_orchestrator.runtime.stressng_argv import (
    INSTALL_HINT,
    build_argv,
    build_command_argv,
    build_probe_argv,
    cached_stress_ng_version,
    check_env,
    find_stress_ng,
    stress_ng_version,
    timeout_seconds,
)
from kloros_orchestrator.safefs import read_bounded

__all__ = [
    "ERROR_TAIL_BYTES",
    "INSTALL_HINT",
    "LOG_CAP_BYTES",
    "PROBE_STRESSOR",
    "RUN_TOKEN_ENV",
    "STDOUT_CAP_BYTES",
    "OnStarted",
    "StressRun",
    "become_subreaper",
    "build_argv",
    "build_command_argv",
    "build_probe_argv",
    "find_stress_ng",
    "is_subreaper",
    "kill_all_running",
    "kill_all_running_now",
    "live_children",
    "run_stress_ng",
    "running_pids",
    "stress_ng_version",
    "timeout_seconds",
]

_EXIT_ERRORS: Final[dict[int, tuple[type[WorkloadFailed], str]]] = {
    1: (WorkloadBadOptions, "stress-ng rejected its options"),
    2: (StressorFailed, "a stressor failed"),
    3: (NotEnoughResources, "not enough resources (ENOMEM, ENOSPC or a missing system call)"),
    4: (StressorNotImplemented, "a stressor is not implemented on this host"),
    5: (KilledBySignal, "stress-ng was killed by a signal"),
    6: (UnexpectedExit, "stress-ng exited unexpectedly"),
    7: (UntrustworthyMetrics, "bogo-ops are untrustworthy (for example after an OOM kill)"),
}


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


# --- outcome checks ---------------------------------------------------------------------------------


def _raise_for_stop(outcome: Outcome, label: str, deadline_s: float) -> None:
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
    outcome: Outcome, yaml_text: str | None, spec: WorkloadSpec, requested_s: float, min_wall_fraction: float
) -> list[StressorMetric]:
    """The metrics of a stress-ng run that exited by itself, or the typed error saying why it is no trial."""
    rc, tail = outcome.returncode, outcome.error_tail
    if rc < 0:
        raise KilledBySignal(f"stress-ng was killed by {_signal_name(-rc)}", returncode=rc, stderr_tail=tail)
    if rc != 0:
        cls, message = _EXIT_ERRORS.get(rc, (UnexpectedExit, "stress-ng exited with an undocumented code"))
        raise cls(message, returncode=rc, stderr_tail=tail)
    if yaml_text is None:
        raise MissingMetrics("stress-ng exited 0 but wrote no YAML", returncode=rc, stderr_tail=tail)
    try:
        metrics = parse_yaml_metrics(yaml_text)
    except MissingMetrics as exc:
        raise MissingMetrics(
            f"stress-ng exited 0 without usable metrics ({exc})", returncode=rc, stderr_tail=tail
        ) from exc
    short = short_run_reason(metrics, requested_s, min_fraction=min_wall_fraction, wall_s=outcome.wall_s)
    if short is not None:
        raise ShortRun(
            f"{short}; stress-ng stops early and exits 0 when signalled", returncode=rc, stderr_tail=tail
        )
    missing = sorted(_expected_stressors(spec) - {m.stressor for m in metrics})
    if missing:
        raise MissingMetrics(
            f"no metrics for stressor(s) {', '.join(missing)}", returncode=rc, stderr_tail=tail
        )
    return metrics


# --- entry point ------------------------------------------------------------------------------------


def _deadline(requested_s: float, slack_s: float | None) -> float:
    slack = max(2.0, requested_s) if slack_s is None else slack_s
    if not math.isfinite(slack) or slack < 0:
        raise ValueError(f"deadline_slack_s must be >= 0, got {slack_s!r}")
    return requested_s + slack


def _make_rundir(workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="run-", dir=workdir))


YAML_CAP_BYTES: Final = 4 * 1024 * 1024  # a metrics report is a few KiB; never read without bound


def _read_text(path: Path) -> str | None:
    """stress-ng's report: a regular file in our private run directory, bounded; None when absent,
    a link, not a regular file, or larger than any real report."""
    try:
        return read_bounded(path, max_bytes=YAML_CAP_BYTES).decode(errors="replace")
    except OSError:
        return None


async def _run_beside_probe(
    argv: list[str],
    probe_argv: list[str] | None,
    *,
    cwd: Path,
    env: Mapping[str, str],
    deadline_s: float,
    grace_s: float,
    on_started: OnStarted | None,
) -> tuple[Outcome, Outcome | None]:
    """The workload's outcome, and the probe's when one ran beside it; a lost trial stops the probe."""
    probe: Outcome | None = None
    try:
        async with anyio.create_task_group() as tg:
            if probe_argv is not None:

                async def run_probe(probe_argv: list[str]) -> None:
                    nonlocal probe
                    probe = await supervise(
                        probe_argv, cwd=cwd, env=env, deadline_s=deadline_s, grace_s=grace_s, on_started=None
                    )

                tg.start_soon(run_probe, probe_argv)
            outcome = await supervise(
                argv, cwd=cwd, env=env, deadline_s=deadline_s, grace_s=grace_s, on_started=on_started
            )
            if outcome.returncode != 0 or outcome.timed_out or outcome.aborted:
                tg.cancel_scope.cancel()  # the trial is lost: do not wait out the probe
    except BaseExceptionGroup as group:
        # The task group wraps what its tasks raise: unwrap so callers can catch it by type.
        leaf = _single_error(group)
        if isinstance(leaf, FileNotFoundError):
            raise ToolMissing(f"{leaf}; {INSTALL_HINT}") from leaf
        raise leaf from group
    return outcome, probe


async def run_stress_ng(
    spec: WorkloadSpec,
    *,
    workdir: Path,
    exe: str | None = None,
    grace_s: float = 1.0,
    deadline_slack_s: float | None = None,
    min_wall_fraction: float = MIN_WALL_FRACTION,
    on_started: OnStarted | None = None,
) -> StressRun:
    """Run one workload to completion and return it, or raise a ``WorkloadFailed`` subclass.

    ``spec.command`` set: that argv runs instead of stress-ng (no YAML; its stdout is returned).
    The deadline is ``requested + max(2, requested)`` seconds unless ``deadline_slack_s`` is given.
    ``on_started(pid)`` is called right after the spawn (pid = process-group id).
    Cancellation stops the process group (SIGTERM, ``grace_s``, SIGKILL), reaps it and re-raises.
    """
    env = os.environ | check_env(spec.env)
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
    version = cached_stress_ng_version(exe) or await anyio.to_thread.run_sync(stress_ng_version, exe)
    requested = float(timeout_seconds(spec.duration_s))
    deadline = _deadline(requested, deadline_slack_s)
    rundir = _make_rundir(workdir)
    try:
        yaml_path = rundir / "metrics.yaml"
        argv = build_argv(spec, exe=exe, yaml_path=yaml_path, timeout_s=spec.duration_s)
        probe_argv = build_probe_argv(exe, timeout_s=spec.duration_s) if spec.probe else None
        outcome, probe = await _run_beside_probe(
            argv, probe_argv, cwd=rundir, env=env, deadline_s=deadline, grace_s=grace_s, on_started=on_started
        )
        yaml_text = _read_text(yaml_path)
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
    _raise_for_stop(outcome, "stress-ng", deadline)
    metrics = _check_stress_ng(outcome, yaml_text, spec, requested, min_wall_fraction)
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
            outcome = await supervise(
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
