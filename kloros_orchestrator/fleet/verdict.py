"""Hosts as blocks: a fleet's verdict on each candidate from the trial rows of many hosts. Pure.

Theory of operation. Hosts of one study are identical by key but not in measurement: one runs a
few per cent faster, another sits beside a noisier neighbour. Each host therefore measures a
candidate against *its own* current configuration, interleaved with it in the same work unit (the
``stock`` arm of the unit, ``fleet.records``), and every comparison below stays inside a host:

1. **Per host** (``host_effect``): the pairs are a unit's candidate and stock trials of the same
   round and regime, both successful and not contaminated. The host's score is ``score_v2`` of
   the candidate's KPI means against the stock arm's over these pairs, per-stressor throughput
   where both sides have it (``measure.scoring.score_candidate``: the single host's formula), and
   its interval is the paired bootstrap over the pairs (``measure.stats.paired_score_ci``), at
   ``level``, as PHASE computes a variant's. A score is a ratio, so a host that is 30 % faster in
   absolute terms yields the same score for the same relative change: host offsets cancel.
2. **Across hosts** (``fleet_verdicts``): the host is the blocking factor and each host gives one
   number, its score. The fleet effect is their plain mean (hosts weighted equally, however many
   rounds each measured) with a t interval at ``level``; between-host variation is part of its
   error, as in a random-effects model, so a candidate that helps one host a lot and hurts the
   others is not "positive across hosts". The test that the effect is positive:

   * the one-sided **Wilcoxon signed-rank** test of the per-host scores (exact, ``signedrank``)
     when there are at least ``WILCOXON_MIN_HOSTS`` scored hosts *and* the test can reach the
     corrected level at all (its smallest p-value, ``2^-n``, is at most ``alpha``): it needs no
     normality and one extreme host moves it by one rank only;
   * otherwise the one-sided **t-test** of the per-host scores against 0 (df = hosts − 1): with
     3 hosts the signed-rank test cannot go below 1/8, the t-test can;
   * fewer than ``MIN_HOSTS`` scored hosts: no test, no fleet promotion.

   Multiplicity: Bonferroni over the k candidates tested (those with at least ``MIN_HOSTS``
   scored hosts), ``alpha = (1 − level) / k``, the correction a generation's best gets for the
   candidates it was chosen from (``measure.packs.corrected_for_selection``).
3. **Promoted fleet-wide** when the test passes (``p ≤ alpha``, fleet effect > 0) **and** no host
   is significantly worse — a host's own interval (``level``, two-sided, *not* corrected over
   hosts: a guard errs towards blocking) lies entirely below 0 — **and** the candidate is safe on
   every host (no cap breach, failed trials not a majority, as PHASE's ``safe``).
4. **Adoption** is per host (``host_adopts``): a host adopts a promoted candidate unless its own
   interval lies below 0 or the candidate was unsafe there. A host of the study that never
   measured the candidate adopts it on the fleet's evidence: that is what sharing a study is for.

Randomness: one Generator per (seed, candidate, host), so adding a host or a candidate does not
change the others' intervals. No scipy (the daemon never loads it; ``measure.distributions``).
"""

from __future__ import annotations

import math
import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from kloros_orchestrator.fleet.records import Arm
from kloros_orchestrator.fleet.signedrank import wilcoxon_greater
from kloros_orchestrator.measure.arms import stressor_values
from kloros_orchestrator.measure.distributions import t_ppf, t_sf
from kloros_orchestrator.measure.scoring import score_candidate, score_terms
from kloros_orchestrator.measure.stats import DEFAULT_LEVEL, DEFAULT_N_BOOT, paired_score_ci

FloatArray = npt.NDArray[np.float64]
Interval = tuple[float, float]
Test = Literal["wilcoxon", "t"]

MIN_HOSTS: Final = 2  # scored hosts a candidate needs before any fleet test
WILCOXON_MIN_HOSTS: Final = 6  # below, the signed-rank test's coarse p-values cannot carry a verdict


class FleetTrial(msgspec.Struct, frozen=True, kw_only=True):
    """One trial row of the fleet store, as far as the verdict needs it. ``round`` pairs a candidate
    trial with the stock trial of the same unit and regime (a PHASE window: its slot number)."""

    host: str
    cand_id: str
    round: int
    regime: str
    arm: Arm
    ok: bool
    kpis: dict[str, float] = msgspec.field(default_factory=dict)
    stressor_ops: dict[str, float] = msgspec.field(default_factory=dict)
    cap_breach: str | None = None
    contaminated: bool = False

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> FleetTrial:
        """From a row of ``FleetStore.trial_rows`` (``result`` is the whole ``TrialResult``)."""
        result: Mapping[str, Any] = row.get("result") or {}
        arm = row["arm"]
        if arm not in ("candidate", "stock"):
            raise ValueError(f"trial row of {row.get('cand_id')!r}: unknown arm {arm!r}")
        return cls(
            host=str(row["host"]),
            cand_id=str(row["cand_id"]),
            round=int(row["round"]),
            regime=str(row["regime"]),
            arm=arm,
            ok=bool(row["ok"]),
            kpis={str(k): float(v) for k, v in (row.get("kpis") or {}).items()},
            stressor_ops={str(k): float(v) for k, v in (result.get("stressor_ops") or {}).items()},
            cap_breach=result.get("cap_breach"),
            contaminated=bool(result.get("contaminated", False)),
        )


