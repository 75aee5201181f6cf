"""PHASE across a fleet: each host's window, one verdict with hosts as blocks, adoption per host.

Theory of operation. Every host of a study runs its PHASE windows exactly as a single host does
(same schedule, same QTIME plan), on the same variants: the study's hall of fame, which each
generation's recorded verdict carries to every host (``fleet_work``). Each host measures the
variants against its *own* current configuration; its own ``phase_results.json`` and its collapse
into D-REAM are unchanged. What the fleet adds is the verdict that adoption follows:

1. **Share** (:meth:`FleetPhase.finished`): when a window's trials are in, each domain's trials
   become a :class:`~kloros_orchestrator.fleet.phase_rows.PhaseRun` (variants named by genome
   digest, so hosts agree on what they measured). It is written to ``state_dir/fleet/phase/``
   first (atomically: a crash loses nothing), then to the study, idempotently, at the next
   heartbeat; while the database is unreachable it stays on disk and is tried again.
2. **Wait for the fleet**: the verdict on this host's latest run of a domain is final once every
   host alive in the study *now* (asked of the database, not a count cached from the last
   heartbeat) has shared a run of the domain finished no earlier than ``window_s`` before this
   one (the hosts share the schedule: this window's runs), or once ``window_s`` has passed since
   this run finished — then with whatever came in. Until then status says ``waiting`` and names
   the hosts not in yet. Hosts that died after sharing count as evidence, not as the wait.
3. **Verdict** (``fleet.verdict.fleet_verdicts``): over every host's latest run measuring each
   variant this run measured, each host's paired score against its own stock arm, the signed-rank
   or t test across hosts, Bonferroni over the variants tested, the harm guard. The best promoted
   variant (highest fleet effect) is the fleet's pick, and ``host_adopts`` this host's decision.
4. **Adoption** (``on_decision``, the HostKeeper): ``promotion: auto`` adopts it at the next
   boundary, if the domain's configuration is still the one PHASE measured against and no
   operator change is pending; ``manual`` lists it as a pending promotion. A decision is made once
   per run and kept on disk with the run (the domain's latest only), marked once it was acted on:
   after a restart the keeper knows it again (status, ``apply``) but does not act on it twice.

5. **Back into the study** (:func:`fold_into`): the leader folds its latest decision into the
   study's hall of fame when it concludes a generation, as a single host's collapse does with its
   own PHASE: a variant's fleet effect and interval replace D-REAM's quick estimate, and a variant
   the fleet found significantly worse (interval below 0) or unsafe on some host leaves it, so the
   next windows do not measure it again; the fleet's pick seeds the study's next bred generation,
   each pick once per study (:func:`seed_once`). (The search space is not changed: the
   recommendations of a PHASE come from one host's own analysis and stay with that host's collapse.)

One run or domain failing (a domain no longer enabled, a bad file) is logged once and never holds
up the others; an unreachable database ends the heartbeat's pass, to be tried again.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec
from loguru import logger

from kloros_orchestrator.fleet.dsn import redact
from kloros_orchestrator.fleet.phase_rows import PhaseRun, phase_run_of
from kloros_orchestrator.fleet.records import genome_digest
from kloros_orchestrator.fleet.verdict import Adoption, FleetVerdict, fleet_verdicts, host_adopts
from kloros_orchestrator.model import Genome
from kloros_orchestrator.phase.records import PhaseData, VariantInfo
from kloros_orchestrator.runtime.conclude import sort_hall_of_fame
from kloros_orchestrator.runtime.fleet_db import DatabaseDown, FleetDatabase
from kloros_orchestrator.runtime.ports import Clock, EventLog
from kloros_orchestrator.runtime.records import HallOfFameEntry
from kloros_orchestrator.safefs import make_dirs, read_bounded
from kloros_orchestrator.store import atomic_write_bytes

if TYPE_CHECKING:
    from kloros_orchestrator.engine import Evolution

MAX_PENDING_BYTES: Final = 64 << 20


class FleetDecision(msgspec.Struct, frozen=True, kw_only=True):
    """The fleet's verdict on one host's PHASE run of a domain, and this host's decision."""

    domain: str
    run_id: str
    stock: Genome  # the configuration this host's PHASE measured against
    hosts: int  # hosts whose runs the verdict used
    verdicts: dict[str, FleetVerdict]  # by genome digest
    pick: VariantInfo | None  # the best variant promoted fleet-wide
    verdict: FleetVerdict | None  # its verdict
    adoption: Adoption | None  # this host's decision on it

    def summary(self) -> dict[str, Any]:
        v = self.verdict
        return {
            "phase_run_id": self.run_id,
            "hosts": self.hosts,
            "promoted": None if self.pick is None else self.pick.cand_id,
            "effect": None if v is None else v.effect,
            "ci": None if v is None or v.ci is None else list(v.ci),
            "test": None if v is None else v.test,
            "p_value": None if v is None else v.p_value,
            "adopt": None if self.adoption is None else self.adoption.adopt,
            "reason": self.adoption.reason if self.adoption is not None else _none_reason(self.verdicts),
        }


