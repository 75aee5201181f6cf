"""PHASE runs shared by a fleet: each host's nightly results, read back as the fleet verdict's trials.

Theory of operation. Every host of a study runs its own PHASE window against its *own* current
configuration (the stock arm, re-measured in every epoch and interleaved with the variants). When
a window ends the host records the run, one domain per row (:func:`record_phase_run`): its
trials, each variant named by the digest of its genome (``records.genome_digest``), so the same
genome is the same variant on every host whatever the local id or candidate name was. A retried
write inserts nothing (the row's key is (study, host, run id, domain)).

The fleet verdict on a variant (``fleet.verdict.fleet_verdicts``) treats hosts as blocks: each host
contributes one score, its variant trials against *its* stock trials of the same slot and regime.
:func:`phase_trials` therefore takes from every host one run per variant — the newest run (by the
host's own clock: runs of one host are ordered by one clock) among its last ``runs_per_host`` runs
of the domain that measured the variant — and returns that run's variant trials as the candidate
arm and the stock trials they pair with as the stock arm, both named by the variant's digest. The
newest run wins because it was measured against the host's configuration as it is now; an older
run, against a configuration since replaced, is never mixed in. A host whose newest run did not
measure a variant falls back to the newest of its recent runs that did; a host with none gives no
evidence on it (it may still adopt a promoted variant on the fleet's evidence, ``host_adopts``).

A slot numbers one (epoch, replica) of the host's QTIME plan (``epoch · SLOT_STRIDE + replica``; a
trial recorded without a replica takes its order within (epoch, regime, variant), as PHASE's own
pairing does), so a variant trial pairs with the stock trial that ran beside it and never with
one of another epoch. Rows are validated when read: a malformed row raises ValueError naming the
run, never a KeyError halfway through a verdict.

No psycopg at import: the daemon's PHASE side builds :class:`PhaseRun` s in local mode too; only
the functions that take a ``FleetStore`` need the database (and are called only when one is
configured). Blocking calls: the daemon runs them in worker threads.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec
from loguru import logger

from kloros_orchestrator.fleet.records import genome_digest
from kloros_orchestrator.fleet.verdict import FleetTrial
from kloros_orchestrator.model import STOCK_ARM
from kloros_orchestrator.phase.records import DomainData

if TYPE_CHECKING:
    from kloros_orchestrator.fleet.pgstore import FleetStore

SLOT_STRIDE: Final = 1_000_000  # slots of one epoch: epoch · SLOT_STRIDE + replica
DEFAULT_RUNS_PER_HOST: Final = 5


def _finite(name: str, values: Mapping[str, float]) -> None:
    bad = sorted(k for k, v in values.items() if not math.isfinite(v))
    if bad:
        raise ValueError(f"{name} must be finite (absent when unmeasurable), not for {bad}")


class PhaseTrial(msgspec.Struct, frozen=True, kw_only=True):
    """One trial of a PHASE run. ``slot`` and ``regime`` pair a variant's trial with the stock trial
    that ran beside it; ``variant`` is the variant's genome digest, or ``"stock"``."""

    slot: int
    regime: str
    variant: str
    ok: bool
    kpis: dict[str, float] = msgspec.field(default_factory=dict)
    stressor_ops: dict[str, float] = msgspec.field(default_factory=dict)
    cap_breach: str | None = None

    def __post_init__(self) -> None:
        _finite("kpis", self.kpis)
        _finite("stressor_ops", self.stressor_ops)


