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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import numpy as np
from loguru import logger

from kloros_orchestrator.config import LoadedConfig
from kloros_orchestrator.core.coordinator import TournamentDone, TournamentStarted
from kloros_orchestrator.engine import Evolution
from kloros_orchestrator.fleet.dsn import default_host_id, redact
from kloros_orchestrator.fleet.errors import FleetError
from kloros_orchestrator.fleet.key import study_key
from kloros_orchestrator.fleet.records import Outcome, UnitResult, WorkUnit, genome_digest
from kloros_orchestrator.fleet.spool import TrialSpool, spool_path
from kloros_orchestrator.fleet.verdict import FleetTrial, FleetVerdict, fleet_verdicts
from kloros_orchestrator.runtime.conclude import entry_from_pack, promote, verdict_of
from kloros_orchestrator.runtime.dream import DreamLoop, DreamSettings, seed_of
from kloros_orchestrator.runtime.fleet_db import DatabaseDown, FleetDatabase
from kloros_orchestrator.runtime.fleet_unit import (
    UnitPlan,
    conclude_rows,
    discard_staged,
    measure_unit,
    publish_staged,
    staging,
)
from kloros_orchestrator.runtime.startup import manifest_fields

if TYPE_CHECKING:
    from kloros_orchestrator.fleet.generations import GenerationInfo
    from kloros_orchestrator.fleet.leader import LeaderLock
    from kloros_orchestrator.fleet.pgstore import FleetStore

MIN_LEASE_S = 30.0
TRIAL_OVERHEAD_S = 2.0  # apply, start, reap: a trial's wall time beyond its stress-ng duration
RELEASE_BOUND_S = 3.0  # a stop never waits longer than this for the database
RECORD_BOUND_S = 10.0  # a finished unit not written within this is spooled


@dataclass(frozen=True)
class FleetSettings:
    dsn: str = field(repr=False)  # may hold a password: never in a repr (tracebacks, logs)
    name: str
    host_id: str
    manifest: Mapping[str, Any]  # the run manifest's fields: the host's part of the study key
    lease_s: float
    heartbeat_s: float
    poll_s: float = 1.0  # while other hosts hold the remaining units of a generation


@dataclass
class StudyContext:
    """One domain's study as this host sees it."""

    domain: str
    study_id: int
    study_name: str
    key_digest: str
    lock: LeaderLock
    leader: bool = False  # holds the leader lock now (only ever during a turn)
    led: bool = False  # was the leader when it last tried: events say when leadership moves
    hosts_alive: int = 1
    info: GenerationInfo | None = None


@dataclass
class _Turn:
    target: int | None = None  # the generation this turn works on, once known
    started: float = field(default_factory=time.monotonic)


def unit_seconds(loaded: LoadedConfig) -> float:
    """The longest expected work unit over the enabled domains: two arms × every regime."""
    d = loaded.config.dream
    per_domain = [
        2 * sum((d.trial_seconds or float(spec.duration)) + TRIAL_OVERHEAD_S for spec in specs.values())
        for specs in loaded.regimes.values()
    ]
    return max(per_domain, default=MIN_LEASE_S)