class HostEffect(msgspec.Struct, frozen=True, kw_only=True):
    """One host's evidence on one candidate, against its own current configuration."""

    host: str
    rounds: int  # rounds of the candidate this host measured (contaminated ones left out)
    pairs: int  # (candidate, stock) pairs of successful trials, over rounds and regimes
    trials: int  # candidate-arm trials
    failed: int
    breaches: int  # candidate-arm trials that breached a cap
    score: float | None  # None: nothing scorable (no pair with throughput on both sides)
    ci: Interval | None  # None: some scored regime has fewer than two pairs

    @property
    def safe(self) -> bool:
        return self.breaches == 0 and 2 * self.failed <= self.trials

    @property
    def significantly_worse(self) -> bool:
        return self.ci is not None and self.ci[1] < 0.0


class FleetVerdict(msgspec.Struct, frozen=True, kw_only=True):
    """A candidate's fleet verdict (see the module docstring for every rule)."""

    cand_id: str
    hosts: tuple[HostEffect, ...]  # every host that measured it, by name
    effect: float | None  # mean of the scored hosts' scores
    ci: Interval | None  # t interval of that mean at ``level``
    test: Test | None
    p_value: float | None  # one-sided, "the effect is positive across hosts"
    alpha: float  # (1 − level) / tested
    tested: int  # candidates the Bonferroni correction counts
    level: float
    promoted: bool
    reason: str

    @property
    def scored_hosts(self) -> tuple[HostEffect, ...]:
        return tuple(h for h in self.hosts if h.score is not None)


class Adoption(msgspec.Struct, frozen=True, kw_only=True):
    host: str
    cand_id: str
    adopt: bool
    reason: str


# --- per host ------------------------------------------------------------------------------------


def _rng(seed: int, cand_id: str, host: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(cand_id.encode()), zlib.crc32(host.encode())])


def _pairs(trials: Sequence[FleetTrial]) -> dict[str, list[tuple[FleetTrial, FleetTrial]]]:
    """Regime → (candidate, stock) trials of the same round, both successful."""
    stock: dict[tuple[int, str], FleetTrial] = {}
    cand: list[FleetTrial] = []
    for t in trials:
        if t.arm == "stock":
            stock[(t.round, t.regime)] = t
        else:
            cand.append(t)
    out: dict[str, list[tuple[FleetTrial, FleetTrial]]] = defaultdict(list)
    for c in sorted(cand, key=lambda t: (t.regime, t.round)):
        s = stock.get((c.round, c.regime))
        if c.ok and s is not None and s.ok:
            out[c.regime].append((c, s))
    return dict(out)


Columns = tuple[dict[str, FloatArray], dict[str, FloatArray], dict[str, FloatArray], dict[str, FloatArray]]


def _columns(pairs: Sequence[tuple[FleetTrial, FleetTrial]]) -> Columns:
    """One regime's pairs as arrays, one value per pair: the KPIs finite in every pair on both sides,
    and each side's stressor rates where ``measure.arms.stressor_values`` accepts them."""
    kpis = set.intersection(*(set(c.kpis) & set(s.kpis) for c, s in pairs))
    cand: dict[str, FloatArray] = {}
    base: dict[str, FloatArray] = {}
    for kpi in sorted(kpis):
        values = np.asarray([(c.kpis[kpi], s.kpis[kpi]) for c, s in pairs], dtype=np.float64)
        if np.all(np.isfinite(values)):
            cand[kpi], base[kpi] = values[:, 0], values[:, 1]
    rates = stressor_values([c for c, _ in pairs]), stressor_values([s for _, s in pairs])
    cand_s, base_s = ({k: np.asarray(v, dtype=np.float64) for k, v in (r or {}).items()} for r in rates)
    return cand, base, cand_s, base_s


def _means(arrays: Mapping[str, Mapping[str, FloatArray]]) -> dict[str, dict[str, float]]:
    return {r: {k: float(a.mean()) for k, a in cols.items()} for r, cols in arrays.items()}


