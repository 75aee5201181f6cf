"""Workload processes: spawning, tracking descendants, stopping and reaping, and the registry of runs.

Theory of operation. A process starts in a new session, so its pid is also its process-group id.
While it runs we read stdout and stderr concurrently (a full pipe would otherwise stall it) and
snapshot the processes of the run with psutil, because a group kill does not reach everything:

* a descendant that calls setsid/setpgid leaves the group but stays a descendant: the snapshot
  follows parent links from the workload and from every process of the run already known;
* a process that daemonises (double fork: the intermediate exits) is re-parented away from the
  workload. With the daemon as child subreaper (``become_subreaper``, called once at start-up) it is
  re-parented to the daemon itself. Every run's environment carries a token of its own
  (``KLR_RUN``), and a child of the daemon joins a run only when it carries that run's token or is
  still in that run's session: parallel runs never take each other's processes. Without the
  subreaper the orphan goes to init (or a subreaper further up); the stop path then looks for the
  token in every process.

When the workload exits by itself, whatever of the run is left is SIGKILLed. "Stop" (our deadline, a
cancelled scope, or ``kill_all_running`` at daemon shutdown) always runs in a shielded scope: SIGTERM
to the group and every tracked process, a bounded grace, SIGKILL to whatever is left, then reap our
child. Either way the run's processes that died as our children (orphans re-parented to the daemon)
are reaped one known pid at a time with ``WNOHANG``, never ``waitpid(-1)``, which would steal the
exits the event loop's child watcher is waiting for. So neither a workload process nor a zombie of
ours outlives the call. ``supervise`` reports how the process ended; deciding what that means is the
caller's job.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import anyio
import anyio.abc
import psutil
from loguru import logger

LOG_CAP_BYTES: Final = 64 * 1024
STDOUT_CAP_BYTES: Final = 4 * 1024 * 1024  # command domains print their results on stdout
ERROR_TAIL_BYTES: Final = 4096

# Every workload's environment carries its run's token under this name.
RUN_TOKEN_ENV: Final = "KLR_RUN"

_TRACK_INTERVAL_S: Final = 0.25
_PIPE_DRAIN_S: Final = 1.0  # an escaped descendant may hold our pipes open after the exit

OnStarted = Callable[[int], object]


# --- the daemon as child subreaper ------------------------------------------------------------------

_PR_SET_CHILD_SUBREAPER: Final = 36  # <linux/prctl.h>, Linux >= 3.4
_PR_GET_CHILD_SUBREAPER: Final = 37


@functools.cache
def _prctl_function() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    # Declared, so the unused arguments are passed as full zero words, not as 32-bit ints.
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def _prctl(option: int, arg: int) -> int:
    """``prctl(option, arg, 0, 0, 0)``: 0, or the errno (ENOSYS where there is no prctl)."""
    prctl = _prctl_function()
    if prctl is None:
        return errno.ENOSYS
    if int(prctl(option, arg, 0, 0, 0)) != 0:
        return ctypes.get_errno() or errno.EINVAL
    return 0


def set_child_subreaper(enabled: bool) -> bool:
    """Make this process the child subreaper of its descendants, or stop it; False where unavailable."""
    err = _prctl(_PR_SET_CHILD_SUBREAPER, int(enabled))
    if err:
        logger.warning("prctl(PR_SET_CHILD_SUBREAPER, {}) failed: {}", int(enabled), os.strerror(err))
        return False
    return True


def become_subreaper() -> bool:
    """Call once at daemon start-up: every orphan of a workload is then re-parented to the daemon.

    So a process that daemonises stays a descendant of ours, is found among the daemon's children
    and killed when its run ends, and its exit is reaped by us. Returns False (logged) where prctl is
    unavailable; runs still work, and their stop path searches every process for the run's token.
    """
    if not set_child_subreaper(True):
        logger.warning("not a child subreaper: daemonised workload processes are found by a full scan")
        return False
    logger.info("the daemon is the child subreaper of its workloads")
    return True


def is_subreaper() -> bool:
    """Whether this process is a child subreaper now."""
    value = ctypes.c_int(0)
    return _prctl(_PR_GET_CHILD_SUBREAPER, ctypes.addressof(value)) == 0 and value.value != 0


# --- process tracking -------------------------------------------------------------------------------


def live_children(pid: int) -> list[int]:
    """Pids of every live descendant of ``pid`` (empty when ``pid`` is gone)."""
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _children_table() -> dict[int, list[int]]:
    """``{ppid: [pid, ...]}`` of every visible process (zombies included): one pass over /proc."""
    table: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fd = os.open(f"/proc/{name}/stat", os.O_RDONLY)
            try:
                stat = os.read(fd, 4096)
            finally:
                os.close(fd)
            # "pid (comm) state ppid ...": comm may hold spaces and ")", so split after the last one.
            ppid = int(stat.rpartition(b")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        table.setdefault(ppid, []).append(int(name))
    return table


def _still_same(proc: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return proc.is_running()  # compares create times: a recycled pid is not the process we knew
    return False


@dataclass(eq=False)
class _Tracked:
    process: anyio.abc.Process
    token: str
    root: psutil.Process | None = None
    descendants: dict[int, psutil.Process] = field(default_factory=dict)
    aborted: bool = False

    def __post_init__(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.root = psutil.Process(self.process.pid)

    @property
    def pgid(self) -> int:
        return self.process.pid  # start_new_session: the child leads its own session and group

    def _owns_session(self, sid: int) -> bool:
        # The workload leads its session; its pid stays ours while it is registered under it.
        return sid == self.process.pid and _RUNNING.get(sid) is self

    def _adoptable(self, pid: int) -> psutil.Process | None:
        """The process ``pid`` when it belongs to this run although it is not a descendant of it."""
        if pid in self.descendants or pid in _RUNNING or pid in (os.getpid(), 1):
            return None  # known, a workload itself (the child watcher's), the daemon or init
        try:
            proc = psutil.Process(pid)
            # The session survives death: a zombie orphan that no snapshot saw alive is found too
            # (stress-ng's fork-type stressors make thousands of short-lived children).
            if self._owns_session(os.getsid(pid)):
                return proc
            return proc if proc.environ().get(RUN_TOKEN_ENV) == self.token else None
        except (psutil.Error, OSError):
            return None

    def snapshot(self, *, everywhere: bool = False) -> None:
        """Remember every process of this run now alive, so one that leaves the group can still be killed.

        Adopts the daemon's children (``everywhere``: any process) that belong to the run, then follows
        parent links down from the workload and every process already known.
        """
        table = _children_table()
        candidates: Iterable[int] = (
            (pid for kids in table.values() for pid in kids) if everywhere else table.get(os.getpid(), [])
        )
        for pid in candidates:
            orphan = self._adoptable(pid)
            if orphan is not None:
                self.descendants[pid] = orphan
        roots = [self.root] if self.root is not None else []
        frontier = [proc for proc in [*roots, *self.descendants.values()] if _still_same(proc)]
        while frontier:
            parent = frontier.pop()
            for pid in table.get(parent.pid, []):
                if pid in self.descendants:
                    continue
                with contextlib.suppress(psutil.Error):
                    self.descendants[pid] = kid = psutil.Process(pid)
                    frontier.append(kid)

    def sweep(self) -> None:
        """A snapshot for the stop path: without the subreaper, orphans are searched for everywhere."""
        self.snapshot(everywhere=not is_subreaper())

    def survivors(self) -> list[psutil.Process]:
        alive: list[psutil.Process] = []
        for proc in self.descendants.values():
            with contextlib.suppress(psutil.Error):
                # psutil compares create times, so a recycled pid is not mistaken for ours.
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
        return alive

    def kill_survivors(self, sig: signal.Signals) -> None:
        for proc in self.survivors():
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)
        self.kill_survivors(sig)

    def _reapable(self, pid: int) -> bool:
        """A zombie child of ours that is a known process of this run (not a recycled pid)."""
        known = self.descendants.get(pid)
        if known is None or pid in _RUNNING:
            return False  # never a workload root: the event loop's child watcher waits for those
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            return known == proc and proc.status() == psutil.STATUS_ZOMBIE
        return False

    def reap(self) -> int:
        """Reap (``WNOHANG``, one known pid at a time) the run's processes that died as our children.

        A child of ours that made a session of its own and died before any snapshot saw it carries
        nothing that ties it to the run any more; it stays a zombie rather than risk reaping a pid
        someone else waits for.
        """
        reaped = 0
        for pid in _children_table().get(os.getpid(), []):
            if self._reapable(pid):
                with contextlib.suppress(ChildProcessError):
                    done, _ = os.waitpid(pid, os.WNOHANG)
                    reaped += done == pid
        return reaped


_RUNNING: dict[int, _Tracked] = {}


def running_pids() -> list[int]:
    """Pids (= process-group ids) of the workload processes running now."""
    return list(_RUNNING)


async def _terminate(tracked: _Tracked, grace_s: float) -> None:
    """SIGTERM group + descendants, bounded grace, SIGKILL the rest, reap. Call shielded."""
    tracked.sweep()
    tracked.signal(signal.SIGTERM)
    with anyio.move_on_after(max(0.0, grace_s)):
        await tracked.process.wait()
    tracked.sweep()
    tracked.signal(signal.SIGKILL)
    # Unbounded on purpose: SIGKILL cannot be ignored, and returning earlier would leave a zombie.
    await tracked.process.wait()
    await _until_gone(tracked)


_GONE_CHECK_S: Final = 0.01
_GONE_BOUND_S: Final = 2.0


async def _until_gone(tracked: _Tracked) -> None:
    """SIGKILL whatever of the run is still alive and wait (bounded) until it has died, then reap.

    Processes that left our tree are not our children until they are orphaned to us, so there is
    no exit to wait for: delivery of SIGKILL takes a moment, returning at once would let the caller
    see them still running, and orphans keep arriving while their parents die (each pass adopts
    them).
    """
    with anyio.move_on_after(_GONE_BOUND_S):
        while True:
            tracked.sweep()
            if not tracked.survivors():
                break
            tracked.kill_survivors(signal.SIGKILL)
            await anyio.sleep(_GONE_CHECK_S)
    tracked.reap()


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
        tracked.sweep()
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


@dataclass(frozen=True)
class Outcome:
    """How one supervised process ended and what it printed (tails capped as in ``supervise``)."""

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
        tracked.sweep()
        leftovers = tracked.survivors()
        if leftovers:
            logger.warning(
                "workload {} left {} process(es) behind: {}; killing them",
                process.pid,
                len(leftovers),
                [p.pid for p in leftovers],
            )
        tracked.signal(signal.SIGKILL)
        if leftovers:
            await _until_gone(tracked)
        with anyio.move_on_after(_PIPE_DRAIN_S):
            await readers_done.wait()
        tg.cancel_scope.cancel()
    return exited_at


async def supervise(
    argv: list[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    deadline_s: float,
    grace_s: float,
    on_started: OnStarted | None,
) -> Outcome:
    """Spawn ``argv`` in a session of its own, read its pipes and track its processes until it exits.

    ``env`` gains the run's token (``KLR_RUN``). Registered for ``kill_all_running`` while it runs.
    Past ``deadline_s``, on cancellation, or when stopped by ``kill_all_running``, it is stopped
    (shielded: SIGTERM, ``grace_s``, SIGKILL) and reaped; the outcome says which (``timed_out``,
    ``aborted``) and cancellation is re-raised. However it ends, no process of the run is left when
    this returns. ``log_text`` is stderr then stdout, tail capped at ``LOG_CAP_BYTES``.
    """
    started_at = time.time()
    t0 = time.monotonic()
    token = uuid.uuid4().hex
    # Shielded: a stop arriving while the child is being forked must not leave it running and
    # unregistered (nobody would kill it); once registered, the stop path below takes care of it.
    with anyio.CancelScope(shield=True):
        process = await anyio.open_process(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env={**env, RUN_TOKEN_ENV: token},
            start_new_session=True,
        )
        tracked = _Tracked(process, token)
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
            else:
                await _until_gone(tracked)  # cheap when the exit path already finished everything off
            await process.aclose()
            if _RUNNING.get(process.pid) is tracked:
                del _RUNNING[process.pid]
    returncode = process.returncode
    assert returncode is not None  # reaped above
    stdout_text = out.text()
    log_text = err.text()
    if stdout_text.strip():
        separator = "\n" if log_text and not log_text.endswith("\n") else ""
        log_text = f"{log_text}{separator}{stdout_text}"
    return Outcome(
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
