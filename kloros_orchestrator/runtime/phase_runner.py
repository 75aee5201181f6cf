"""PHASE: the scheduled deep evaluation (QTIME) of one window.

Theory of operation. For each subject domain the stock configuration and D-REAM's best variants are
measured in ``epochs × slices × replicas`` (plan: ``phase/qtime.py``; stock and variants alternate
inside a slice so drift cancels). The plan is shrunk to fit the window before it starts; if the
window closes anyway the run stops at a trial boundary and keeps what it measured with
``complete: false``. The analysis runs off the event loop (by default in a worker process, see
``phase/worker.py``), then the results are written (``phase/<run_id>/phase_results.json``,
``phase/latest``, the flag file) and returned. Handing them to D-REAM is not this class's business:
the driver reports ``PhaseComplete``, and the coordinator's ``CollapseResults`` does the rest.

A replica (every arm's trial of one epoch × slice × replica, the trials the analysis pairs) with a
contaminated trial (outside CPU load above ``dream.contamination.outside_cpu``) starts no further
trial, is dropped — its trials stay in ``trials.jsonl``, never in the analysis — and is run again,
at most ``dream.contamination.max_reruns`` times per replica. A replica still contaminated after
that stops the run at once ("host too busy"), like a window closing: what was measured clean is
kept, with ``complete: false`` and the reason in ``stopped_reason``. The bound is per replica, not
per window: a window lasts hours, and a few minutes of someone else's job must not end it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
from loguru import logger

from kloros_orchestrator.config import ContaminationConfig, PhaseConfig
from kloros_orchestrator.core.coordinator import StartPhase
from kloros_orchestrator.errors import KlorosError
from kloros_orchestrator.model import STOCK_ARM, Genome, TrialResult
from kloros_orchestrator.phase.qtime import QtimeSpec, Slot, fit_plan
from kloros_orchestrator.phase.records import DomainData, PhaseData, TrialRecord, VariantInfo
from kloros_orchestrator.phase.results import PhaseResults, Qtime, ResultsWindow, TrialCounts, write_results
from kloros_orchestrator.phase.worker import AnalysisRequest, analyze
from kloros_orchestrator.runtime.ports import Clock, EventLog, TrialRunner
from kloros_orchestrator.runtime.records import format_duration
from kloros_orchestrator.spica.base import SpicaDomain

# apply/restore, process start and YAML parsing around each trial (measured ~0.2-0.4 s)
TRIAL_OVERHEAD_S = 0.6
ANALYSIS_BOUND_S = 600.0  # an analysis taking longer is a bug: PHASE fails (and D-REAM resumes)

Subjects = Mapping[
    str, tuple[SpicaDomain, Genome, dict[str, VariantInfo]]
]  # domain -> (dom, stock, variants)
Analyzer = Callable[[AnalysisRequest], Awaitable[PhaseResults]]


class AnalysisFailed(KlorosError):
    """The analysis worker did not produce results."""


async def analyze_in_worker(req: AnalysisRequest) -> PhaseResults:
    """Run the analysis in ``python -m kloros_orchestrator.phase.worker`` and decode its results."""
    done = await anyio.run_process(
        [sys.executable, "-m", "kloros_orchestrator.phase.worker"],
        input=msgspec.json.encode(req),
        check=False,
        start_new_session=True,  # a Ctrl-C at the daemon's terminal is the daemon's to handle, not ours
    )
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace")[-2000:]
        raise AnalysisFailed(f"PHASE analysis worker exited {done.returncode}: {tail}")
    try:
        return msgspec.json.decode(done.stdout, type=PhaseResults)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise AnalysisFailed(f"PHASE analysis worker printed no valid results: {e}") from e


async def analyze_in_thread(req: AnalysisRequest) -> PhaseResults:
    """The same analysis in a worker thread of this process (tests; hosts without a spare process)."""
    return await anyio.to_thread.run_sync(analyze, req)


@dataclass(frozen=True)
class PhaseSettings:
    """PHASE's share of the configuration."""

    phase: PhaseConfig
    seed: int
    n_boot: int
    regime_seconds: Mapping[str, Mapping[str, float]]  # domain -> regime -> configured duration
    contamination: ContaminationConfig = field(default_factory=ContaminationConfig)  # same bound as D-REAM


@dataclass(frozen=True)
class PhaseOutcome:
    results: PhaseResults
    path: Path
    completed_at: float
    data: PhaseData  # the trials the analysis received (a fleet shares them with its study)


@dataclass
class _Measured:
    records: dict[str, list[TrialRecord]]
    done: int = 0
    failed: int = 0
    complete: bool = True
    stopped: str | None = None
    contaminated: int = 0  # replicas dropped for outside load


def replicas(slots: list[Slot]) -> list[list[Slot]]:
    """The plan cut into replicas: consecutive slots of one (epoch, domain, regime, replica)."""

    def key(s: Slot) -> tuple[int, str, str, int]:
        return (s.epoch, s.domain, s.regime, s.replica)

    out: list[list[Slot]] = []
    for slot in slots:
        if out and key(out[-1][0]) == key(slot):
            out[-1].append(slot)
        else:
            out.append([slot])
    return out