class PhaseRun(msgspec.Struct, frozen=True, kw_only=True):
    """One host's PHASE run of one domain, as the fleet stores it (see the module docstring).

    ``variants``: genome digest → cand_id (for display) of each variant the run measured; every
    trial names one of them or the stock arm, and no two trials share (slot, regime, variant)."""

    run_id: str
    host: str
    domain: str
    stock_digest: str
    finished_at: float  # Unix seconds, the host's clock: orders this host's runs, nothing else
    variants: dict[str, str]
    trials: tuple[PhaseTrial, ...]

    def __post_init__(self) -> None:
        if not math.isfinite(self.finished_at):
            raise ValueError(f"finished_at must be finite, got {self.finished_at!r}")
        if STOCK_ARM in self.variants:
            raise ValueError(f"{STOCK_ARM!r} names the stock arm, not a variant")
        seen: set[tuple[int, str, str]] = set()
        for t in self.trials:
            if t.variant != STOCK_ARM and t.variant not in self.variants:
                raise ValueError(f"a trial of variant {t.variant[:12]!r}, which the run does not list")
            key = (t.slot, t.regime, t.variant)
            if key in seen:
                raise ValueError(f"two trials of slot {t.slot}, regime {t.regime!r}, {t.variant[:12]!r}")
            seen.add(key)

    def trials_of(self, variant: str) -> list[FleetTrial]:
        """The variant's trials as the candidate arm, and the stock trials of the same (slot, regime)
        as its stock arm, all with ``cand_id`` = the variant's digest."""
        cand = [t for t in self.trials if t.variant == variant]
        slots = {(t.slot, t.regime) for t in cand}
        stock = [t for t in self.trials if t.variant == STOCK_ARM and (t.slot, t.regime) in slots]
        return [
            FleetTrial(
                host=self.host,
                cand_id=variant,
                round=t.slot,
                regime=t.regime,
                arm="stock" if t.variant == STOCK_ARM else "candidate",
                ok=t.ok,
                kpis=dict(t.kpis),
                stressor_ops=dict(t.stressor_ops),
                cap_breach=t.cap_breach,
            )
            for t in (*cand, *stock)
        ]


# --- from a PHASE window ---------------------------------------------------------------------------


def _finite_only(values: Mapping[str, float]) -> dict[str, float]:
    # An unmeasurable number is absent, never a default; JSON (and so jsonb) has no NaN either.
    return {k: float(v) for k, v in values.items() if math.isfinite(v)}


def phase_run_of(data: DomainData, *, run_id: str, host: str, domain: str, finished_at: float) -> PhaseRun:
    """A domain's PHASE input as the fleet's row: variants by genome digest (only those with trials),
    stock as ``"stock"``, one slot per (epoch, replica). A variant with the genome of an earlier one
    (the same configuration twice) is left out with its trials: the fleet knows a genome once.
    ValueError for a trial of an unknown variant or an epoch/replica outside the slot numbering."""
    digests: dict[str, str] = {}  # variant id -> digest
    names: dict[str, str] = {}  # digest -> cand_id
    twins: set[str] = set()  # variant ids whose genome an earlier variant has
    for vid, info in data.variants.items():
        digest = genome_digest(dict(info.genome))
        if digest in names:
            twins.add(vid)
            continue
        digests[vid] = digest
        names[digest] = info.cand_id
    ordinals: dict[tuple[int, str, str], int] = defaultdict(int)
    trials: list[PhaseTrial] = []
    for t in data.trials:
        if t.variant_id in twins:
            continue
        if t.variant_id != STOCK_ARM and t.variant_id not in digests:
            raise ValueError(f"a {domain} trial of variant {t.variant_id!r}, which the run does not list")
        ordinal = ordinals[(t.epoch, t.regime, t.variant_id)]
        ordinals[(t.epoch, t.regime, t.variant_id)] += 1
        replica = t.replica if t.replica is not None else ordinal
        if t.epoch < 0 or not 0 <= replica < SLOT_STRIDE:
            raise ValueError(f"epoch {t.epoch} / replica {replica} outside the slot numbering")
        trials.append(
            PhaseTrial(
                slot=t.epoch * SLOT_STRIDE + replica,
                regime=t.regime,
                variant=STOCK_ARM if t.variant_id == STOCK_ARM else digests[t.variant_id],
                ok=t.ok,
                kpis=_finite_only(t.kpis),
                stressor_ops=_finite_only(t.stressor_ops),
                cap_breach=t.cap_breach,
            )
        )
    measured = {t.variant for t in trials}
    return PhaseRun(
        run_id=run_id,
        host=host,
        domain=domain,
        stock_digest=genome_digest(dict(data.stock)),
        finished_at=finished_at,
        variants={d: name for d, name in names.items() if d in measured},
        trials=tuple(trials),
    )


# --- the database side ----------------------------------------------------------------------------

_INSERT: Final = """
INSERT INTO phase_runs (study_id, host, run_id, domain, stock_digest, finished_at, variants, trials)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING
RETURNING run_id
"""

# Each host's last runs of the domain (newest first, by its own clock; run id breaks a tie), and of
# those the ones that measured a wanted variant. The window reads only the index's columns.
_RECENT: Final = """
WITH recent AS (
    SELECT host, run_id,
           row_number() OVER (PARTITION BY host ORDER BY finished_at DESC, run_id DESC) AS recency
    FROM phase_runs WHERE study_id = %(study)s AND domain = %(domain)s)
SELECT p.host, p.run_id, p.domain, p.stock_digest, p.finished_at, p.variants, p.trials
FROM recent JOIN phase_runs AS p
  ON p.study_id = %(study)s AND p.domain = %(domain)s AND p.host = recent.host AND p.run_id = recent.run_id
WHERE recent.recency <= %(runs)s AND (%(wanted)s::text[] IS NULL OR p.variants ?| %(wanted)s::text[])
ORDER BY p.host, recent.recency
"""


