"""PHASE input: the trials of one run and the variants they measured, as the analysis receives them.

The daemon builds these while a PHASE runs and hands them to ``phase.analysis`` at the end. This
module stays free of the statistics stack (numpy statistics, scipy): the process that records
trials imports only these structs.
"""

from __future__ import annotations

from typing import Any

import msgspec

from kloros_orchestrator.model import Genome, TrialResult

__all__ = ["DomainData", "PhaseData", "TrialRecord", "VariantInfo"]


class TrialRecord(msgspec.Struct, frozen=True):
    """One PHASE trial. ``replica`` (from the plan's Slot) pairs it with the baseline trial beside it;
    without it, trials pair by their order within (epoch, regime)."""

    epoch: int
    regime: str
    variant_id: str
    ok: bool
    kpis: dict[str, float] = msgspec.field(default_factory=dict)
    failure: str | None = None
    cap_breach: str | None = None
    replica: int | None = None
    # Each workload stressor's bogo-ops/s (TrialResult.stressor_ops): the score's per-stressor
    # throughput ratio is made of them; empty for a command workload and in older records.
    stressor_ops: dict[str, float] = msgspec.field(default_factory=dict)

    @classmethod
    def from_trial(
        cls, trial: TrialResult, *, epoch: int, variant_id: str, replica: int | None = None
    ) -> TrialRecord:
        return cls(
            epoch=epoch,
            regime=trial.regime,
            variant_id=variant_id,
            ok=trial.ok,
            kpis=dict(trial.kpis),
            failure=trial.failure,
            cap_breach=trial.cap_breach,
            replica=replica,
            stressor_ops=dict(trial.stressor_ops),
        )


class VariantInfo(msgspec.Struct, frozen=True):
    genome: Genome
    spica_id: str
    cand_id: str


class DomainData(msgspec.Struct, frozen=True):
    """One domain's PHASE input. ``space``: the knob form (name → {type, low, high, log, choices});
    knobs missing from it are inferred from their values."""

    stock: Genome
    variants: dict[str, VariantInfo]
    trials: list[TrialRecord]
    space: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)


class PhaseData(msgspec.Struct, frozen=True):
    domains: dict[str, DomainData]
