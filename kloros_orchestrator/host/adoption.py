"""Adoption: choosing a variant PHASE measured, and bringing the host to a configuration.

The operations behind ``apply``, ``rollback`` and ``verify`` (README, "From verdict to host"),
shared by the daemon (socket requests, ``promotion: auto``) and the command line when no daemon
runs. Nothing here knows about the event loop: the daemon calls the writing functions in a worker
thread, at a tournament boundary.

* :func:`choose` finds a variant in the latest PHASE results (``--variant ID`` or ``--phase
  latest``) and says why it may not be adopted: PHASE did not promote it (its score and interval),
  or flagged it (the reasons). ``force`` adopts it anyway, and the provenance says so.
* :func:`enforce` brings a domain's files to its adopted settings, or back to the factory values:
  the factory values of a knob are recorded (durably) before its first adopted write.
* :func:`verify` compares the live files with what they should hold.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from kloros_orchestrator.errors import KlorosError, SchemaError
from kloros_orchestrator.host.live import (
    Drift,
    drift_of,
    factory_settings,
    setting_files,
    write_files,
)
from kloros_orchestrator.host.records import AdoptedBy, AdoptedConfig, FactoryKnob, KnobSetting, Provenance
from kloros_orchestrator.host.store import HostStore
from kloros_orchestrator.model import Genome
from kloros_orchestrator.phase.results import PhaseResults, PromotedVariant, latest_results, load_results
from kloros_orchestrator.runtime.records import load_saved_state
from kloros_orchestrator.safefs import read_bounded
from kloros_orchestrator.spica.journal import MAX_ENTRY_BYTES, JournalEntry
from kloros_orchestrator.spica.knobs import read_knob
from kloros_orchestrator.store import StatePaths

PROMOTION_RULE = (
    "PHASE promotes a variant whose CI lower bound is above 0 and whose score is positive in every epoch"
)


class AdoptionRefused(KlorosError):
    """A variant that may not be adopted (not promoted, flagged, unknown); the message says why."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Choice:
    """A variant to adopt: its genome and the provenance it will carry."""

    domain: str
    genome: Genome
    provenance: Provenance


def latest(paths: StatePaths) -> PhaseResults:
    """The latest PHASE results; AdoptionRefused when there are none (or they do not read)."""
    path = latest_results(paths.phase)
    if path is None:
        raise AdoptionRefused("no PHASE has completed yet: nothing was promoted (run phase-now, or wait)")
    try:
        return load_results(path, move_aside=False)
    except SchemaError as e:
        raise AdoptionRefused(f"the latest PHASE results cannot be used: {e}") from None


def best_promoted(results: PhaseResults, domain: str) -> PromotedVariant | None:
    """The domain's promoted variant with the highest score (ties: the higher CI lower bound)."""
    mine = [p for p in results.promoted_variants if p.domain == domain]
    return max(mine, key=lambda p: (p.score_v2, p.score_ci95[0]), default=None)


def from_promoted(p: PromotedVariant, run_id: str, by: AdoptedBy) -> Choice:
    prov = Provenance(
        by=by, at=now_iso(), phase_run_id=run_id, cand_id=p.cand_id, spica_id=p.spica_id,
        score_v2=p.score_v2, score_ci95=p.score_ci95, evidence=p.reason,
    )  # fmt: skip
    return Choice(p.domain, dict(p.genome), prov)


