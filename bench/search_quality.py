"""Search quality under noise: ``kloros_orchestrator.engine.optimize`` against Optuna and Nevergrad.

Every arm gets the same budget of noisy samples on the same landscape and names its own winner:

* ``optimize`` — the daemon's engine; its return value.
* ``optuna_tpe`` — Optuna ``TPESampler(multivariate=True)``; winner ``study.best_trial`` (the best
  *observed* value, Optuna's standard answer — itself a noisy pick).
* ``optuna_cmaes`` — Optuna ``CmaEsSampler``; CMA-ES handles the numeric knobs only, categorical and
  bool knobs fall back to Optuna's independent (random) sampler. Winner ``study.best_trial``.
* ``ng_ngopt`` / ``ng_noisy1p1`` — Nevergrad ``NGOpt`` and ``NoisyOnePlusOne``, told the function
  is noisy (``parametrization.function.deterministic = False``); winner
  ``optimizer.provide_recommendation()``.
* ``random`` — uniform (log-uniform for log knobs) sampling; winner = the best observed sample.

Metric: the winner's true (noise-free) regret, normalised by the landscape's exact range. Per
landscape × budget: median regret with a percentile-bootstrap 95% CI over seeds, and a paired
Wilcoxon signed-rank test of ``optimize`` against every other arm (same seed = same noise stream
seed for every arm). Markdown to stdout, JSON to ``bench/results/search_quality.json``.

Landscapes: the four of ``landscapes.py`` and, after them (so the others' noise streams keep their
seeds), the mixture-noise landscapes of ``landscapes_mixture.py`` (issue 13 point 8: each sample from
one of several conditions drawn at random). The goals judged are in ``search_goals.py``.

Run: ``.venv/bin/python bench/search_quality.py [--quick] [--budgets 100,300,1000] [--seeds 20]``.
``--reuse NAME[,NAME]`` takes the runs already in ``bench/results/NAME.json`` (same landscape, budget, seed
and arm: the same noise stream) instead of running them again, e.g. the other tools' runs after a
change to the engine; the JSON records what was reused.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from benchlib import (
    RESULTS_DIR,
    bootstrap_median_ci,
    command_line,
    goal_rows_markdown,
    goals_payload,
    machine_info,
    machine_line,
    write_json,
)
from landscapes import Genome, Landscape, all_landscapes
from landscapes_mixture import mixture_landscapes
from scipy import stats
from search_goals import OURS, goals

ARMS: tuple[str, ...] = ("optimize", "optuna_tpe", "optuna_cmaes", "ng_ngopt", "ng_noisy1p1", "random")

Objective = Callable[[Genome], float]


class BudgetExceeded(RuntimeError):
    pass


class CountedObjective:
    """The landscape's noisy objective behind a hard budget (an arm asking for more is a bug)."""

    def __init__(self, land: Landscape, budget: int, rng: np.random.Generator) -> None:
        self.land, self.budget, self.rng = land, budget, rng
        self.calls = 0

    def __call__(self, genome: Mapping[str, Any]) -> float:
        if self.calls >= self.budget:
            raise BudgetExceeded(f"more than {self.budget} samples asked")
        self.calls += 1
        return self.land.sample(genome, self.rng)


# --- the arms ----------------------------------------------------------------------------------------


def arm_optimize(land: Landscape, obj: CountedObjective, budget: int, seed: int) -> Genome:
    from kloros_orchestrator.engine import optimize

    return dict(optimize(land.space, obj, budget=budget, seed=seed))


def _optuna(land: Landscape, obj: CountedObjective, budget: int, seed: int, sampler_name: str) -> Genome:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning (multivariate TPE), CMA-ES fallback notes
        sampler: optuna.samplers.BaseSampler
        if sampler_name == "tpe":
            sampler = optuna.samplers.TPESampler(multivariate=True, seed=seed)
        else:
            sampler = optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        study = optuna.create_study(direction="maximize", sampler=sampler)

        def objective(trial: optuna.Trial) -> float:
            g: Genome = {}
            for name, d in land.space.items():
                t = d["type"]
                if t == "int":
                    g[name] = trial.suggest_int(name, d["low"], d["high"], log=bool(d.get("log")))
                elif t == "float":
                    g[name] = trial.suggest_float(name, d["low"], d["high"], log=bool(d.get("log")))
                elif t == "bool":
                    g[name] = trial.suggest_categorical(name, [False, True])
                else:
                    g[name] = trial.suggest_categorical(name, list(d["choices"]))
            return obj(g)

        study.optimize(objective, n_trials=budget)
        return dict(study.best_trial.params)


