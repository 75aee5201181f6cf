"""Outside CPU load: the arithmetic on fake ``/proc/stat`` texts under a temporary root, the own-tree
CPU time on real child processes, and one real check: a stress-ng outside the daemon's tree during a
trial makes ``outside_cpu`` high, while the trial's own full load is not counted."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import psutil
import pytest
from loguru import logger

from kloros_orchestrator.config import load_config
from kloros_orchestrator.measure.sensors import discover_sensors
from kloros_orchestrator.model import TrialResult
from kloros_orchestrator.runtime.evaluate import Evaluator
from kloros_orchestrator.runtime.outside_load import MIN_TICKS, OutsideMeter, own_cpu_s, parse_proc_stat
from kloros_orchestrator.runtime.processes import is_subreaper, set_child_subreaper
from kloros_orchestrator.spica.domains.cpu import SpicaCpu
from kloros_orchestrator.spica.knobs import KnobJournal

HZ = 100.0


def stat_text(
    user: int, nice: int, system: int, idle: int, steal: int = 0, guest: int = 0, cpus: int = 2
) -> str:
    """A /proc/stat as Linux writes it: the aggregate line (10 columns), one line per online CPU, more."""
    agg = f"cpu  {user} {nice} {system} {idle} 7 11 13 {steal} {guest} 0"
    per = [f"cpu{i} 1 0 1 {idle // cpus} 0 0 0 0 0 0" for i in range(cpus)]
    return "\n".join([agg, *per, "intr 12345 0 1", "ctxt 999", "btime 1790000000", "processes 42", ""])


class FakeHost:
    """A fake /proc under ``root`` and a fake own-CPU counter and clock the test moves."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.own_s = 10.0
        self.now = 100.0

    def write(self, text: str) -> None:
        (self.root / "stat").write_text(text)

    def meter(self) -> OutsideMeter:
        return OutsideMeter(self.root, own=lambda: self.own_s, clock=lambda: self.now, ticks_per_s=HZ)


def test_busy_is_user_nice_system_and_steal_and_online_cpus_are_the_cpu_lines() -> None:
    host = parse_proc_stat(stat_text(user=100, nice=5, system=50, idle=1000, steal=6, guest=40, cpus=4), HZ)
    # guest (40) is inside user already; idle, iowait (7), irq (11) and softirq (13) are not busy.
    assert host.busy_s == pytest.approx((100 + 5 + 50 + 6) / HZ)
    assert host.online == 4


def test_a_kernel_without_the_steal_column_counts_no_steal() -> None:
    host = parse_proc_stat("cpu  100 0 100 500\ncpu0 100 0 100 500\n", HZ)
    assert host.busy_s == pytest.approx(2.0) and host.online == 1


@pytest.mark.parametrize(
    "text",
    [
        "",
        "intr 1 2\n",
        "cpu0 1 2 3 4\n",
        "cpu  1 2 3 4\n",
        "cpu  1 2\ncpu0 1 2 3 4\n",
        "cpu  a b c d\ncpu0 1\n",
    ],
)
def test_a_text_without_what_is_needed_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_proc_stat(text, HZ)


def test_outside_share_is_host_busy_minus_own_over_interval_times_cpus(tmp_path: Path) -> None:
    fake = FakeHost(tmp_path / "proc")
    fake.write(stat_text(user=1000, nice=0, system=500, idle=9000))
    meter = fake.meter()
    mark = meter.mark()
    # 2 s on 2 CPUs = 4 CPU-seconds of capacity; the host was busy 3 s (300 ticks), 1 s of it ours.
    fake.write(stat_text(user=1200, nice=0, system=600, idle=9100))
    fake.own_s += 1.0
    fake.now += 2.0
    assert meter.share(mark) == pytest.approx((3.0 - 1.0) / 4.0)
    assert meter.problem is None


