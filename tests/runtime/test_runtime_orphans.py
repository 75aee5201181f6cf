"""No process a run starts outlives it: not one that left the group, not one that daemonised (double
fork + setsid, re-parented away from the workload), and parallel runs never take each other's.

The daemon is a child subreaper in production; these tests make the test process one for the
cases that need it (and restore it afterwards), and run one case without it (the full-scan fallback).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import psutil
import pytest

from kloros_orchestrator.model import StressorSpec, WorkloadSpec
from kloros_orchestrator.runtime import processes
from kloros_orchestrator.runtime.processes import RUN_TOKEN_ENV, is_subreaper, set_child_subreaper
from kloros_orchestrator.runtime.workloads import become_subreaper, run_stress_ng, running_pids

# A workload that daemonises: a new session, a second fork, the intermediate exits at once, so the
# daemon (stdio on /dev/null, as a real one) is re-parented away from the workload. The workload
# then publishes the daemon's pid in argv[1] and stays up for argv[2] seconds. Every process of it
# carries argv[1] on its command line: that is how the tests look for leftovers.
DAEMONISE = (
    "import os, sys, time\n"
    "pidfile, hold = sys.argv[1], float(sys.argv[2])\n"
    "r, w = os.pipe()\n"
    "middle = os.fork()\n"
    "if middle == 0:\n"
    "    os.setsid()\n"
    "    if os.fork() == 0:\n"
    "        null = os.open(os.devnull, os.O_RDWR)\n"
    "        for fd in (0, 1, 2):\n"
    "            os.dup2(null, fd)\n"
    "        os.write(w, str(os.getpid()).encode())\n"
    "        time.sleep(120)\n"
    "    os._exit(0)\n"
    "os.close(w)\n"
    "os.waitpid(middle, 0)\n"
    "pid = os.read(r, 32).decode()\n"
    "with open(pidfile + '.tmp', 'w') as f:\n"
    "    f.write(pid)\n"
    "os.replace(pidfile + '.tmp', pidfile)\n"
    "time.sleep(hold)\n"
)


@pytest.fixture
def subreaper() -> Iterator[None]:
    """The test process as child subreaper (as the daemon is), restored afterwards."""
    before = is_subreaper()
    if not set_child_subreaper(True):
        pytest.skip("PR_SET_CHILD_SUBREAPER is not available here")
    try:
        yield
    finally:
        set_child_subreaper(before)


@pytest.fixture
def not_subreaper() -> Iterator[None]:
    before = is_subreaper()
    assert set_child_subreaper(False)
    try:
        yield
    finally:
        set_child_subreaper(before)


def daemonising(pidfile: Path, hold_s: float, duration_s: float = 30.0) -> WorkloadSpec:
    return WorkloadSpec(
        stressors=(),
        duration_s=duration_s,
        command=(sys.executable, "-c", DAEMONISE, str(pidfile), str(hold_s)),
    )


def processes_marked(marker: Path) -> list[int]:
    """Live (non-zombie) processes whose command line carries ``marker``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and str(marker) in (proc.info["cmdline"] or []):
            found.append(proc.pid)
    return found