def arm_optuna_tpe(land: Landscape, obj: CountedObjective, budget: int, seed: int) -> Genome:
    return _optuna(land, obj, budget, seed, "tpe")


def arm_optuna_cmaes(land: Landscape, obj: CountedObjective, budget: int, seed: int) -> Genome:
    return _optuna(land, obj, budget, seed, "cmaes")


def _ng_params(land: Landscape) -> dict[str, Any]:
    import nevergrad as ng

    params: dict[str, Any] = {}
    for k, d in land.space.items():
        t = d["type"]
        if t in ("int", "float"):
            p = (ng.p.Log if d.get("log") else ng.p.Scalar)(lower=d["low"], upper=d["high"])
            params[k] = p.set_integer_casting() if t == "int" else p
        elif t == "bool":
            params[k] = ng.p.Choice([False, True])
        else:
            params[k] = ng.p.Choice(list(d["choices"]))
    return params


def _ng_optimizer(land: Landscape, budget: int, seed: int, name: str) -> Any:
    import nevergrad as ng

    param = ng.p.Dict(**_ng_params(land))
    param.random_state = np.random.RandomState(seed)  # nevergrad's own (local) generator type
    param.function.deterministic = False  # tells NGOpt the objective is noisy
    return ng.optimizers.registry[name](parametrization=param, budget=budget, num_workers=1)


def _nevergrad(land: Landscape, obj: CountedObjective, budget: int, seed: int, name: str) -> Genome:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = _ng_optimizer(land, budget, seed, name)
        for _ in range(budget):
            cand = opt.ask()
            opt.tell(cand, -obj(cand.value))  # nevergrad minimises
        return dict(opt.provide_recommendation().value)


