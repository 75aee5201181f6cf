"""QTIME: PHASE's trial plan, epochs × slices (regimes) × replicas, interleaved so drift cancels. Pure.

Theory of operation. A PHASE run compares each domain's candidates with the stock baseline
measured *in the same run*. Machines drift (thermal state, page cache, noisy neighbours), so the
plan never measures "all of A, then all of B": inside every slice (one domain × one regime of one
epoch) the baseline and the candidates alternate, ``A B C A B C …``, ``replicas`` rounds. Each
epoch re-draws the domain order and the regime order from ``(seed, epoch)`` so that a slow trend
over the window does not always hit the same regime; consecutive epochs never repeat an order when
another order exists. The same seed always yields the same plan.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import msgspec
import numpy as np

from kloros_orchestrator.model import REGIMES, STOCK_ARM

DEFAULT_OVERHEAD_S: Final = 0.5


class QtimeSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """epochs (full passes) × slices (regimes per epoch, in ``REGIMES`` order) × replicas."""

    epochs: int
    slices: int
    replicas: int

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"qtime.epochs must be >= 1, got {self.epochs}")
        if not 1 <= self.slices <= len(REGIMES):
            raise ValueError(f"qtime.slices must be in 1..{len(REGIMES)}, got {self.slices}")
        if self.replicas < 1:
            raise ValueError(f"qtime.replicas must be >= 1, got {self.replicas}")

    @property
    def regimes(self) -> tuple[str, ...]:
        """The regimes this plan uses (the first ``slices`` of ``REGIMES``)."""
        return tuple(REGIMES[: self.slices])

    def as_dict(self) -> dict[str, int]:
        return {"epochs": self.epochs, "slices": self.slices, "replicas": self.replicas}


class Slot(msgspec.Struct, frozen=True):
    """One planned trial. ``epoch`` and ``replica`` count from 0; the stock arm is ``"stock"``."""

    epoch: int
    domain: str
    regime: str
    replica: int
    variant_id: str


def _check_domains(domains: Mapping[str, Sequence[str]]) -> None:
    for domain, variants in domains.items():
        if not variants or variants[0] != STOCK_ARM:
            raise ValueError(f"domain {domain!r}: the variant list must start with {STOCK_ARM!r}")
        if len(set(variants)) != len(variants):
            raise ValueError(f"domain {domain!r}: duplicate variant ids in {list(variants)}")


def _shuffled(
    items: Sequence[str], rng: np.random.Generator, avoid: tuple[str, ...] | None
) -> tuple[str, ...]:
    order = tuple(items[int(i)] for i in rng.permutation(len(items)))
    if avoid is not None and order == avoid and len(items) > 1:
        # Same order as the previous epoch: rotate so a drift trend meets regimes in a new order.
        order = order[1:] + order[:1]
    return order


def build_plan(domains: Mapping[str, Sequence[str]], spec: QtimeSpec, *, seed: int) -> list[Slot]:
    """All slots of a PHASE run, in execution order.

    ``domains``: domain → variant ids, the stock arm (``"stock"``) first. Per epoch the domain
    and regime orders are drawn from a Generator seeded with ``(seed, epoch)``; inside a slice the
    variants alternate ``replicas`` times, each replica in an order drawn from the same Generator (no
    arm always first). Length: ``epochs·slices·replicas·Σ len(variants)``.
    """
    _check_domains(domains)
    names = list(domains)
    regimes = spec.regimes
    plan: list[Slot] = []
    prev_domains: tuple[str, ...] | None = None
    prev_regimes: tuple[str, ...] | None = None
    for epoch in range(spec.epochs):
        rng = np.random.default_rng([seed, epoch])
        domain_order = _shuffled(names, rng, prev_domains)
        regime_order = _shuffled(regimes, rng, prev_regimes)
        prev_domains, prev_regimes = domain_order, regime_order
        for domain in domain_order:
            variants = domains[domain]
            for regime in regime_order:
                for replica in range(spec.replicas):
                    # Which arm runs first in a replica is drawn too: the stock arm always first
                    # would give every variant the same position (a bias by construction).
                    order = [variants[int(i)] for i in rng.permutation(len(variants))]
                    plan.extend(
                        Slot(epoch=epoch, domain=domain, regime=regime, replica=replica, variant_id=v)
                        for v in order
                    )
    return plan


def estimate_s(
    plan: Sequence[Slot],
    trial_s: float | Callable[[Slot], float],
    overhead_s: float = DEFAULT_OVERHEAD_S,
) -> float:
    """Wall-time estimate: each slot costs its trial duration plus ``overhead_s`` (apply/restore, spawn).

    ``trial_s`` is one duration for every trial, or a function of the slot (per-regime durations).
    """
    if callable(trial_s):
        return float(sum(trial_s(slot) + overhead_s for slot in plan))
    return float(len(plan) * (trial_s + overhead_s))


def fit_plan(
    domains: Mapping[str, Sequence[str]],
    spec: QtimeSpec,
    *,
    seed: int,
    trial_s: float | Callable[[Slot], float],
    available_s: float,
    min_replicas: int = 1,
    overhead_s: float = DEFAULT_OVERHEAD_S,
) -> tuple[list[Slot], QtimeSpec, dict[str, Any] | None]:
    """The largest plan (fewest replicas removed) that fits ``available_s``.

    Only replicas shrink, never below ``min_replicas`` (nor above the requested count). Returns
    ``(plan, effective spec, shrink)``; ``shrink`` is None when the requested plan fits, else
    ``{"from": qtime, "to": qtime, "reason": "...", "fits": bool}``. When even the minimum does not
    fit, the minimum plan is returned with ``fits: false``: the runner stops at the window's end.
    """
    if min_replicas < 1:
        raise ValueError(f"min_replicas must be >= 1, got {min_replicas}")
    plan = build_plan(domains, spec, seed=seed)
    requested_s = estimate_s(plan, trial_s, overhead_s)
    if requested_s <= available_s:
        return plan, spec, None
    floor = min(min_replicas, spec.replicas)
    for replicas in range(spec.replicas - 1, floor - 1, -1):
        candidate = msgspec.structs.replace(spec, replicas=replicas)
        cand_plan = build_plan(domains, candidate, seed=seed)
        cand_s = estimate_s(cand_plan, trial_s, overhead_s)
        if cand_s <= available_s:
            reason = (
                f"estimated {requested_s:.0f} s > {available_s:.0f} s available; "
                f"{replicas} replicas need {cand_s:.0f} s"
            )
            return cand_plan, candidate, _shrink(spec, candidate, reason, fits=True)
    effective = msgspec.structs.replace(spec, replicas=floor)
    min_plan = build_plan(domains, effective, seed=seed)
    min_s = estimate_s(min_plan, trial_s, overhead_s)
    reason = (
        f"estimated {requested_s:.0f} s > {available_s:.0f} s available; even {floor} replicas need "
        f"{min_s:.0f} s, the run will stop at the window end"
    )
    return min_plan, effective, _shrink(spec, effective, reason, fits=False)


def _shrink(old: QtimeSpec, new: QtimeSpec, reason: str, *, fits: bool) -> dict[str, Any]:
    return {"from": old.as_dict(), "to": new.as_dict(), "reason": reason, "fits": fits}
