"""D-REAM shared by a fleet: daemons pointed at one PostgreSQL study divide each generation's work.

Theory of operation. With ``study.store`` a PostgreSQL URI the driver builds a
:class:`FleetDreamLoop` instead of a ``DreamLoop`` (:func:`dream_factory`). It walks the domains,
waits on the gate and paces exactly as D-REAM does; only a domain's *turn* (one generation) differs:

1. **Join**: the domain's study is found or created by (``study.name``, study key) — domain, knob
   space, CPU model and count, memory, kernel, stress-ng version (``fleet.key``); a host only ever
   joins the study whose key is its own. A heartbeat task keeps the host alive in every study it
   joined and counts the hosts alive (status).
2. **Lead**: every step tries the study's leader lock (``fleet.leader``: a session-level advisory
   lock, so it moves to another host when the leader's session ends). The leader creates the first
   generation from its engine; when every unit of the newest generation is done it concludes it
   (``fleet_unit.conclude_rows``: packs and the hall of fame; ``fleet.verdict``: each
   candidate's fleet verdict with hosts as blocks, whose effect the engine is told),
   tells the engine, asks it for the next generation and records both in one transaction
   (``fleet.generations``), so a leader dying half-way leaves nothing half-done.
3. **Work**: every host, the leader included, claims one unit at a time (``FOR UPDATE SKIP
   LOCKED``, leased for ``study.lease_seconds``), measures the candidate against its own current
   configuration, interleaved and shuffled as a tournament round (``fleet_unit.measure_unit``),
   renews the lease every ``study.heartbeat_seconds`` while measuring, and writes the unit's trial
   rows with its completion in one transaction — or, when the database cannot be reached, to the
   local spool, written once when it answers again (``fleet.pgstore.write_or_spool``).

The turn ends when its generation is complete, or at a unit boundary when the gate closes (a PHASE
window drains fleet work as it drains a tournament). The leader's turn ends only once the generation
is concluded (or a newer one exists): it never leaves a complete generation unconcluded behind it.
When a turn ends, however it ends, the host gives the leader lock up, so the lock is only ever held
by a host in its turn: one pacing, measuring another domain or waiting for a PHASE window never
stalls the study (and two domains' leaders never wait for each other).

A unit whose lease was lost (another host re-claimed it) is no longer measured here. On a stop
(SIGTERM) the claim in hand is released so another host re-measures it at once; if the database
cannot be told, the lease expires and another host claims the unit then. A unit measured to the end
is always written or spooled, even when the stop comes while it is being written. Every database
call runs in a worker thread, bounded (``runtime.fleet_db``); psycopg is imported only when a
PostgreSQL store is configured.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import numpy as np
from loguru import logger

from kloros_orchestrator.config import LoadedConfig
from kloros_orchestrator.core.coordinator import TournamentDone, TournamentStarted
from kloros_orchestrator.engine import Evolution
from kloros_orchestrator.fleet.dsn import redact
from kloros_orchestrator.fleet.errors import FleetError
from kloros_orchestrator.fleet.key import study_key
from kloros_orchestrator.fleet.records import Outcome, UnitResult, WorkUnit, genome_digest
from kloros_orchestrator.fleet.spool import TrialSpool, spool_path
from kloros_orchestrator.phase.records import PhaseData
from kloros_orchestrator.runtime.conclude import entry_from_pack, promote, verdict_of
from kloros_orchestrator.runtime.dream import DreamLoop, DreamSettings, seed_of
from kloros_orchestrator.runtime.fleet_context import (
    MIN_LEASE_S,
    FleetSettings,
    StudyContext,
    Turn,
    fleet_settings,
    study_status,
    unit_seconds,
)
from kloros_orchestrator.runtime.fleet_db import DatabaseDown, FleetDatabase
from kloros_orchestrator.runtime.fleet_phase import FleetPhase, fold_into, seed_once
from kloros_orchestrator.runtime.fleet_race import drops_for, race_record, replay_race
from kloros_orchestrator.runtime.fleet_unit import (
    UnitPlan,
    conclude_rows,
    discard_staged,
    latest_generation,
    measure_unit,
    publish_staged,
    short_verdict,
    staging,
    verdicts_of_rows,
)
from kloros_orchestrator.runtime.records import HallOfFameEntry
from kloros_orchestrator.runtime.startup import manifest_fields

if TYPE_CHECKING:
    from kloros_orchestrator.fleet.generations import GenerationInfo
    from kloros_orchestrator.fleet.pgstore import FleetStore
    from kloros_orchestrator.runtime.host_keeper import HostKeeper

RELEASE_BOUND_S = 3.0  # a stop never waits longer than this for the database
RECORD_BOUND_S = 10.0  # a finished unit not written within this is spooled


def dream_factory(loaded: LoadedConfig, stress_ng: str, version: str) -> Callable[..., DreamLoop]:
    """``DreamLoop`` for the local store; a :class:`FleetDreamLoop` bound to the study otherwise."""
    if not loaded.config.study.shared:
        return DreamLoop
    return partial(FleetDreamLoop, fleet=fleet_settings(loaded, manifest_fields(loaded, stress_ng, version)))


def fleet_status(dream: DreamLoop) -> dict[str, Any]:
    """The ``fleet`` status field (absent with the local store)."""
    return {"fleet": dream.fleet_status()} if isinstance(dream, FleetDreamLoop) else {}


class FleetDreamLoop(DreamLoop):
    """D-REAM whose generations are shared through a PostgreSQL study (module docstring)."""

    def __init__(self, settings: DreamSettings, *, fleet: FleetSettings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.fleet = fleet
        self.db = FleetDatabase(fleet.dsn, events=self.events, clock=self.clock)
        self.studies: dict[str, StudyContext] = {}
        self.spool = TrialSpool(spool_path(self.paths.root))
        self.spooled = len(self.spool)
        self.in_hand: WorkUnit | None = None
        self.units_claimed = 0
        self.units_done = 0
        self.units_superseded = 0
        self.taken: dict[str, int] = {}  # per domain: the newest concluded generation whose verdict is in
        self.phase = FleetPhase(
            db=self.db, host=fleet.host_id, root=self.paths.root / "fleet" / "phase", events=self.events,
            seed=self.settings.seed, n_boot=self.settings.n_boot, window_s=fleet.window_s,
            study_of=self._study_of, clock=self.clock,
        )  # fmt: skip

    async def _study_of(self, name: str) -> tuple[int, set[str]]:
        """The domain's study and the hosts alive in it now (asked, not the heartbeat's last count:
        right after a join that count is 1)."""
        ctx = await self._context(name)
        within = 3 * self.fleet.heartbeat_s
        alive = await self.db.call(lambda st: set(st.hosts_alive(ctx.study_id, within)))
        return ctx.study_id, alive | {self.fleet.host_id}

    # --- PHASE's side: each window shared, adoption from the fleet's verdict (runtime/fleet_phase.py)

    def bind_keeper(self, keeper: HostKeeper) -> None:
        super().bind_keeper(keeper)
        keeper.fleet = True  # adoption follows the fleet's PHASE verdict, not this host's own
        self.phase.on_decision = keeper.fleet_decided

    def phase_measured(self, data: PhaseData, *, run_id: str, finished_at: float) -> None:
        try:
            self.phase.finished(data, run_id=run_id, finished_at=finished_at)
        except (OSError, ValueError) as e:  # the window's own results stand; the fleet misses this run
            logger.error("fleet: PHASE {} not kept for the study: {}", run_id, e)
            self.events.record("fleet_phase_not_shared", run_id=run_id, error=str(e)[:300])

    def _close(self) -> None:
        for ctx in self.studies.values():
            ctx.lock.release()
        self.db.close()

    # --- the loop ---------------------------------------------------------------------------------

    async def run(self, *, once: bool) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._heartbeats)
                await super().run(once=once)
                tg.cancel_scope.cancel()
        finally:
            with anyio.move_on_after(RELEASE_BOUND_S, shield=True):
                await anyio.to_thread.run_sync(self._close, abandon_on_cancel=True)

    async def _heartbeats(self) -> None:
        """Alive in every joined study, the hosts counted, the spool flushed while the gate is shut.
        Nothing here ends the daemon: an error is logged and the database counted unreachable."""
        within = 3 * self.fleet.heartbeat_s
        while True:
            try:
                for ctx in list(self.studies.values()):
                    ctx.hosts_alive = await self.db.call(
                        partial(_beat, ctx.study_id, self.fleet.host_id, within)
                    )
                await self._flush()
                await self._catch_up()
                await self.phase.step()
            except DatabaseDown:
                pass
            except Exception as e:
                text = redact(f"{type(e).__name__}: {e}")[:300]
                logger.error("fleet heartbeat failed: {}", text)
                self.db.mark_down(text)
            await anyio.sleep(self.fleet.heartbeat_s)

    async def _catch_up(self) -> None:
        """Every joined study's newest verdict taken, turn or not: PHASE measures the study's hall of
        fame even on a host whose last turn ended before its generation was concluded."""
        for name, ctx in list(self.studies.items()):
            info = ctx.info = await self.db.call(partial(latest_generation, study_id=ctx.study_id))
            if info is not None:
                await self._take_verdict(name, ctx, info.generation - (not info.concluded))

    async def _flush(self) -> None:
        """Write the spooled units (oldest first); the database stays unreachable if it went away
        again mid-flush (a flush that met it gone is no sign it is back)."""
        if not self.spooled:
            return
        from kloros_orchestrator.fleet.pgstore import is_unreachable

        try:
            report = await self.db.attempt(lambda s: self.spool.flush(s.complete_unit, is_unreachable))
        except DatabaseDown:
            return
        self.spooled = report.left
        if report.busy:
            return  # another flush is under way
        if report.interrupted is not None:
            self.db.mark_down(report.interrupted)
        else:
            self.db.mark_up()
        self.units_superseded += report.superseded
        if report.written or report.already or report.superseded or report.mismatched:
            logger.info("fleet spool flushed: {}", report)
            self.events.record("fleet_spool_flushed", written=report.written, already=report.already,
                               superseded=report.superseded, mismatched=report.mismatched,
                               left=report.left)  # fmt: skip

    async def _run_tournament(self, name: str) -> list[str] | None:
        """One turn: this host's share of one generation of the domain's study (module docstring)."""
        s = self.searches[name]
        self.progress.domain, self.progress.generation = name, s.generation
        self.report(TournamentStarted(name, s.generation, now=self.clock()))
        turn = Turn()
        try:
            while self.gate.is_open:
                try:
                    if await self._step(name, turn):
                        break
                except DatabaseDown:
                    await anyio.sleep(self.fleet.poll_s)
        finally:
            await self._resign(name)
        s.durations.append(time.monotonic() - turn.started)
        self.progress.tournaments += 1
        self.checkpoint()
        self.report(TournamentDone(name, s.generation, now=self.clock()))
        return None

    async def _step(self, name: str, turn: Turn) -> bool:
        """One claim (or one wait); True when the turn is over (module docstring)."""
        ctx = await self._context(name)
        await self._flush()
        await self._lead(name, ctx)
        info = ctx.info = await self.db.call(lambda st: latest_generation(st, ctx.study_id))
        if info is not None:
            self.progress.generation = info.generation
            self.progress.tournament_done, self.progress.tournament_total = (
                info.counts.done,
                info.counts.total,
            )
            if ctx.leader and info.complete and not info.concluded:
                return False  # its last unit landed just now: the leader concludes it next step
        if info is not None:
            await self._take_verdict(name, ctx, info.generation - (not info.concluded))
        if turn.target is not None and info is not None and (info.generation > turn.target or info.complete):
            return True
        lease = self.fleet.lease_s
        units = await self.db.call(lambda st: st.claim(ctx.study_id, self.fleet.host_id, lease_s=lease))
        if units:
            turn.target = units[0].generation if turn.target is None else turn.target
            await self._measure(name, ctx, units[0])
            return False
        if turn.target is None and info is not None and not info.complete:
            turn.target = info.generation  # the rest of it is in other hosts' hands
        await anyio.sleep(self.fleet.poll_s)
        return False

    async def _context(self, name: str) -> StudyContext:
        """The domain's study, joined on first use (the key refuses a host it does not fit)."""
        ctx = self.studies.get(name)
        if ctx is not None:
            return ctx
        m = self.fleet.manifest
        key = study_key(
            domain=name, space=self.searches[name].domain.search_space(), manifest=m,
            cpu_model_name=m.get("cpu_model"), memory=m.get("memory_gib"),
            measurement=self.fleet.measurement.get(name, ""),
        )  # fmt: skip
        study = await self.db.call(lambda st: st.join_study(self.fleet.name, key))
        await self.db.call(lambda st: st.heartbeat(study.study_id, self.fleet.host_id))
        from kloros_orchestrator.fleet.leader import LeaderLock

        ctx = StudyContext(
            name, study.study_id, study.name, study.key_digest, LeaderLock(self.fleet.dsn, study.study_id)
        )
        self.studies[name] = ctx
        logger.info("fleet: {} joined study {!r} (id {}, key {}) as {}", name, study.name, study.study_id,
                    study.key_digest[:12], self.fleet.host_id)  # fmt: skip
        self.events.record("fleet_joined", domain=name, study=study.name, study_id=study.study_id,
                           key_digest=study.key_digest, host=self.fleet.host_id)  # fmt: skip
        return ctx

    # --- the leader's part ------------------------------------------------------------------------

    async def _lead(self, name: str, ctx: StudyContext) -> None:
        ctx.leader = await self.db.call(lambda _st: ctx.lock.try_acquire())
        if ctx.leader != ctx.led:  # leadership moved (not: taken again after this host's own last turn)
            ctx.led = ctx.leader
            logger.info(
                "fleet: {} study {}: {}", name, ctx.study_id, "leader now" if ctx.leader else "not leader"
            )
            self.events.record("fleet_leader", domain=name, study_id=ctx.study_id, leader=ctx.leader)
        if not ctx.leader:
            return
        info = await self.db.call(lambda st: latest_generation(st, ctx.study_id))
        if info is None:
            await self._create_first(name, ctx)
        elif info.complete and not info.concluded:
            await self._conclude(name, ctx, info)
        elif not info.concluded and ctx.raced != (info.generation, info.counts.done):
            await self._race(name, ctx, info)

    async def _race(self, name: str, ctx: StudyContext, info: GenerationInfo) -> None:
        """Replay the generation's race over the rows written so far; drop the units it no longer
        wants (runtime/fleet_race.py)."""
        gen, rounds = info.generation, info.rounds or self.cfg.trials
        ids = [c.cand_id for c in Evolution.from_state(info.engine).ask()] if info.engine else []
        if not ids:
            return
        rows = await self.db.call(lambda st: st.trial_rows(ctx.study_id, gen))
        regimes = self.settings.regimes.get(name, ())
        race = replay_race(rows, ids, regimes, rounds=rounds, racing=self.cfg.racing)
        drops = drops_for(race, rounds=rounds, min_trials=self.cfg.min_trials)
        dropped = await self.db.call(lambda st: st.drop_units(ctx.study_id, gen, drops))
        ctx.raced = (gen, info.counts.done)
        if dropped:
            logger.info("fleet: {} generation {}: race after {} round(s): {} unit(s) dropped; {}", name, gen,
                        race.round, dropped, race.verdict())  # fmt: skip
            self.events.record("fleet_units_dropped", domain=name, generation=gen, units=dropped,
                               race=race_record(race))  # fmt: skip

    async def _resign(self, name: str) -> None:
        """The turn is over: give the leader lock up (bounded; a lost session has lost it anyway)."""
        ctx = self.studies.get(name)
        if ctx is None:
            return
        ctx.leader = False  # released even if not known as held: a try abandoned by a timeout may hold it
        with anyio.move_on_after(RELEASE_BOUND_S, shield=True):
            await anyio.to_thread.run_sync(ctx.lock.release, abandon_on_cancel=True)
        logger.debug("fleet: {} study {}: leader lock given up at the end of the turn", name, ctx.study_id)

    async def _create_first(self, name: str, ctx: StudyContext) -> None:
        from kloros_orchestrator.fleet.generations import create_generation

        s = self.searches[name]
        cands = {c.cand_id: dict(c.genome) for c in s.engine.ask()}
        state, rounds = s.engine.state(), self.cfg.trials
        host = self.fleet.host_id
        made = await self.db.call(
            lambda st: create_generation(
                st, ctx.study_id, 0, cands, rounds=rounds, created_by=host, engine=state
            )
        )
        if made:
            logger.info("fleet: {} generation 0 created: {} candidates × {} rounds", name, len(cands), rounds)
            self.events.record(
                "fleet_generation_created", domain=name, generation=0, units=len(cands) * rounds
            )

    async def _conclude(self, name: str, ctx: StudyContext, info: GenerationInfo) -> None:
        """Conclude a complete generation and create the next, as one database transaction. Its
        artifacts (packs, baselines) are written to a staging tree and moved into place, and its
        events recorded, only once the database says this leader's conclusion is the one."""
        from kloros_orchestrator.fleet.generations import conclude_and_advance

        s, gen = self.searches[name], info.generation
        if info.engine is None:
            raise FleetError(f"generation {gen} of study {ctx.study_id} has no engine state (schema v1 row)")
        engine = Evolution.from_state(info.engine)
        cands = engine.ask()  # the generation's own candidates (pending in the stored state)
        rows = await self.db.call(lambda st: st.trial_rows(ctx.study_id, gen))
        regimes = self.settings.regimes.get(name, ())
        fc = conclude_rows(
            rows, cands, regimes, rounds=info.rounds or self.cfg.trials, racing=self.cfg.racing
        )
        rng = np.random.default_rng(seed_of(self.settings.seed, name, gen, "bootstrap"))
        stage = staging(self.paths)
        packs = replace(self.concluder, paths=stage).conclude(
            s.domain, gen, s.stock, fc.outcome, self.evaluator.missing_reasons(), rng
        )
        fleet = verdicts_of_rows(rows, self.settings.seed, self.settings.n_boot)
        for cid, v in fleet.items():  # hosts as blocks (fleet/verdict.py): the effect the engine is told
            if v.effect is not None and fc.told.get(cid) is not None:
                fc.told[cid] = v.effect
        engine.tell([(c, fc.told.get(c.cand_id)) for c in cands])
        notes = engine.adapt()
        scored = {c: v for c, v in fc.told.items() if v is not None}
        best_id = max(scored, key=lambda c: scored[c]) if scored else None
        said = verdict_of(packs.best, s.stock)
        verdict = fc.verdict(best_id, said["text"])
        verdict["method"] = "fleet/verdict.py: per-host paired scores, hosts as blocks"
        verdict["verdicts"] = {cid: msgspec.to_builtins(v) for cid, v in fleet.items()}
        verdict["promoted"] = sorted(cid for cid, v in fleet.items() if v.promoted)
        verdict["race"] = race_record(fc.outcome.race)
        prev = await self._previous_verdict(ctx, gen)
        done = self.phase.decided.get(name)  # the fleet's PHASE verdict, taken in as a collapse does
        decision = None if done is None else done.decision
        hof = fold_into(self._study_hall_of_fame(name, prev), decision)
        verdict["phase_seeded"] = seed_once(engine, decision, (prev or {}).get("phase_seeded", []))
        best = packs.best
        if best is not None and best.safe and best.aggregate.score_v2 is not None:
            hof = promote(hof, entry_from_pack(best))
        verdict["hall_of_fame"] = msgspec.to_builtins(hof)  # the study's: every host's PHASE subjects
        nxt = {c.cand_id: dict(c.genome) for c in engine.ask()}
        state, rounds = engine.state(), self.cfg.trials
        won = await self.db.call(lambda st: conclude_and_advance(
            st, ctx.study_id, gen, verdict=verdict, by=self.fleet.host_id, candidates=nxt, rounds=rounds,
            engine=state))  # fmt: skip
        if not won:
            discard_staged(stage)
            return  # another leader concluded it first: its verdict stands
        publish_staged(stage, self.paths)
        for note in notes:
            self.events.record("search_space_adapted", domain=name, generation=gen, change=note)
        s.hall_of_fame, self.taken[name] = hof, gen
        s.engine, s.committed, s.generation = engine, engine.state(), gen + 1
        self.progress.best[name] = {"generation": gen, **said, "fleet": short_verdict(verdict)}
        logger.info("fleet: {} generation {} concluded over {} host(s): {}", name, gen, len(verdict["hosts"]),
                    said["text"])  # fmt: skip
        self.events.record("fleet_generation_concluded", domain=name, generation=gen, verdict=verdict)

    async def _previous_verdict(self, ctx: StudyContext, gen: int) -> dict[str, Any] | None:
        from kloros_orchestrator.fleet.generations import verdict_of as recorded

        return None if gen == 0 else await self.db.call(lambda st: recorded(st, ctx.study_id, gen - 1))

    def _study_hall_of_fame(self, name: str, prev: dict[str, Any] | None) -> list[HallOfFameEntry]:
        """The study's hall of fame as the previous generation's verdict recorded it (whichever host led
        it); this host's own before generation 0's, or when that verdict has none (an older daemon's)."""
        hof = None if prev is None else prev.get("hall_of_fame")
        if hof is None:
            return list(self.searches[name].hall_of_fame)
        return msgspec.convert(hof, list[HallOfFameEntry])

    async def _take_verdict(self, name: str, ctx: StudyContext, gen: int) -> None:
        """The study's newest concluded generation ``gen``, concluded by another host: its verdict
        shown, its hall of fame taken (what this host's PHASE windows measure)."""
        from kloros_orchestrator.fleet.generations import verdict_of as recorded

        s = self.searches[name]
        if gen < 0 or self.taken.get(name, -1) >= gen:
            return
        verdict = await self.db.call(lambda st: recorded(st, ctx.study_id, gen))
        if verdict is None or self.taken.get(name, -1) >= gen:  # the turn and the heartbeat both look
            return
        hof = verdict.get("hall_of_fame")
        if hof is not None:  # absent in a verdict an older daemon recorded: keep this host's
            s.hall_of_fame = msgspec.convert(hof, list[HallOfFameEntry])
        s.generation, self.taken[name] = gen + 1, gen
        self.progress.best[name] = {
            "generation": gen, "text": verdict.get("text"), "cand_id": verdict.get("best"),
            "fleet": short_verdict(verdict),
        }  # fmt: skip

    # --- one unit ---------------------------------------------------------------------------------

    async def _measure(self, name: str, ctx: StudyContext, unit: WorkUnit) -> None:
        """Measure a claimed unit (its lease renewed meanwhile) and record it, or give it back."""
        s = self.searches[name]
        self.in_hand, self.units_claimed = unit, self.units_claimed + 1
        pr = self.progress

        def on_trial(arm: str, regime: str) -> None:
            pr.arm, pr.regime = (unit.cand_id if arm == "candidate" else arm), regime
            if self.on_status is not None:
                self.on_status(
                    f"{name} fleet gen {unit.generation} unit {unit.cand_id}/{unit.round} ({arm}, {regime})"
                )

        plan = UnitPlan(
            domain=s.domain, stock=s.stock, regimes=self.settings.regimes.get(name, ()),
            evaluator=self.evaluator, trial_seconds=self.cfg.trial_seconds,
            contamination=self.cfg.contamination, on_trial=on_trial,
        )  # fmt: skip
        at = (unit.generation, unit.cand_id, unit.round, self.fleet.host_id)
        rng = np.random.default_rng(seed_of(self.settings.seed, name, *at, "order"))
        rows, lost = None, False

        async def keep_lease(measuring: anyio.CancelScope) -> None:
            nonlocal lost
            await self._renew(unit)  # returns only when the lease is lost: stop measuring it
            lost = True
            measuring.cancel()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(keep_lease, tg.cancel_scope)
                rows = await measure_unit(plan, unit, rng)
                tg.cancel_scope.cancel()
        finally:
            pr.arm = pr.regime = None
            self.in_hand = None
            if rows is None and not lost:  # stopped, failed or too busy here: another host measures it now
                await self._release(unit)
        if rows is not None:
            await self._record(ctx, unit, rows)

    async def _renew(self, unit: WorkUnit) -> None:
        """Renew the unit's lease every heartbeat; returns when it was lost (re-claimed elsewhere)."""
        lease = self.fleet.lease_s
        while True:
            await anyio.sleep(self.fleet.heartbeat_s)
            try:
                held = await self.db.call(
                    lambda st: st.renew([unit.unit_id], self.fleet.host_id, lease_s=lease)
                )
            except DatabaseDown:
                continue  # the lease may run out: another host then measures the unit too; one counts
            if unit.unit_id not in held:
                logger.warning("fleet unit {}/{}: lease lost (re-claimed elsewhere, or dropped by the race): "
                               "measurement stopped", unit.cand_id, unit.round)  # fmt: skip
                self.events.record("fleet_lease_lost", generation=unit.generation, cand_id=unit.cand_id,
                                   round=unit.round)  # fmt: skip
                return

    async def _release(self, unit: WorkUnit) -> None:
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):  # unreachable: the lease expires
            await self.db.call(
                lambda st: st.release([unit.unit_id], self.fleet.host_id), bound=RELEASE_BOUND_S
            )
            return
        logger.warning("fleet unit {}/{} not released: its lease will expire", unit.cand_id, unit.round)

    async def _record(self, ctx: StudyContext, unit: WorkUnit, rows: tuple[Any, ...]) -> None:
        """Write the measured unit, or spool it: shielded, so a stop never drops it (module docstring)."""
        result = UnitResult(
            study_id=unit.study_id, generation=unit.generation, cand_id=unit.cand_id, round=unit.round,
            host=self.fleet.host_id, trials=rows, finished_at=self.clock(), unit_id=unit.unit_id,
            genome_digest=genome_digest(unit.genome), key_digest=ctx.key_digest, database=unit.database,
        )  # fmt: skip
        outcome: Outcome | None = None
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(RECORD_BOUND_S) as bounded, contextlib.suppress(DatabaseDown):
                await self._flush()  # spooled units first: order is kept
                if not self.spooled:
                    outcome = await self.db.call(lambda st: st.complete_unit(result))
            if bounded.cancelled_caught:
                self.db.mark_down(f"no answer within {RECORD_BOUND_S:g} s")
            if outcome is None:  # unreachable, no answer, or older units still spooled
                await anyio.to_thread.run_sync(self.spool.append, result)
                self.spooled += 1
                logger.warning("fleet unit {}/{} round {} spooled ({} in the spool)", unit.generation,
                               unit.cand_id, unit.round, self.spooled)  # fmt: skip
                return
        self.units_done += outcome is Outcome.WRITTEN
        self.units_superseded += outcome is Outcome.SUPERSEDED
        if outcome is Outcome.MISMATCHED:
            self.events.record("fleet_result_refused", generation=unit.generation, cand_id=unit.cand_id,
                               round=unit.round)  # fmt: skip

    # --- status -----------------------------------------------------------------------------------

    def fleet_status(self) -> dict[str, Any]:
        unit = self.in_hand
        return {
            "store": redact(self.fleet.dsn),
            "name": self.fleet.name,
            "host_id": self.fleet.host_id,
            "lease_s": self.fleet.lease_s,
            "database": self.db.status(),
            "spool": self.spooled,
            "units": {
                "claimed": self.units_claimed,
                "done": self.units_done,
                "superseded": self.units_superseded,
                "in_hand": None
                if unit is None
                else {"generation": unit.generation, "cand_id": unit.cand_id, "round": unit.round},
            },
            "studies": {name: study_status(ctx) for name, ctx in self.studies.items()},
            "phase": self.phase.status(),
        }


def _beat(study_id: int, host: str, within_s: float, store: FleetStore) -> int:
    """A heartbeat, then the number of hosts alive in the study."""
    store.heartbeat(study_id, host)
    return len(store.hosts_alive(study_id, within_s))


__all__ = [
    "MIN_LEASE_S",
    "DatabaseDown",
    "FleetDreamLoop",
    "FleetSettings",
    "StudyContext",
    "dream_factory",
    "fleet_settings",
    "fleet_status",
    "unit_seconds",
]