class PendingRun(msgspec.Struct, kw_only=True):
    """One domain's PHASE run: shared, then decided (the file under ``fleet/phase/``). The latest
    decided run of a domain stays on disk with its decision, so a restart neither loses it (status,
    ``apply``) nor acts on it twice (``acted``)."""

    run: PhaseRun
    stock: Genome
    variants: dict[str, VariantInfo]  # genome digest -> the variant as D-REAM knows it
    uploaded: bool = False
    decision: FleetDecision | None = None
    acted: bool = False  # the decision went to the host keeper (in auto mode: adopted or not)


def _none_reason(verdicts: Mapping[str, FleetVerdict]) -> str:
    if not verdicts:
        return "no variant was measured by enough hosts"
    best = max(verdicts.values(), key=lambda v: v.effect if v.effect is not None else float("-inf"))
    return f"no variant promoted fleet-wide; closest: {best.reason}"


StudyOf = Callable[[str], Awaitable[tuple[int, set[str]]]]  # domain -> (study id, hosts alive now)
OnDecision = Callable[[FleetDecision, bool], object]  # (decision, act): act False = restored, known


class FleetPhase:
    """This host's PHASE runs in the study: shared, waited for, decided (module docstring)."""

    def __init__(
        self,
        *,
        db: FleetDatabase,
        host: str,
        root: Path,
        events: EventLog,
        seed: int,
        n_boot: int,
        window_s: float,
        study_of: StudyOf,
        clock: Clock = time.time,
    ) -> None:
        self.db, self.host, self.root, self.events = db, host, root, events
        self.seed, self.n_boot, self.window_s, self.clock = seed, n_boot, window_s, clock
        self.study_of = study_of
        self.on_decision: OnDecision | None = None
        self.pending: dict[str, PendingRun] = {}  # domain -> its latest undecided run
        self.decided: dict[str, PendingRun] = {}  # domain -> its latest decided run
        self.waiting: dict[str, str] = {}  # domain -> why its verdict is not final yet
        self.stale: list[PendingRun] = []  # superseded before they were shared: shared, never decided
        self._failed: set[str] = set()  # what was logged as failing (once, not every heartbeat)
        self._delivered: set[tuple[str, str]] = set()  # (domain, run id) the keeper knows
        self._load()

    # --- files ------------------------------------------------------------------------------------

    def _path(self, p: PendingRun) -> Path:
        return self.root / f"{p.run.run_id}.{p.run.domain}.json"

    def _load(self) -> None:
        """What a crash or a stop left: the latest decision per domain (delivered again, acted on
        only if it was not), the latest undecided run per domain (decided), older ones (shared)."""
        for p in load_runs(self.root, set_aside=True):
            if p.decision is not None:
                self._keep_decided(p)
            else:
                self._supersede(p)

    def _write(self, p: PendingRun) -> None:
        make_dirs(self.root)
        atomic_write_bytes(self._path(p), msgspec.json.encode(p), mode=0o600)

    def _supersede(self, p: PendingRun) -> None:
        older = self.pending.get(p.run.domain)
        if older is not None and older.uploaded:
            self._path(older).unlink(missing_ok=True)  # shared; a newer run of the domain is decided
        elif older is not None:
            self.stale.append(older)
        self.pending[p.run.domain] = p

    def _keep_decided(self, p: PendingRun) -> None:
        older = self.decided.get(p.run.domain)
        if older is not None and older is not p:
            self._path(older).unlink(missing_ok=True)
        self.decided[p.run.domain] = p

    def finished(self, data: PhaseData, *, run_id: str, finished_at: float) -> None:
        """A PHASE window's trials are in (blocking: small atomic writes)."""
        for domain, d in data.domains.items():
            if not d.variants:
                continue
            run = phase_run_of(d, run_id=run_id, host=self.host, domain=domain, finished_at=finished_at)
            variants: dict[str, VariantInfo] = {}
            for v in d.variants.values():  # twins: the first, as phase_run_of keeps the first's trials
                variants.setdefault(genome_digest(dict(v.genome)), v)
            p = PendingRun(run=run, stock=dict(d.stock), variants=variants)
            self._write(p)
            self._supersede(p)
            self.waiting[domain] = "sharing this host's PHASE trials with the study"

    # --- the heartbeat's part ---------------------------------------------------------------------

    async def sync(self) -> None:
        """Share what is not shared yet, decide what is final, deliver decisions (each heartbeat).
        One item failing (a domain no longer enabled, a bug) does not hold up the others; decisions
        kept from before a restart reach the keeper even while the database is unreachable."""
        try:
            for p in [*self.stale, *self.pending.values()]:
                if not p.uploaded:
                    await self._guarded(f"share {p.run.run_id}/{p.run.domain}", self._upload(p))
            self.stale = [s for s in self.stale if not s.uploaded]
            for domain, p in list(self.pending.items()):
                if p.uploaded:
                    await self._guarded(f"decide {p.run.run_id}/{domain}", self._decide(domain, p))
        finally:
            for p in list(self.decided.values()):
                if self.on_decision is not None and p.decision is not None:
                    self._deliver(p, p.decision)

    async def _guarded(self, what: str, step: Awaitable[None]) -> None:
        try:
            await step
        except DatabaseDown:
            raise
        except Exception as e:
            if what not in self._failed:
                self._failed.add(what)
                logger.error("fleet PHASE: {} failed: {}", what, redact(f"{type(e).__name__}: {e}")[:300])

    async def _upload(self, p: PendingRun) -> None:
        from kloros_orchestrator.fleet.phase_rows import record_phase_run

        study_id, _ = await self.study_of(p.run.domain)
        written = await self.db.call(lambda st: record_phase_run(st, study_id, p.run))
        p.uploaded = True
        if any(p is s for s in self.stale):
            self._path(p).unlink(missing_ok=True)
        else:
            self._write(p)
        logger.info("fleet: PHASE {} of {} shared with the study ({} trials{})", p.run.run_id, p.run.domain,
                    len(p.run.trials), "" if written else ", already there")  # fmt: skip
        self.events.record("fleet_phase_shared", domain=p.run.domain, run_id=p.run.run_id,
                           trials=len(p.run.trials))  # fmt: skip

    async def _decide(self, domain: str, p: PendingRun) -> None:
        from kloros_orchestrator.fleet.phase_rows import hosts_sharing, phase_trials

        study_id, alive = await self.study_of(domain)
        since = p.run.finished_at - self.window_s  # the hosts share the schedule: this window's runs
        shared = await self.db.call(lambda st: hosts_sharing(st, study_id, domain, since))
        missing = sorted(alive - shared)
        if missing and self.clock() - p.run.finished_at < self.window_s:
            self.waiting[domain] = (
                f"waiting for the fleet: {len(alive & shared)} of {len(alive)} host(s) alive shared a PHASE "
                f"(not yet: {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''})"
            )
            return
        digests = sorted(p.run.variants)  # what this run measured
        trials = await self.db.call(lambda st: phase_trials(st, study_id, domain, digests))
        decision = self._verdict(domain, p, trials)
        p.decision = decision
        self._write(p)
        self._keep_decided(p)
        if self.pending.get(domain) is p:  # a newer run may have come in meanwhile: it waits its turn
            del self.pending[domain]
            self.waiting.pop(domain, None)
        summary = decision.summary()
        logger.info("fleet: PHASE {} of {} decided over {} host(s): {}", p.run.run_id, domain, decision.hosts,
                    summary["reason"])  # fmt: skip
        verdicts = {d: msgspec.to_builtins(v) for d, v in decision.verdicts.items()}
        self.events.record("fleet_phase_verdict", domain=domain, **summary, verdicts=verdicts)

    def _verdict(self, domain: str, p: PendingRun, trials: list[Any]) -> FleetDecision:
        verdicts = fleet_verdicts(trials, seed=self.seed, n_boot=self.n_boot)
        promoted = [v for v in verdicts.values() if v.promoted and v.effect is not None]
        best = max(promoted, key=lambda v: v.effect or 0.0, default=None)
        return FleetDecision(
            domain=domain, run_id=p.run.run_id, stock=p.stock, hosts=len({t.host for t in trials}),
            verdicts=verdicts, pick=None if best is None else p.variants[best.cand_id], verdict=best,
            adoption=None if best is None else host_adopts(best, self.host),
        )  # fmt: skip

    def _deliver(self, p: PendingRun, decision: FleetDecision) -> None:
        """To the host keeper: to act on once (``acted`` persisted), to know again after a restart."""
        key = (p.run.domain, p.run.run_id)
        if self.on_decision is None or key in self._delivered:
            return
        self.on_decision(decision, not p.acted)
        self._delivered.add(key)
        if not p.acted:
            p.acted = True
            self._write(p)

    async def step(self) -> None:
        """:meth:`sync`, never raising: an error is logged (the heartbeat goes on)."""
        try:
            await self.sync()
        except DatabaseDown:
            pass
        except Exception as e:
            logger.error("fleet PHASE sharing failed: {}", redact(f"{type(e).__name__}: {e}")[:300])

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {d: {"state": "waiting", "why": why} for d, why in self.waiting.items()}
        for d, p in self.decided.items():
            if p.decision is not None:
                out.setdefault(d, {"state": "decided"})["decision"] = p.decision.summary()
        return out


