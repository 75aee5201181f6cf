"""Outside load: the CPU time other processes took from the host while a trial ran.

Theory of operation. A trial's numbers say something about its genome only if the host gave it what
it gives every trial. An outside process that loads the CPU during a trial (a backup, a build, a
neighbour VM) slows every arm that happens to run then. :class:`OutsideMeter` measures it: a
:meth:`~OutsideMeter.mark` just before the workload starts, :meth:`~OutsideMeter.share` just after
it ends, and in between

    outside = (host busy CPU time − CPU time of the daemon's own process tree) / (interval × online CPUs)

* **host busy** comes from the ``cpu`` line of ``/proc/stat`` (all CPUs): ``user + nice + system +
  steal``. ``guest``/``guest_nice`` are already inside ``user``/``nice``; ``steal`` is time a
  hypervisor gave to another VM while this one wanted the CPU (a noisy neighbour too). ``irq`` and
  ``softirq`` are left out: they are mostly kernel work done for whoever does the I/O — often the
  trial itself — and charged to no process, so counting them would call a disk workload
  contaminated by its own interrupts.
* **own** is exact for every process of the tree, finished or not: ``RUSAGE_SELF`` (every thread of
  the daemon) plus ``RUSAGE_CHILDREN`` (every descendant already reaped: stress-ng reaps its workers,
  the daemon reaps stress-ng and the orphans it adopts as subreaper, so their time rolls up here),
  plus, for every descendant still alive (or a zombie not yet reaped) at the reading, its own time
  and that of the descendants *it* has reaped (psutil ``user + system + children_user +
  children_system``). A process alive at the mark and reaped by the end counts ``total − at mark``:
  its share of the interval and nothing more. The one inexactness is a process that exits during
  the psutil walk (it may be missed or counted twice at that one reading), and the clock-tick
  granularity of ``/proc/stat`` (10 ms per CPU on most kernels): a tiny negative result is clamped
  to 0.
* **interval** is the monotonic wall time between the readings; **online CPUs** the ``cpuN`` lines
  of ``/proc/stat`` (the kernel lists online CPUs only) at the end.

A reading that fails (no ``/proc/stat``, a format this parser does not know) makes the share None —
absent, never 0 — and is logged once: contamination cannot be detected on this host.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import psutil
from loguru import logger

# /proc/stat's aggregate "cpu" line: user nice system idle iowait irq softirq steal guest guest_nice
_BUSY_COLUMNS: Final = (0, 1, 2, 7)  # user, nice, system, steal (see the module docstring)
_MIN_COLUMNS: Final = 4  # kernels before 2.6.11 had no steal column: count it as 0 then


@dataclass(frozen=True, slots=True)
class HostCpu:
    """One reading of ``/proc/stat``: busy CPU seconds since boot (all CPUs) and the online CPUs."""

    busy_s: float
    online: int


# The fewest CPU ticks (interval × online CPUs × ticks per second) a share is computed over: at 50 one
# tick is at most 2 % of it. Shorter intervals (a workload that exits at once) have no share.
MIN_TICKS: Final = 50.0


def parse_proc_stat(text: str, ticks_per_s: float) -> HostCpu:
    """The busy seconds and online CPU count in a ``/proc/stat`` text; ValueError when it has none."""
    busy: float | None = None
    online = 0
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if name == "cpu":
            cols = [int(x) for x in rest.split()]
            if len(cols) < _MIN_COLUMNS:
                raise ValueError(f"/proc/stat: the cpu line has {len(cols)} columns")
            busy = sum(cols[i] for i in _BUSY_COLUMNS if i < len(cols)) / ticks_per_s
        elif name.startswith("cpu") and name[3:].isdigit():
            online += 1
    if busy is None or online == 0:
        raise ValueError("/proc/stat: no aggregate cpu line or no cpuN line")
    return HostCpu(busy_s=busy, online=online)


def own_cpu_s(pid: int | None = None) -> float:
    """CPU seconds of this process and every descendant, finished or alive (module docstring)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    try:
        kids = psutil.Process(pid if pid is not None else os.getpid()).children(recursive=True)
    except psutil.Error:
        return total
    for kid in kids:
        with contextlib.suppress(psutil.Error):  # gone since the walk: its time is in its reaper's
            t = kid.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


@dataclass(frozen=True, slots=True)
class Mark:
    """The readings at the start of an interval."""

    host: HostCpu
    own_s: float
    at: float


class OutsideMeter:
    """Measures the share of the host's CPU capacity used outside the daemon's process tree.

    ``proc_root``: where ``stat`` is read (tests: a temporary directory with a fake ``stat``);
    ``own``: the own-tree CPU seconds (default :func:`own_cpu_s`); ``clock``: monotonic seconds.
    ``problem`` is why the share cannot be measured once a reading has failed (None until then).
    """

    def __init__(
        self,
        proc_root: Path = Path("/proc"),
        *,
        own: Callable[[], float] = own_cpu_s,
        clock: Callable[[], float] = time.monotonic,
        ticks_per_s: float | None = None,
    ) -> None:
        self.stat_path = proc_root / "stat"
        self.own = own
        self.clock = clock
        self.ticks_per_s = ticks_per_s or float(os.sysconf("SC_CLK_TCK"))
        self.problem: str | None = None

    def _host(self) -> HostCpu | None:
        try:
            return parse_proc_stat(self.stat_path.read_text(), self.ticks_per_s)
        except (OSError, ValueError) as e:
            if self.problem is None:
                self.problem = f"cannot read {self.stat_path}: {e}"
                logger.warning(
                    "outside CPU load cannot be measured ({}): contaminated rounds cannot be detected",
                    self.problem,
                )
            return None

    def mark(self) -> Mark | None:
        """The readings now; None when the host's CPU time cannot be read."""
        # Own time first, host second (and the reverse in share): the psutil walk of the readings then
        # falls outside both differences instead of counting as outside load.
        own = self.own()
        host = self._host()
        if host is None:
            return None
        return Mark(host=host, own_s=own, at=self.clock())

    def share(self, start: Mark | None) -> float | None:
        """Outside CPU since ``start`` as a share (0..1) of the host's capacity; None when unmeasurable."""
        if start is None:
            return None
        host = self._host()
        elapsed = self.clock() - start.at
        if host is None or elapsed <= 0:
            return None
        if elapsed * host.online * self.ticks_per_s < MIN_TICKS:
            # /proc/stat counts whole ticks: over a few of them one tick more or less is a large share
            # (an 8 ms interval on 2 CPUs: one tick is 62 %), so a share that short is no measurement.
            return None
        own = self.own()
        outside = (host.busy_s - start.host.busy_s) - (own - start.own_s)
        return round(min(1.0, max(0.0, outside / (elapsed * host.online))), 4)


__all__ = ["MIN_TICKS", "HostCpu", "Mark", "OutsideMeter", "own_cpu_s", "parse_proc_stat"]
