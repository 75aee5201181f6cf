"""Racing savings: the D-REAM tournament as the daemon runs it versus fixed N=10 trials per candidate.

Synthetic candidate sets with known means: one best, the others behind it by gaps drawn per race
(in units of the noise σ; Gaussian noise, σ = 1). Every race draws one noise matrix
(candidates × 10 rounds) that all procedures share (common random numbers), so they are compared
on the same luck:

* ``daemon`` — ``runtime/dream.py::_run_tournament``: ``Race(min_rounds=2, max_rounds=10)``; every
  round each survivor gets one trial (and the stock arm one, the reference every score is taken
  against); the race records the round's samples and eliminates; once the race is finished the
  survivors still get the remaining trials up to ``max_rounds`` (the daemon's rule: "survivors get
  the full trial count"). Pick: the best mean among the survivors. ``_conclude`` itself picks the
  best score among *all* scored candidates (eliminated ones have ≥ 2 trials and are scored too):
  reported as ``daemon (pick over all scored)``.
* ``race_stop`` — the same race, sampling stops when the race is finished (as ``optimize()`` uses
  it); pick: ``race.race_winner()``.
* ``fixed_n`` — 10 trials for every candidate; pick: the best mean.

Trials are counted per candidate trial (one per round; in the daemon a round is one trial of each
regime, which scales both sides alike) and, for the tournament totals, with the stock arm's one
trial per round that both the daemon and a fixed-N tournament run.

Run: ``.venv/bin/python bench/racing.py [--quick] [--races N]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
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

MAX_ROUNDS = 10  # dream.trials in the daemon; also the fixed-N
MIN_ROUNDS = 2  # as _run_tournament
GOAL_CORRECT = 0.95
GOAL_TRIAL_SHARE = 0.40


@dataclass(frozen=True)
class Scenario:
    name: str
    candidates: int
    gap_low: float  # others are behind the best by U(gap_low, gap_high) σ
    gap_high: float
    primary: bool  # the scenario (goals are judged on it)

    @property
    def label(self) -> str:
        return f"{self.candidates} candidates, others {self.gap_low:g}–{self.gap_high:g} σ behind"


SCENARIOS = (
    Scenario("gaps_0.25-1", 6, 0.25, 1.0, primary=True),
    Scenario("gaps_1-2", 6, 1.0, 2.0, primary=False),
)


@dataclass(frozen=True)
class Outcome:
    correct: bool
    cand_trials: int
    rounds: int


@dataclass(frozen=True)
class RaceRecord:
    daemon: Outcome
    daemon_all: Outcome
    race_stop: Outcome
    fixed_n: Outcome


def simulate(scn: Scenario, rng: np.random.Generator) -> RaceRecord:
    """One race of every procedure on one candidate set and one noise matrix."""
    n = scn.candidates
    best = int(rng.integers(n))  # the best's position varies: no help from the order of ids
    means = -rng.uniform(scn.gap_low, scn.gap_high, size=n)
    means[best] = 0.0
    noise = rng.normal(0.0, 1.0, size=(n, MAX_ROUNDS))
    ids = [f"c{i}" for i in range(n)]
    index = {c: i for i, c in enumerate(ids)}

    race = Race(ids, incumbent=None, max_rounds=MAX_ROUNDS, min_rounds=MIN_ROUNDS)
    samples: dict[str, list[float]] = {c: [] for c in ids}
    cand_trials = 0
    race_stop: Outcome | None = None
    for _ in range(MAX_ROUNDS):
        for c in race.survivors():
            i = index[c]
            samples[c].append(float(means[i] + noise[i, len(samples[c])]))
            cand_trials += 1
        if not race.finished:
            for c in race.pending():
                race.record(c, samples[c][-1])
            if not race.finished:
                race.end_round()
        if race.finished and race_stop is None:
            w = race.race_winner()
            race_stop = Outcome(
                correct=w is not None and index[w] == best, cand_trials=race.trials_used, rounds=race.round
            )
    assert race_stop is not None

    def best_of(pool: Sequence[str]) -> int:
        return index[max(pool, key=lambda c: (float(np.mean(samples[c])), -index[c]))]

    survivors = race.survivors()
    daemon = Outcome(correct=best_of(survivors) == best, cand_trials=cand_trials, rounds=MAX_ROUNDS)
    scored = [c for c in ids if len(samples[c]) >= MIN_ROUNDS]
    daemon_all = Outcome(correct=best_of(scored) == best, cand_trials=cand_trials, rounds=MAX_ROUNDS)
    fixed_pick = int(np.argmax(means + noise.mean(axis=1)))
    fixed = Outcome(correct=fixed_pick == best, cand_trials=n * MAX_ROUNDS, rounds=MAX_ROUNDS)
    return RaceRecord(daemon=daemon, daemon_all=daemon_all, race_stop=race_stop, fixed_n=fixed)


@dataclass(frozen=True)
class ProcedureSummary:
    correct: float
    correct_ci95: tuple[float, float]
    cand_trials_mean: float
    cand_trials_share: float  # of fixed-N's candidate trials
    tournament_trials_mean: float  # with the stock arm's trial per round
    tournament_share: float  # of a fixed-N tournament's trials (stock included)
    rounds_mean: float


def summarise(scn: Scenario, records: Sequence[RaceRecord]) -> dict[str, ProcedureSummary]:
    fixed_cand = scn.candidates * MAX_ROUNDS
    out: dict[str, ProcedureSummary] = {}
    for proc in ("daemon", "daemon_all", "race_stop", "fixed_n"):
        outs: list[Outcome] = [getattr(r, proc) for r in records]
        k = sum(o.correct for o in outs)
        cand = float(np.mean([o.cand_trials for o in outs]))
        rounds = float(np.mean([o.rounds for o in outs]))
        # The stock arm runs once per round for as long as the tournament runs rounds.
        tourn = cand + rounds
        out[proc] = ProcedureSummary(
            correct=k / len(outs),
            correct_ci95=wilson_ci(k, len(outs)),
            cand_trials_mean=cand,
            cand_trials_share=cand / fixed_cand,
            tournament_trials_mean=tourn,
            tournament_share=tourn / (fixed_cand + MAX_ROUNDS),
            rounds_mean=rounds,
        )
    return out


LABELS = {
    "daemon": "daemon tournament (pick: best survivor)",
    "daemon_all": "daemon tournament (pick over all scored, as _conclude)",
    "race_stop": "race, stop sampling when decided (as optimize())",
    "fixed_n": f"fixed N={MAX_ROUNDS}",
}


FIXED_N_CURVE = (10, 20, 40, 80, 160)


def fixed_n_curve(scn: Scenario, races: int, rng: np.random.Generator) -> dict[int, float]:
    """P(select the true best) of fixed-N for larger N: what the scenario's gaps demand of any procedure."""
    out: dict[int, float] = {}
    for n_trials in FIXED_N_CURVE:
        means = -rng.uniform(scn.gap_low, scn.gap_high, size=(races, scn.candidates))
        means[:, 0] = 0.0
        est = means + rng.normal(0.0, 1.0 / np.sqrt(n_trials), size=means.shape)  # mean of N samples
        out[n_trials] = float(np.mean(np.argmax(est, axis=1) == 0))
    return out


