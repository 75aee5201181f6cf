"""D-REAM: the continuous evolutionary loop over the enabled SPICA domains.

Theory of operation. D-REAM walks the runnable domains in order; for each it runs
``epochs_per_cycle`` generations — ask the engine for candidates, run a :class:`Tournament` against
the stock arm, conclude (packs, baselines, hall of fame, the engine told) — then paces itself with an
adaptive sleep (``core.pacing``). It never reaches into the driver: it waits on a
:class:`~kloros_orchestrator.runtime.ports.DreamGate` between tournaments, reports
``TournamentStarted``/``TournamentDone`` through ``report`` (the driver feeds them to the
coordinator), runs trials through a :class:`~kloros_orchestrator.runtime.ports.TrialRunner`, and asks
``checkpoint`` to persist after every tournament. PHASE's results come back through :meth:`collapse`,
which the driver calls when the coordinator says ``CollapseResults``.
"""

from __future__ import annotations

import os
import re
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import numpy as np
import psutil
from loguru import logger

from kloros_orchestrator.config import DreamConfig
from kloros_orchestrator.core.coordinator import Event, TournamentDone, TournamentStarted
from kloros_orchestrator.core.pacing import PacingInputs, decide, estimate_tournament_s, should_start
from kloros_orchestrator.engine import Evolution, SearchSpace
from kloros_orchestrator.model import Genome
from kloros_orchestrator.phase.records import PhaseData, VariantInfo
from kloros_orchestrator.phase.results import PhaseResults
from kloros_orchestrator.runtime.collapse import collapse_domain
from kloros_orchestrator.runtime.conclude import (
    Concluder,
    entry_from_pack,
    hall_of_fame_from_packs,
    promote,
    verdict_of,
)
from kloros_orchestrator.runtime.ports import Clock, DreamGate, EventLog, TrialRunner
from kloros_orchestrator.runtime.records import (
    DomainProgress,
    HallOfFameEntry,
    Progress,
    format_duration,
    iso,
)
from kloros_orchestrator.runtime.tournament import Tournament, TournamentOutcome
from kloros_orchestrator.spica.base import SpicaDomain
from kloros_orchestrator.store import StatePaths

if TYPE_CHECKING:
    from kloros_orchestrator.runtime.host_keeper import HostKeeper

ROLLING = 5
FAILURE_BACKOFF_S = 30.0
# A domain whose knobs another tool keeps rewriting sits out, doubling from DRIFT_BACKOFF_S.
DRIFT_BACKOFF_S = 600.0
DRIFT_BACKOFF_MAX_S = 6 * 3600.0
# A domain whose tournaments keep stopping as "host too busy" sits out too, doubling from BUSY_BACKOFF_S
# (its stress-ng would only add to the load it cannot measure through).
BUSY_BACKOFF_S = 300.0


@dataclass(frozen=True)
class DreamSettings:
    """D-REAM's share of the configuration."""

    dream: DreamConfig
    seed: int
    n_boot: int
    regimes: Mapping[str, tuple[str, ...]]  # domain -> the regimes it declares, in REGIMES order


def seed_of(*parts: object) -> list[int]:
    """A reproducible seed sequence entropy from labelled parts (config seed, domain, generation, ...)."""
    return [zlib.crc32(str(p).encode()) for p in parts]


def _declared(space: SearchSpace) -> dict[str, object]:
    """The declared (original) form of a space, ignoring adaptation: what the host offers."""
    return {n: space.original(n).to_dict() for n in space.names}


def _same_genome(dom: SpicaDomain, genome: Genome, stock: Genome) -> bool:
    """Whether ``genome`` is ``stock`` once the domain has filled in and normalised it."""
    try:
        return dom.validate_genome(genome) == dict(stock)
    except Exception:  # a genome the domain refuses is not the current configuration
        return False


@dataclass
class DomainSearch:
    """One runnable domain's search: its engine, numbering, hall of fame and recent durations."""

    domain: SpicaDomain
    stock: Genome
    engine: Evolution
    committed: dict[str, object]  # engine snapshot before the running tournament
    generation: int
    hall_of_fame: list[HallOfFameEntry]
    durations: deque[float]

    def progress(self) -> DomainProgress:
        return DomainProgress(
            engine=dict(self.committed),
            generation=self.generation,
            hall_of_fame=list(self.hall_of_fame),
            durations=list(self.durations),
        )


