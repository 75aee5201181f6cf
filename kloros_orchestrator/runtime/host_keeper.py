"""The daemon's side of adoption: what the host runs per domain, and when that changes.

Theory of operation. Each domain's *current* configuration — its adopted one, else the factory
values — is the stock arm of every tournament and PHASE window, what knobs go back to after each
tournament (the journal's originals are the current values) and what start-up restores.

A change (``apply``, ``rollback``, ``promotion: auto`` after a PHASE) is persisted at once
(``host/adopted.json``) and carried out on the host at the next boundary: the keeper and the trials
share one lock (``host_lock``) that a tournament or a PHASE window holds while it runs, so files
are never rewritten under a trial. :meth:`HostKeeper.settle` writes the files (in a worker thread)
and hands D-REAM the new current genome.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio
import msgspec
from loguru import logger

from kloros_orchestrator.errors import DomainError, KlorosError
from kloros_orchestrator.host import adoption
from kloros_orchestrator.host.live import factory_genome, settings_of
from kloros_orchestrator.host.records import AdoptedBy, AdoptedConfig, Provenance
from kloros_orchestrator.host.store import HostStore
from kloros_orchestrator.model import Genome
from kloros_orchestrator.phase.results import PhaseResults
from kloros_orchestrator.runtime.control import PEER_UID
from kloros_orchestrator.runtime.ports import EventLog
from kloros_orchestrator.spica.base import SpicaDomain

if TYPE_CHECKING:
    from kloros_orchestrator.runtime.fleet_phase import FleetDecision

PromotionMode = Literal["manual", "auto"]
HOST_COMMANDS: Final = ("apply", "rollback", "verify")


class HostKeeper:
    def __init__(
        self,
        *,
        store: HostStore,
        sysfs_root: Path,
        mode: PromotionMode,
        events: EventLog,
        lock: anyio.Lock,
        set_current: Callable[[str, Genome], object],
        on_status: Callable[[str], object] | None = None,
    ) -> None:
        self.store = store
        self.sysfs_root = Path(sysfs_root)
        self.mode = mode
        self.events = events
        self.lock = lock
        self.set_current = set_current
        self.on_status = on_status  # one-line status (sd_notify) when the host's configuration changed
        self.domains: dict[str, SpicaDomain] = {}
        self.current: dict[str, Genome] = {}
        self.pending: set[str] = set()  # domains whose files must change at the next boundary
        self.notes: dict[str, str] = {}
        self.results: PhaseResults | None = None
        self.phase_stock: dict[str, Genome] = {}  # the stock arms of the PHASE that ran last
        self.fleet = False  # in a fleet study: adoption follows the fleet's PHASE verdict
        self.fleet_decisions: dict[str, FleetDecision] = {}
        self._spawn: Callable[[], object] | None = None

    # --- start-up (blocking: run in a worker thread) ---------------------------------------------

    def startup(self, domains: Mapping[str, SpicaDomain]) -> dict[str, Genome]:
        """Bring every domain to its current configuration (re-applying an adoption, finishing a
        rollback a crash cut short) and return the current genomes. An unreadable host file raises
        HostStateError (one line naming it): the daemon does not guess what the host should run."""
        self.domains = {n: d for n, d in domains.items() if d.support == "ok"}
        adopted = self.store.adopted()
        for name in [n for n in adopted.factory_pending if n not in self.domains]:
            try:  # a rollback a crash cut short, of a domain not enabled now: finish it all the same
                adoption.enforce(self.store, name, self.sysfs_root)
            except (KlorosError, OSError) as e:
                logger.error("domain {}: unfinished rollback could not be completed: {}", name, e)
        for name, dom in self.domains.items():
            config = adopted.domains.get(name)
            if config is not None:
                config = self._refresh(dom, config)
            try:
                written = adoption.enforce(self.store, name, self.sysfs_root)
                # Nothing adopted: the host's own values as discovery read them (an operator's
                # sysctl.d included), or the factory ones a rollback finished just now.
                self.current[name] = self._genome_of(name, rolled_back=name in adopted.factory_pending)
            except (DomainError, OSError) as e:
                self.notes[name] = f"current configuration cannot be restored: {e}"
                logger.error("domain {}: {}", name, self.notes[name])
                self.current[name] = dom.stock_genome()
                continue
            if written:
                logger.info("domain {}: {} file(s) brought back to the {} configuration", name,
                            len(written), "adopted" if config else "factory")  # fmt: skip
        return dict(self.current)

    def _genome_of(self, name: str, *, rolled_back: bool) -> Genome:
        """The current genome of a domain: adopted (checked against this host); just rolled back:
        the factory values; else what discovery found on the host."""
        dom = self.domains[name]
        config = self.store.adopted_config(name)
        if config is not None:
            return dom.validate_genome(config.genome)
        if rolled_back:
            return factory_genome(dom, self.store.factory().domains.get(name, {}))
        return dom.stock_genome()

    def _refresh(self, dom: SpicaDomain, config: AdoptedConfig) -> AdoptedConfig:
        """The adoption's files as this host has them now (a disk renamed, CPUs added): the genome is
        what was adopted; where its values live comes from the domain's declared knobs."""
        try:
            settings = settings_of(dom, config.genome)
        except DomainError:
            return config  # does not fit any more: _genome_of reports it
        if settings == list(config.settings):
            return config
        fresh = AdoptedConfig(config.domain, dom.validate_genome(config.genome), settings, config.provenance)
        self.store.set_adopted(dom.name, fresh)
        logger.warning("domain {}: the adopted configuration's files changed on this host; updated", dom.name)
        return fresh

    # --- changes ---------------------------------------------------------------------------------

    def bind(self, spawn: Callable[[], object]) -> None:
        """``spawn()`` starts :meth:`settle_when_free` in the daemon's task group."""
        self._spawn = spawn

    async def settle_when_free(self) -> None:
        async with self.lock:
            await self.settle()

    async def settle(self) -> None:
        """Carry out pending changes on the host (the caller holds ``lock``: no trial runs)."""
        while self.pending:
            name = self.pending.pop()
            try:
                written = await anyio.to_thread.run_sync(adoption.enforce, self.store, name, self.sysfs_root)
                genome = self._genome_of(name, rolled_back=True) if name in self.domains else None
            except (KlorosError, OSError) as e:
                self.notes[name] = f"host configuration change failed: {e}"
                logger.error("domain {}: {}", name, self.notes[name])
                self.events.record("host_config_failed", domain=name, error=str(e)[:500])
                continue
            self.notes.pop(name, None)
            if genome is not None:
                self.current[name] = genome
                self.set_current(name, genome)
            self.events.record("host_config_applied", domain=name, files=written, genome=genome)
            if self.on_status is not None:
                self.on_status(f"host: {name} now runs its {self.label(name)} configuration")
            logger.info(
                "domain {}: host now runs {} ({} file(s) written)", name, self.label(name), len(written)
            )

    def changed(self, name: str) -> None:
        """Carry out the domain's persisted change at the next boundary (on the event loop)."""
        self.pending.add(name)
        if self._spawn is not None:
            self._spawn()

    def adopt(self, choice: adoption.Choice) -> AdoptedConfig:
        """Persist ``choice`` as the domain's adopted configuration (blocking: a small atomic write);
        the caller then calls :meth:`changed` on the event loop and the host follows at the boundary."""
        dom = self.domains.get(choice.domain)
        if dom is None:
            raise adoption.AdoptionRefused(f"domain {choice.domain} is not running here (see status)")
        try:
            genome = dom.validate_genome(choice.genome)
        except DomainError as e:
            raise adoption.AdoptionRefused(
                f"{choice.provenance.cand_id} does not fit this host: {e}"
            ) from None
        config = AdoptedConfig(choice.domain, genome, settings_of(dom, genome), choice.provenance)
        adoption.adopt(self.store, config)
        self.events.record("adopted", domain=choice.domain, genome=genome, provenance=config.provenance)
        logger.info("domain {}: adopted {} ({})", choice.domain, choice.provenance.cand_id,
                    choice.provenance.evidence or choice.provenance.by)  # fmt: skip
        return config

    def rollback(self, name: str) -> None:
        """Persist the rollback (blocking); the caller then calls :meth:`changed`. A domain that is
        not enabled any more can be rolled back too: only its recorded files are written."""
        recorded = self.store.adopted()
        if name not in self.domains and name not in recorded.domains and name not in recorded.factory_pending:
            raise adoption.AdoptionRefused(f"domain {name}: no adopted configuration is recorded here")
        adoption.rollback(self.store, name, None)
        self.events.record("rolled_back", domain=name)

    def collapsed(self, results: PhaseResults) -> None:
        """A PHASE verdict arrived: remember it (pending promotions) and, in ``auto``, adopt the best
        promoted variant of each domain whose current configuration PHASE measured as its stock arm."""
        self.results = results
        if self.mode != "auto" or self.fleet:  # a fleet adopts on the fleet's verdict (fleet_decided)
            return
        for name in results.domains_tested:
            best = adoption.best_promoted(results, name)
            if best is None or name not in self.domains or dict(best.genome) == self.current.get(name):
                continue
            if name not in self.phase_stock:
                logger.warning(
                    "domain {}: {} was promoted by a PHASE of an earlier run: not adopted automatically "
                    "(listed as a pending promotion in status)", name, best.cand_id,
                )  # fmt: skip
                continue
            if self.phase_stock[name] != self.current.get(name):
                logger.warning(
                    "domain {}: not adopting {}: its configuration changed during PHASE", name, best.cand_id
                )
                continue
            try:
                self.adopt(adoption.from_promoted(best, results.run_id, "auto"))
                self.changed(name)
            except (KlorosError, OSError) as e:
                logger.error("domain {}: automatic adoption of {} failed: {}", name, best.cand_id, e)

    def fleet_decided(self, decision: FleetDecision, act: bool = True) -> None:
        """The fleet's verdict on this host's PHASE of a domain (runtime/fleet_phase.py): listed in
        status; in ``auto`` and ``act`` (not a decision known again after a restart), adopted when
        this host adopts it (``host_adopts``), the domain still runs the configuration its PHASE
        measured against, and no operator change is waiting for the boundary."""
        name, pick, adoption_ = decision.domain, decision.pick, decision.adoption
        self.fleet_decisions[name] = decision
        if not act or self.mode != "auto" or pick is None or adoption_ is None or name not in self.domains:
            return
        if dict(pick.genome) == self.current.get(name):
            return
        if name in self.pending:
            logger.warning("domain {}: not adopting {}: a change is already waiting for the boundary",
                           name, pick.cand_id)  # fmt: skip
            return
        if not adoption_.adopt:
            logger.info("domain {}: not adopting {}: {}", name, pick.cand_id, adoption_.reason)
            return
        if decision.stock != self.current.get(name):
            logger.warning("domain {}: not adopting {}: its configuration changed since the PHASE the fleet "
                           "judged", name, pick.cand_id)  # fmt: skip
            return
        try:
            self.adopt(fleet_choice(decision, "auto"))
            self.changed(name)
        except (KlorosError, OSError) as e:
            logger.error("domain {}: automatic adoption of {} failed: {}", name, pick.cand_id, e)

    # --- requests and status ---------------------------------------------------------------------

    async def request(self, req: dict[str, Any]) -> dict[str, Any]:
        """``apply``, ``rollback`` and ``verify`` from the socket (the CLI's offline path calls the
        same functions of ``host.adoption``)."""
        cmd = req.get("cmd")
        domain = req.get("domain")
        if domain is not None and not isinstance(domain, str):
            return {"ok": False, "error": "domain must be a string"}
        uid = req.get(PEER_UID)
        if cmd in ("apply", "rollback") and PEER_UID in req and (uid is None or uid not in (0, os.geteuid())):
            # The socket is open to its group (status); changing the host is for root alone.
            return {"ok": False, "error": f"{cmd} changes the host's configuration: run it as root"}
        try:
            if cmd == "apply":
                return await self._apply(domain, req)
            if cmd == "rollback":
                recorded = self.store.adopted()
                names = sorted(n for n in recorded.domains if n == domain or not domain)
                if domain and not names and domain not in self.domains:
                    raise adoption.AdoptionRefused(f"domain {domain}: no configuration is recorded here")
                for name in names:
                    await anyio.to_thread.run_sync(self.rollback, name)
                    self.changed(name)
                return {"ok": True, "domains": names, "message": _rollback_message(names, domain)}
            if cmd == "verify":
                checks = await anyio.to_thread.run_sync(
                    adoption.verify, self.store, self.sysfs_root, [domain] if domain else None
                )
                return {"ok": True, "checks": [msgspec.to_builtins(c) for c in checks]}
        except adoption.AdoptionRefused as e:
            return {"ok": False, "error": str(e), "refused": True}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    async def _apply(self, domain: str | None, req: dict[str, Any]) -> dict[str, Any]:
        variant, force = req.get("variant"), bool(req.get("force", False))
        if not domain or (variant is not None and not isinstance(variant, str)):
            return {"ok": False, "error": "apply needs a domain and either a variant id or phase: latest"}
        by: AdoptedBy = "operator"
        fleet = self.fleet_decisions.get(domain)
        if fleet is not None and fleet.pick is not None and variant in (None, fleet.pick.cand_id):
            choice = fleet_choice(fleet, by, force)  # promoted by the fleet's verdict
        else:
            choice = await anyio.to_thread.run_sync(
                lambda: adoption.choose(self.store.paths, domain, variant=variant, force=force, by=by)
            )
        config = await anyio.to_thread.run_sync(self.adopt, choice)
        self.changed(domain)
        when = "now" if not self.lock.locked() else "at the next tournament boundary"
        return {
            "ok": True,
            "message": f"{domain}: adopted {choice.provenance.cand_id}; the host takes it {when}",
            "adopted": msgspec.to_builtins(config),
        }

    def label(self, name: str) -> str:
        return "adopted" if self.store.adopted_config(name) is not None else "factory"

    def status(self) -> dict[str, Any]:
        """Per domain: adopted or factory, the adoption's provenance, pending promotions, problems."""
        try:
            adopted = self.store.adopted()
        except KlorosError as e:
            return {"promotion": self.mode, "error": str(e)}
        out: dict[str, Any] = {}
        for name in self.domains:
            config = adopted.domains.get(name)
            entry: dict[str, Any] = {"config": "adopted" if config else "factory"}
            if config is not None:
                entry["adopted"] = {**msgspec.to_builtins(config.provenance), "genome": config.genome}
            if name in self.pending or name in adopted.factory_pending:
                entry["change_pending"] = True
            promos = self._pending_promotions(name)
            if promos:
                entry["pending_promotions"] = promos
            if name in self.notes:
                entry["note"] = self.notes[name]
            out[name] = entry
        return {"promotion": self.mode, "domains": out}

    def _pending_promotions(self, name: str) -> list[dict[str, Any]]:
        if self.fleet:
            return self._fleet_promotions(name)
        r = self.results
        if r is None:
            return []
        return [
            {"cand_id": p.cand_id, "score_v2": p.score_v2, "score_ci95": list(p.score_ci95),
             "phase_run_id": r.run_id, "apply": f"apply --domain {name} --variant {p.cand_id}"}
            for p in r.promoted_variants
            if p.domain == name and dict(p.genome) != self.current.get(name)
        ]  # fmt: skip

    def _fleet_promotions(self, name: str) -> list[dict[str, Any]]:
        d = self.fleet_decisions.get(name)
        if d is None or d.pick is None or d.verdict is None or dict(d.pick.genome) == self.current.get(name):
            return []
        v = d.verdict
        ci = None if v.ci is None else list(v.ci)
        return [
            {"cand_id": d.pick.cand_id, "score_v2": v.effect, "score_ci95": ci,
             "phase_run_id": d.run_id, "fleet": d.summary(),
             "apply": f"apply --domain {name} --variant {d.pick.cand_id}"}
        ]  # fmt: skip