def markdown(
    results: dict[str, tuple[Scenario, dict[str, ProcedureSummary]]],
    races: int,
    curves: dict[str, dict[int, float]],
) -> str:
    out = [
        f"\n{races} races per scenario, Gaussian noise σ = 1, Race(min_rounds={MIN_ROUNDS}, "
        f"max_rounds={MAX_ROUNDS}); CI = Wilson 95%\n",
        "| scenario | procedure | P(select true best) [95% CI] | candidate trials (mean) | share of fixed-N "
        "| tournament trials incl. stock | share of fixed-N tournament |",
        "|---|---|---|---|---|---|---|",
    ]
    for scn, summ in results.values():
        for proc, s in summ.items():
            out.append(
                f"| {scn.label} | {LABELS[proc]} | {s.correct:.3f} [{s.correct_ci95[0]:.3f}, "
                f"{s.correct_ci95[1]:.3f}] | {s.cand_trials_mean:.1f} | {s.cand_trials_share:.1%} | "
                f"{s.tournament_trials_mean:.1f} | {s.tournament_share:.1%} |"
            )
    out.append("\nReference: P(select true best) of fixed-N with more trials per candidate (same gaps)\n")
    out.append("| scenario | " + " | ".join(f"N={n}" for n in FIXED_N_CURVE) + " |")
    out.append("|---|" + "---|" * len(FIXED_N_CURVE))
    for name, curve in curves.items():
        scn = results[name][0]
        out.append(f"| {scn.label} | " + " | ".join(f"{curve[n]:.3f}" for n in FIXED_N_CURVE) + " |")
    return "\n".join(out)


