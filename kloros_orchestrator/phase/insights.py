"""PHASE text: promotion and flag reasons and the per-domain insights, each carrying its numbers."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from kloros_orchestrator.model import Scalar
from kloros_orchestrator.phase.evidence import Interval, KpiEffect, VariantStats, usable
from kloros_orchestrator.phase.records import DomainData, TrialRecord, VariantInfo


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def _ci_text(ci: Interval, level: float) -> str:
    return f"[{level * 100:g}% CI {_pct(ci[0])}, {_pct(ci[1])}]"


def format_value(value: Scalar | None) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return "(unset)" if value is None else str(value)


def _diff(genome: Mapping[str, Scalar], stock: Mapping[str, Scalar]) -> dict[str, Scalar]:
    return {k: v for k, v in genome.items() if k not in stock or stock[k] != v}


def _describe(info: VariantInfo, stock: Mapping[str, Scalar]) -> str:
    diff = _diff(info.genome, stock)
    if not diff:
        return f"{info.cand_id} (same knob values as stock)"
    return ", ".join(f"{k}={format_value(v)} (stock {format_value(stock.get(k))})" for k, v in diff.items())


def _score_text(v: VariantStats, level: float) -> str:
    if v.score is None:
        return "score not computable (no throughput on both sides)"
    ci = f" {_ci_text(v.ci, level)}" if v.ci is not None else ""
    return f"score_v2 {_pct(v.score)}{ci}"


def _epoch_text(v: VariantStats) -> str:
    values = ", ".join("n/a" if s is None else _pct(s) for _, s in sorted(v.epoch_scores.items()))
    return f"{len(v.epoch_scores)} epoch(s) ({values})"


def promotion_reason(v: VariantStats, level: float) -> str:
    return (
        f"{_score_text(v, level)} over the stock baseline re-measured in this PHASE; "
        f"positive in each of {_epoch_text(v)}; safe in {v.trials} trials"
    )


def flag_reasons(v: VariantStats, level: float) -> list[str]:
    reasons = list(dict.fromkeys(v.breaches))
    if 2 * v.failed > v.trials:
        first = f": {v.failures[0]}" if v.failures else ""
        reasons.append(f"{v.failed} of {v.trials} trials failed{first}")
    if v.significantly_worse:
        reasons.append(f"{_score_text(v, level)}: significantly worse than the stock baseline")
        worst = sorted(v.measurable_effects, key=lambda e: abs(e.delta), reverse=True)[:3]
        reasons.extend(
            f"{e.kpi} {_pct(e.delta)} {_ci_text(e.ci, level)} in the {e.regime} regime" for e in worst
        )
    return reasons


def domain_insights(
    domain: str,
    data: DomainData,
    base_trials: Sequence[TrialRecord],
    variants: Sequence[VariantStats],
    best: VariantStats | None,
    level: float,
) -> list[str]:
    out: list[str] = []
    n_base_ok = sum(1 for t in base_trials if usable(t))
    n_trials = len(data.trials)
    n_failed = sum(1 for t in data.trials if not t.ok)
    if n_base_ok == 0:
        out.append(
            f"{domain}: the stock baseline has no successful trial ({len(base_trials)} run); "
            f"no variant could be compared"
        )
    base_breaches = [t for t in base_trials if t.cap_breach is not None]
    if base_breaches:
        out.append(
            f"{domain}: the stock configuration itself breached caps in {len(base_breaches)} of "
            f"{len(base_trials)} trials ({base_breaches[0].cap_breach})"
        )
    if n_failed:
        first = next((t.failure for t in data.trials if not t.ok and t.failure), None)
        detail = f", e.g. {first}" if first else ""
        out.append(f"{domain}: {n_failed} of {n_trials} trials failed{detail}")
    measured = [v for v in variants if v.trials > 0]
    if not data.variants:
        regimes = len({t.regime for t in base_trials})
        out.append(
            f"{domain}: only the stock configuration was measured ({len(base_trials)} trials in "
            f"{regimes} regime(s)); no variant to compare"
        )
    for v in variants:
        if v.trials == 0:
            out.append(f"{domain}: {v.info.cand_id} was planned but ran 0 trials")
    any_effect = False
    for v in measured:
        desc = _describe(v.info, data.stock)
        by_regime: dict[str, list[KpiEffect]] = defaultdict(list)
        for e in v.measurable_effects:
            by_regime[e.regime].append(e)
        for regime, effects in by_regime.items():
            any_effect = True
            changes = " and ".join(f"{e.kpi} by {_pct(e.delta)} {_ci_text(e.ci, level)}" for e in effects)
            out.append(f"{domain}: {desc} changed {changes} in the {regime} regime")
        if v.breaches:
            out.append(
                f"{domain}: {desc} is unsafe: {len(v.breaches)} cap breach(es) in {v.trials} trials "
                f"({v.breaches[0]})"
            )
        if v.promoted:
            any_effect = True
            out.append(f"{domain}: {desc} beat the stock baseline: {promotion_reason(v, level)}")
        elif v.significantly_worse:
            any_effect = True
            out.append(f"{domain}: {desc} was worse than the stock baseline: {_score_text(v, level)}")
    if measured and not any_effect:
        if best is not None and best.ci is not None and best.score is not None:
            detail = f"best score {_pct(best.score)} [{_pct(best.ci[0])}, {_pct(best.ci[1])}]"
        else:
            scored = sum(1 for v in measured if v.score is not None)
            detail = f"{scored} of {len(measured)} variants could be scored"
        out.append(f"{domain}: no variant differed measurably from the stock configuration ({detail})")
    if not out:  # every path above carries numbers; this keeps "at least one insight" unconditional
        out.append(f"{domain}: {n_trials} trials ran, {n_failed} failed")
    return out