def test_our_own_load_alone_is_no_outside_load_and_the_share_stays_in_0_1(tmp_path: Path) -> None:
    fake = FakeHost(tmp_path / "proc")
    fake.write(stat_text(user=1000, nice=0, system=500, idle=9000))
    meter = fake.meter()
    mark = meter.mark()
    fake.write(stat_text(user=1350, nice=0, system=550, idle=9000))  # 4 s busy, all ours
    fake.own_s, fake.now = fake.own_s + 4.0, fake.now + 2.0
    assert meter.share(mark) == 0.0
    fake.own_s += 0.5  # rusage is exact, ticks are 10 ms: own can run ahead of /proc/stat
    assert meter.share(mark) == 0.0  # clamped, never negative
    fake.write(stat_text(user=9000, nice=0, system=550, idle=9000))  # more busy time than capacity
    assert meter.share(mark) == 1.0


def test_unreadable_proc_stat_is_no_measurement_and_is_logged_once(tmp_path: Path) -> None:
    fake = FakeHost(tmp_path / "proc")  # no stat file at all
    meter = fake.meter()
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    try:
        assert meter.mark() is None and meter.share(None) is None
        assert meter.mark() is None
    finally:
        logger.remove(sink)
    assert meter.problem is not None and str(tmp_path / "proc" / "stat") in meter.problem
    assert len(warnings) == 1 and "contaminated rounds cannot be detected" in warnings[0]

    # Readable at the mark, gone at the end: absent as well, never 0.
    fake.write(stat_text(user=1, nice=0, system=1, idle=1))
    mark = meter.mark()
    assert mark is not None
    (fake.root / "stat").write_text("garbage\n")
    fake.now += 1.0
    assert meter.share(mark) is None


def test_no_elapsed_time_is_no_measurement(tmp_path: Path) -> None:
    fake = FakeHost(tmp_path / "proc")
    fake.write(stat_text(user=1, nice=0, system=1, idle=1))
    meter = fake.meter()
    assert meter.share(meter.mark()) is None


def test_an_interval_of_a_few_ticks_is_no_measurement(tmp_path: Path) -> None:
    # A workload that exits at once: 8 ms on 2 CPUs is 1.6 ticks at 100 Hz; one tick of someone else's
    # would read as 62 % and make the round contaminated. Below MIN_TICKS there is no share.
    fake = FakeHost(tmp_path / "proc")
    fake.write(stat_text(user=1000, nice=0, system=500, idle=9000))
    meter = fake.meter()
    mark = meter.mark()
    fake.write(stat_text(user=1001, nice=0, system=500, idle=9000))
    fake.now += 0.008
    assert meter.share(mark) is None
    fake.now += 0.25 - 0.008  # 50 ticks of capacity: a share again (1 tick = 2 %)
    assert meter.share(mark) == pytest.approx(0.02)
    assert MIN_TICKS == 50


def test_the_evaluator_marks_a_trial_contaminated_only_above_a_known_threshold(tmp_path: Path) -> None:
    ev = Evaluator(workdir=tmp_path, sensors=discover_sensors(tmp_path), caps={}, outside_cpu_limit=0.25)
    assert ev.is_contaminated(0.26) and not ev.is_contaminated(0.25) and not ev.is_contaminated(None)
    ev.outside_cpu_limit = None
    assert not ev.is_contaminated(0.99)


BURN = "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"


def test_own_cpu_counts_a_live_child_and_the_same_child_once_reaped() -> None:
    before = own_cpu_s()
    code = BURN.format(s=0.3) + "print('burnt', flush=True)\nsys.stdin.read()\n"
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "burnt\n"
        live = own_cpu_s() - before  # the child is alive: psutil's reading of it
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
    reaped = own_cpu_s() - before  # reaped: RUSAGE_CHILDREN now holds it, psutil no longer sees it
    assert live >= 0.29
    assert reaped >= 0.29
    assert abs(reaped - live) < 0.15  # counted once, not twice and not lost across the reap


# --- the real check -----------------------------------------------------------------------------------


