"""Adaptive D-REAM pacing: how long to rest between cycles, decided from measurements.

Duty-cycle model: the rest is a fraction (``DUTY_FRACTION``) of the rolling mean tournament
duration, so longer tournaments earn proportionally longer rests. Two factors scale it:

* improvement: a search that still gains fast rests less; one that has converged (gain small or
  negative) rests more, since extra cycles buy little. Neutral at ``REFERENCE_IMPROVEMENT``.
* host load outside our own workloads: a busy host makes us back off, an idle one lets us run more.
  Neutral at ``NEUTRAL_BUSY``.

Each factor lies in ``[1/MAX_FACTOR, MAX_FACTOR]``; an unknown input (None) is neutral (1.0). The
result is clamped to ``[min_sleep_s, max_sleep_s]`` and never exceeds the time to the next PHASE
window. If the next tournament (estimated from the same rolling mean) cannot finish before the
window even after the shortest rest, D-REAM defers: it starts nothing and sleeps until the window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final

ROLLING_WINDOW: Final = 5  # tournaments in the rolling mean
DUTY_FRACTION: Final = 0.25  # rest = 25% of a tournament's duration: an 80% duty cycle at neutral
REFERENCE_IMPROVEMENT: Final = 0.01  # 1% relative score gain per cycle is neutral
NEUTRAL_BUSY: Final = 0.5
MAX_FACTOR: Final = 4.0


def _finite(value: float) -> bool:
    return math.isfinite(value)


@dataclass(frozen=True, slots=True)
class PacingInputs:
    """Everything pacing depends on; ``None`` means unknown (and counts as neutral)."""

    recent_durations_s: tuple[float, ...]  # newest last
    improvement_rate: float | None  # relative score gain per cycle over the last few cycles
    host_busy: float | None  # 0..1 utilisation of the host outside our own workloads
    time_to_window_s: float | None  # until the next PHASE window opens; <= 0 means it is due
    min_sleep_s: float
    max_sleep_s: float
    margin_s: float = 0.0  # slack a tournament must leave before the window

    def __post_init__(self) -> None:
        if not (_finite(self.min_sleep_s) and _finite(self.max_sleep_s) and self.min_sleep_s >= 0):
            raise ValueError(f"min_sleep_s/max_sleep_s must be finite and >= 0, got {self.min_sleep_s}")
        if self.max_sleep_s < self.min_sleep_s:
            raise ValueError(f"max_sleep_s {self.max_sleep_s} is below min_sleep_s {self.min_sleep_s}")
        if any(not (_finite(d) and d >= 0) for d in self.recent_durations_s):
            raise ValueError(f"tournament durations must be finite and >= 0, got {self.recent_durations_s}")
        if self.improvement_rate is not None and not _finite(self.improvement_rate):
            raise ValueError(f"improvement_rate must be finite, got {self.improvement_rate}")
        if self.host_busy is not None and not (0.0 <= self.host_busy <= 1.0):
            raise ValueError(f"host_busy must be within [0, 1], got {self.host_busy}")
        if self.time_to_window_s is not None and not _finite(self.time_to_window_s):
            raise ValueError(f"time_to_window_s must be finite, got {self.time_to_window_s}")
        if not (_finite(self.margin_s) and self.margin_s >= 0):
            raise ValueError(f"margin_s must be finite and >= 0, got {self.margin_s}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for events.jsonl."""
        return {
            "recent_durations_s": list(self.recent_durations_s),
            "improvement_rate": self.improvement_rate,
            "host_busy": self.host_busy,
            "time_to_window_s": self.time_to_window_s,
            "min_sleep_s": self.min_sleep_s,
            "max_sleep_s": self.max_sleep_s,
            "margin_s": self.margin_s,
        }


@dataclass(frozen=True, slots=True)
class PacingDecision:
    sleep_s: float
    reason: str
    defer_to_window: bool
    estimate_s: float | None
    inputs: dict[str, Any] = field(default_factory=dict)