def load_runs(root: Path, *, domain: str = "*", set_aside: bool = False) -> list[PendingRun]:
    """The runs (of ``domain``, or all) kept under ``root`` (``state_dir/fleet/phase``), oldest first;
    an unreadable file is logged and skipped, and with ``set_aside`` renamed ``.rejected`` (the
    daemon's start-up)."""
    if not root.is_dir():
        return []
    runs: list[PendingRun] = []
    for path in sorted(root.glob(f"*.{domain}.json")):
        try:
            raw = read_bounded(path, max_bytes=MAX_PENDING_BYTES)
            runs.append(msgspec.json.decode(raw, type=PendingRun))
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as e:
            logger.error("fleet PHASE run {} unreadable, {}: {}", path.name,
                         "left aside" if set_aside else "skipped", e)  # fmt: skip
            if set_aside:
                path.rename(path.with_suffix(".rejected"))
    return sorted(runs, key=lambda p: p.run.finished_at)


def latest_decision(root: Path, domain: str) -> FleetDecision | None:
    """The fleet's decision on this host's latest decided PHASE run of ``domain`` kept under ``root``
    (what the daemon's keeper knows after a restart; read by the offline ``apply``)."""
    runs = load_runs(root, domain=domain)
    decided = [p.decision for p in runs if p.decision is not None and p.run.domain == domain]
    return decided[-1] if decided else None


