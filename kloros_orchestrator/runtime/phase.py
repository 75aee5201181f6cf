"""PHASE: the scheduled deep evaluation (QTIME) and the hand-back of its results to D-REAM.

For each enabled, supported domain the stock baseline and D-REAM's hall of fame are measured in
``epochs × slices × replicas`` (plan: ``phase/qtime.py``; baseline and candidates alternate inside a
slice so drift cancels). The plan is shrunk to fit the window before it starts; if the window
closes anyway the run stops at a trial boundary and writes what it measured with
``complete: false``. Results are written (``phase/<run_id>/phase_results.json``, ``phase/latest``,
the flag file), ``phase_complete`` is dispatched, D-REAM ingests the results (collapse) and
``results_collapsed`` resumes it in the same event-loop turn.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
from loguru import logger

from kloros_orchestrator.core.coordinator import PhaseComplete, ResultsCollapsed, StartPhase
from kloros_orchestrator.phase.analysis import (
    DomainData,
    PhaseData,
    TrialRecord,
    VariantInfo,
    analyze_phase,
    build_results,
)
from kloros_orchestrator.phase.qtime import BASELINE_ID, QtimeSpec, Slot, fit_plan
from kloros_orchestrator.phase.results import Qtime, TrialCounts, Window, write_results

if TYPE_CHECKING:
    from kloros_orchestrator.runtime.driver import Daemon

TRIAL_OVERHEAD_S = (
    0.6  # apply/restore, process start and YAML parsing around each trial (measured ~0.2-0.4 s)
)


class PhaseRunner:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self._progress: dict[str, Any] | None = None

    def progress(self) -> dict[str, Any] | None:
        return self._progress

    async def run_forever(self) -> None:
        while True:
            await self.d.phase_requested()
            window = self.d.pending_window
            if window is None:
                continue
            self.d.pending_window = None
            try:
                await self.run_window(window)
            except Exception as e:
                # Never leave D-REAM paused behind a failed PHASE: report it and resume.
                logger.exception("PHASE for window {} failed", window.window_id)
                self._progress = None
                self.d.state.open_window = None
                self.d.save_state()
                self.d.record("phase_failed", window_id=window.window_id, error=repr(e)[:500])
                self.d.dispatch(PhaseComplete(now=self.d.clock(), results_path=None, complete=False))
                self.d.dispatch(ResultsCollapsed(now=self.d.clock(), changes={"error": repr(e)[:500]}))

    def _trial_seconds(self, domain: str, regime: str) -> float:
        override = self.d.cfg.phase.trial_seconds
        if override is not None:
            return float(override)
        return float(self.d.loaded.regimes[domain][regime].duration)

    async def run_window(self, w: StartPhase) -> None:
        d = self.d
        started = d.clock()
        run_id = f"phase-{datetime.fromtimestamp(started, UTC):%Y%m%dT%H%M%S}-{w.window_id.replace(':', '')}"
        d.record("phase_started", window_id=w.window_id, run_id=run_id, catch_up=w.catch_up, manual=w.manual)
        q = d.cfg.phase.qtime
        requested = QtimeSpec(epochs=q.epochs, slices=q.slices, replicas=q.replicas)
        dream = d.dream
        variants: dict[str, dict[str, VariantInfo]] = {}
        for name in dream.runnable():
            dom = dream.domains[name]
            infos: dict[str, VariantInfo] = {}
            for h in dream.hall_of_fame_for_phase(name, d.cfg.phase.max_variants):
                if h["genome"] == dream.stock[name]:
                    continue
                infos[h["cand_id"]] = VariantInfo(
                    genome=h["genome"], spica_id=h["spica_id"], cand_id=h["cand_id"]
                )
            variants[name] = infos
            _ = dom
        plan_domains = {name: [BASELINE_ID, *infos] for name, infos in variants.items()}
        available = max(0.0, w.end - d.clock())
        slots, effective, shrink = fit_plan(
            plan_domains,
            requested,
            seed=d.cfg.seed,
            available_s=available,
            min_replicas=q.min_replicas,
            trial_s=lambda s: self._trial_seconds(s.domain, s.regime),
            overhead_s=TRIAL_OVERHEAD_S,
        )
        if shrink:
            logger.warning("QTIME plan shrunk: {}", shrink["reason"])
            d.record("qtime_shrunk", run_id=run_id, **shrink)
        logger.info(
            "PHASE {}: {} trials over {} ({} epochs × {} slices × {} replicas), window ends {}",
            run_id,
            len(slots),
            sorted(plan_domains),
            effective.epochs,
            effective.slices,
            effective.replicas,
            datetime.fromtimestamp(w.end, UTC).isoformat(),
        )
        records: dict[str, list[TrialRecord]] = {name: [] for name in plan_domains}
        complete = True
        stopped: str | None = None
        failed = 0
        self._progress = {"run_id": run_id, "done": 0, "total": len(slots), "window_id": w.window_id}
        try:
            for slot in slots:
                if d.clock() + self._trial_seconds(slot.domain, slot.regime) + TRIAL_OVERHEAD_S > w.end:
                    complete = False
                    stopped = "the window closed before the plan finished"
                    logger.warning(
                        "PHASE {}: {}; keeping the {} trials measured",
                        run_id,
                        stopped,
                        self._progress["done"],
                    )
                    break
                rec = await self._run_slot(slot, variants)
                failed += 0 if rec.ok else 1
                records[slot.domain].append(rec)
                self._progress["done"] += 1
        finally:
            with anyio.CancelScope(shield=True):
                for name in plan_domains:
                    for problem in dream.domains[name].restore():
                        logger.error("restore after PHASE {}: {}", name, problem)
        data = PhaseData(
            domains={
                name: DomainData(
                    stock=dream.stock[name],
                    variants=variants[name],
                    trials=records[name],
                    space=dream.domains[name].search_space(),
                )
                for name in plan_domains
            }
        )
        t_an = time.monotonic()
        analysis = analyze_phase(data, seed=d.cfg.seed, n_boot=d.cfg.bootstrap_samples)
        results = build_results(
            analysis,
            run_id=run_id,
            timestamp=datetime.now(UTC).isoformat(),
            qtime=Qtime(effective.epochs, effective.slices, effective.replicas),
            complete=complete,
            qtime_requested=Qtime(requested.epochs, requested.slices, requested.replicas),
            shrink=shrink,
            window=Window(
                id=w.window_id,
                start=datetime.fromtimestamp(w.start, UTC).isoformat(),
                end=datetime.fromtimestamp(w.end, UTC).isoformat(),
            ),
            trials=TrialCounts(planned=len(slots), run=self._progress["done"], failed=failed),
            stopped_reason=stopped,
        )
        path = write_results(d.paths.phase, results, now=d.clock())
        logger.info(
            "PHASE {} results written to {} (analysis {:.2f} s)", run_id, path, time.monotonic() - t_an
        )
        completed = d.clock()
        d.state.last_phase = {
            "completed_at": datetime.fromtimestamp(completed, UTC).isoformat(),
            "results": str(path),
            "window_id": w.window_id,
            "complete": complete,
            "run_id": run_id,
        }
        d.state.open_window = None
        d.save_state()
        self._progress = None
        d.notifier.status(f"PHASE {run_id} complete: {path}")
        d.dispatch(PhaseComplete(now=completed, results_path=str(path), complete=complete))
        changes = dream.collapse(results, source=str(path))
        d.dispatch(ResultsCollapsed(now=d.clock(), changes=changes))
        d.kick_windows()

    async def _run_slot(self, slot: Slot, variants: dict[str, dict[str, VariantInfo]]) -> TrialRecord:
        d = self.d
        dream = d.dream
        dom = dream.domains[slot.domain]
        genome = (
            dream.stock[slot.domain]
            if slot.variant_id == BASELINE_ID
            else variants[slot.domain][slot.variant_id].genome
        )
        tr = await d.evaluator.run_trial(
            dom, genome, slot.regime, cand_id=slot.variant_id, duration_s=d.cfg.phase.trial_seconds
        )
        return TrialRecord.from_trial(tr, epoch=slot.epoch, variant_id=slot.variant_id, replica=slot.replica)
