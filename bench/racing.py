"""Racing with an indifference zone: the D-REAM tournament's race versus today's rule and fixed N=10.

Synthetic candidate sets with known means (Gaussian noise, σ = 1, so every figure is in units of
the noise σ of one round's score), one best and the others behind it by gaps set relative to the
indifference zone δ (also in σ). Every race draws one noise matrix (candidates × 10 rounds) that
all procedures share (common random numbers), so they are compared on the same luck:

* ``old`` — today's daemon (``runtime/tournament.py``): ``Race(min_rounds=2, max_rounds=10)``
  without an indifference zone (a t-test at α = 0.05 against the leader), survivors get the full
  trial count after the race is decided; pick: the best mean among the survivors.
* ``kn_stop`` — ``Race(..., indifference=δ, confidence=0.95)`` (Kim & Nelson's fully sequential
  procedure, see ``engine/racing.py``), sampling stops when the race is finished; pick:
  ``race.race_winner()`` (the best mean, a tie within δ at the cap broken by mean).
* ``kn_cap`` — the same race, but survivors still run to ``max_rounds`` (the tournament unchanged);
  pick: the best mean of the survivors over all their samples.
* ``kn_stop_all`` — ``kn_stop``, pick the best mean over every candidate with ≥ 2 samples
  (eliminated ones included, as ``_conclude`` picks over all scored candidates).
* ``fixed_n`` — 10 trials for every candidate; pick: the best mean.

Scenarios, 6 candidates: ``slippage`` (every other exactly δ behind: the least favourable case
with gaps ≥ δ), ``spread`` (others U(δ, 3δ) behind), ``all_gaps`` (U(0, 2δ): about half within
δ) and ``equal`` (all alike) — each at δ = 0.5, 1 and 1.5 σ — and ``legacy`` (others U(0.25, 1) σ
behind, the scenario of the earlier benchmark) at the primary δ. Figures: P(select the true best)
(PCS), P(the selected one is within δ of the best) and candidate trials as a share of fixed N=10's
(plus the stock arm's one trial per round, for the tournament totals). The goals are judged at
the primary δ = 1.5 σ, where a 10-round race can keep KN's guarantee (its triangle closes by the
cap: ``max_rounds ≥ h²·2σ²/δ²``, h² ≈ 8.5 once the variance has a few dozen df); at 0.5 and 1 σ
the cap truncates the procedure and the rows show what that costs.

Run: ``.venv/bin/python bench/racing.py [--quick] [--races N]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from benchlib import (
    GoalResult,
    command_line,
    goal_rows_markdown,
    goals_payload,
    machine_info,
    machine_line,
    wilson_ci,
    write_json,
)

from kloros_orchestrator.engine import Race

MAX_ROUNDS = 10  # the cap of the race; also the fixed N
MIN_ROUNDS = 2  # as the tournament
CANDIDATES = 6  # dream.population's default
CONFIDENCE = 0.95
DELTAS = (0.5, 1.0, 1.5)  # δ in σ
PRIMARY_DELTA = 1.5
GOAL_PCS = 0.95  # at gaps ≥ δ
GOAL_WITHIN = 0.95  # at all gaps
GOAL_TRIAL_SHARE = 0.50  # candidate trials vs fixed N=10
PROCEDURES = ("old", "kn_stop", "kn_cap", "kn_stop_all", "fixed_n")
LABELS = {
    "old": "old rule (daemon today: t-test, survivors to the cap)",
    "kn_stop": "KN race, sampling stops when finished",
    "kn_cap": "KN race, survivors to the cap",
    "kn_stop_all": "KN race stopped, pick over all scored (as _conclude)",
    "fixed_n": f"fixed N={MAX_ROUNDS}",
}

GapDraw = Callable[[np.random.Generator, float, int], np.ndarray]
KINDS: dict[str, tuple[str, GapDraw]] = {
    "slippage": ("others exactly δ behind", lambda rng, d, n: np.full(n, d)),
    "spread": ("others U(δ, 3δ) behind", lambda rng, d, n: rng.uniform(d, 3 * d, n)),
    "all_gaps": ("others U(0, 2δ) behind", lambda rng, d, n: rng.uniform(0, 2 * d, n)),
    "equal": ("all alike", lambda rng, d, n: np.zeros(n)),
    "legacy": ("others U(0.25, 1) σ behind", lambda rng, d, n: rng.uniform(0.25, 1.0, n)),
}
GAPS_AT_LEAST_DELTA = ("slippage", "spread")


@dataclass(frozen=True)
class Scenario:
    kind: str
    delta: float  # in σ

    @property
    def name(self) -> str:
        return f"{self.kind}@{self.delta:g}"

    @property
    def label(self) -> str:
        return f"δ={self.delta:g}σ, {KINDS[self.kind][0]}"


SCENARIOS = (
    *(Scenario(kind, d) for d in DELTAS for kind in ("slippage", "spread", "all_gaps", "equal")),
    Scenario("legacy", PRIMARY_DELTA),
)


@dataclass(frozen=True)
class Outcome:
    pick: int  # index of the selected candidate
    cand_trials: int
    rounds: int


def run_race(race: Race, means: np.ndarray, noise: np.ndarray, index: dict[str, int]) -> None:
    while not race.finished:
        for c in race.pending():
            i = index[c]
            race.record(c, float(means[i] + noise[i, race.round]))
        if not race.finished:
            race.end_round()


def best_mean(pool: Sequence[int], means: np.ndarray, noise: np.ndarray, counts: Sequence[int]) -> int:
    return max(pool, key=lambda i: (float(means[i] + noise[i, : counts[i]].mean()), -i))


def simulate(scn: Scenario, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Outcome]]:
    """One race of every procedure on one candidate set and one noise matrix; returns the means too."""
    n = CANDIDATES
    best = int(rng.integers(n))  # the best's position varies: no help from the order of ids
    means = -KINDS[scn.kind][1](rng, scn.delta, n)
    means[best] = 0.0
    noise = rng.normal(0.0, 1.0, size=(n, MAX_ROUNDS))
    ids = [f"c{i}" for i in range(n)]
    index = {c: i for i, c in enumerate(ids)}
    full = [MAX_ROUNDS] * n
    out: dict[str, Outcome] = {}

    old = Race(ids, incumbent=None, max_rounds=MAX_ROUNDS, min_rounds=MIN_ROUNDS)
    run_race(old, means, noise, index)
    alive = [index[c] for c in old.survivors()]
    # survivors run to the cap: they end with MAX_ROUNDS samples; the eliminated keep theirs
    counts = [MAX_ROUNDS if i in alive else len(old.samples(ids[i])) for i in range(n)]
    out["old"] = Outcome(best_mean(alive, means, noise, counts), sum(counts), MAX_ROUNDS)

    kn = Race(
        ids, incumbent=None, max_rounds=MAX_ROUNDS, min_rounds=MIN_ROUNDS,
        indifference=scn.delta, confidence=CONFIDENCE,
    )  # fmt: skip
    run_race(kn, means, noise, index)
    winner = kn.race_winner()
    assert winner is not None
    got = [len(kn.samples(c)) for c in ids]
    out["kn_stop"] = Outcome(index[winner], kn.trials_used, kn.round)
    scored = [i for i in range(n) if got[i] >= MIN_ROUNDS]
    out["kn_stop_all"] = Outcome(best_mean(scored, means, noise, got), kn.trials_used, kn.round)
    alive = [index[c] for c in kn.survivors()]
    counts = [MAX_ROUNDS if i in alive else got[i] for i in range(n)]
    out["kn_cap"] = Outcome(best_mean(alive, means, noise, counts), sum(counts), MAX_ROUNDS)
    out["fixed_n"] = Outcome(best_mean(range(n), means, noise, full), n * MAX_ROUNDS, MAX_ROUNDS)
    return means, out


@dataclass(frozen=True)
class ProcedureSummary:
    pcs: float  # P(select the true best)
    pcs_ci95: tuple[float, float]
    within: float  # P(the selected one is within δ of the best)
    within_ci95: tuple[float, float]
    cand_trials_mean: float
    cand_trials_share: float  # of fixed-N's candidate trials
    tournament_share: float  # with the stock arm's trial per round, of a fixed-N tournament's
    rounds_mean: float


def summarise(scn: Scenario, races: int, rng: np.random.Generator) -> dict[str, ProcedureSummary]:
    hits = {p: 0 for p in PROCEDURES}
    near = {p: 0 for p in PROCEDURES}
    trials = {p: 0 for p in PROCEDURES}
    rounds = {p: 0 for p in PROCEDURES}
    for _ in range(races):
        means, outs = simulate(scn, rng)
        for p, o in outs.items():
            hits[p] += int(means[o.pick] == 0.0)
            near[p] += int(-means[o.pick] < scn.delta)  # strictly: a gap of exactly δ matters
            trials[p] += o.cand_trials
            rounds[p] += o.rounds
    fixed_cand = CANDIDATES * MAX_ROUNDS
    out: dict[str, ProcedureSummary] = {}
    for p in PROCEDURES:
        cand, rnd = trials[p] / races, rounds[p] / races
        out[p] = ProcedureSummary(
            pcs=hits[p] / races,
            pcs_ci95=wilson_ci(hits[p], races),
            within=near[p] / races,
            within_ci95=wilson_ci(near[p], races),
            cand_trials_mean=cand,
            cand_trials_share=cand / fixed_cand,
            tournament_share=(cand + rnd) / (fixed_cand + MAX_ROUNDS),  # the stock arm: one per round
            rounds_mean=rnd,
        )
    return out


Results = dict[str, tuple[Scenario, dict[str, ProcedureSummary]]]


def markdown(results: Results, races: int) -> str:
    shown = ("old", "kn_stop", "kn_cap", "fixed_n")
    out = [
        f"\n{races} races per scenario, {CANDIDATES} candidates, Gaussian noise σ = 1, "
        f"min_rounds={MIN_ROUNDS}, max_rounds={MAX_ROUNDS}, confidence {CONFIDENCE:.0%}. "
        "Cells: PCS / P(within δ) / candidate trials as a share of fixed N.\n",
        "| scenario | " + " | ".join(LABELS[p] for p in shown) + " |",
        "|---|" + "---|" * len(shown),
    ]
    for scn, summ in results.values():
        cells = [f"{summ[p].pcs:.3f} / {summ[p].within:.3f} / {summ[p].cand_trials_share:.1%}" for p in shown]
        out.append(f"| {scn.label} | " + " | ".join(cells) + " |")
    out.append(f"\n{LABELS['kn_stop_all']}:\n")
    out.append("| scenario | PCS | P(within δ) |")
    out.append("|---|---|---|")
    for scn, summ in results.values():
        s = summ["kn_stop_all"]
        out.append(f"| {scn.label} | {s.pcs:.3f} | {s.within:.3f} |")
    return "\n".join(out)


def _worst(results: Results, kinds: Sequence[str], key: Callable[[ProcedureSummary], float], hi: bool) -> str:
    pool = [name for name, (scn, _) in results.items() if scn.delta == PRIMARY_DELTA and scn.kind in kinds]
    pick = max if hi else min
    return pick(pool, key=lambda name: key(results[name][1]["kn_stop"]))


def goals(results: Results, cmd: str) -> list[GoalResult]:
    a = _worst(results, GAPS_AT_LEAST_DELTA, lambda s: s.pcs, hi=False)
    b = _worst(results, tuple(KINDS), lambda s: s.within, hi=False)
    c = _worst(results, tuple(KINDS), lambda s: s.cand_trials_share, hi=True)
    sa, sb, sc = (results[x][1] for x in (a, b, c))
    return [
        GoalResult(
            benchmark="racing",
            figure=f"P(select the true best) at gaps ≥ δ, worst scenario ({results[a][0].label})",
            measured=f"{sa['kn_stop'].pcs:.1%} [{sa['kn_stop'].pcs_ci95[0]:.1%}, "
            f"{sa['kn_stop'].pcs_ci95[1]:.1%}] (old rule {sa['old'].pcs:.1%}, "
            f"fixed N {sa['fixed_n'].pcs:.1%})",
            goal=f"≥ {GOAL_PCS:.0%}",
            met=sa["kn_stop"].pcs >= GOAL_PCS,
            margin=f"{100 * (sa['kn_stop'].pcs - GOAL_PCS):+.1f} points",
            command=cmd,
        ),
        GoalResult(
            benchmark="racing",
            figure=f"P(selected within δ of the best) at all gaps, worst scenario ({results[b][0].label})",
            measured=f"{sb['kn_stop'].within:.1%} [{sb['kn_stop'].within_ci95[0]:.1%}, "
            f"{sb['kn_stop'].within_ci95[1]:.1%}] (old rule {sb['old'].within:.1%})",
            goal=f"≥ {GOAL_WITHIN:.0%}",
            met=sb["kn_stop"].within >= GOAL_WITHIN,
            margin=f"{100 * (sb['kn_stop'].within - GOAL_WITHIN):+.1f} points",
            command=cmd,
        ),
        GoalResult(
            benchmark="racing",
            figure=f"candidate trials vs fixed N={MAX_ROUNDS}, worst scenario ({results[c][0].label})",
            measured=f"{sc['kn_stop'].cand_trials_share:.1%} ({sc['kn_stop'].tournament_share:.1%} incl. the "
            f"stock arm; old rule {sc['old'].cand_trials_share:.1%})",
            goal=f"≤ {GOAL_TRIAL_SHARE:.0%}",
            met=sc["kn_stop"].cand_trials_share <= GOAL_TRIAL_SHARE,
            margin=f"{100 * (sc['kn_stop'].cand_trials_share - GOAL_TRIAL_SHARE):+.1f} points",
            command=cmd,
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="racing with an indifference zone vs the old rule and fixed N")
    ap.add_argument("--quick", action="store_true", help="2000 races per scenario (default 10000)")
    ap.add_argument("--races", type=int, default=None)
    ap.add_argument("--seed", type=int, default=12345)
    args = ap.parse_args(argv)
    races = args.races if args.races is not None else (2000 if args.quick else 10000)
    machine = machine_info()
    print(machine_line(machine))
    t0 = time.monotonic()
    results: Results = {}
    for k, scn in enumerate(SCENARIOS):
        results[scn.name] = (scn, summarise(scn, races, np.random.default_rng([args.seed, k])))
        print(f"  racing: {scn.name} done, {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    elapsed = time.monotonic() - t0
    cmd = command_line()
    print(markdown(results, races))
    rows = goals(results, cmd)
    print()
    print(goal_rows_markdown(rows))
    print(f"\nracing: {elapsed:.0f} s wall")
    payload = {
        "schema": "bench.racing.v2",
        "mode": "quick" if args.quick else "full",
        "command": cmd,
        "machine": machine,
        "races": races,
        "candidates": CANDIDATES,
        "max_rounds": MAX_ROUNDS,
        "min_rounds": MIN_ROUNDS,
        "confidence": CONFIDENCE,
        "primary_delta_sigma": PRIMARY_DELTA,
        "elapsed_s": elapsed,
        "procedures": LABELS,
        "scenarios": {
            name: {
                "scenario": {**asdict(scn), "label": scn.label},
                "procedures": {p: asdict(s) for p, s in summ.items()},
            }
            for name, (scn, summ) in results.items()
        },
        "goals": goals_payload(rows),
    }
    print(f"wrote {write_json('racing', payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