def host_effect(
    host: str,
    trials: Sequence[FleetTrial],
    *,
    rng: np.random.Generator,
    n_boot: int = DEFAULT_N_BOOT,
    level: float = DEFAULT_LEVEL,
) -> HostEffect:
    """One host's score for one candidate (``trials``: both arms of its units) and its interval."""
    counted = [t for t in trials if not t.contaminated]
    cand = [t for t in counted if t.arm == "candidate"]
    pairs = _pairs(counted)
    columns = {r: _columns(p) for r, p in pairs.items()}
    cand_means = _means({r: c[0] for r, c in columns.items()})
    base_means = _means({r: c[1] for r, c in columns.items()})
    score = score_candidate(
        cand_means,
        base_means,
        cand_stressors=_means({r: c[2] for r, c in columns.items()}),
        base_stressors=_means({r: c[3] for r, c in columns.items()}),
    )
    ci: Interval | None = None
    scored = [r for r in cand_means if score_terms(cand_means[r], base_means[r]) is not None]
    if score is not None and all(len(pairs[r]) >= 2 for r in scored):
        try:
            lo, hi = paired_score_ci(
                {r: columns[r][0] for r in scored},
                {r: columns[r][1] for r in scored},
                cand_stressors={r: columns[r][2] for r in scored},
                base_stressors={r: columns[r][3] for r in scored},
                rng=rng,
                n_boot=n_boot,
                level=level,
            )
            ci = (min(lo, score), max(hi, score))
        except ValueError:  # no finite replicate (a baseline resampled to zero throughout)
            ci = None
    return HostEffect(
        host=host,
        rounds=len({t.round for t in counted}),
        pairs=sum(len(p) for p in pairs.values()),
        trials=len(cand),
        failed=sum(1 for t in cand if not t.ok),
        breaches=sum(1 for t in cand if t.cap_breach is not None),
        score=score,
        ci=ci,
    )


# --- across hosts ---------------------------------------------------------------------------------


def choose_test(hosts: int, alpha: float) -> Test:
    """The signed-rank test where it can reach ``alpha`` with ``hosts`` values, else the t-test."""
    return "wilcoxon" if hosts >= WILCOXON_MIN_HOSTS and 0.5**hosts <= alpha else "t"


def fleet_test(effects: npt.ArrayLike, alpha: float) -> tuple[Test, float | None]:
    """The chosen test and its one-sided p-value that the per-host ``effects`` are positive; None
    when undefined (fewer than ``MIN_HOSTS`` values, every value equal, or every value 0)."""
    d = np.asarray(effects, dtype=np.float64)
    test = choose_test(int(d.size), alpha)
    if d.size < MIN_HOSTS:
        return test, None
    if test == "wilcoxon":
        result = wilcoxon_greater(d)
        return test, None if result is None else result.p_value
    if float(np.ptp(d)) == 0.0:
        return test, None
    p = t_sf(float(np.mean(d)) / (float(np.std(d, ddof=1)) / math.sqrt(d.size)), float(d.size - 1))
    return test, p if math.isfinite(p) else None


def mean_ci(effects: npt.ArrayLike, level: float) -> Interval | None:
    """t interval of the mean of per-host effects; None with fewer than two or no spread."""
    d = np.asarray(effects, dtype=np.float64)
    if d.size < 2 or float(np.ptp(d)) == 0.0:
        return None
    half = t_ppf(1.0 - (1.0 - level) / 2.0, float(d.size - 1)) * float(np.std(d, ddof=1)) / math.sqrt(d.size)
    mean = float(np.mean(d))
    return (mean - half, mean + half)


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def _ci_text(ci: Interval | None, level: float) -> str:
    return "" if ci is None else f" [{level * 100:g}% CI {_pct(ci[0])}, {_pct(ci[1])}]"


def _test_text(test: Test, p: float | None, alpha: float, tested: int, level: float) -> str:
    name = "Wilcoxon signed-rank test" if test == "wilcoxon" else "t-test"
    if p is None:
        return f"one-sided {name} on per-host scores undefined (no spread between hosts)"
    sign = "≤" if p <= alpha else ">"
    return (
        f"one-sided {name} on per-host scores p = {p:.3g} {sign} {alpha:.3g} "
        f"(Bonferroni: {1.0 - level:g} over {tested} candidate(s) tested)"
    )


def _reason(
    hosts: Sequence[HostEffect],
    effect: float | None,
    ci: Interval | None,
    test_text: str | None,
    level: float,
) -> tuple[list[str], str]:
    """(the reasons against promotion, the evidence sentence)."""
    scored = [h for h in hosts if h.score is not None]
    against: list[str] = []
    if test_text is None:
        against.append(f"scored on {len(scored)} host(s): a fleet verdict needs at least {MIN_HOSTS}")
    for h in hosts:
        if h.breaches:
            against.append(f"unsafe on {h.host}: {h.breaches} trial(s) breached a cap")
        elif not h.safe:
            against.append(f"unsafe on {h.host}: {h.failed} of {h.trials} trials failed")
        if h.significantly_worse and h.score is not None:
            against.append(f"significantly worse on {h.host}: {_pct(h.score)}{_ci_text(h.ci, level)}")
    evidence = (
        "no host scored"
        if effect is None
        else f"fleet effect {_pct(effect)}{_ci_text(ci, level)} over {len(scored)} host(s), "
        f"each against its own current configuration"
    )
    return against, evidence