@contextmanager
def outside_stress(workers: int) -> Iterator[int]:
    """A stress-ng of ``workers`` CPU hogs outside this process's tree: started by a shell that exits at
    once, so it is re-parented away from us (with this process not a subreaper). Yields its pid."""
    was = is_subreaper()
    set_child_subreaper(False)
    try:
        sh = subprocess.Popen(
            ["sh", "-c", f"stress-ng --cpu {workers} --timeout 30 & echo $!"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        assert sh.stdout is not None and sh.stderr is not None
        pid = int(sh.stdout.readline())
        sh.wait()
    finally:
        set_child_subreaper(was)
    try:
        # Ready once it dispatches its hogs (stress-ng logs to stderr): no sleep.
        while "dispatching hogs" not in (line := sh.stderr.readline()):
            assert line, "stress-ng ended before dispatching its hogs"
        assert pid not in [c.pid for c in psutil.Process().children(recursive=True)]
        yield pid
    finally:
        os.killpg(sh.pid, signal.SIGKILL)  # the shell's session: stress-ng and its workers


def cpu_domain(tmp_path: Path) -> SpicaCpu:
    root = tmp_path / "root"
    root.mkdir()
    dom = SpicaCpu(
        sysfs_root=root,
        journal=KnobJournal(tmp_path / "journal"),
        regimes=load_config(None).regimes["cpu"],
        scratch_dir=tmp_path / "scratch",
    )
    dom.discover()
    return dom


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a live process and its live descendants (psutil), 0 for whatever is gone."""
    total = 0.0
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


@pytest.mark.skipif(shutil.which("stress-ng") is None, reason="stress-ng is not installed")
async def test_a_stress_ng_outside_our_tree_is_counted_and_our_own_full_load_is_not(tmp_path: Path) -> None:
    """Real trials on real /proc. Other people's work loads this machine too (and a cgroup may cap our
    share), so no absolute "quiet" figure is asserted; each check compares the share with what the
    processes themselves report over the same trial:

    * a trial saturating every CPU itself: outside + own ≤ the capacity. Were our own workload counted
      as outside, the sum would exceed it by our own share;
    * a light trial beside an outside stress-ng (a hog per CPU, not our descendant): outside ≥ what that
      stress-ng used (its own CPU times), and the trial is contaminated exactly when above 0.25."""
    dom = cpu_domain(tmp_path)
    ev = Evaluator(
        workdir=tmp_path / "work",
        sensors=discover_sensors(tmp_path / "root"),
        caps={},
        outside_cpu_limit=0.25,
    )
    ncpu = os.cpu_count() or 1

    async def trial(regime: str) -> TrialResult:
        with anyio.fail_after(30):
            tr = await ev.run_trial(dom, dom.stock_genome(), regime, cand_id="stock", duration_s=1.5)
        assert tr.ok, tr.failure
        assert tr.outside_cpu is not None and 0.0 <= tr.outside_cpu <= 1.0
        assert tr.contaminated == (tr.outside_cpu > 0.25)
        return tr

    own0 = own_cpu_s()
    ours = await trial("stress")  # one full cpu worker per CPU, all in our tree
    own_share = (own_cpu_s() - own0) / (ours.wall_s * ncpu)  # over the whole trial: an upper bound
    assert ours.outside_cpu is not None and own_share > 0.05
    assert ours.outside_cpu + own_share <= 1.05, (ours.outside_cpu, own_share)

    with outside_stress(ncpu) as pid:
        before = tree_cpu_s(pid)
        loaded = await trial("idle")  # one worker at 10 %, beside an outside hog per CPU
        theirs = (tree_cpu_s(pid) - before) / (loaded.wall_s * ncpu)
    assert loaded.outside_cpu is not None and theirs > 0.05
    # The trial's window is a little shorter than the whole call (apply, parsing): a margin for it.
    assert loaded.outside_cpu >= 0.8 * theirs - 0.02, (loaded.outside_cpu, theirs)