def _rollback_message(names: list[str], domain: str | None = None) -> str:
    if not names:
        return adoption.nothing_to_roll_back(domain)
    return f"rolled back {', '.join(names)} to factory values (written at the next tournament boundary)"


def fleet_choice(decision: FleetDecision, by: AdoptedBy, force: bool = False) -> adoption.Choice:
    """The fleet's pick to adopt; refused when this host's own trials refuse it (``host_adopts``)
    unless ``force`` (the provenance then says so): the daemon's ``apply`` and the offline one."""
    pick, v, mine = decision.pick, decision.verdict, decision.adoption
    if pick is None or v is None:
        raise adoption.AdoptionRefused(f"the fleet promoted no variant of {decision.domain}")
    refused = mine is not None and not mine.adopt
    if refused and not force:
        raise adoption.AdoptionRefused(
            f"{pick.cand_id} was promoted fleet-wide but not for this host: "
            f"{mine.reason if mine else ''}; add --force to adopt it anyway"
        )
    why = f"fleet PHASE verdict over {decision.hosts} host(s): {v.reason}"
    if mine is not None:
        why += f"; this host: {mine.reason}"
    prov = Provenance(
        by=by, at=adoption.now_iso(), phase_run_id=decision.run_id, cand_id=pick.cand_id,
        spica_id=pick.spica_id, score_v2=v.effect, score_ci95=v.ci, evidence=why, forced=refused,
    )  # fmt: skip
    return adoption.Choice(decision.domain, dict(pick.genome), prov)


__all__ = ["HOST_COMMANDS", "HostKeeper", "PromotionMode", "fleet_choice"]