def choose(
    paths: StatePaths, domain: str, *, variant: str | None, force: bool, by: AdoptedBy = "operator"
) -> Choice:
    """The variant ``apply`` adopts: ``variant`` by id, or (None) the best one the latest PHASE promoted."""
    results = latest(paths)
    if domain not in results.domains_tested:
        tested = ", ".join(results.domains_tested) or "none"
        raise AdoptionRefused(f"PHASE {results.run_id} did not test {domain} (tested: {tested})")
    if variant is None:
        best = best_promoted(results, domain)
        if best is None:
            raise AdoptionRefused(
                f"PHASE {results.run_id} promoted no variant of {domain} ({PROMOTION_RULE}); "
                "name one with --variant ID --force to adopt it anyway"
            )
        return from_promoted(best, results.run_id, by)
    for p in results.promoted_variants:
        if p.domain == domain and p.cand_id == variant:
            return from_promoted(p, results.run_id, by)
    refusal = _refusal(results, domain, variant)
    if not force:
        raise AdoptionRefused(f"{refusal}; add --force to adopt it anyway")
    genome = _genome_of(paths, results, domain, variant)
    summary = (results.metrics.get(domain) or None) and (results.metrics[domain].variants or {}).get(variant)
    prov = Provenance(
        by=by, at=now_iso(), phase_run_id=results.run_id, cand_id=variant,
        score_v2=summary.score_v2 if summary else None, score_ci95=summary.score_ci95 if summary else None,
        evidence=f"forced: {refusal}", forced=True,
    )  # fmt: skip
    return Choice(domain, genome, prov)


def _refusal(results: PhaseResults, domain: str, variant: str) -> str:
    for f in results.flagged_variants:
        if f.domain == domain and f.cand_id == variant:
            return f"PHASE {results.run_id} flagged {variant}: " + "; ".join(f.reasons)
    m = results.metrics.get(domain)
    summary = (m.variants or {}).get(variant) if m is not None else None
    if summary is None:
        return f"PHASE {results.run_id} did not measure {variant} in {domain}"
    score = "no score" if summary.score_v2 is None else f"score {summary.score_v2:+.4f}"
    lo_hi = summary.score_ci95
    ci = "" if lo_hi is None else f", CI [{lo_hi[0]:+.4f}, {lo_hi[1]:+.4f}]"
    epochs = (
        ""
        if not summary.epoch_scores
        else ", per epoch " + ", ".join("n/a" if e is None else f"{e:+.4f}" for e in summary.epoch_scores)
    )
    return f"PHASE {results.run_id} did not promote {variant} ({score}{ci}{epochs}; {PROMOTION_RULE})"


def _genome_of(paths: StatePaths, results: PhaseResults, domain: str, variant: str) -> Genome:
    """A variant's genome: from the results, else the hall of fame in state.json."""
    for f in results.flagged_variants:
        if f.domain == domain and f.cand_id == variant:
            return dict(f.genome)
    saved = load_saved_state(paths.runtime_state, now=datetime.now(UTC).timestamp())
    progress = saved.engines.get(domain)
    for h in progress.hall_of_fame if progress is not None else []:
        if h.cand_id == variant:
            return dict(h.genome)
    raise AdoptionRefused(f"the genome of {variant} ({domain}) is not known here (not in the hall of fame)")


# --- the host -------------------------------------------------------------------------------------


def capture_factory(
    store: HostStore, domain: str, settings: Iterable[KnobSetting], sysfs_root: Path
) -> list[str]:
    """Record (once, durably) the current text of every file of ``settings`` as its factory value."""
    at, root = now_iso(), Path(sysfs_root).absolute()
    knobs = [
        FactoryKnob(s.knob, s.type, s.fmt, {p: read_knob(root / p, sysfs_root) for p in s.paths}, at)
        for s in settings
        if s.scope == "system" and s.paths
    ]
    return store.add_factory(domain, knobs) if knobs else []


def expected_settings(store: HostStore, domain: str) -> tuple[str, list[KnobSetting]]:
    """What the domain's files should hold: ``("adopted", settings)`` or ``("factory", settings)``."""
    adopted = store.adopted_config(domain)
    if adopted is not None:
        return "adopted", list(adopted.settings)
    return "factory", factory_settings(store.factory().domains.get(domain, {}))