def ngopt_choice(land: Landscape, budget: int) -> str:
    """The algorithm NGOpt delegates to for this landscape and budget (for the report)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        o: Any = _ng_optimizer(land, budget, 0, "NGOpt")
        chain: list[str] = []
        while o is not None and len(chain) < 8:
            chain.append(str(getattr(o, "name", type(o).__name__)))
            o = getattr(o, "optim", None)
    return " → ".join(chain)


def arm_ng_ngopt(land: Landscape, obj: CountedObjective, budget: int, seed: int) -> Genome:
    return _nevergrad(land, obj, budget, seed, "NGOpt")


def arm_ng_noisy1p1(land: Landscape, obj: CountedObjective, budget: int, seed: int) -> Genome:
    return _nevergrad(land, obj, budget, seed, "NoisyOnePlusOne")


def _random_genome(land: Landscape, rng: np.random.Generator) -> Genome:
    g: Genome = {}
    for k, d in land.space.items():
        t = d["type"]
        if t in ("int", "float"):
            lo, hi = float(d["low"]), float(d["high"]) + (1.0 if t == "int" else 0.0)
            x = math.exp(rng.uniform(math.log(lo), math.log(hi))) if d.get("log") else rng.uniform(lo, hi)
            g[k] = int(min(math.floor(x), d["high"])) if t == "int" else float(x)
        elif t == "bool":
            g[k] = bool(rng.random() < 0.5)
        else:
            g[k] = d["choices"][int(rng.integers(len(d["choices"])))]
    return g


def arm_random(land: Landscape, obj: CountedObjective, budget: int, seed: int) -> Genome:
    rng = np.random.default_rng([seed, 991])
    best: tuple[float, Genome] | None = None
    for _ in range(budget):
        g = _random_genome(land, rng)
        v = obj(g)
        if best is None or v > best[0]:
            best = (v, g)
    assert best is not None
    return best[1]


ARM_FUNCS: dict[str, Callable[[Landscape, CountedObjective, int, int], Genome]] = {
    "optimize": arm_optimize,
    "optuna_tpe": arm_optuna_tpe,
    "optuna_cmaes": arm_optuna_cmaes,
    "ng_ngopt": arm_ng_ngopt,
    "ng_noisy1p1": arm_ng_noisy1p1,
    "random": arm_random,
}


# --- one run -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    landscape: str
    budget: int
    seed: int
    arm: str


@dataclass(frozen=True)
class RunResult:
    landscape: str
    budget: int
    seed: int
    arm: str
    regret: float
    samples: int
    seconds: float
    winner: dict[str, Any]


_LANDS: dict[str, Landscape] | None = None


def _landscapes() -> dict[str, Landscape]:
    global _LANDS
    if _LANDS is None:
        # the mixture landscapes come last: each landscape's noise-stream seed is its position
        _LANDS = {**all_landscapes(), **mixture_landscapes()}
    return _LANDS


def run_task(task: Task) -> RunResult:
    land = _landscapes()[task.landscape]
    idx = list(_landscapes()).index(task.landscape)
    # Same noise-stream seed for every arm of a (landscape, budget, seed): the pairing of the test.
    obj = CountedObjective(land, task.budget, np.random.default_rng([task.seed, task.budget, idx, 7]))
    t0 = time.perf_counter()
    winner = land.coerce(ARM_FUNCS[task.arm](land, obj, task.budget, task.seed))
    dt = time.perf_counter() - t0
    return RunResult(
        landscape=task.landscape,
        budget=task.budget,
        seed=task.seed,
        arm=task.arm,
        regret=land.regret(winner),
        samples=obj.calls,
        seconds=dt,
        winner=winner,
    )


def _cost(t: Task) -> float:
    """Rough relative run time, so the pool starts the long runs first."""
    per = {"optuna_tpe": 30.0, "optuna_cmaes": 8.0, "ng_ngopt": 6.0, "ng_noisy1p1": 3.0}.get(t.arm, 1.0)
    return per * t.budget ** (2.0 if t.arm == "optuna_tpe" else 1.0)


def run_all_tasks(tasks: Sequence[Task], workers: int) -> list[RunResult]:
    ordered = sorted(tasks, key=_cost, reverse=True)
    out: list[RunResult] = []
    t0 = time.monotonic()
    if workers <= 1:
        for i, t in enumerate(ordered, 1):
            out.append(run_task(t))
            _progress(i, len(ordered), t0)
        return out
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futs = [pool.submit(run_task, t) for t in ordered]
        for i, f in enumerate(as_completed(futs), 1):
            out.append(f.result())
            _progress(i, len(ordered), t0)
    return out


def _progress(i: int, n: int, t0: float) -> None:
    if i == n or i % max(1, n // 20) == 0:
        print(f"  search_quality: {i}/{n} runs, {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)


# --- statistics --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmSummary:
    median: float
    ci95: tuple[float, float]
    mean: float
    p90: float
    seconds_median: float
    n: int


@dataclass(frozen=True)
class Comparison:
    """Paired Wilcoxon signed-rank test of ``optimize`` against one arm over seeds."""

    p_value: float | None  # None: every paired difference is zero
    median_diff: float  # median of (optimize − arm) regrets: negative = optimize better
    wins: int  # seeds where optimize's regret is lower
    ties: int
    losses: int


def summarise(
    results: Sequence[RunResult], rng: np.random.Generator
) -> dict[tuple[str, int], dict[str, Any]]:
    cells: dict[tuple[str, int], dict[str, Any]] = {}
    keys = sorted({(r.landscape, r.budget) for r in results}, key=lambda k: (k[1], k[0]))
    for key in keys:
        by_arm: dict[str, dict[int, RunResult]] = {}
        for r in results:
            if (r.landscape, r.budget) == key:
                by_arm.setdefault(r.arm, {})[r.seed] = r
        arms = [a for a in ARMS if a in by_arm]
        summaries: dict[str, ArmSummary] = {}
        for a in arms:
            reg = np.array([by_arm[a][s].regret for s in sorted(by_arm[a])])
            secs = [by_arm[a][s].seconds for s in by_arm[a]]
            summaries[a] = ArmSummary(
                median=float(np.median(reg)),
                ci95=bootstrap_median_ci(reg, rng=rng),
                mean=float(np.mean(reg)),
                p90=float(np.percentile(reg, 90)),
                seconds_median=float(np.median(secs)),
                n=int(reg.size),
            )
        comps: dict[str, Comparison] = {}
        if OURS in by_arm:
            for a in arms:
                if a == OURS:
                    continue
                seeds = sorted(set(by_arm[OURS]) & set(by_arm[a]))
                x = np.array([by_arm[OURS][s].regret for s in seeds])
                y = np.array([by_arm[a][s].regret for s in seeds])
                d = x - y
                p: float | None
                if np.all(np.abs(d) < 1e-12):
                    p = None
                else:
                    p = float(stats.wilcoxon(x, y, zero_method="wilcox", alternative="two-sided").pvalue)
                comps[a] = Comparison(
                    p_value=p,
                    median_diff=float(np.median(d)),
                    wins=int(np.sum(d < -1e-12)),
                    ties=int(np.sum(np.abs(d) <= 1e-12)),
                    losses=int(np.sum(d > 1e-12)),
                )
        cells[key] = {"arms": summaries, "vs_optimize": comps}
    return cells


# --- reporting ---------------------------------------------------------------------------------------


def markdown(
    cells: dict[tuple[str, int], dict[str, Any]], lands: Mapping[str, Landscape], ngopt: Mapping[str, str]
) -> str:
    out: list[str] = []
    budgets = sorted({b for _, b in cells})
    for b in budgets:
        keys = [k for k in cells if k[1] == b]
        arms = [a for a in ARMS if any(a in cells[k]["arms"] for k in keys)]
        n = max(s.n for k in keys for s in cells[k]["arms"].values())
        out.append(
            f"\n**Budget {b} noisy samples, {n} seeds** — median normalised true regret of each tool's "
            "own winner [bootstrap 95% CI]; lowest median in bold\n"
        )
        out.append("| landscape | " + " | ".join(arms) + " |")
        out.append("|---|" + "---|" * len(arms))
        for k in sorted(keys):
            s: dict[str, ArmSummary] = cells[k]["arms"]
            best = min(v.median for v in s.values())
            row = []
            for a in arms:
                if a not in s:
                    row.append("—")
                    continue
                v = s[a]
                txt = f"{v.median:.3f} [{v.ci95[0]:.3f}, {v.ci95[1]:.3f}]"
                row.append(f"**{txt}**" if v.median <= best + 1e-12 else txt)
            out.append(f"| {k[0]} | " + " | ".join(row) + " |")
        out.append(
            f"\nPaired Wilcoxon signed-rank, {OURS} vs each arm (budget {b}): p-value, then "
            f"{OURS}'s wins/ties/losses over seeds; ▼ = {OURS} lower regret (better), ▲ = higher\n"
        )
        others = [a for a in arms if a != OURS]
        out.append("| landscape | " + " | ".join(others) + " |")
        out.append("|---|" + "---|" * len(others))
        for k in sorted(keys):
            comps: dict[str, Comparison] = cells[k]["vs_optimize"]
            row = []
            for a in others:
                c = comps.get(a)
                if c is None:
                    row.append("—")
                    continue
                arrow = "▼" if c.median_diff < 0 or (c.median_diff == 0 and c.wins > c.losses) else "▲"
                if c.wins == c.losses and c.median_diff == 0:
                    arrow = "="
                p = "all tied" if c.p_value is None else f"p={c.p_value:.3g}"
                row.append(f"{p} {arrow} {c.wins}/{c.ties}/{c.losses}")
            out.append(f"| {k[0]} | " + " | ".join(row) + " |")
        secs = {
            a: np.median([cells[k]["arms"][a].seconds_median for k in keys if a in cells[k]["arms"]])
            for a in arms
        }
        out.append("\nMedian wall time per run (s): " + ", ".join(f"{a} {secs[a]:.2f}" for a in arms))
    out.append("\nLandscapes:")
    for land in lands.values():
        ex = land.extremes
        out.append(
            f"* `{land.name}`: {land.summary}. Noise: {land.noise_label}. "
            f"f_max = {ex.f_max:.4f}, f_min = {ex.f_min:.4f} (exact)."
        )
    if ngopt:
        out.append("\nNGOpt delegated to: " + "; ".join(f"{k}: {v}" for k, v in ngopt.items()))
    out.append(
        "\nOptuna CmaEsSampler runs CMA-ES on the numeric knobs only: categorical and bool knobs are "
        "sampled by its independent (random) fallback sampler."
    )
    return "\n".join(out)


# --- main --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="budget 300 only, 10 seeds")
    ap.add_argument("--budgets", default=None, help="comma-separated budgets (default 100,300,1000)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per cell (default 20; quick 10)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--landscapes", default=None, help="comma-separated subset")
    ap.add_argument("--out", default="search_quality", help="result name under bench/results/")
    ap.add_argument(
        "--reuse",
        default=None,
        help="result name under bench/results/ whose runs of the same (landscape, budget, seed, arm) are "
        "taken instead of re-run (e.g. the other tools' runs after an engine change: same noise streams)",
    )
    return ap.parse_args(argv)


def reused_runs(names: str, lands: Mapping[str, Landscape], tasks: Sequence[Task]) -> list[RunResult]:
    """The runs of ``tasks`` found in ``bench/results/<name>.json`` for each of the comma-separated
    ``names`` (the first file that has a run wins), for landscapes whose exact extremes there are the
    same as now (a changed landscape's old runs are never mixed in)."""
    found: dict[tuple[str, int, int, str], RunResult] = {}
    for name in names.split(","):
        data = json.loads((RESULTS_DIR / f"{name}.json").read_text())
        same = {
            n
            for n, d in data.get("landscapes", {}).items()
            if n in lands and d["f_max"] == lands[n].extremes.f_max and d["f_min"] == lands[n].extremes.f_min
        }
        wanted = {(t.landscape, t.budget, t.seed, t.arm) for t in tasks if t.landscape in same}
        for r in (RunResult(**r) for r in data.get("runs", [])):
            key = (r.landscape, r.budget, r.seed, r.arm)
            if key in wanted:
                found.setdefault(key, r)
    return list(found.values())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    budgets = (
        [int(b) for b in args.budgets.split(",")]
        if args.budgets
        else ([300] if args.quick else [100, 300, 1000])
    )
    seeds = args.seeds if args.seeds is not None else (10 if args.quick else 20)
    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise SystemExit(f"unknown arms: {sorted(unknown)}")
    lands = _landscapes()
    names = args.landscapes.split(",") if args.landscapes else list(lands)
    lands = {n: lands[n] for n in names}
    for land in lands.values():
        _ = land.extremes  # computed (and checked) once, before the workers fork
    machine = machine_info()
    print(machine_line(machine))
    tasks = [Task(n, b, s, a) for n in lands for b in budgets for s in range(seeds) for a in arms]
    print(
        f"search_quality: {len(tasks)} runs ({len(lands)} landscapes × budgets {budgets} × {seeds} seeds × "
        f"{len(arms)} arms), {args.workers} workers",
        flush=True,
    )
    reused = reused_runs(args.reuse, lands, tasks) if args.reuse else []
    done = {(r.landscape, r.budget, r.seed, r.arm) for r in reused}
    todo = [t for t in tasks if (t.landscape, t.budget, t.seed, t.arm) not in done]
    if reused:
        print(
            f"search_quality: {len(reused)} runs reused from {args.reuse}.json, {len(todo)} to run",
            flush=True,
        )
    t0 = time.monotonic()
    results = reused + run_all_tasks(todo, args.workers)
    elapsed = time.monotonic() - t0
    bad = [r for r in results if r.samples > r.budget]
    if bad:
        raise SystemExit(f"an arm exceeded its budget: {bad[0]}")
    cells = summarise(results, np.random.default_rng(20240601))
    cmd = command_line()
    ngopt = (
        {f"{n}@{b}": ngopt_choice(land, b) for n, land in lands.items() for b in budgets}
        if "ng_ngopt" in arms
        else {}
    )
    print(markdown(cells, lands, ngopt))
    rows = goals(cells, cmd, set(mixture_landscapes()))
    print()
    print(goal_rows_markdown(rows))
    print(f"\nsearch_quality: {elapsed:.0f} s wall")
    payload = {
        "schema": "bench.search_quality.v1",
        "mode": "quick" if args.quick else "full",
        "command": cmd,
        "machine": machine,
        "budgets": budgets,
        "seeds": seeds,
        "arms": arms,
        "elapsed_s": elapsed,
        "reused": {"from": args.reuse, "runs": len(reused)} if args.reuse else None,
        "ngopt_delegates_to": ngopt,
        "landscapes": {
            n: {
                "summary": land.summary,
                "noise": land.noise_label,
                "space": land.space,
                "regimes": list(land.regimes),
                "f_max": land.extremes.f_max,
                "f_min": land.extremes.f_min,
                "argmax": land.extremes.argmax,
            }
            for n, land in lands.items()
        },
        "cells": [
            {
                "landscape": k[0],
                "budget": k[1],
                "arms": {a: asdict(s) for a, s in v["arms"].items()},
                "optimize_vs": {a: asdict(c) for a, c in v["vs_optimize"].items()},
            }
            for k, v in cells.items()
        ],
        "runs": [asdict(r) for r in sorted(results, key=lambda r: (r.landscape, r.budget, r.arm, r.seed))],
        "goals": goals_payload(rows),
    }
    path = write_json(args.out, payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