def seed_once(engine: Evolution, decision: FleetDecision | None, seeded: Sequence[str]) -> list[str]:
    """The fleet's PHASE pick seeds the study's next bred generation, as promoted variants do in a
    collapse on one host (module docstring, 5), each pick once per study: ``seeded`` are the genome
    digests the previous verdict recorded as taken in; returned with the pick's added (the next
    verdict's), also when its genome no longer fits the space (logged once, not every generation)."""
    out = list(seeded)
    if decision is None or decision.pick is None:
        return out
    digest = genome_digest(dict(decision.pick.genome))
    if digest in out:
        return out
    try:
        engine.inject([dict(decision.pick.genome)])
    except ValueError as e:  # e.g. a genome from before a knob appeared in the space
        logger.error("fleet PHASE pick {} of {} not seeded: {}", decision.pick.cand_id, decision.domain, e)
    else:  # debug: the conclusion may still lose to another leader's, whose verdict then stands
        logger.debug("fleet: PHASE pick {} of {} seeds the study's next generation", decision.pick.cand_id,
                     decision.domain)  # fmt: skip
    return [*out, digest]


def fold_into(hof: list[HallOfFameEntry], decision: FleetDecision | None) -> list[HallOfFameEntry]:
    """The study's hall of fame with the fleet's PHASE verdict in it (module docstring, 5); pure."""
    if decision is None:
        return list(hof)
    out: list[HallOfFameEntry] = []
    for h in hof:
        v = decision.verdicts.get(genome_digest(dict(h.genome)))
        if v is None or v.effect is None:
            out.append(h)
            continue
        if (v.ci is not None and v.ci[1] < 0.0) or not all(e.safe for e in v.hosts):
            continue  # the fleet found it worse, or unsafe somewhere: not measured again
        out.append(msgspec.structs.replace(h, score=v.effect, score_ci95=v.ci, phase_run_id=decision.run_id))
    sort_hall_of_fame(out)
    return out


__all__ = ["FleetDecision", "FleetPhase", "PendingRun", "fold_into"]
