"""From trials to a ``candidate_pack.v2`` and a ``baselines.v2`` entry (pure: no I/O).

Every number in a pack is computed from the trials handed in: per-regime KPI values, the stock
baseline's mean measured in the same tournament (interleaved, so drift does not favour a side),
deltas against it, bootstrap 95% CIs, and the DESIGN.md score. A KPI with no measured value is
listed in ``missing_kpis`` and appears nowhere else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np

from kloros_orchestrator.errors import SchemaError
from kloros_orchestrator.measure.scoring import score_regime, score_v2
from kloros_orchestrator.measure.stats import bootstrap_mean_ci, score_ci
from kloros_orchestrator.model import REGIMES, TrialResult

Trials = Mapping[str, Sequence[TrialResult]]  # regime -> trials of one arm


def kpi_values(trials: Iterable[TrialResult]) -> dict[str, list[float]]:
    """KPI -> values over the successful trials (failed trials contribute nothing, never zeros)."""
    out: dict[str, list[float]] = {}
    for t in trials:
        if not t.ok:
            continue
        for k, v in t.kpis.items():
            out.setdefault(k, []).append(float(v))
    return out


def kpi_means(trials: Iterable[TrialResult]) -> dict[str, float]:
    return {k: float(np.mean(v)) for k, v in kpi_values(trials).items() if v}


def successful(trials: Iterable[TrialResult]) -> int:
    return sum(1 for t in trials if t.ok)


def scoring_shortfall(arm: Trials, stock: Trials, min_trials: int) -> str | None:
    """Why this arm cannot be scored (too few successful trials somewhere), or None."""
    for regime in REGIMES:
        if regime not in arm:
            continue
        n, nb = successful(arm[regime]), successful(stock.get(regime, ()))
        if n < min_trials:
            return f"{regime}: {n} successful trial(s) < minimum {min_trials}"
        if nb < min_trials:
            return f"{regime}: stock baseline has {nb} successful trial(s) < minimum {min_trials}"
    return None


def arm_score(arm: Trials, stock: Trials) -> float | None:
    """score_v2 of an arm against the stock arm: per-regime score on the means, mean over regimes."""
    per_regime: list[float | None] = []
    for regime, trials in arm.items():
        per_regime.append(score_regime(kpi_means(trials), kpi_means(stock.get(regime, ()))))
    return score_v2(per_regime)


def arm_score_ci(arm: Trials, stock: Trials, *, rng: np.random.Generator, n_boot: int) -> tuple[float, float]:
    cand = {r: {k: np.asarray(v) for k, v in kpi_values(t).items()} for r, t in arm.items()}
    base = {r: {k: np.asarray(v) for k, v in kpi_values(stock.get(r, ())).items()} for r in arm}
    lo, hi = score_ci(cand, base, rng=rng, n_boot=n_boot)
    return float(lo), float(hi)


def round_score(arm_round: Mapping[str, TrialResult], stock_round: Mapping[str, TrialResult]) -> float | None:
    """One paired score sample: this round's trial of each regime against the stock arm's same round."""
    per_regime: list[float | None] = []
    for regime, t in arm_round.items():
        b = stock_round.get(regime)
        if not t.ok or b is None or not b.ok:
            return None
        per_regime.append(score_regime(t.kpis, b.kpis))
    return score_v2(per_regime)


def build_pack(
    *,
    run_id: str,
    domain: str,
    cand_id: str,
    generation: int,
    spica_id: str,
    genome: Mapping[str, Any],
    arm: Trials,
    stock: Trials,
    baseline_ids: Mapping[str, str],
    expected_kpis: Iterable[str],
    missing_reasons: Mapping[str, str],
    unsafe_reasons: Sequence[str],
    min_trials: int,
    code_hash: str,
    rng: np.random.Generator,
    n_boot: int,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    regimes: list[dict[str, Any]] = []
    all_values: dict[str, dict[str, list[float]]] = {}
    for regime in REGIMES:
        if regime not in arm:
            continue
        trials = arm[regime]
        values = kpi_values(trials)
        base = kpi_means(stock.get(regime, ()))
        entry: dict[str, Any] = {
            "regime": regime,
            "trials": successful(trials),
            "attempted": len(trials),
            "failures": [t.failure for t in trials if not t.ok and t.failure],
            "kpis": values,
            "baseline": {**base, "baseline_id": baseline_ids.get(regime, "")},
            "delta": {k: [v - base[k] for v in vals] for k, vals in values.items() if k in base},
            # One value has no interval: a KPI measured once gets no ci95 entry rather than [x, x].
            "ci95": {
                k: list(bootstrap_mean_ci(np.asarray(v), rng=rng, n_boot=n_boot))
                for k, v in values.items()
                if len(v) >= 2
            },
        }
        regimes.append(entry)
        for k, v in values.items():
            all_values.setdefault(k, {})[regime] = v
    means: dict[str, dict[str, float]] = {}
    for k, per_regime in all_values.items():
        m = {r: float(np.mean(v)) for r, v in per_regime.items()}
        m["overall"] = float(np.mean(list(m.values())))
        means[k] = m
    shortfall = scoring_shortfall(arm, stock, min_trials)
    score: float | None = None
    ci: list[float] | None = None
    ci_note: str | None = None
    if shortfall is None:
        score = arm_score(arm, stock)
        if score is None:
            shortfall = "no regime could be scored (throughput absent)"
        elif min(min(successful(arm[r]), successful(stock.get(r, ()))) for r in arm) < 2:
            ci_note = "fewer than 2 successful trials in a regime: no interval, so no claim of improvement"
        else:
            lo, hi = arm_score_ci(arm, stock, rng=rng, n_boot=n_boot)
            # A percentile CI of a ratio need not contain the plug-in estimate; widen to contain it.
            ci = [min(lo, score), max(hi, score)]
    measured = set(all_values)
    missing = sorted(set(expected_kpis) - measured)
    pack: dict[str, Any] = {
        "schema": "candidate_pack.v2",
        "run_id": run_id,
        "domain": domain,
        "cand_id": cand_id,
        "generation": generation,
        "spica_id": spica_id,
        "genome": dict(genome),
        "regimes": regimes,
        "aggregate": {
            "means": means,
            "score_v2": score,
            "score_ci95": ci,
            "improves_over_baseline": bool(ci is not None and ci[0] > 0),
            "score_ci_note": ci_note,
            "scored": score is not None,
            "not_scored_reason": shortfall,
        },
        "safe": not unsafe_reasons,
        "unsafe_reasons": list(unsafe_reasons),
        "missing_kpis": missing,
        "missing_reasons": {k: missing_reasons.get(k, "not measured in any trial") for k in missing},
        "code_hash": code_hash,
    }
    if extra:
        pack.update(extra)
    return pack


def baseline_entry(
    trials: Sequence[TrialResult],
    *,
    baseline_id: str,
    code_hash: str,
    measured_at: str,
    rng: np.random.Generator,
    n_boot: int,
) -> dict[str, Any]:
    """One ``baselines.v2`` regime entry from the stock arm's trials."""
    values = kpi_values(trials)
    return {
        "kpis": {k: float(np.mean(v)) for k, v in values.items()},
        "ci95": {
            k: list(bootstrap_mean_ci(np.asarray(v), rng=rng, n_boot=n_boot))
            for k, v in values.items()
            if len(v) >= 2
        },
        "trials": successful(trials),
        "baseline_id": baseline_id,
        "code_hash": code_hash,
        "measured_at": measured_at,
    }


