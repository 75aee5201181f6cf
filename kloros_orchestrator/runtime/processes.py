"""Workload processes: spawning, tracking descendants, stopping and reaping, and the registry of runs.

Theory of operation. A process starts in a new session, so its pid is also its process-group id.
While it runs we read stdout and stderr concurrently (a full pipe would otherwise stall it) and
snapshot its descendants with psutil, because some stressors call setsid/setpgid and escape a group
kill. When it exits by itself, anything left over (escaped descendants) is SIGKILLed.

"Stop" (our deadline, a cancelled scope, or ``kill_all_running`` at daemon shutdown) always runs in a
shielded scope: SIGTERM to the group and every tracked descendant, a bounded grace, SIGKILL to
whatever is left, then reap our child, so neither a workload process nor a zombie of ours outlives
the call. ``supervise`` reports how the process ended; deciding what that means is the caller's job.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
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

_TRACK_INTERVAL_S: Final = 0.25
_PIPE_DRAIN_S: Final = 1.0  # an escaped descendant may hold our pipes open after the exit

OnStarted = Callable[[int], object]


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
    await _until_gone(tracked)


_GONE_CHECK_S: Final = 0.01
_GONE_BOUND_S: Final = 2.0


async def _until_gone(tracked: _Tracked) -> None:
    """Wait (bounded) until every SIGKILLed descendant has really died.

    Escaped descendants are not our children, so there is no exit to wait for: delivery of SIGKILL
    takes a moment, and returning at once would let the caller see them still running.
    """
    with anyio.move_on_after(_GONE_BOUND_S):
        while tracked.survivors():
            await anyio.sleep(_GONE_CHECK_S)


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
    """Spawn ``argv`` in a session of its own, read its pipes and track its descendants until it exits.

    Registered for ``kill_all_running`` while it runs. Past ``deadline_s``, on cancellation, or when
    stopped by ``kill_all_running``, it is stopped (shielded: SIGTERM, ``grace_s``, SIGKILL) and reaped;
    the outcome says which (``timed_out``, ``aborted``) and cancellation is re-raised.
    ``log_text`` is stderr then stdout, tail capped at ``LOG_CAP_BYTES``.
    """
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