def record_phase_run(store: FleetStore, study_id: int, run: PhaseRun) -> bool:
    """Write ``run`` (one transaction); False when the row was there already (a retry)."""
    from psycopg.types.json import Jsonb  # the database side only: see the module docstring

    with store.pool.connection() as conn, conn.transaction():
        row = conn.execute(
            _INSERT,
            (
                study_id,
                run.host,
                run.run_id,
                run.domain,
                run.stock_digest,
                run.finished_at,
                Jsonb(dict(run.variants)),
                Jsonb(msgspec.to_builtins(run.trials)),
            ),
        ).fetchone()
    return row is not None


def _run_of(row: Sequence[Any]) -> PhaseRun:
    host, run_id, domain, stock_digest, finished_at, variants, trials = row
    try:
        return msgspec.convert(
            {
                "run_id": run_id,
                "host": host,
                "domain": domain,
                "stock_digest": stock_digest,
                "finished_at": finished_at,
                "variants": variants,
                "trials": trials,
            },
            PhaseRun,
        )
    except msgspec.ValidationError as e:
        raise ValueError(f"malformed PHASE run {run_id!r} of host {host!r} ({domain}): {e}") from e


def phase_trials(
    store: FleetStore,
    study_id: int,
    domain: str,
    variants: Iterable[str] | None = None,
    *,
    runs_per_host: int = DEFAULT_RUNS_PER_HOST,
) -> list[FleetTrial]:
    """Every host's evidence on each variant (all when ``variants`` is None), ready for
    ``fleet_verdicts``: per host and variant, both arms of the newest of the host's last
    ``runs_per_host`` runs that measured it (module docstring). By host, then run, then digest."""
    if runs_per_host < 1:
        raise ValueError(f"runs_per_host must be >= 1, got {runs_per_host}")
    wanted = None if variants is None else sorted(set(variants))
    if wanted == []:
        return []
    keep = None if wanted is None else set(wanted)
    with store.pool.connection() as conn:
        rows = conn.execute(
            _RECENT, {"study": study_id, "domain": domain, "runs": runs_per_host, "wanted": wanted}
        ).fetchall()
    out: list[FleetTrial] = []
    taken: set[tuple[str, str]] = set()  # (host, digest) already answered by a newer run
    for row in rows:  # by host, newest first
        try:
            run = _run_of(row)
        except ValueError as e:  # one host's bad row must not block the fleet's verdict: no evidence
            logger.warning("{}: left out of the fleet verdict", e)
            continue
        for digest in sorted(run.variants):
            if (run.host, digest) in taken or (keep is not None and digest not in keep):
                continue
            taken.add((run.host, digest))
            out.extend(run.trials_of(digest))
    return out


def hosts_sharing(store: FleetStore, study_id: int, domain: str, since: float) -> set[str]:
    """The hosts with a run of the domain finished at or after ``since`` (by each host's clock)."""
    with store.pool.connection() as conn:
        rows = conn.execute(
            "SELECT DISTINCT host FROM phase_runs WHERE study_id = %s AND domain = %s AND finished_at >= %s",
            (study_id, domain, since),
        ).fetchall()
    return {str(r[0]) for r in rows}


def hosts_with_runs(
    store: FleetStore, study_id: int, domain: str, variant: str, since: float | None = None
) -> set[str]:
    """The hosts with a run of the domain that measured ``variant`` (finished at or after ``since``,
    by each host's clock, when given)."""
    with store.pool.connection() as conn:
        rows = conn.execute(
            "SELECT DISTINCT host FROM phase_runs WHERE study_id = %s AND domain = %s AND variants ? %s"
            " AND (%s::double precision IS NULL OR finished_at >= %s)",
            (study_id, domain, variant, since, since),
        ).fetchall()
    return {str(r[0]) for r in rows}


__all__ = [
    "DEFAULT_RUNS_PER_HOST",
    "SLOT_STRIDE",
    "PhaseRun",
    "PhaseTrial",
    "hosts_sharing",
    "hosts_with_runs",
    "phase_run_of",
    "phase_trials",
    "record_phase_run",
]