async def daemon_pid(pidfile: Path) -> int:
    # Condition wait (bounded by the caller's fail_after), not a sleep standing in for readiness.
    while not pidfile.exists():
        await anyio.sleep(0.01)
    return int(pidfile.read_text())


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def our_zombie(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.ppid() == os.getpid() and proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_none_left(pidfile: Path, daemon: int) -> None:
    assert not alive(daemon), "the daemonised process outlived its run"
    assert not our_zombie(daemon), "the daemonised process died as our child but was not reaped"
    assert processes_marked(pidfile) == []
    assert running_pids() == []


def test_prctl_sets_and_clears_the_subreaper_flag(subreaper: None) -> None:
    assert is_subreaper()
    assert set_child_subreaper(False) and not is_subreaper()
    assert become_subreaper() and is_subreaper()


async def test_every_run_carries_a_token_of_its_own(tmp_path: Path) -> None:
    code = f"import os; print(os.environ[{RUN_TOKEN_ENV!r}])"
    spec = WorkloadSpec(stressors=(), duration_s=5, command=(sys.executable, "-c", code))
    with anyio.fail_after(15):
        first, second = [(await run_stress_ng(spec, workdir=tmp_path)).stdout_text.strip() for _ in range(2)]
    assert first and second and first != second
    assert RUN_TOKEN_ENV not in os.environ  # the daemon's own children do not inherit one


async def test_daemonised_process_is_killed_after_a_normal_exit(tmp_path: Path, subreaper: None) -> None:
    pidfile = tmp_path / "daemon.pid"
    with anyio.fail_after(20):
        run = await run_stress_ng(daemonising(pidfile, 0.0), workdir=tmp_path / "work")
    daemon = int(pidfile.read_text())
    assert run.returncode == 0 and daemon > 0
    assert_none_left(pidfile, daemon)


async def test_daemonised_process_is_killed_when_the_run_is_cancelled(
    tmp_path: Path, subreaper: None
) -> None:
    pidfile = tmp_path / "daemon.pid"
    seen: list[int] = []
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()

            async def cancel_when_daemonised() -> None:
                seen.append(await daemon_pid(pidfile))
                # Re-parented to us (the subreaper): no longer a descendant of the workload.
                assert psutil.Process(seen[0]).ppid() == os.getpid()
                scope.cancel()

            tg.start_soon(cancel_when_daemonised)
            with scope:
                await run_stress_ng(daemonising(pidfile, 60.0), workdir=tmp_path / "work", grace_s=0.5)
    assert scope.cancelled_caught
    assert_none_left(pidfile, seen[0])


async def test_daemonised_process_is_found_without_the_subreaper(tmp_path: Path, not_subreaper: None) -> None:
    # Not a subreaper: the daemon is re-parented to init (or whoever reaps orphans up the tree), far
    # from us. The stop path then searches every process for the run's token.
    pidfile = tmp_path / "daemon.pid"
    with anyio.fail_after(20):
        run = await run_stress_ng(daemonising(pidfile, 0.0), workdir=tmp_path / "work")
    daemon = int(pidfile.read_text())
    assert run.returncode == 0
    assert_none_left(pidfile, daemon)


async def test_parallel_runs_do_not_kill_each_others_processes(tmp_path: Path, subreaper: None) -> None:
    long_pidfile, short_pidfile = tmp_path / "long.pid", tmp_path / "short.pid"
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()

            async def long_run() -> None:
                with scope:
                    await run_stress_ng(daemonising(long_pidfile, 60.0), workdir=tmp_path / "long")

            tg.start_soon(long_run)
            long_daemon = await daemon_pid(long_pidfile)
            # Both daemons are children of ours now: the short run must take only its own.
            await run_stress_ng(daemonising(short_pidfile, 0.0), workdir=tmp_path / "short")
            short_daemon = int(short_pidfile.read_text())
            assert not alive(short_daemon) and not our_zombie(short_daemon)
            assert alive(long_daemon), "the short run killed a process of the long one"
            assert psutil.Process(long_daemon).ppid() == os.getpid()
            assert len(running_pids()) == 1
            scope.cancel()
    assert_none_left(long_pidfile, long_daemon)
    assert_none_left(short_pidfile, short_daemon)


# A workload whose grandchild dies at once and is orphaned as a zombie, in the workload's session,
# before any snapshot can see it alive; the workload prints the grandchild's pid.
ORPHANED_ZOMBIE = (
    "import os\n"
    "r, w = os.pipe()\n"
    "middle = os.fork()\n"
    "if middle == 0:\n"
    "    grandchild = os.fork()\n"
    "    if grandchild == 0:\n"
    "        os._exit(0)\n"
    "    os.write(w, str(grandchild).encode())\n"
    "    os._exit(0)\n"
    "os.close(w)\n"
    "os.waitpid(middle, 0)\n"
    "print(os.read(r, 32).decode())\n"
)


async def test_orphan_that_died_unseen_in_the_session_is_reaped(tmp_path: Path, subreaper: None) -> None:
    spec = WorkloadSpec(stressors=(), duration_s=5, command=(sys.executable, "-c", ORPHANED_ZOMBIE))
    with anyio.fail_after(15):
        run = await run_stress_ng(spec, workdir=tmp_path)
    grandchild = int(run.stdout_text)
    assert grandchild > 0 and not our_zombie(grandchild)


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("stress-ng") is None, reason="stress-ng is not installed")
async def test_killed_fork_stressor_leaves_nothing_running(tmp_path: Path, subreaper: None) -> None:
    # No grace: SIGKILL at once, so forked children whose parent dies first are orphaned to us. With
    # stress-ng's default of one child per worker at a time, four descendants (two workers, two
    # children) are seen together in well under 1 % of snapshots: 16 keeps many children in flight.
    fork = StressorSpec("fork", 2, {"fork-max": 16})
    spec = WorkloadSpec(stressors=(fork,), duration_s=10, probe=False)
    started = anyio.Event()
    pids: list[int] = []

    def on_started(pid: int) -> None:
        pids.append(pid)
        started.set()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()

            async def cancel_when_forking() -> None:
                await started.wait()
                while len(processes.live_children(pids[0])) < 4:
                    await anyio.sleep(0.01)
                scope.cancel()

            tg.start_soon(cancel_when_forking)
            with scope:
                await run_stress_ng(spec, workdir=tmp_path, grace_s=0.0, on_started=on_started)
            ended_alone = not scope.cancel_called
            tg.cancel_scope.cancel()  # the waiter, if the run ended on its own
    if ended_alone:  # say so rather than time out
        pytest.fail("the fork stressor never had four descendants at once: nothing was killed")
    ours = psutil.Process().children()
    assert [c.pid for c in ours if c.status() != psutil.STATUS_ZOMBIE] == []
    # Zombies in the workload's session are the run's and reaped. (A child that made a session of its
    # own and died before any snapshot saw it cannot be told from another child of ours: left.)
    assert [c.pid for c in ours if c.status() == psutil.STATUS_ZOMBIE and os.getsid(c.pid) == pids[0]] == []
    assert running_pids() == []