def enforce(store: HostStore, domain: str, sysfs_root: Path) -> list[str]:
    """Bring the domain's files to what they should hold; returns the files written.

    Adopted: its settings (the factory values of each knob recorded first, once). Rolled back and
    not yet finished (``factory_pending``): the factory values, then the rollback is marked done.
    Otherwise nothing: a domain that never adopted anything runs what the host runs.
    """
    adopted = store.adopted_config(domain)
    if adopted is not None:
        settings = list(adopted.settings)
        capture_factory(store, domain, settings, sysfs_root)
    elif domain in store.adopted().factory_pending:
        settings = factory_settings(store.factory().domains.get(domain, {}))
    else:
        return []
    wrong = {d.path for d in drift_of(settings, sysfs_root)}
    root = Path(sysfs_root).absolute()
    files = [(p, t) for p, t in setting_files(settings) if str(root / p) in wrong]
    write_files(files, sysfs_root)
    if adopted is None:
        store.factory_done(domain)
    return [p for p, _ in files]


def adopt(store: HostStore, config: AdoptedConfig) -> None:
    """Persist ``config`` as the domain's adopted configuration (the host follows in :func:`enforce`)."""
    store.set_adopted(config.domain, config)


def rollback(store: HostStore, domain: str, sysfs_root: Path | None) -> list[str]:
    """Back to the factory values, durably: the record first (``factory_pending``), then the files
    (now, or with ``sysfs_root=None`` at the daemon's next tournament boundary); a crash in between
    is finished at the next start."""
    store.set_adopted(domain, None)
    return [] if sysfs_root is None else enforce(store, domain, sysfs_root)


def nothing_to_roll_back(domain: str | None) -> str:
    what = f"{domain} runs its factory configuration" if domain else "no domain runs an adopted configuration"
    return f"nothing to roll back: {what}"


@dataclass(frozen=True)
class DomainCheck:
    """One domain's verify: files that differ (``drift``), and files that hold a trial's value while a
    tournament runs (``in_trial``: journaled, the daemon puts the expected value back after it)."""

    domain: str
    config: str  # "adopted" or "factory"
    files: int
    drift: list[Drift]
    in_trial: list[Drift] = field(default_factory=list)


def daemon_holds_lock(lock: Path) -> bool:
    """Whether a daemon (or another command) holds the state_dir's lock right now."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock taken just now, if it was
    return False


def journaled_paths(journal_dir: Path) -> set[str]:
    """The files a trial has changed and the journal will restore (unreadable entries skipped)."""
    out: set[str] = set()
    try:
        names = sorted(p for p in Path(journal_dir).iterdir() if p.suffix == ".json")
    except OSError:
        return out
    for path in names:
        try:
            entry = msgspec.json.decode(read_bounded(path, max_bytes=MAX_ENTRY_BYTES), type=JournalEntry)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            continue
        out.add(entry.path)
    return out


def verify(store: HostStore, sysfs_root: Path, domains: Iterable[str] | None = None) -> list[DomainCheck]:
    """Live values against the adopted (or factory) configuration of each domain recorded here."""
    names = (
        list(domains)
        if domains is not None
        else sorted(set(store.adopted().domains) | set(store.factory().domains))
    )
    # Journaled files hold a trial's values while a daemon runs; without one they are what a
    # crashed run left (its next start restores them): drift until then.
    in_trial = journaled_paths(store.paths.journal) if daemon_holds_lock(store.paths.lock) else set()
    out: list[DomainCheck] = []
    for name in names:
        label, settings = expected_settings(store, name)
        files = sum(len(s.paths) for s in settings if s.scope == "system")
        found = drift_of(settings, sysfs_root)
        drift = [d for d in found if d.path not in in_trial]
        out.append(DomainCheck(name, label, files, drift, [d for d in found if d.path in in_trial]))
    return out


__all__ = [
    "PROMOTION_RULE",
    "AdoptionRefused",
    "Choice",
    "DomainCheck",
    "adopt",
    "best_promoted",
    "capture_factory",
    "choose",
    "daemon_holds_lock",
    "enforce",
    "expected_settings",
    "from_promoted",
    "journaled_paths",
    "latest",
    "nothing_to_roll_back",
    "now_iso",
    "rollback",
    "verify",
]
