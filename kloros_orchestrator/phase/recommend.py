"""PHASE search-space advice: per knob, narrow, widen, drop or keep, from one run's verdicts. Pure.

Per knob, the first rule that applies:

1. choice knob whose non-stock value was used only by flagged variants → ``narrow`` with that
   value removed from ``choices`` (the stock value is never removed);
2. ``drop``: every variant that changed the knob moved no KPI measurably *and* proved it —
   at least ``MIN_PAIRS_DROP`` pairs in every regime over ``MIN_EPOCHS_DROP`` epochs, with each
   score KPI's interval inside ±``DROP_SCORE_MARGIN``/|weight| (±2 % throughput, ±10 % p95,
   ±20 % watts): equivalence shown, not merely "nothing detected";
3. ``keep``: changed, nothing moved measurably, but too little evidence to drop;
4. a variant was promoted: numeric knobs ``narrow`` around the promoted value(s), choice knobs
   ``keep`` it (``value``);
5. no variant beat the baseline: numeric knobs ``widen``;
6. otherwise ``keep``.

A caveat of rule 2: two knobs changed together whose effects cancel look like no effect.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Final

from kloros_orchestrator.measure.scoring import SCORE_TERMS
from kloros_orchestrator.model import Scalar
from kloros_orchestrator.phase.evidence import VariantStats
from kloros_orchestrator.phase.insights import format_value
from kloros_orchestrator.phase.records import DomainData
from kloros_orchestrator.phase.results import Recommendation

MIN_PAIRS_DROP: Final = 6
MIN_EPOCHS_DROP: Final = 2
DROP_SCORE_MARGIN: Final = 0.02  # a knob is droppable when no score term can move by more than 2 %
NARROW_FRACTION: Final = 0.25  # narrow to ± a quarter of the current range around the promoted value
WIDEN_FRACTION: Final = 0.5  # widen by half the current range on each side
_WEIGHTS: Final = dict(SCORE_TERMS)


def _knob_kind(spec: Mapping[str, Any], values: Sequence[Scalar]) -> str:
    kind = spec.get("type")
    if kind in ("int", "float"):
        return str(kind)
    if kind in ("choice", "bool"):
        return "choice"
    if any(isinstance(v, bool | str) for v in values):
        return "choice"
    return "float" if any(isinstance(v, float) for v in values) else "int"


def _is_number(x: Scalar | None) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _bounds(spec: Mapping[str, Any], values: Sequence[Scalar]) -> tuple[float, float]:
    nums = [float(v) for v in values if _is_number(v)]
    low = spec.get("low", min(nums) if nums else 0.0)
    high = spec.get("high", max(nums) if nums else 0.0)
    return float(low), float(high)


def _as_kind(x: float, kind: str, up: bool) -> float | int:
    if kind == "int":
        return math.ceil(x - 1e-9) if up else math.floor(x + 1e-9)
    return float(x)


def _narrow(
    spec: Mapping[str, Any], kind: str, values: Sequence[float], all_values: Sequence[Scalar]
) -> Recommendation:
    low, high = _bounds(spec, all_values)
    vmin, vmax = min(values), max(values)
    log = bool(spec.get("log")) and low > 0.0 and vmin > 0.0
    if log:
        half = NARROW_FRACTION * math.log(high / low) if high > low else 0.0
        new_low, new_high = max(low, vmin * math.exp(-half)), min(high, vmax * math.exp(half))
    else:
        half = NARROW_FRACTION * (high - low)
        new_low, new_high = max(low, vmin - half), min(high, vmax + half)
    new_low, new_high = min(new_low, vmin), max(new_high, vmax)  # values outside the old range stay inside
    return Recommendation(
        action="narrow",
        low=_as_kind(new_low, kind, up=False),
        high=_as_kind(new_high, kind, up=True),
        value=_as_kind(values[0], kind, up=False) if kind == "int" else values[0],
        reason=(
            f"promoted at {', '.join(format_value(v) for v in values)}; search ±{NARROW_FRACTION:.0%} of the "
            f"range [{format_value(low)}, {format_value(high)}] around it"
        ),
    )


def _widen(spec: Mapping[str, Any], kind: str, all_values: Sequence[Scalar], why: str) -> Recommendation:
    low, high = _bounds(spec, all_values)
    if bool(spec.get("log")) and low > 0.0 and high > low:
        factor = (high / low) ** WIDEN_FRACTION
        new_low, new_high = low / factor, high * factor
    else:
        span = high - low if high > low else max(abs(high), 1.0)
        new_low, new_high = low - WIDEN_FRACTION * span, high + WIDEN_FRACTION * span
        if low >= 0.0:
            new_low = max(new_low, 0.0)  # a non-negative knob stays non-negative
    return Recommendation(
        action="widen",
        low=_as_kind(new_low, kind, up=False),
        high=_as_kind(new_high, kind, up=True),
        reason=(
            f"{why}; widen [{format_value(low)}, {format_value(high)}] by {WIDEN_FRACTION:.0%} "
            "of its range each side"
        ),
    )


def _equivalent(v: VariantStats) -> tuple[bool, str]:
    """Whether ``v`` proved that it moved no KPI (see rule 2 in the module docstring)."""
    if v.measurable_effects:
        return False, "a KPI moved"
    if v.epochs < MIN_EPOCHS_DROP:
        return False, f"{v.epochs} epoch(s) < {MIN_EPOCHS_DROP}"
    if not v.effects:
        return False, "no paired trials"
    for e in v.effects:
        if e.pairs < MIN_PAIRS_DROP:
            return False, f"{e.pairs} pairs in {e.regime} < {MIN_PAIRS_DROP}"
        weight = _WEIGHTS.get(e.kpi)
        if weight is not None:
            margin = DROP_SCORE_MARGIN / abs(weight)
            if e.ci[0] < -margin or e.ci[1] > margin:
                return False, f"{e.kpi} interval in {e.regime} wider than ±{margin:.0%}"
    pairs = sum(e.pairs for e in v.effects if e.kpi in _WEIGHTS)
    return True, f"{pairs} paired KPI values over {v.epochs} epochs"


def recommend(data: DomainData, measured: Sequence[VariantStats]) -> dict[str, Recommendation]:
    knobs = list(dict.fromkeys([*data.space, *data.stock, *(k for v in measured for k in v.info.genome)]))
    promoted = sorted((v for v in measured if v.promoted), key=lambda v: -(v.score or 0.0))
    out: dict[str, Recommendation] = {}
    for knob in knobs:
        spec = data.space.get(knob, {})
        stock = data.stock.get(knob)
        seen = (stock, *(v.info.genome.get(knob) for v in measured))
        values: list[Scalar] = [x for x in seen if x is not None]
        kind = _knob_kind(spec, values)
        changed = [v for v in measured if knob in v.info.genome and v.info.genome[knob] != stock]
        out[knob] = _recommend_knob(knob, spec, kind, stock, values, changed, promoted)
    return out


def _recommend_knob(
    knob: str,
    spec: Mapping[str, Any],
    kind: str,
    stock: Scalar | None,
    values: Sequence[Scalar],
    changed: Sequence[VariantStats],
    promoted: Sequence[VariantStats],
) -> Recommendation:
    # Rule 1: remove choices that only flagged variants used.
    if kind == "choice" and changed:
        users: dict[Scalar, list[VariantStats]] = defaultdict(list)
        for v in changed:
            users[v.info.genome[knob]].append(v)
        bad = [c for c, vs in users.items() if all(v.flagged for v in vs)]
        if bad:
            declared = spec.get("choices") or ([False, True] if spec.get("type") == "bool" else None)
            pool: list[Scalar] = list(declared) if declared else list(dict.fromkeys(values))
            remaining = [c for c in pool if c not in bad or c == stock]
            who = "; ".join(
                f"{format_value(c)} by {', '.join(v.info.cand_id for v in users[c])}" for c in bad
            )
            return Recommendation(
                action="narrow",
                choices=remaining,
                reason=f"remove {len(bad)} choice(s) used only by flagged variants ({who})",
            )
    # Rules 2 and 3: changed, nothing moved.
    if changed and not any(v.measurable_effects or v.promoted or v.flagged for v in changed):
        verdicts = [_equivalent(v) for v in changed]
        if all(ok for ok, _ in verdicts):
            return Recommendation(
                action="drop",
                value=stock,
                reason=(
                    f"{len(changed)} variant(s) changed it and no KPI moved; equivalence within "
                    f"±{DROP_SCORE_MARGIN:.0%} of the score shown ({verdicts[0][1]})"
                ),
            )
        why = next(msg for ok, msg in verdicts if not ok)
        return Recommendation(
            action="keep",
            reason=(
                f"{len(changed)} variant(s) changed it and no KPI moved measurably; "
                f"too little evidence to drop ({why})"
            ),
        )
    # Rule 4: a promoted variant.
    if promoted and knob in promoted[0].info.genome:
        best_value = promoted[0].info.genome[knob]
        if kind == "choice":
            reason = f"promoted {promoted[0].info.cand_id} uses {format_value(best_value)}"
            return Recommendation(action="keep", value=best_value, reason=reason)
        nums = [float(x) for v in promoted if isinstance(x := v.info.genome.get(knob), int | float)]
        if nums:
            return _narrow(spec, kind, nums, values)
    # Rule 5: nothing beat the baseline.
    if not promoted and kind != "choice":
        return _widen(spec, kind, values, "no variant beat the stock baseline")
    reason = "not varied in this PHASE" if not changed else "changed, but no rule above applies"
    return Recommendation(action="keep", reason=reason)