# --- reading packs back ------------------------------------------------------------------------------


class PackRegime(msgspec.Struct, frozen=True):
    regime: str
    trials: int
    kpis: dict[str, list[float]]
    baseline: dict[str, float | str]
    delta: dict[str, list[float]]
    ci95: dict[str, tuple[float, float]]


class PackAggregate(msgspec.Struct, frozen=True):
    means: dict[str, dict[str, float]]
    score_v2: float | None
    score_ci95: tuple[float, float] | None
    improves_over_baseline: bool


class CandidatePack(msgspec.Struct, frozen=True):
    """The contract fields of ``candidate_pack.v2`` (extra keys are allowed: the format is additive)."""

    schema: Literal["candidate_pack.v2"]
    run_id: str
    domain: str
    cand_id: str
    generation: int
    spica_id: str
    genome: dict[str, str | int | float | bool]
    regimes: list[PackRegime]
    aggregate: PackAggregate
    safe: bool
    unsafe_reasons: list[str]
    missing_kpis: list[str]
    code_hash: str


_AT = re.compile(r"^(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")


def load_pack(path: Path) -> CandidatePack:
    """Read and validate a pack; a corrupted or schema-violating file raises SchemaError(file, field)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise SchemaError(str(path), "<document>", f"unreadable: {e.strerror or e}") from e
    try:
        pack = msgspec.json.decode(raw, type=CandidatePack)
    except msgspec.ValidationError as e:
        m = _AT.match(str(e))
        problem = m.group("problem") if m else str(e)
        field = (m.group("path") or "").lstrip(".") if m else ""
        missing = _MISSING.match(problem)
        if missing:
            field = f"{field}.{missing.group('field')}" if field else missing.group("field")
        raise SchemaError(str(path), field or "<document>", problem) from e
    except msgspec.DecodeError as e:
        raise SchemaError(str(path), "<document>", f"not valid JSON: {e}") from e
    for i, reg in enumerate(pack.regimes):
        for kpi, (lo, hi) in reg.ci95.items():
            if not lo <= hi:
                raise SchemaError(str(path), f"regimes[{i}].ci95.{kpi}", f"lower bound {lo} above upper {hi}")
    return pack