def fleet_settings(loaded: LoadedConfig, manifest: Mapping[str, Any]) -> FleetSettings:
    st = loaded.config.study
    lease = st.lease_seconds if st.lease_seconds is not None else max(MIN_LEASE_S, 3 * unit_seconds(loaded))
    return FleetSettings(
        dsn=st.store,
        name=st.name or "",
        host_id=st.host_id or default_host_id(loaded.state_dir),
        manifest=dict(manifest),
        lease_s=lease,
        heartbeat_s=min(st.heartbeat_seconds, lease / 2),
    )


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
            except DatabaseDown:
                pass
            except Exception as e:
                text = redact(f"{type(e).__name__}: {e}")[:300]
                logger.error("fleet heartbeat failed: {}", text)
                self.db.mark_down(text)
            await anyio.sleep(self.fleet.heartbeat_s)

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
        turn = _Turn()
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

    async def _step(self, name: str, turn: _Turn) -> bool:
        """One claim (or one wait); True when the turn is over (module docstring)."""
        ctx = await self._context(name)
        await self._flush()
        await self._lead(name, ctx)
        info = ctx.info = await self.db.call(lambda st: _latest(st, ctx.study_id))
        if info is not None:
            self.progress.generation = info.generation
            self.progress.tournament_done, self.progress.tournament_total = (
                info.counts.done,
                info.counts.total,
            )
            if ctx.leader and info.complete and not info.concluded:
                return False  # its last unit landed just now: the leader concludes it next step
        if turn.target is not None and info is not None and (info.generation > turn.target or info.complete):
            await self._take_verdict(name, ctx, turn.target)
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
        info = await self.db.call(lambda st: _latest(st, ctx.study_id))
        if info is None:
            await self._create_first(name, ctx)
        elif info.complete and not info.concluded:
            await self._conclude(name, ctx, info)

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
        fleet = _fleet_verdicts(rows, self.settings.seed, self.settings.n_boot)
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
        best = packs.best
        if best is not None and best.safe and best.aggregate.score_v2 is not None:
            s.hall_of_fame = promote(s.hall_of_fame, entry_from_pack(best))
        s.engine, s.committed, s.generation = engine, engine.state(), gen + 1
        self.progress.best[name] = {"generation": gen, **said, "fleet": _short(verdict)}
        logger.info("fleet: {} generation {} concluded over {} host(s): {}", name, gen, len(verdict["hosts"]),
                    said["text"])  # fmt: skip
        self.events.record("fleet_generation_concluded", domain=name, generation=gen, verdict=verdict)

    async def _take_verdict(self, name: str, ctx: StudyContext, gen: int) -> None:
        """A host that did not conclude the generation shows the fleet verdict once it is recorded."""
        from kloros_orchestrator.fleet.generations import verdict_of as recorded

        if (self.progress.best.get(name) or {}).get("generation") == gen:
            return
        verdict = await self.db.call(lambda st: recorded(st, ctx.study_id, gen))
        if verdict is not None:
            self.searches[name].generation = gen + 1
            self.progress.best[name] = {"generation": gen, "text": verdict.get("text"),
                                        "cand_id": verdict.get("best"), "fleet": _short(verdict)}  # fmt: skip

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
                logger.warning("fleet unit {}/{}: lease lost (re-claimed elsewhere): measurement stopped",
                               unit.cand_id, unit.round)  # fmt: skip
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
            "studies": {name: _study_status(ctx) for name, ctx in self.studies.items()},
        }


def _beat(study_id: int, host: str, within_s: float, store: FleetStore) -> int:
    """A heartbeat, then the number of hosts alive in the study."""
    store.heartbeat(study_id, host)
    return len(store.hosts_alive(study_id, within_s))


def _fleet_verdicts(rows: list[dict[str, Any]], seed: int, n_boot: int) -> dict[str, FleetVerdict]:
    """``fleet.verdict.fleet_verdicts`` over a generation's rows (each candidate, hosts as blocks)."""
    return fleet_verdicts((FleetTrial.from_row(r) for r in rows), seed=seed, n_boot=n_boot)


def _latest(store: FleetStore, study_id: int) -> GenerationInfo | None:
    from kloros_orchestrator.fleet.generations import latest

    return latest(store, study_id)


def _short(verdict: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "hosts": len(verdict.get("hosts") or ()),
        "best": verdict.get("best"),
        "method": verdict.get("method"),
    }


def _study_status(ctx: StudyContext) -> dict[str, Any]:
    info = ctx.info
    return {
        "name": ctx.study_name,
        "study_id": ctx.study_id,
        "key_digest": ctx.key_digest,
        "hosts_alive": ctx.hosts_alive,
        "leader": ctx.led,  # led the study at its last try (the lock itself is held only in a turn)
        "generation": None if info is None else info.generation,
        "units": None if info is None else
        {"open": info.counts.open, "claimed": info.counts.claimed, "done": info.counts.done},
    }  # fmt: skip


__all__ = [
    "DatabaseDown",
    "FleetDreamLoop",
    "FleetSettings",
    "StudyContext",
    "dream_factory",
    "fleet_settings",
    "fleet_status",
    "unit_seconds",
]
