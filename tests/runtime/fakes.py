"""Fakes for the runtime tests: a trial runner without stress-ng, a fake clock, real domains on a
temporary ``sysfs_root``, and recorders for what D-REAM reports and logs.

:class:`FakeRunner` meets the ``TrialRunner`` protocol the way the real ``Evaluator`` does the part
that matters to D-REAM and PHASE: it applies the genome through the domain (so knob files under the
temporary ``sysfs_root`` really change and the journal really fills), then returns KPIs computed
from the genome (``throughput = base × (1 + effect(genome))``, p95 latency falling with the same
effect) with small seeded noise, and advances the fake clock by the trial's duration. Nothing runs,
nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import numpy as np

from kloros_orchestrator.config import DreamConfig, PacingConfig
from kloros_orchestrator.core.coordinator import Event
from kloros_orchestrator.errors import DomainError
from kloros_orchestrator.model import P50, P95, P99, TEMP, THROUGHPUT, WATTS, Genome, TrialResult
from kloros_orchestrator.runtime.dream import DreamLoop, DreamSettings
from kloros_orchestrator.runtime.evaluate import TrialCounters
from kloros_orchestrator.runtime.ports import DreamGate, EventLog
from kloros_orchestrator.runtime.records import HallOfFameEntry, Progress
from kloros_orchestrator.spica import KnobJournal, SpicaDomain, make_generic_domain, unregister
from kloros_orchestrator.spica.domains.cpu import SpicaCpu
from kloros_orchestrator.store import StatePaths
from kloros_orchestrator.testing import load_regimes, write_tree

START = 1_790_000_000.0  # 2026-09-21, a fixed "now" for every fake clock
REGIMES_ORDER = ("idle", "normal", "stress", "mixed")
BASE_THROUGHPUT = {"idle": 800.0, "normal": 4000.0, "stress": 9000.0, "mixed": 2500.0}
BASE_P95_US = 120.0

# --- the generic domain every test tunes --------------------------------------------------------------

TUNE = "fake_tune"
TUNE_OPTIONS: dict[str, Any] = {
    "description": "vm and qdisc knobs on a fake tree",
    "knobs": {
        "swappiness": {"type": "int", "low": 0, "high": 100, "path": "proc/sys/vm/swappiness"},
        "dirty_ratio": {"type": "int", "low": 5, "high": 80, "path": "proc/sys/vm/dirty_ratio"},
        "qdisc": {
            "type": "choice",
            "choices": ["fq", "fq_codel", "pfifo_fast"],
            "path": "proc/sys/net/core/default_qdisc",
        },
        "threads": {"type": "int", "low": 1, "high": 8, "default": 2},
    },
}
TUNE_TREE = {
    "proc/sys/vm/swappiness": "60\n",
    "proc/sys/vm/dirty_ratio": "20\n",
    "proc/sys/net/core/default_qdisc": "fq_codel\n",
}
TUNE_STOCK: Genome = {"swappiness": 60, "dirty_ratio": 20, "qdisc": "fq_codel", "threads": 2}
QDISC_EFFECT = {"fq": 0.04, "fq_codel": 0.0, "pfifo_fast": -0.3}
POLICY_EFFECT = {"other": 0.0, "batch": 0.02, "idle": -0.2}


def tuning_effect(genome: Mapping[str, Any]) -> float:
    """Relative throughput change of ``genome`` over stock (0 at both domains' stock genomes)."""
    e = 0.0
    if "swappiness" in genome:
        e += 0.002 * (60 - int(genome["swappiness"]))  # +12 % at 0, −8 % at 100
    if "dirty_ratio" in genome:
        e += 0.0005 * (int(genome["dirty_ratio"]) - 20)
    if "qdisc" in genome:
        e += QDISC_EFFECT[str(genome["qdisc"])]
    if "workers" in genome:
        e += 0.03 * (int(genome["workers"]) - 4)
    if "nice" in genome:
        e -= 0.004 * int(genome["nice"])
    if "sched_policy" in genome:
        e += POLICY_EFFECT[str(genome["sched_policy"])]
    return e


def open_tune_domain(tmp_path: Path, *, tree: Mapping[str, str] = TUNE_TREE) -> SpicaDomain:
    """A discovered generic domain (three system knobs, one process knob) on ``tmp_path/sysfs``.

    The class is made by ``make_generic_domain`` like a configured one, and taken out of the registry
    again at once so no other test sees a domain it did not configure.
    """
    root = tmp_path / "sysfs"
    write_tree(root, dict(tree))
    cls = make_generic_domain(TUNE, TUNE_OPTIONS)
    try:
        dom = cls(
            sysfs_root=root,
            journal=KnobJournal(tmp_path / f"journal-{TUNE}"),
            regimes=load_regimes("cpu"),
            scratch_dir=tmp_path / "scratch",
            config_hash="cfg-test",
            cpus=4,
        )
    finally:
        unregister(TUNE)
    dom.discover()
    return dom


def open_cpu_domain(tmp_path: Path, *, cpus: int = 4) -> SpicaDomain:
    """The real cpu domain on an empty tree: process knobs only, so trials may run in parallel."""
    root = tmp_path / "sysfs"
    root.mkdir(parents=True, exist_ok=True)
    dom = SpicaCpu(
        sysfs_root=root,
        journal=KnobJournal(tmp_path / "journal-cpu"),
        regimes=load_regimes("cpu"),
        scratch_dir=tmp_path / "scratch",
        cpus=cpus,
    )
    dom.discover()
    return dom


def hof_entry(cand_id: str, genome: Mapping[str, Any], score: float, domain: str = TUNE) -> HallOfFameEntry:
    """A hall-of-fame entry as D-REAM would have promoted it in generation 0."""
    return HallOfFameEntry(
        cand_id=cand_id, spica_id=f"spica-{domain}-{cand_id}", genome=dict(genome), generation=0, score=score
    )


def system_knob_files(dom: SpicaDomain) -> dict[str, str]:
    """Knob name → the text of its (first) file under the domain's sysfs_root right now."""
    return {
        k.name: k.resolve_paths(dom.sysfs_root)[0].read_text()
        for k in dom.knobs
        if k.scope == "system" and k.path is not None
    }


# --- time -------------------------------------------------------------------------------------------


class FakeClock:
    """Unix seconds that move only when told to (the fake runner moves it by each trial's length)."""

    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- the runner -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialCall:
    """One ``run_trial`` call as the fake saw it, with the knob files as they were during the trial."""

    index: int
    domain: str
    cand_id: str
    regime: str
    genome: Genome
    duration_s: float | None
    cpus: tuple[int, ...] | None
    knob_files: dict[str, str]


Hook = Callable[[TrialCall], str | None]


@dataclass
class FakeRunner:
    """A ``TrialRunner`` with KPIs from a function of the genome; see the module docstring.

    Hooks, each given the :class:`TrialCall`: ``fail`` returns a failure reason (the trial fails as
    the real evaluator reports it), ``breach`` returns a cap-breach text, ``crash`` returns an
    exception to raise out of ``run_trial`` (a bug, not a failed trial), ``outside`` returns the
    trial's outside CPU share (contaminated above ``outside_cpu_limit``, as the real evaluator marks it).
    """

    clock: FakeClock = field(default_factory=FakeClock)
    effect: Callable[[Mapping[str, Any]], float] = tuning_effect
    noise: float = 0.004  # relative standard deviation of every KPI
    seed: int = 0
    overhead_s: float = 0.5  # clock advance beyond the trial's duration (apply, spawn, parse)
    fail: Hook | None = None
    breach: Hook | None = None
    crash: Callable[[TrialCall], BaseException | None] | None = None
    outside: Callable[[TrialCall], float | None] | None = None
    outside_cpu_limit: float = 0.25
    missing: dict[str, str] = field(
        default_factory=lambda: {
            TEMP: "no thermal sensor on the fake host",
            WATTS: "no RAPL on the fake host",
        }
    )
    counters: TrialCounters = field(default_factory=TrialCounters)
    calls: list[TrialCall] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def missing_reasons(self) -> dict[str, str]:
        return dict(self.missing)

    async def run_trial(
        self,
        domain: SpicaDomain,
        genome: Genome,
        regime: str,
        *,
        cand_id: str,
        duration_s: float | None = None,
        cpus: tuple[int, ...] | None = None,
    ) -> TrialResult:
        await anyio.lowlevel.checkpoint()
        started = self.clock()
        try:
            domain.apply(genome)
            spec = domain.build_workload(regime, genome, duration_s=duration_s)
        except (OSError, DomainError) as e:
            return self._result(
                domain, cand_id, regime, started, cpus, failure=f"could not apply or run: {e}"
            )
        call = TrialCall(
            index=len(self.calls),
            domain=domain.name,
            cand_id=cand_id,
            regime=regime,
            genome=dict(genome),
            duration_s=duration_s,
            cpus=cpus,
            knob_files=system_knob_files(domain),
        )
        self.calls.append(call)
        self.clock.advance(spec.duration_s + self.overhead_s)
        if self.crash is not None and (exc := self.crash(call)) is not None:
            raise exc
        load = self.outside(call) if self.outside is not None else None
        if self.fail is not None and (reason := self.fail(call)) is not None:
            return self._result(domain, cand_id, regime, started, cpus, failure=reason, outside=load)
        kpis = self._kpis(domain, genome, regime)
        if self.breach is not None and (text := self.breach(call)) is not None:
            return self._result(
                domain, cand_id, regime, started, cpus, kpis, failure=f"cap breach: {text}", breach=text,
                outside=load,
            )  # fmt: skip
        return self._result(domain, cand_id, regime, started, cpus, kpis, outside=load)

    def _kpis(self, domain: SpicaDomain, genome: Genome, regime: str) -> dict[str, float]:
        e = self.effect(genome)
        n_tp, n_lat = self._rng.normal(0.0, self.noise, size=2)
        p95 = max(1.0, BASE_P95_US * (1.0 - 0.5 * e) * (1.0 + n_lat))
        kpis = {
            THROUGHPUT: BASE_THROUGHPUT[regime] * (1.0 + e) * (1.0 + n_tp),
            P50: 0.6 * p95,
            P95: p95,
            P99: 1.5 * p95,
        }
        wanted = domain.kpi_names()
        return {k: float(v) for k, v in kpis.items() if k in wanted}

    def _result(
        self,
        domain: SpicaDomain,
        cand_id: str,
        regime: str,
        started: float,
        cpus: tuple[int, ...] | None,
        kpis: dict[str, float] | None = None,
        *,
        failure: str | None = None,
        breach: str | None = None,
        outside: float | None = None,
    ) -> TrialResult:
        ok = failure is None
        contaminated = outside is not None and outside > self.outside_cpu_limit
        self.counters.trials += 1
        self.counters.failed_trials += 0 if ok else 1
        self.counters.contaminated_trials += int(contaminated)
        return TrialResult(
            domain=domain.name, cand_id=cand_id, regime=regime, ok=ok, kpis=kpis or {},
            failure=failure, cap_breach=breach, wall_s=self.clock() - started, started_at=started, cpus=cpus,
            outside_cpu=outside, contaminated=contaminated,
        )  # fmt: skip

    def calls_of(self, cand_id: str) -> list[TrialCall]:
        return [c for c in self.calls if c.cand_id == cand_id]


async def settle() -> None:
    """Let every other task run as far as it can without time passing."""
    for _ in range(20):
        await anyio.lowlevel.checkpoint()


# --- what D-REAM reports and logs -------------------------------------------------------------------


class RecordingEventLog(EventLog):
    """The real ``events.jsonl`` writer that also keeps the events and wakes tests waiting for one."""

    def __init__(self, path: Path, clock: Callable[[], float]) -> None:
        super().__init__(path, clock)
        self.records: list[dict[str, Any]] = []
        self._changed = anyio.Event()

    def record(self, event: str, *, ts: float | None = None, **fields: Any) -> None:
        super().record(event, ts=ts, **fields)
        self.records.append({"event": event, **fields})
        self._changed.set()
        self._changed = anyio.Event()

    def named(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["event"] == event]

    async def wait_for(self, event: str, count: int = 1) -> dict[str, Any]:
        """The ``count``-th ``event`` once it has been recorded (wrap in ``fail_after``)."""
        while len(self.named(event)) < count:
            await self._changed.wait()
        return self.named(event)[count - 1]


class Reports:
    """Collects what D-REAM reports to the coordinator; tests can wait for the n-th report."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = anyio.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = anyio.Event()

    def summary(self) -> list[tuple[str, str, int]]:
        return [(e.name, getattr(e, "domain", ""), getattr(e, "generation", -1)) for e in self.events]

    async def wait_for(self, count: int) -> None:
        while len(self.events) < count:
            await self._changed.wait()


@dataclass
class DreamRig:
    """A DreamLoop with every collaborator a test looks at afterwards."""

    loop: DreamLoop
    runner: FakeRunner
    clock: FakeClock
    paths: StatePaths
    events: RecordingEventLog
    gate: DreamGate
    progress: Progress
    reports: Reports
    checkpoints: list[float]
    status: list[str]
    ttw: list[float | None]  # what time_to_window returns (a list so a test can change it)


def dream_config(**overrides: Any) -> DreamConfig:
    """A small, fast D-REAM: 4 candidates, 3 rounds, no real pacing sleep unless asked for."""
    kwargs: dict[str, Any] = {
        "domains": [TUNE],
        "population": 4,
        "trials": 3,
        "min_trials": 2,
        "elite": 1,
        "trial_seconds": 5.0,
        "first_look_seconds": None,  # the tests of the first look turn it on
        "pacing": PacingConfig(min_sleep_s=0.0, max_sleep_s=0.0),
    }
    kwargs.update(overrides)
    return DreamConfig(**kwargs)


def open_dream_rig(
    state_dir: Path,
    domains: Mapping[str, SpicaDomain],
    *,
    runner: FakeRunner | None = None,
    config: DreamConfig | None = None,
    regimes: tuple[str, ...] = ("normal", "stress"),
    seed: int = 11,
    run_id: str = "run-test",
) -> DreamRig:
    """A DreamLoop over ``domains`` (not restored yet) with a fake runner, clock and recorders."""
    runner = runner if runner is not None else FakeRunner()
    clock = runner.clock
    paths = StatePaths(state_dir)
    events = RecordingEventLog(paths.events, clock)
    gate = DreamGate()
    progress = Progress()
    reports = Reports()
    checkpoints: list[float] = []
    status: list[str] = []
    ttw: list[float | None] = [None]
    loop = DreamLoop(
        DreamSettings(
            dream=config if config is not None else dream_config(),
            seed=seed,
            n_boot=200,
            regimes={name: regimes for name in domains},
        ),
        domains=domains,
        evaluator=runner,
        paths=paths,
        events=events,
        gate=gate,
        progress=progress,
        report=reports,
        checkpoint=lambda: checkpoints.append(clock()),
        time_to_window=lambda: ttw[0],
        clock=clock,
        run_id=run_id,
        stress_ng_version="0.17.08",
        on_status=status.append,
    )
    return DreamRig(loop, runner, clock, paths, events, gate, progress, reports, checkpoints, status, ttw)