class DreamLoop:
    def __init__(
        self,
        settings: DreamSettings,
        *,
        domains: Mapping[str, SpicaDomain],
        evaluator: TrialRunner,
        paths: StatePaths,
        events: EventLog,
        gate: DreamGate,
        progress: Progress,
        report: Callable[[Event], object],
        checkpoint: Callable[[], object],
        time_to_window: Callable[[], float | None],
        clock: Clock,
        run_id: str,
        stress_ng_version: str | None,
        on_status: Callable[[str], object] | None = None,
        host_lock: anyio.Lock | None = None,
        before_tournament: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.cfg = settings.dream
        self.domains = dict(domains)
        self.evaluator = evaluator
        self.paths = paths
        self.events = events
        self.gate = gate
        self.progress = progress
        self.report = report
        self.checkpoint = checkpoint
        self.time_to_window = time_to_window
        self.clock = clock
        self.run_id = run_id
        self.on_status = on_status
        # Held while a tournament runs: the host's configuration changes only between tournaments.
        self.host_lock = host_lock or anyio.Lock()
        self.before_tournament = before_tournament
        self.phase_stock: dict[str, Genome] = {}  # the stock arms handed to the last PHASE
        # Tournaments in a row stopped by knob drift ("drift") or as host too busy ("busy"), per domain.
        self._streaks: dict[tuple[str, str], int] = {}
        self.searches: dict[str, DomainSearch] = {}
        self.domain_index = 0
        self.best_history: deque[float] = deque(maxlen=ROLLING)
        self._cpu_mark: tuple[float, float, float] | None = None
        self.concluder = Concluder(
            paths=paths,
            run_id=run_id,
            stress_ng_version=stress_ng_version,
            n_boot=settings.n_boot,
            min_trials=min(self.cfg.min_trials, self.cfg.trials),
            clock=clock,
        )

    # --- set-up and persistence ------------------------------------------------------------------

    def restore(
        self,
        saved: Mapping[str, DomainProgress],
        domain_index: int = 0,
        current: Mapping[str, Genome] | None = None,
    ) -> None:
        """Build every runnable domain's search, resuming a saved one where it still fits this host.

        ``current``: each domain's current configuration (adopted, else factory; default the values
        found at discovery), the stock arm of its tournaments."""
        self.domain_index = domain_index
        for name in self.runnable():
            dom = self.domains[name]
            prior = saved.get(name)
            eng = self._make_engine(name, dom, prior)
            self.searches[name] = DomainSearch(
                domain=dom,
                stock=dict((current or {}).get(name) or dom.stock_genome()),
                engine=eng,
                committed=eng.state(),
                generation=prior.generation if prior else self._next_generation_on_disk(name),
                hall_of_fame=self._usable(
                    dom,
                    list(prior.hall_of_fame)
                    if prior
                    else hall_of_fame_from_packs(self.paths, name, self.events),
                ),
                durations=deque(prior.durations if prior else [], maxlen=ROLLING),
            )
            knobs = sorted(dom.search_space())
            logger.info("domain {}: {} knob(s): {}", name, len(knobs), ", ".join(knobs))

    def _usable(self, dom: SpicaDomain, hof: list[HallOfFameEntry]) -> list[HallOfFameEntry]:
        """The entries this host can still apply: a genome from before a knob disappeared (or was
        added) would fail every PHASE trial and sit at the top of the hall of fame for good."""
        usable = [h for h in hof if set(h.genome) == set(dom.search_space())]
        for h in hof:
            if h not in usable:
                logger.warning(
                    "domain {}: {} leaves the hall of fame: its knobs no longer fit", dom.name, h.cand_id
                )
        return usable

    def _next_generation_on_disk(self, name: str) -> int:
        """Without a saved state, continue numbering after the packs on disk (never overwrite them)."""
        gens = [
            int(m.group(1))
            for p in self.paths.candidates(name).glob("gen*_best.json")
            if (m := re.fullmatch(r"gen(\d+)_best\.json", p.name))
        ]
        return max(gens) + 1 if gens else 0

    def _make_engine(self, name: str, dom: SpicaDomain, prior: DomainProgress | None) -> Evolution:
        space = SearchSpace.from_dict(dom.search_space())
        if prior is not None and prior.engine:
            try:
                restored = Evolution.from_state(prior.engine)
            except Exception as e:  # a snapshot from disk is untrusted data: any failure → fresh search
                logger.error("saved engine state for {} unusable ({!r}); starting a new search", name, e)
                self.events.record(
                    "search_restarted", domain=name, reason=f"saved engine unusable: {e!r}"[:300]
                )
            else:
                # The host (CPU count, cpufreq, ...) or the code may have changed since: a search
                # over knobs or ranges this host no longer has would ask for genomes it rejects.
                if _declared(restored.space) == _declared(space):
                    return restored
                logger.warning(
                    "search space of {} changed since the saved state; starting a new search", name
                )
                self.events.record("search_restarted", domain=name, reason="search space changed")
        seed = int(np.random.SeedSequence(seed_of(self.settings.seed, name)).generate_state(1)[0])
        # The stock genome is not a candidate: the stock arm is measured in every tournament anyway.
        return Evolution(space, population=self.cfg.population, seed=seed, elite=self.cfg.elite)

    def set_current(self, name: str, genome: Genome) -> None:
        """The domain's configuration changed (adopted, rolled back): the stock arm from now on.

        Hall-of-fame scores were measured against the old configuration and do not compare with
        new ones: they are cleared (the entries stay, ranked after every entry scored against the
        new configuration, for PHASE to re-measure); the entry that is now the configuration leaves."""
        s = self.searches.get(name)
        if s is None or dict(genome) == s.stock:
            return
        s.stock = dict(genome)
        kept = [h for h in s.hall_of_fame if h.genome != s.stock]
        for h in kept:
            h.score, h.score_ci95, h.phase_run_id = None, None, None
        s.hall_of_fame = kept
        if kept:
            logger.info("domain {}: {} hall-of-fame score(s) cleared (old configuration)", name, len(kept))

    def snapshot(self) -> dict[str, DomainProgress]:
        """Every domain's search as it stands after its last finished tournament."""
        return {name: s.progress() for name, s in self.searches.items()}

    def domain_status(self, available: list[str]) -> dict[str, str]:
        out = dict.fromkeys(available, "disabled")
        out.update({name: dom.support for name, dom in self.domains.items()})
        return out

    def runnable(self) -> list[str]:
        return [n for n in self.cfg.domains if n in self.domains and self.domains[n].support == "ok"]

    # --- the loop ---------------------------------------------------------------------------------

    async def run(self, *, once: bool) -> None:
        names = [n for n in self.runnable() if n in self.searches]
        if not names:
            logger.error("no enabled domain is supported on this host: D-REAM has nothing to do")
            if once:
                return
            await anyio.sleep_forever()
        while True:
            for i in range(self.domain_index % len(names), len(names)):
                self.domain_index = i
                for _ in range(self.cfg.epochs_per_cycle):
                    if self._backed_off(names[i]):
                        break
                    await self._wait_for_turn(names[i], once=once)
                    await self.tournament(names[i])
            self.domain_index = 0
            if once:
                return
            await self._pace_after_cycle()

    async def _wait_for_turn(self, name: str, *, once: bool) -> None:
        """Wait until a tournament may start: D-REAM resumed, and it fits before the next window."""
        while True:
            await self.gate.wait_open()
            if once:
                return
            est = estimate_tournament_s(tuple(self.searches[name].durations))
            ttw = self.time_to_window()
            if should_start(est, ttw):
                return
            reason = (
                f"next {name} tournament (~{est:.0f} s) would not finish before the window in {ttw:.0f} s"
            )
            self._record_pacing(ttw or 0.0, reason, {"estimate_s": est, "time_to_window_s": ttw}, defer=True)
            await self.gate.pace(float("inf"))  # ends when D-REAM is resumed after that window's PHASE

    def _host_busy(self) -> float | None:
        """Host utilisation outside our own workloads since the last call (0..1), or None."""
        cpu = psutil.cpu_times()
        busy = sum(cpu) - cpu.idle - getattr(cpu, "iowait", 0.0)
        ours = sum(os.times()[:4])  # self + reaped children (every stress-ng run we waited for)
        wall = time.monotonic()
        mark, self._cpu_mark = self._cpu_mark, (busy, ours, wall)
        if mark is None or wall - mark[2] <= 0:
            return None
        ncpu = psutil.cpu_count() or 1
        other = (busy - mark[0]) - (ours - mark[1])
        return float(min(1.0, max(0.0, other / ((wall - mark[2]) * ncpu))))

    def _backed_off(self, name: str) -> bool:
        """Whether the domain sits out (knob drift); a back-off that has ended is cleared."""
        entry = self.progress.backoff.get(name)
        if entry is None:
            return False
        if self.clock() < float(entry["until_ts"]):
            return True
        del self.progress.backoff[name]
        logger.info("domain {}: back-off over; tournaments resume", name)
        return False

    def _back_off(self, name: str, drift: list[str]) -> None:
        """Another tool keeps rewriting this domain's knobs: stop fighting it for a while."""
        why = (
            f"another tool keeps rewriting its knobs ({len(drift)} trials failed as knob drift; last: "
            f"{drift[-1].removeprefix('knob drift: ')[:200]})"
        )
        self._sit_out(name, "drift", DRIFT_BACKOFF_S, why, drift=drift[-3:])

    def _sit_out(self, name: str, kind: str, first_s: float, why: str, **fields: Any) -> None:
        """Back the domain off for ``first_s`` doubling per stop of this kind in a row (at most 6 h)."""
        streak = self._streaks.get((name, kind), 0) + 1
        self._streaks[(name, kind)] = streak
        seconds = min(DRIFT_BACKOFF_MAX_S, first_s * 2 ** (streak - 1))
        until = self.clock() + seconds
        reason = f"{why}; backing off for {seconds:.0f} s"
        self.progress.backoff[name] = {"until_ts": until, "until": iso(until), "reason": reason}
        self.events.record("domain_backoff", domain=name, seconds=seconds, reason=reason, **fields)
        logger.warning("domain {}: {}", name, reason)

    async def _pace_after_cycle(self) -> None:
        backed = [float(b["until_ts"]) for n, b in self.progress.backoff.items() if n in self.searches]
        if backed and len(backed) == len(self.searches):
            wait = max(self.cfg.pacing.min_sleep_s, min(backed) - self.clock())
            why = "every domain is backed off (knob drift or a busy host)"
            self._record_pacing(wait, why, {}, defer=False)
            await self.gate.pace(wait)
            return
        rate = None
        if len(self.best_history) >= 2:
            first, last = self.best_history[0], self.best_history[-1]
            rate = (last - first) / (len(self.best_history) - 1)
        durations = tuple(x for s in self.searches.values() for x in s.durations)
        decision = decide(
            PacingInputs(
                recent_durations_s=durations[-ROLLING:],
                improvement_rate=rate,
                host_busy=self._host_busy(),
                time_to_window_s=self.time_to_window(),
                min_sleep_s=self.cfg.pacing.min_sleep_s,
                max_sleep_s=self.cfg.pacing.max_sleep_s,
            )
        )
        self._record_pacing(
            decision.sleep_s, decision.reason, decision.inputs, defer=decision.defer_to_window
        )
        await self.gate.pace(decision.sleep_s)

    def _record_pacing(self, sleep_s: float, reason: str, inputs: dict[str, object], *, defer: bool) -> None:
        self.progress.pacing = {"last_sleep_s": round(sleep_s, 3), "reason": reason, "defer_to_window": defer}
        self.events.record("pacing", sleep_s=sleep_s, reason=reason, inputs=inputs, defer_to_window=defer)
        logger.info("pacing: sleep {:.1f} s: {}", sleep_s, reason)

    # --- one tournament ---------------------------------------------------------------------------

    async def tournament(self, name: str) -> None:
        """One tournament; a failure in it is logged and never wedges the coordinator."""
        gen = self.searches[name].generation
        try:
            async with self.host_lock:
                if self.before_tournament is not None:
                    await self.before_tournament()  # a configuration change waiting for this boundary
                gen = self.searches[name].generation
                failed = await self._run_tournament(name)
        except Exception as e:
            # A bug or an unexpected host error: the knobs are already restored (the tournament's
            # finally). Report the tournament done so a window waiting in DRAINING proceeds; back off.
            logger.exception("tournament {} gen {} failed", name, gen)
            self.events.record("tournament_failed", domain=name, generation=gen, error=repr(e)[:500])
            self.report(TournamentDone(name, gen, now=self.clock()))
            await self.gate.pace(FAILURE_BACKOFF_S)
            return
        if failed:
            # Nothing measurable (stress-ng gone, scratch dir unwritable, ...): do not spin.
            logger.error("every trial of {} gen {} failed: {}", name, gen, failed)
            self.events.record("tournament_all_failed", domain=name, generation=gen, reasons=failed)
            await self.gate.pace(FAILURE_BACKOFF_S)

    async def _run_tournament(self, name: str) -> list[str] | None:
        """Run and conclude one tournament; returns the failure reasons when every trial failed."""
        s = self.searches[name]
        gen = s.generation
        asked = s.engine.ask()
        # A candidate that is the current configuration scores 0 by definition: the stock arm
        # measures it anyway, so it is told as such and never raced against itself.
        current = [c for c in asked if _same_genome(s.domain, c.genome, s.stock)]
        cands = [c for c in asked if c not in current] or asked
        if len(cands) == len(asked):
            current = []
        self.progress.domain, self.progress.generation = name, gen
        trials, seconds = self.cfg.trials, self.cfg.trial_seconds
        look = self.cfg.first_look_seconds
        if gen == 0 and look is not None:  # a first look: a verdict in minutes, deepened from then on
            trials = min(trials, max(2, self.cfg.min_trials))
            seconds = look if seconds is None else min(seconds, look)
        t = Tournament(
            domain=s.domain,
            stock=s.stock,
            candidates=cands,
            regimes=self.settings.regimes.get(name, ()),
            evaluator=self.evaluator,
            progress=self.progress,
            rng=np.random.default_rng(seed_of(self.settings.seed, name, gen, "order")),
            trials=trials,
            min_rounds=max(2, self.cfg.min_trials),
            max_parallel=self.cfg.max_parallel,
            trial_seconds=seconds,
            on_status=self.on_status,
            contamination=self.cfg.contamination,
            racing=self.cfg.racing,
        )
        self.report(TournamentStarted(name, gen, now=self.clock()))
        if self.on_status is not None:
            self.on_status(f"tournament {name} gen {gen} started")
        logger.info(
            "tournament {} gen {}: {} candidates + stock, {} regimes, up to {} trials each{}",
            name, gen, len(cands), len(t.outcome.regimes), trials,
            f" (a first look: {seconds:g} s trials)" if gen == 0 and look is not None and seconds else "",
        )  # fmt: skip
        out = await t.run()
        self._record_contaminated(name, gen, out)
        if out.busy is not None:
            self._not_concluded(s, gen, out.busy, out.duration_s)
            return None
        for cid, why in out.race.eliminated.items():
            self.events.record("race_eliminated", domain=name, generation=gen, cand_id=cid, reason=why)
        rng = np.random.default_rng(seed_of(self.settings.seed, name, gen, "bootstrap"))
        verdict = self.concluder.conclude(s.domain, gen, s.stock, out, self.evaluator.missing_reasons(), rng)
        s.engine.tell([*verdict.told, *((c, 0.0) for c in current)])
        for note in s.engine.adapt():
            self.events.record("search_space_adapted", domain=name, generation=gen, change=note)
        best = verdict.best
        if best is not None and best.safe and best.aggregate.score_v2 is not None:
            s.hall_of_fame = promote(s.hall_of_fame, entry_from_pack(best))
            self.best_history.append(best.aggregate.score_v2)
        if out.drift_stopped:
            self._back_off(name, out.drift)
        else:
            self._streaks.pop((name, "drift"), None)
        self._streaks.pop((name, "busy"), None)
        s.durations.append(out.duration_s)
        s.generation = gen + 1
        s.committed = s.engine.state()
        self.progress.tournaments += 1
        self.checkpoint()
        said = verdict_of(best, s.stock)
        if gen == 0 and look is not None:  # few, short trials: say so in the same breath
            said["text"] = f"first look ({trials} trials of {seconds:g} s per regime): {said['text']}"
        self.progress.best[name] = {"generation": gen, **said}
        took = format_duration(out.duration_s)
        logger.info("tournament {} gen {} done in {}: {}", name, gen, took, said["text"])
        self.report(TournamentDone(name, gen, now=self.clock()))
        return out.all_failed()

    def _record_contaminated(self, name: str, gen: int, out: TournamentOutcome) -> None:
        """One ``round_contaminated`` event per dropped round, naming every trial it dropped."""
        for c in out.contaminated:
            trials = [
                {"arm": arm, "regime": t.regime, "started_at": t.started_at, "outside_cpu": t.outside_cpu}
                for arm, t in c.trials
            ]
            self.events.record(
                "round_contaminated", domain=name, generation=gen, round=c.round, trials=trials
            )

    def _not_concluded(self, s: DomainSearch, gen: int, why: str, duration_s: float) -> None:
        """A tournament stopped because the host was too busy: nothing of it is concluded (no pack, no
        baseline, no hall of fame, the engine not told). The engine goes back to its snapshot from
        before the tournament, so the same generation is asked again next time; the last verdict stands,
        and status says why this one stopped (``tournament.stopped``; README, "Contaminated rounds")."""
        name = s.domain.name
        s.engine = Evolution.from_state(s.committed)
        self.progress.tournaments += 1
        self.events.record("tournament_not_concluded", domain=name, generation=gen, reason=why)
        s.durations.append(duration_s)  # its stress-ng time counts for pacing all the same
        # Back off rather than run stress-ng back to back on a host we cannot measure on.
        self._sit_out(name, "busy", BUSY_BACKOFF_S, f"tournaments stop as {why[:200]}")
        self.checkpoint()
        self.report(TournamentDone(name, gen, now=self.clock()))

    # --- PHASE's side -----------------------------------------------------------------------------

    def bind_keeper(self, keeper: HostKeeper) -> None:
        """The host keeper compares an adoption with the stock arms the last PHASE measured."""
        keeper.phase_stock = self.phase_stock

    def phase_measured(self, data: PhaseData, *, run_id: str, finished_at: float) -> None:
        """A PHASE window's trials are in (a fleet shares them: ``FleetDreamLoop``)."""

    def phase_subjects(
        self, max_variants: int
    ) -> dict[str, tuple[SpicaDomain, Genome, dict[str, VariantInfo]]]:
        """What PHASE evaluates: per runnable domain, its stock genome and its best variants."""
        out: dict[str, tuple[SpicaDomain, Genome, dict[str, VariantInfo]]] = {}
        for name, s in self.searches.items():
            variants = {
                h.cand_id: VariantInfo(genome=h.genome, spica_id=h.spica_id, cand_id=h.cand_id)
                for h in [h for h in s.hall_of_fame if h.genome != s.stock][:max_variants]
            }
            out[name] = (s.domain, s.stock, variants)
            self.phase_stock[name] = dict(s.stock)
        return out

    def collapse(self, results: PhaseResults, *, source: str) -> dict[str, object]:
        """Ingest PHASE's verdict; returns what changed (logged with ``results_collapsed``)."""
        changes: dict[str, object] = {
            "source": source,
            "run_id": results.run_id,
            "complete": results.complete,
        }
        per_domain: dict[str, object] = {}
        for name in results.domains_tested:
            s = self.searches.get(name)
            if s is None:
                continue
            hof = [msgspec.structs.replace(h) for h in s.hall_of_fame]  # changed only on success
            try:
                per_domain[name] = collapse_domain(name, results, s.engine, hof, self.paths, self.clock)
                s.hall_of_fame = hof
            except (ValueError, KeyError, TypeError) as e:
                # Results from another host/version may not fit this search: keep our own state.
                logger.error("collapse of {} into {} failed: {}", results.run_id, name, e)
                per_domain[name] = {"error": str(e)}
            s.committed = s.engine.state()
        changes["domains"] = per_domain
        return changes


__all__ = ["DRIFT_BACKOFF_S", "FAILURE_BACKOFF_S", "DomainSearch", "DreamLoop", "DreamSettings", "seed_of"]