def goals(results: dict[str, tuple[Scenario, dict[str, ProcedureSummary]]], cmd: str) -> list[GoalResult]:
    rows = []
    for scn, summ in results.values():
        if not scn.primary:
            continue
        d, f = summ["daemon"], summ["fixed_n"]
        rows.append(
            GoalResult(
                benchmark="racing",
                figure=f"P(select true best), daemon tournament ({scn.label})",
                measured=f"{d.correct:.1%} [{d.correct_ci95[0]:.1%}, {d.correct_ci95[1]:.1%}] "
                f"(fixed-N: {f.correct:.1%})",
                goal=f"≥ {GOAL_CORRECT:.0%}",
                met=d.correct >= GOAL_CORRECT,
                margin=f"{100 * (d.correct - GOAL_CORRECT):+.1f} points",
                command=cmd,
            )
        )
        rows.append(
            GoalResult(
                benchmark="racing",
                figure=f"trials used vs fixed N={MAX_ROUNDS}, daemon tournament ({scn.label})",
                measured=f"{d.tournament_share:.1%} incl. stock arm ({d.cand_trials_share:.1%} of candidate "
                f"trials)",
                goal=f"≤ {GOAL_TRIAL_SHARE:.0%}",
                met=d.tournament_share <= GOAL_TRIAL_SHARE,
                margin=f"{100 * (d.tournament_share - GOAL_TRIAL_SHARE):+.1f} points",
                command=cmd,
            )
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="racing savings benchmark")
    ap.add_argument("--quick", action="store_true", help="5000 races per scenario (default 20000)")
    ap.add_argument("--races", type=int, default=None)
    ap.add_argument("--seed", type=int, default=12345)
    args = ap.parse_args(argv)
    races = args.races if args.races is not None else (5000 if args.quick else 20000)
    machine = machine_info()
    print(machine_line(machine))
    t0 = time.monotonic()
    results: dict[str, tuple[Scenario, dict[str, ProcedureSummary]]] = {}
    curves: dict[str, dict[int, float]] = {}
    for k, scn in enumerate(SCENARIOS):
        rng = np.random.default_rng([args.seed, k])
        records = [simulate(scn, rng) for _ in range(races)]
        results[scn.name] = (scn, summarise(scn, records))
        curves[scn.name] = fixed_n_curve(scn, races, np.random.default_rng([args.seed, k, 1]))
        print(f"  racing: {scn.name} done, {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    elapsed = time.monotonic() - t0
    cmd = command_line()
    print(markdown(results, races, curves))
    rows = goals(results, cmd)
    print()
    print(goal_rows_markdown(rows))
    print(f"\nracing: {elapsed:.0f} s wall")
    payload = {
        "schema": "bench.racing.v1",
        "mode": "quick" if args.quick else "full",
        "command": cmd,
        "machine": machine,
        "races": races,
        "max_rounds": MAX_ROUNDS,
        "min_rounds": MIN_ROUNDS,
        "elapsed_s": elapsed,
        "scenarios": {
            name: {
                "scenario": asdict(scn),
                "procedures": {p: asdict(s) for p, s in summ.items()},
                "fixed_n_curve": curves[name],
            }
            for name, (scn, summ) in results.items()
        },
        "goals": goals_payload(rows),
    }
    print(f"wrote {write_json('racing', payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