def _verdict(cand_id: str, hosts: tuple[HostEffect, ...], tested: int, level: float) -> FleetVerdict:
    alpha = (1.0 - level) / max(1, tested)
    effects = [h.score for h in hosts if h.score is not None]
    effect = sum(effects) / len(effects) if effects else None
    ci = mean_ci(effects, level)
    test: Test | None = None
    p: float | None = None
    test_text: str | None = None
    if len(effects) >= MIN_HOSTS:
        test, p = fleet_test(effects, alpha)
        test_text = _test_text(test, p, alpha, tested, level)
    against, evidence = _reason(hosts, effect, ci, test_text, level)
    positive = p is not None and p <= alpha and effect is not None and effect > 0.0
    if test_text is not None and not positive:
        against.insert(0, f"not positive across hosts: {test_text}")
    promoted = positive and not against
    if promoted:
        reason = (
            f"{evidence}; positive across hosts: {test_text}; no host significantly worse "
            f"(each host's {level * 100:g}% CI reaches 0 or above); safe on every host"
        )
    else:
        reason = f"{evidence}; not promoted: " + "; ".join(against)
    return FleetVerdict(
        cand_id=cand_id,
        hosts=hosts,
        effect=effect,
        ci=ci,
        test=test,
        p_value=p,
        alpha=alpha,
        tested=tested,
        level=level,
        promoted=promoted,
        reason=reason,
    )


def fleet_verdicts(
    trials: Iterable[FleetTrial],
    *,
    seed: int,
    n_boot: int = DEFAULT_N_BOOT,
    level: float = DEFAULT_LEVEL,
) -> dict[str, FleetVerdict]:
    """Every candidate's fleet verdict from a generation's (or a PHASE window's) trials, by cand_id
    in the order first seen. ValueError for two rows of one (host, candidate, round, regime, arm)."""
    by_cand: dict[str, dict[str, list[FleetTrial]]] = defaultdict(lambda: defaultdict(list))
    seen: set[tuple[str, str, int, str, str]] = set()
    for t in trials:
        key = (t.host, t.cand_id, t.round, t.regime, t.arm)
        if key in seen:
            raise ValueError(f"two trial rows for host/candidate/round/regime/arm {key}")
        seen.add(key)
        by_cand[t.cand_id][t.host].append(t)
    effects = {
        cand_id: tuple(
            host_effect(host, hosts[host], rng=_rng(seed, cand_id, host), n_boot=n_boot, level=level)
            for host in sorted(hosts)
        )
        for cand_id, hosts in by_cand.items()
    }
    tested = sum(1 for hs in effects.values() if sum(h.score is not None for h in hs) >= MIN_HOSTS)
    return {cand_id: _verdict(cand_id, hs, tested, level) for cand_id, hs in effects.items()}


def host_adopts(verdict: FleetVerdict, host: str) -> Adoption:
    """Whether ``host`` adopts the candidate (when ``promotion.mode: auto``): promoted fleet-wide and
    not significantly worse, nor unsafe, on this host's own trials."""
    own = next((h for h in verdict.hosts if h.host == host), None)

    def answer(adopt: bool, reason: str) -> Adoption:
        return Adoption(host=host, cand_id=verdict.cand_id, adopt=adopt, reason=reason)

    if not verdict.promoted:
        return answer(False, f"not promoted fleet-wide: {verdict.reason}")
    if own is None or own.score is None:
        fleet = _pct(verdict.effect or 0.0)
        return answer(
            True,
            f"promoted fleet-wide ({fleet} over {len(verdict.scored_hosts)} host(s)); not scored on "
            f"this host: adopted on the fleet's evidence",
        )
    if not own.safe:
        return answer(False, f"unsafe on this host: {own.breaches} cap breach(es), {own.failed} failed")
    if own.significantly_worse:
        return answer(
            False, f"significantly worse on this host: {_pct(own.score)}{_ci_text(own.ci, verdict.level)}"
        )
    return answer(
        True,
        f"promoted fleet-wide; on this host {_pct(own.score)}{_ci_text(own.ci, verdict.level)}, "
        f"not significantly worse",
    )


__all__ = [
    "MIN_HOSTS",
    "WILCOXON_MIN_HOSTS",
    "Adoption",
    "FleetTrial",
    "FleetVerdict",
    "HostEffect",
    "choose_test",
    "fleet_test",
    "fleet_verdicts",
    "host_adopts",
    "host_effect",
    "mean_ci",
]