def estimate_tournament_s(recent_durations: tuple[float, ...] | list[float]) -> float | None:
    """Rolling mean of the last ``ROLLING_WINDOW`` tournament durations; None without history."""
    recent = list(recent_durations)[-ROLLING_WINDOW:]
    if not recent:
        return None
    return sum(recent) / len(recent)


def should_start(estimate_s: float | None, time_to_window_s: float | None, margin_s: float = 0.0) -> bool:
    """Whether a tournament of ``estimate_s`` (unknown: counted as 0) ends ``margin_s`` before the window."""
    if time_to_window_s is None:
        return True
    return (estimate_s or 0.0) + margin_s <= time_to_window_s


def _improvement_factor(rate: float | None) -> tuple[float, str]:
    if rate is None:
        return 1.0, "improvement unknown ×1.00"
    if rate <= 0:
        return MAX_FACTOR, f"converged (gain {rate:.4f}/cycle) ×{MAX_FACTOR:.2f}"
    factor = min(MAX_FACTOR, max(1.0 / MAX_FACTOR, REFERENCE_IMPROVEMENT / rate))
    label = "improving" if rate >= REFERENCE_IMPROVEMENT else "converging"
    return factor, f"{label} (gain {rate:.4f}/cycle) ×{factor:.2f}"


def _busy_factor(busy: float | None) -> tuple[float, str]:
    if busy is None:
        return 1.0, "host load unknown ×1.00"
    # Exponential in load so that idle and saturated are symmetric around NEUTRAL_BUSY.
    factor = MAX_FACTOR ** ((busy - NEUTRAL_BUSY) / NEUTRAL_BUSY)
    label = "busy host" if busy > NEUTRAL_BUSY else "idle host"
    return factor, f"{label} (load {busy:.2f}) ×{factor:.2f}"


def decide(inputs: PacingInputs) -> PacingDecision:
    """Rest before the next D-REAM cycle, with the reason in numbers."""
    estimate = estimate_tournament_s(inputs.recent_durations_s)
    if estimate is None:
        base, parts = inputs.min_sleep_s, [f"no tournament history: base {inputs.min_sleep_s:.1f}s"]
    else:
        base = DUTY_FRACTION * estimate
        parts = [f"{DUTY_FRACTION:.2f} × mean tournament {estimate:.1f}s = {base:.1f}s"]
    f_improve, why_improve = _improvement_factor(inputs.improvement_rate)
    f_busy, why_busy = _busy_factor(inputs.host_busy)
    parts += [why_improve, why_busy]
    raw = base * f_improve * f_busy
    sleep = min(inputs.max_sleep_s, max(inputs.min_sleep_s, raw))
    parts.append(f"→ {raw:.1f}s")
    if sleep != raw:
        bound = "max" if sleep == inputs.max_sleep_s else "min"
        parts.append(f"clamped to {bound} {sleep:.1f}s")

    # Invariant from here on: sleep <= time to window (a fitting tournament implies it).
    defer = False
    ttw = inputs.time_to_window_s
    if ttw is not None:
        ttw = max(ttw, 0.0)
        if not should_start(estimate, ttw - sleep, inputs.margin_s):
            slack = ttw - (estimate or 0.0) - inputs.margin_s
            # Re-checked with should_start so rounding in ``slack`` cannot admit a misfit.
            if slack >= inputs.min_sleep_s and should_start(estimate, ttw - slack, inputs.margin_s):
                sleep = slack
                parts.append(
                    f"shortened to {sleep:.1f}s so one tournament ends before the window"
                    f" in {ttw:.1f}s"
                )
            else:
                defer, sleep = True, ttw
                est = "unknown" if estimate is None else f"~{estimate:.1f}s"
                parts.append(
                    f"defer: next tournament ({est} + margin {inputs.margin_s:.1f}s) cannot finish "
                    f"before the window in {ttw:.1f}s; sleep until it"
                )

    return PacingDecision(
        sleep_s=sleep,
        reason="; ".join(parts),
        defer_to_window=defer,
        estimate_s=estimate,
        inputs=inputs.as_dict(),
    )
