"""runtime.workloads (with its argv and process modules): argv building (pure), outcome checks (pure)
and real stress-ng / command processes (1 s runs)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import anyio
import psutil
import pytest

from kloros_orchestrator import errors, runtime
from kloros_orchestrator.measure import stressng_output
from kloros_orchestrator.model import StressorMetric, StressorSpec, WorkloadSpec
from kloros_orchestrator.runtime import workloads
from kloros_orchestrator.runtime.processes import Outcome
from kloros_orchestrator.runtime.workloads import (
    INSTALL_HINT,
    build_argv,
    build_command_argv,
    find_stress_ng,
    kill_all_running,
    live_children,
    run_stress_ng,
    running_pids,
    stress_ng_version,
    timeout_seconds,
)

HAVE_STRESS_NG = shutil.which("stress-ng") is not None
needs_stress_ng = pytest.mark.skipif(not HAVE_STRESS_NG, reason="stress-ng is not installed")
PERCENTILE_LINE = re.compile(r"cyclic:\s+\d+\.\d+%:\s+\d+ ns")


def cpu_spec(duration: float, *, probe: bool = False, instances: int = 1) -> WorkloadSpec:
    return WorkloadSpec(stressors=(StressorSpec("cpu", instances),), duration_s=duration, probe=probe)


def command_spec(code: str, duration: float = 1.0) -> WorkloadSpec:
    return WorkloadSpec(stressors=(), duration_s=duration, probe=False, command=(sys.executable, "-c", code))


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def our_unreaped_child(pid: int) -> bool:
    try:
        return psutil.Process(pid).ppid() == os.getpid()
    except psutil.NoSuchProcess:
        return False


def group_members(pgid: int) -> list[int]:
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def catches(pid: int, sig: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    match = re.search(r"^SigCgt:\s*([0-9a-f]+)$", text, re.M)
    return match is not None and bool(int(match.group(1), 16) & (1 << (sig - 1)))


def cpu_seconds(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return times.user + times.system


async def wait_for_children(pid: int, n: int = 1) -> list[int]:
    # Condition wait (bounded by the caller's fail_after), not a sleep standing in for readiness.
    while len(kids := live_children(pid)) < n:
        await anyio.sleep(0.01)
    return kids


def assert_all_gone(pid: int, kids: list[int], workdir: Path) -> None:
    assert not alive(pid)
    assert not our_unreaped_child(pid), "our child was not reaped (zombie)"
    assert [k for k in kids if alive(k)] == []
    assert group_members(pid) == []
    assert pid not in running_pids()
    assert list(workdir.iterdir()) == [], "private run directory left behind"


# --- argv (pure) ------------------------------------------------------------------------------------


def test_build_argv_puts_every_flag_in_its_own_item(tmp_path: Path) -> None:
    spec = WorkloadSpec(
        stressors=(
            StressorSpec("cpu", 2, {"cpu-load": 50, "cpu-method": "matrixprod"}),
            StressorSpec("vm", 1, {"vm-bytes": "32M", "vm-keep": True, "vm-populate": False, "vm-hang": 0.5}),
        ),
        duration_s=1.2,
        probe=True,
        cpus=(0, 1),
        nice=5,
        sched_policy="batch",
        extra_args=("--temp-path", "/var/tmp"),
    )
    argv = build_argv(
        spec, exe="/usr/bin/stress-ng", yaml_path=tmp_path / "m.yaml", timeout_s=1.2, nice_exe="/n"
    )
    assert argv == [
        "/n", "-n", "5", "/usr/bin/stress-ng",
        "--cpu", "2", "--cpu-load", "50", "--cpu-method", "matrixprod",
        "--vm", "1", "--vm-bytes", "32M", "--vm-keep", "--vm-hang", "0.5",
        "--timeout", "2s", "--metrics-brief", "--yaml", str(tmp_path / "m.yaml"),
        "--taskset", "0,1", "--sched", "batch", "--temp-path", "/var/tmp",
    ]  # fmt: skip
    assert "-q" not in argv and "--quiet" not in argv


def test_build_argv_keeps_shell_metacharacters_literal(tmp_path: Path) -> None:
    spec = WorkloadSpec(
        stressors=(StressorSpec("cpu", 1, {"cpu-method": "$(reboot);`id`|x>y"}),), duration_s=1
    )
    argv = build_argv(spec, exe="stress-ng", yaml_path=tmp_path / "m.yaml", timeout_s=1)
    assert argv[argv.index("--cpu-method") + 1] == "$(reboot);`id`|x>y"


@pytest.mark.parametrize(
    "spec",
    [
        WorkloadSpec(stressors=(StressorSpec("--evil", 1),), duration_s=1),
        WorkloadSpec(stressors=(StressorSpec("cpu x", 1),), duration_s=1),
        WorkloadSpec(stressors=(StressorSpec("cpu", 1, {"--evil": 1}),), duration_s=1),
        WorkloadSpec(stressors=(StressorSpec("cpu", 1, {"cpu-method": "--evil"}),), duration_s=1),
        WorkloadSpec(stressors=(StressorSpec("cpu", 1, {"cpu-method": "a b"}),), duration_s=1),
        WorkloadSpec(stressors=(StressorSpec("cpu", 1, {"cpu-method": "a\0b"}),), duration_s=1),
        WorkloadSpec(stressors=(StressorSpec("cpu", 1, {"cpu-load": float("nan")}),), duration_s=1),
        WorkloadSpec(stressors=(StressorSpec("cpu", 1, {"timeout": 99}),), duration_s=1),
        WorkloadSpec(stressors=(StressorSpec("cpu", 1, {"yaml": "/etc/x"}),), duration_s=1),
        WorkloadSpec(stressors=(StressorSpec("cpu", "auto"),), duration_s=1),
        WorkloadSpec(stressors=(StressorSpec("cpu", -1),), duration_s=1),
        WorkloadSpec(stressors=(StressorSpec("cpu", 1), StressorSpec("cpu", 1)), duration_s=1),
        WorkloadSpec(stressors=(), duration_s=1),
        WorkloadSpec(stressors=(StressorSpec("cpu", 1),), duration_s=0),
        WorkloadSpec(stressors=(StressorSpec("cpu", 1),), duration_s=1, extra_args=("--evil value",)),
        WorkloadSpec(stressors=(StressorSpec("cpu", 1),), duration_s=1, extra_args=("-q",)),
        WorkloadSpec(stressors=(StressorSpec("cpu", 1),), duration_s=1, extra_args=("--quiet",)),
        WorkloadSpec(stressors=(StressorSpec("cpu", 1),), duration_s=1, extra_args=("--job=/etc/x",)),
        WorkloadSpec(stressors=(StressorSpec("cpu", 1),), duration_s=1, cpus=()),
        WorkloadSpec(stressors=(StressorSpec("cpu", 1),), duration_s=1, nice=40),
        WorkloadSpec(stressors=(StressorSpec("cpu", 1),), duration_s=1, sched_prio=10),
        WorkloadSpec(stressors=(StressorSpec("cpu", 1),), duration_s=1, sched_policy="-fifo"),
    ],
)
def test_build_argv_rejects_unsafe_or_invalid_specs(spec: WorkloadSpec, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        build_argv(
            spec, exe="stress-ng", yaml_path=tmp_path / "m.yaml", timeout_s=spec.duration_s, nice_exe="/n"
        )


def test_timeout_is_whole_seconds_never_zero() -> None:
    # stress-ng reads "0.5s" as no timeout at all, so fractions round up and 1 s is the floor.
    assert [timeout_seconds(x) for x in (0.2, 1.0, 1.0000000001, 1.2, 10)] == [1, 1, 1, 2, 10]
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            timeout_seconds(bad)


def test_command_argv_prefixes_nice_and_taskset() -> None:
    spec = WorkloadSpec(stressors=(), duration_s=1, command=("tool", "--x", "a b"), cpus=(1,), nice=-3)
    assert build_command_argv(spec, nice_exe="/n", taskset_exe="/t") == [
        "/n", "-n", "-3", "/t", "-c", "1", "tool", "--x", "a b",
    ]  # fmt: skip
    with pytest.raises(ValueError):
        build_command_argv(WorkloadSpec(stressors=(), duration_s=1, command=("",)))
    with pytest.raises(ValueError):
        build_command_argv(WorkloadSpec(stressors=(), duration_s=1, command=("x",), sched_policy="fifo"))


def test_tool_missing_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(errors.ToolMissing) as info:
        find_stress_ng()
    assert "apt-get update && apt-get install -y stress-ng" in str(info.value)
    assert str(info.value) == INSTALL_HINT


async def test_run_raises_tool_missing_without_stress_ng(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(errors.ToolMissing):
        await run_stress_ng(cpu_spec(1), workdir=tmp_path / "w")
    with pytest.raises(errors.ToolMissing):
        await run_stress_ng(cpu_spec(1), workdir=tmp_path / "w", exe=str(tmp_path / "no-such-stress-ng"))


# --- real stress-ng ---------------------------------------------------------------------------------


@needs_stress_ng
async def test_normal_run_parses_every_stressor_and_keeps_cyclic_lines(tmp_path: Path) -> None:
    spec = WorkloadSpec(
        stressors=(StressorSpec("cpu", 1), StressorSpec("vm", 1, {"vm-bytes": "32M"})),
        duration_s=1,
        probe=True,
    )
    with anyio.fail_after(15):
        run = await run_stress_ng(spec, workdir=tmp_path)
    assert run.returncode == 0
    # The probe runs in its own process: the workload's metrics are the workload's alone.
    assert {m.stressor for m in run.metrics} == {"cpu", "vm"}
    assert all(m.bogo_ops > 0 and m.bogo_ops_per_s_real > 0 and m.wall_clock_s >= 0.9 for m in run.metrics)
    assert len(PERCENTILE_LINE.findall(run.log_text)) >= 5
    assert run.yaml_text is not None and "stress-ng-version" in run.yaml_text
    assert run.version == stress_ng_version(find_stress_ng())
    assert run.requested_s == 1.0 and 0.9 <= run.wall_s < 10
    assert "--metrics-brief" in run.argv and "-q" not in run.argv
    assert list(tmp_path.iterdir()) == [] and running_pids() == []


@needs_stress_ng
async def test_bad_option_is_typed_with_the_stderr_tail(tmp_path: Path) -> None:
    spec = WorkloadSpec(
        stressors=(StressorSpec("cpu", 1),), duration_s=1, probe=False, extra_args=("--bogus-opt",)
    )
    with anyio.fail_after(15), pytest.raises(errors.WorkloadBadOptions) as info:
        await run_stress_ng(spec, workdir=tmp_path)
    assert info.value.returncode == 1
    assert "bogus-opt" in info.value.stderr_tail
    assert info.value.reason == "bad_options"
    assert isinstance(info.value, errors.WorkloadFailed)


@needs_stress_ng
async def test_cancellation_kills_the_group_within_grace_and_reaps(tmp_path: Path) -> None:
    started = anyio.Event()
    pids: list[int] = []
    kids: list[int] = []
    cancelled_at = 0.0

    def on_started(pid: int) -> None:
        pids.append(pid)
        started.set()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()

            async def cancel_mid_run() -> None:
                nonlocal cancelled_at
                await started.wait()
                kids.extend(await wait_for_children(pids[0], 1))  # the cpu stressor is running
                cancelled_at = time.monotonic()
                scope.cancel()

            tg.start_soon(cancel_mid_run)
            with scope:
                await run_stress_ng(
                    cpu_spec(10, probe=True), workdir=tmp_path, grace_s=1.0, on_started=on_started
                )
            took = time.monotonic() - cancelled_at
    assert scope.cancelled_caught
    assert took < 1.0 + 0.5
    assert_all_gone(pids[0], kids, tmp_path)
    assert running_pids() == []  # the latency probe's process is stopped and reaped too


@needs_stress_ng
async def test_own_deadline_kills_an_overrunning_run(tmp_path: Path) -> None:
    pids: list[int] = []
    t0 = time.monotonic()
    # Zero slack: stress-ng cannot finish a 1 s run within 1 s of its spawn, so the deadline fires.
    with anyio.fail_after(15), pytest.raises(errors.WorkloadTimeout) as info:
        await run_stress_ng(cpu_spec(1), workdir=tmp_path, deadline_slack_s=0.0, on_started=pids.append)
    assert time.monotonic() - t0 < 1.0 + 1.0 + 1.0
    assert info.value.reason == "timeout"
    assert_all_gone(pids[0], [], tmp_path)


@needs_stress_ng
async def test_signalled_run_that_exits_zero_is_a_short_run(tmp_path: Path) -> None:
    started = anyio.Event()
    pids: list[int] = []

    def on_started(pid: int) -> None:
        pids.append(pid)
        started.set()

    async def interrupt() -> None:
        await started.wait()
        pid = pids[0]
        kids = await wait_for_children(pid)
        # Wait until stress-ng handles SIGINT and its stressor handles SIGALRM (what it forwards),
        # so the run stops the way a signalled stress-ng does: exit 0 with shortened metrics.
        while not (catches(pid, signal.SIGINT) and all(catches(k, signal.SIGALRM) for k in kids)):
            await anyio.sleep(0.01)
        # ...and until the stressor has worked a little: interrupted before its first bogo-op,
        # stress-ng writes an empty metrics section (a MissingMetrics, not the short run tested here).
        while not all(cpu_seconds(k) >= 0.05 for k in kids):
            await anyio.sleep(0.01)
        os.kill(pid, signal.SIGINT)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(interrupt)
            with pytest.raises(errors.ShortRun) as info:
                await run_stress_ng(cpu_spec(5), workdir=tmp_path, on_started=on_started)
    assert info.value.returncode == 0
    assert "requested 5s" in str(info.value)
    assert_all_gone(pids[0], [], tmp_path)


@needs_stress_ng
async def test_kill_all_running_aborts_runs_in_flight(tmp_path: Path) -> None:
    started = anyio.Event()
    pids: list[int] = []
    killed = -1

    def on_started(pid: int) -> None:
        pids.append(pid)
        started.set()

    async def stop_everything() -> None:
        nonlocal killed
        await started.wait()
        assert running_pids() == pids
        killed = await kill_all_running(1.0)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_everything)
            with pytest.raises(errors.WorkloadAborted):
                await run_stress_ng(cpu_spec(10), workdir=tmp_path, on_started=on_started)
    assert killed == 1
    assert_all_gone(pids[0], [], tmp_path)


# --- command workloads ------------------------------------------------------------------------------


async def test_command_runs_without_a_shell_in_a_private_cwd(tmp_path: Path) -> None:
    code = "import os,sys; print(os.environ['KLR_REGIME']); print(os.getcwd()); print(sys.argv[1])"
    spec = WorkloadSpec(
        stressors=(),
        duration_s=1,
        probe=False,
        command=(sys.executable, "-c", code, "$(echo hi);`id`"),
        env={"KLR_REGIME": "idle"},
    )
    with anyio.fail_after(15):
        run = await run_stress_ng(spec, workdir=tmp_path)
    regime, cwd, literal = run.stdout_text.splitlines()
    assert (regime, literal) == ("idle", "$(echo hi);`id`")
    assert Path(cwd).parent == tmp_path and not Path(cwd).exists()
    assert run.log_text == run.stdout_text and run.metrics == () and run.version is None


async def test_command_failure_and_timeout_are_typed(tmp_path: Path) -> None:
    with anyio.fail_after(15):
        with pytest.raises(errors.CommandFailed) as info:
            await run_stress_ng(
                command_spec("import sys; sys.stderr.write('boom\\n'); sys.exit(3)"), workdir=tmp_path
            )
        assert info.value.returncode == 3 and "boom" in info.value.stderr_tail
        t0 = time.monotonic()
        with pytest.raises(errors.WorkloadTimeout):
            await run_stress_ng(
                command_spec("import time; time.sleep(30)", 0.2), workdir=tmp_path, deadline_slack_s=0.2
            )
        assert time.monotonic() - t0 < 3.0
        with pytest.raises(errors.KilledBySignal):
            await run_stress_ng(
                command_spec("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"), workdir=tmp_path
            )


ESCAPEE = (
    "import subprocess, sys, time\n"
    "subprocess.Popen(['sleep', '60'], start_new_session=True, stdout=sys.stdout, stderr=sys.stderr)\n"
    "time.sleep(float(sys.argv[1]))\n"
)


async def test_descendant_that_left_the_group_is_killed_on_cancel(tmp_path: Path) -> None:
    started = anyio.Event()
    pids: list[int] = []
    escaped: list[int] = []

    def on_started(pid: int) -> None:
        pids.append(pid)
        started.set()

    spec = WorkloadSpec(
        stressors=(), duration_s=30, probe=False, command=(sys.executable, "-c", ESCAPEE, "60")
    )
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()

            async def cancel_when_escaped() -> None:
                await started.wait()
                escaped.extend(await wait_for_children(pids[0]))
                # setsid() runs in the child just after fork: wait until it has left the group
                # (a condition wait, bounded by fail_after) — then no group kill can reach it.
                while os.getpgid(escaped[0]) == pids[0]:
                    await anyio.sleep(0.01)
                scope.cancel()

            tg.start_soon(cancel_when_escaped)
            with scope:
                await run_stress_ng(spec, workdir=tmp_path, grace_s=0.5, on_started=on_started)
    assert escaped
    assert_all_gone(pids[0], escaped, tmp_path)


async def test_descendant_left_behind_after_a_normal_exit_is_killed(tmp_path: Path) -> None:
    started = anyio.Event()
    pids: list[int] = []
    escaped: list[int] = []

    def on_started(pid: int) -> None:
        pids.append(pid)
        started.set()

    async def watch() -> None:
        await started.wait()
        escaped.extend(await wait_for_children(pids[0]))

    spec = WorkloadSpec(stressors=(), duration_s=1, probe=False, command=(sys.executable, "-c", ESCAPEE, "1"))
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            run = await run_stress_ng(spec, workdir=tmp_path, on_started=on_started)
    assert run.returncode == 0
    # The escapee kept our stdout open; the run still returned promptly because it was killed.
    assert run.wall_s < 3.0
    assert_all_gone(pids[0], escaped, tmp_path)


def outcome(returncode: int = 0, wall: float = 1.05, log_text: str = "") -> Outcome:
    return Outcome(
        argv=["stress-ng"],
        returncode=returncode,
        wall_s=wall,
        started_at=0.0,
        stdout_text="",
        stderr_text=log_text,
        log_text=log_text,
        timed_out=False,
        aborted=False,
    )


def metrics_yaml(names: list[str], *, walls: dict[str, float] | None = None, bogo_ops: str = "10.0") -> str:
    """A stress-ng ``--yaml`` file with one entry per name (wall-clock 1.0 s unless ``walls`` says)."""
    entries = "".join(
        f"    - stressor: {n}\n      bogo-ops: {bogo_ops}\n      bogo-ops-per-second-real-time: 10.0\n"
        f"      wall-clock-time: {(walls or {}).get(n, 1.0)}\n"
        for n in names
    )
    return f"---\nmetrics:\n{entries}...\n"


def check(
    spec: WorkloadSpec, yaml_text: str | None, *, wall: float = 1.05, returncode: int = 0, tail: str = ""
) -> list[StressorMetric]:
    """The outcome checks of a 1 s stress-ng run that exited by itself after ``wall`` seconds."""
    return workloads._check_stress_ng(outcome(returncode, wall, tail), yaml_text, spec, 1.0, 0.9)


def test_outcome_checks_require_workload_stressors_but_not_the_probe() -> None:
    spec = WorkloadSpec(stressors=(StressorSpec("cpu", 1), StressorSpec("vm", 1)), duration_s=1, probe=True)
    # stress-ng skips cyclic (exit 0) without CAP_SYS_NICE: the trial stands, latency is absent.
    metrics = check(spec, metrics_yaml(["cpu", "vm"]))
    assert [m.stressor for m in metrics] == ["cpu", "vm"]
    with pytest.raises(errors.MissingMetrics, match="vm"):
        check(spec, metrics_yaml(["cpu", "cyclic"]))
    with pytest.raises(errors.ShortRun, match="requested 1s"):
        check(spec, metrics_yaml(["cpu", "vm"], walls={"cpu": 0.5, "vm": 0.5}))
    with pytest.raises(errors.MissingMetrics, match="no metrics section"):
        check(spec, "---\nmetrics:\n...\n")
    with pytest.raises(errors.MissingMetrics, match="wrote no YAML"):
        check(spec, None)


def test_short_run_rule_checks_every_stressor_and_our_own_clock() -> None:
    spec = WorkloadSpec(stressors=(StressorSpec("cpu", 1), StressorSpec("vm", 1)), duration_s=1)
    # One stressor stopping early is enough (before, only the longest stressor was checked).
    with pytest.raises(errors.ShortRun, match=r"vm ran 0\.500 s"):
        check(spec, metrics_yaml(["cpu", "vm"], walls={"vm": 0.5}))
    with pytest.raises(errors.ShortRun, match=r"the run lasted 0\.400 s"):
        check(spec, metrics_yaml(["cpu", "vm"]), wall=0.4)


@pytest.mark.parametrize("value", ["-5", "-inf", "nan", ".inf"])
def test_negative_or_non_finite_required_metric_fails_the_run(value: str) -> None:
    spec = WorkloadSpec(stressors=(StressorSpec("cpu", 1),), duration_s=1)
    with pytest.raises(errors.MissingMetrics, match=r"metrics\[0\] \(cpu\): bogo-ops") as info:
        check(spec, metrics_yaml(["cpu"], bogo_ops=value), tail="tail text")
    assert info.value.returncode == 0 and "tail text" in str(info.value)
    assert ("negative" in str(info.value)) == (value == "-5")


@pytest.mark.parametrize(
    ("returncode", "error"),
    [
        (1, errors.WorkloadBadOptions),
        (2, errors.StressorFailed),
        (3, errors.NotEnoughResources),
        (4, errors.StressorNotImplemented),
        (5, errors.KilledBySignal),
        (-9, errors.KilledBySignal),
        (6, errors.UnexpectedExit),
        (7, errors.UntrustworthyMetrics),
        (42, errors.UnexpectedExit),
    ],
)
def test_exit_codes_map_to_typed_errors(returncode: int, error: type[errors.WorkloadFailed]) -> None:
    spec = WorkloadSpec(stressors=(StressorSpec("cpu", 1),), duration_s=1)
    with pytest.raises(error) as info:
        # The exit code decides before the YAML is read: garbage YAML does not mask it.
        check(spec, "not: [yaml", returncode=returncode, tail="tail text")
    assert info.value.returncode == returncode and "tail text" in str(info.value)
    assert info.value.reason != errors.WorkloadFailed.reason


def test_public_names_stay_importable_from_runtime_and_workloads() -> None:
    before_the_split = {
        "ERROR_TAIL_BYTES", "INSTALL_HINT", "LOG_CAP_BYTES", "PROBE_STRESSOR", "STDOUT_CAP_BYTES",
        "OnStarted", "StressRun", "build_argv", "build_command_argv", "build_probe_argv", "find_stress_ng",
        "kill_all_running", "kill_all_running_now", "live_children", "run_stress_ng", "running_pids",
        "stress_ng_version", "timeout_seconds",
    }  # fmt: skip
    assert before_the_split <= set(workloads.__all__)
    assert {"RUN_TOKEN_ENV", "become_subreaper", "is_subreaper"} <= set(workloads.__all__)
    for module in (runtime, workloads):
        assert [name for name in module.__all__ if not hasattr(module, name)] == []
    assert runtime.PROBE_STRESSOR == stressng_output.PROBE_STRESSOR == "cyclic"


@needs_stress_ng
async def test_probe_is_independent_of_the_workloads_placement(tmp_path: Path) -> None:
    # Inside the workload, `--sched idle` stops cyclic from reporting anything: the probe must
    # run on its own so every arm is measured by the same observer.
    spec = WorkloadSpec(
        stressors=(StressorSpec("cpu", 1),), duration_s=1, probe=True, cpus=(0,), sched_policy="idle", nice=5
    )
    with anyio.fail_after(15):
        run = await run_stress_ng(spec, workdir=tmp_path)
    assert {m.stressor for m in run.metrics} == {"cpu"}
    assert len(PERCENTILE_LINE.findall(run.log_text)) >= 5
    assert "SCHED_RR" in run.log_text
    assert running_pids() == []