class PhaseRunner:
    def __init__(
        self,
        settings: PhaseSettings,
        *,
        evaluator: TrialRunner,
        phase_dir: Path,
        events: EventLog,
        clock: Clock,
        analyze: Analyzer = analyze_in_worker,
        on_status: Callable[[str], object] | None = None,
    ) -> None:
        self.settings = settings
        self.evaluator = evaluator
        self.phase_dir = phase_dir
        self.events = events
        self.clock = clock
        self.analyze = analyze
        self.on_status = on_status
        self.progress: dict[str, Any] | None = None

    def trial_seconds(self, domain: str, regime: str) -> float:
        override = self.settings.phase.trial_seconds
        return (
            float(override) if override is not None else float(self.settings.regime_seconds[domain][regime])
        )

    async def run_window(self, w: StartPhase, subjects: Subjects) -> PhaseOutcome:
        """Plan, measure, analyse and write one window's PHASE; returns the written results."""
        started = self.clock()
        run_id = f"phase-{datetime.fromtimestamp(started, UTC):%Y%m%dT%H%M%S}-{w.window_id.replace(':', '')}"
        self.events.record(
            "phase_started", window_id=w.window_id, run_id=run_id, catch_up=w.catch_up, manual=w.manual
        )
        q = self.settings.phase.qtime
        requested = QtimeSpec(epochs=q.epochs, slices=q.slices, replicas=q.replicas)
        slots, effective, shrink = fit_plan(
            {name: [STOCK_ARM, *variants] for name, (_, _, variants) in subjects.items()},
            requested,
            seed=self.settings.seed,
            available_s=max(0.0, w.end - self.clock()),
            min_replicas=q.min_replicas,
            trial_s=lambda s: self.trial_seconds(s.domain, s.regime),
            overhead_s=TRIAL_OVERHEAD_S,
        )
        if shrink:
            logger.warning("QTIME plan shrunk: {}", shrink["reason"])
            self.events.record("qtime_shrunk", run_id=run_id, **shrink)
        logger.info(
            "PHASE {}: {} trials over {} ({} epochs × {} slices × {} replicas), window ends {}",
            run_id, len(slots), sorted(subjects), effective.epochs, effective.slices, effective.replicas,
            datetime.fromtimestamp(w.end, UTC).isoformat(),
        )  # fmt: skip
        self.progress = {
            "run_id": run_id, "done": 0, "total": len(slots), "window_id": w.window_id,
            "epochs": effective.epochs, "slices": effective.slices, "replicas": effective.replicas,
        }  # fmt: skip
        try:
            measured = await self._measure(slots, subjects, w.end, run_id)
        finally:
            self.progress = None
        req = AnalysisRequest(
            data=PhaseData(
                domains={
                    name: DomainData(
                        stock=stock,
                        variants=variants,
                        trials=measured.records[name],
                        space=dom.search_space(),
                    )
                    for name, (dom, stock, variants) in subjects.items()
                }
            ),
            seed=self.settings.seed,
            n_boot=self.settings.n_boot,
            run_id=run_id,
            timestamp=datetime.now(UTC).isoformat(),
            qtime=Qtime(effective.epochs, effective.slices, effective.replicas),
            complete=measured.complete,
            qtime_requested=Qtime(requested.epochs, requested.slices, requested.replicas),
            shrink=shrink,
            window=ResultsWindow(
                id=w.window_id,
                start=datetime.fromtimestamp(w.start, UTC).isoformat(),
                end=datetime.fromtimestamp(w.end, UTC).isoformat(),
            ),
            trials=TrialCounts(planned=len(slots), run=measured.done, failed=measured.failed),
            stopped_reason=measured.stopped,
        )
        t_an = time.monotonic()
        # The window's measurements are worth more than a prompt exit: a stop that arrives now waits
        # for the analysis and the write (bounded), so the restart does not measure the window again.
        with anyio.CancelScope(shield=True), anyio.fail_after(ANALYSIS_BOUND_S):
            results = await self.analyze(req)
            path = await anyio.to_thread.run_sync(
                lambda: write_results(self.phase_dir, results, now=self.clock())
            )
        logger.info(
            "PHASE {} results written to {} (analysis {:.2f} s)", run_id, path, time.monotonic() - t_an
        )
        return PhaseOutcome(results=results, path=path, completed_at=self.clock(), data=req.data)

    async def _measure(self, slots: list[Slot], subjects: Subjects, end: float, run_id: str) -> _Measured:
        """Every slot in plan order, stopping at a trial boundary when the window would close first."""
        m = _Measured(records={name: [] for name in subjects})
        t0 = time.monotonic()
        total = [len(slots)]  # grows by a replica's length with each re-run
        try:
            for group in replicas(slots):
                for attempt in range(self.settings.contamination.max_reruns + 1):
                    kept, dirty = await self._replica(group, subjects, end, run_id, m, t0, total)
                    if dirty is None:
                        m.records[group[0].domain].extend(kept)  # clean (or cut short by the window)
                        break
                    m.contaminated += 1
                    self._note_contaminated(run_id, group[0], dirty, attempt)
                    if attempt < self.settings.contamination.max_reruns:
                        total[0] += len(group)  # the status total grows by the re-run
                        if self.progress is not None:
                            self.progress["total"] = total[0]
                else:
                    assert dirty is not None
                    m.complete, m.stopped = False, f"host too busy: {self._why(group[0], dirty)}"
                    logger.warning("PHASE {}: stopped: {}; keeping the {} trials measured clean", run_id,
                                   m.stopped, sum(len(r) for r in m.records.values()))  # fmt: skip
                if not m.complete:
                    break
        finally:
            with anyio.CancelScope(shield=True):
                for name, (dom, _, _) in subjects.items():
                    for problem in await anyio.to_thread.run_sync(dom.restore):
                        logger.error("restore after PHASE {}: {}", name, problem)
        return m

    async def _replica(
        self, group: list[Slot], subjects: Subjects, end: float, run_id: str, m: _Measured, t0: float,
        total: list[int],
    ) -> tuple[list[TrialRecord], TrialResult | None]:  # fmt: skip
        """Run one replica's slots in plan order: its records, and the trial that contaminated it (then
        no further slot is run). A window about to close stops it with ``m.complete`` False."""
        kept: list[TrialRecord] = []
        for slot in group:
            if self.clock() + self.trial_seconds(slot.domain, slot.regime) + TRIAL_OVERHEAD_S > end:
                m.complete, m.stopped = False, "the window closed before the plan finished"
                logger.warning("PHASE {}: {}; keeping the {} trials measured", run_id, m.stopped, m.done)
                break
            dom, stock, variants = subjects[slot.domain]
            genome = stock if slot.variant_id == STOCK_ARM else variants[slot.variant_id].genome
            self._note_slot(slot, m.done, total[0], t0)
            if self.on_status is not None:
                self.on_status(f"PHASE {run_id} trial {m.done + 1}/{total[0]}")
            tr = await self.evaluator.run_trial(
                dom,
                genome,
                slot.regime,
                cand_id=slot.variant_id,
                duration_s=self.settings.phase.trial_seconds,
            )
            m.failed += 0 if tr.ok else 1
            m.done += 1
            if self.progress is not None:
                self.progress["done"] = m.done
            if tr.contaminated:
                return kept, tr
            kept.append(
                TrialRecord.from_trial(tr, epoch=slot.epoch, variant_id=slot.variant_id, replica=slot.replica)
            )
        return kept, None

    def _why(self, slot: Slot, tr: TrialResult) -> str:
        limit = self.settings.contamination.outside_cpu
        return (
            f"outside CPU {tr.outside_cpu or 0.0:.0%} of the host > {limit:.0%} during {tr.cand_id} in "
            f"{slot.domain} {slot.regime} (epoch {slot.epoch + 1}, replica {slot.replica + 1})"
        )

    def _note_contaminated(self, run_id: str, slot: Slot, tr: TrialResult, attempt: int) -> None:
        """Log and record a dropped replica; the status total grows by the re-run."""
        limit = self.settings.contamination.max_reruns
        again = f"re-run {attempt + 1} of at most {limit}" if attempt < limit else "not re-run"
        logger.warning("PHASE {}: replica contaminated ({}): dropped; {}", run_id, self._why(slot, tr), again)
        self.events.record(
            "replica_contaminated", run_id=run_id, domain=slot.domain, epoch=slot.epoch, regime=slot.regime,
            replica=slot.replica, cand_id=tr.cand_id, outside_cpu=tr.outside_cpu, started_at=tr.started_at,
        )  # fmt: skip

    def _note_slot(self, slot: Slot, done: int, total: int, t0: float) -> None:
        """Where the window is (epoch, slice = regime, replica, arm) and the time left, for status."""
        if self.progress is None:
            return
        per_trial = (time.monotonic() - t0) / done if done else None
        self.progress.update(
            epoch=slot.epoch + 1, regime=slot.regime, replica=slot.replica + 1, domain=slot.domain,
            arm=slot.variant_id, eta_s=None if per_trial is None else round((total - done) * per_trial, 1),
        )  # fmt: skip
        if done and done % max(1, total // 10) == 0:
            p = self.progress
            logger.info("PHASE {}: {}/{} trials, epoch {}/{}, about {} left", p["run_id"], done, total,
                        slot.epoch + 1, p["epochs"], format_duration(p["eta_s"] or 0))  # fmt: skip


__all__ = [
    "TRIAL_OVERHEAD_S",
    "AnalysisFailed",
    "PhaseOutcome",
    "PhaseRunner",
    "PhaseSettings",
    "Subjects",
    "analyze_in_thread",
    "analyze_in_worker",
]
