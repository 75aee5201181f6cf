"""Planted effect through the real pipeline: one knob really changes the workload by a known amount.

A generic domain ``planted`` whose command workload reads its knob file ``klr_planted_load`` (in a
temporary ``sysfs_root``) and runs ``stress-ng --cpu 1 --cpu-load <value>`` for the trial's duration,
printing the bogo-ops/s as ``throughput_ops``. The knob is a choice of the factory value L (the stock
arm) and 100: at 100 the stressor does 100/L times the work, a planted score of 100/L − 1 (L = 95:
+5.3%, the issue's figure; L = 80: +25%). Two more knobs nothing reads give the search something to
get wrong. What is measured, per stock load L (a daemon each):

* D-REAM: per concluded tournament, whether the generation's best carries the planted value, and
  whether it claims ``improves_over_baseline``; the D-REAM trials until the first such claim.
* PHASE: per window, whether a variant with the planted value was evaluated, and whether one was
  ``promoted`` (goal: ≥ 80% of windows), the window's trials; promotions of a variant without it
  (false ones) are counted apart.
* The noise that decides all of it: the coefficient of variation of the stock arm's throughput
  within a regime in PHASE, and the smallest effect the default plan can detect with 80% power at
  that noise (paired, 24 pairs per variant, 3 variants, two-sided 5% Bonferroni):
  ``MDE ≈ (z(1 − 0.05/6) + z(0.8)) · √2 · CV / √24``, a normal approximation for reading, not a claim.

Sizes: the daemon's defaults (population 6, 3 trials, racing, QTIME 2×4×3, 3 variants) except the
trial length (default 1 s; the four regimes run the same workload). A window is asked for when the
``k``-th tournament since the last one starts.

Run: ``.venv/bin/python bench/pipeline_planted.py [--quick] [--loads 95,80] [--windows N]
[--tournaments-per-window K] [--keep]``. Quick: L = 95, 2 windows, 1 tournament before each.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import textwrap
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pipeline as pl
from benchlib import (
    GoalResult,
    command_line,
    goal_rows_markdown,
    goals_payload,
    machine_info,
    machine_line,
    write_json,
)

DOMAIN = "planted"
KNOB = "cpu_load"
HIGH = 100
GOAL = 0.80
MIN_N = 5  # fewer complete windows than this: the goal is not judged
KNOB_PATH = "proc/sys/kernel/klr_planted_load"
UNREAD: dict[str, tuple[dict[str, Any], str]] = {  # declaration, factory text
    "unread_level": (
        {"type": "int", "low": 0, "high": 100, "path": "proc/sys/kernel/klr_planted_level"},
        "50\n",
    ),
    "unread_flag": ({"type": "bool", "path": "proc/sys/kernel/klr_planted_flag"}, "0\n"),
}

WORKLOAD = textwrap.dedent(
    """
    import json, os, subprocess, sys, tempfile
    import yaml
    load = int(open(sys.argv[1]).read().split()[0])
    seconds = max(1, round(float(os.environ["KLR_DURATION_S"])))
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "m.yaml")
        subprocess.run(["stress-ng", "--cpu", "1", "--cpu-load", str(load), "--timeout", f"{seconds}s",
                        "--metrics-brief", "--yaml", out, "--temp-path", d], check=True, capture_output=True)
        metrics = yaml.safe_load(open(out))["metrics"]
    rate = next(m["bogo-ops-per-second-real-time"] for m in metrics if m["stressor"] == "cpu")
    print(json.dumps({"throughput_ops": rate}))
    """
)


def setup(seed: int, trial_seconds: float, stock_load: int, outside_cpu: float | None) -> Path:
    wd = pl.new_workdir("kpl")
    (wd / "load.py").write_text(WORKLOAD)
    knobs: dict[str, dict[str, Any]] = {
        KNOB: {"type": "choice", "choices": [stock_load, HIGH], "path": KNOB_PATH}
    }
    knobs.update({name: decl for name, (decl, _) in UNREAD.items()})
    options = {
        "kind": "generic",
        "description": f"planted effect: cpu-load {stock_load} (stock) or {HIGH}",
        "knobs": knobs,
        "workload": {"command": [sys.executable, str(wd / "load.py"), str(wd / "root" / KNOB_PATH)]},
        "kpis": {"throughput_ops": "higher"},
    }
    cfg = pl.base_config(wd, DOMAIN, options, seed=seed, trial_seconds=trial_seconds, outside_cpu=outside_cpu)
    files = {KNOB_PATH: f"{stock_load}\n", **{decl["path"]: text for decl, text in UNREAD.values()}}
    regimes = "".join(f"{r}: {{duration: {trial_seconds:g}, stressors: []}}\n" for r in pl.REGIMES)
    return pl.write_tree(wd, files, {DOMAIN: regimes}, cfg)


@dataclass
class Window:
    run_id: str
    complete: bool
    trials_run: int | None
    tested: int
    tested_planted: int
    promoted_planted: int
    promoted_null: int


@dataclass
class Condition:
    stock_load: int
    seed: int
    planted_score: float = 0.0
    log: pl.RunLog = field(default_factory=pl.RunLog)
    tournaments_done: int = 0
    not_concluded: list[str] = field(default_factory=list)
    best_has_it: pl.Rate | None = None  # of generation-best packs, those carrying the planted value
    best_claims_it: pl.Rate | None = None  # ... and claiming improves_over_baseline
    dream_trials_to_first_claim: int | None = None
    dream_trials: int = 0
    windows: list[Window] = field(default_factory=list)
    found: pl.Rate | None = None  # complete windows promoting a planted variant
    found_when_tested: pl.Rate | None = None  # ... among windows that evaluated one
    false_promotions: int = 0
    stock_cv: float | None = None
    mde: float | None = None


def has_it(genome: dict[str, Any] | None) -> bool:
    return genome is not None and int(genome.get(KNOB, -1)) == HIGH


def mde(cv: float, pairs: int = 24, variants: int = 3) -> float:
    from scipy import stats

    z = float(stats.norm.ppf(1 - 0.05 / (2 * variants)) + stats.norm.ppf(0.8))
    return z * math.sqrt(2) * cv / math.sqrt(pairs)


def summarise_dream(c: Condition, state: Path) -> None:
    c.tournaments_done, c.not_concluded = pl.tournaments(state, DOMAIN)
    ps = pl.packs(state, DOMAIN)
    c.best_has_it = pl.rate(sum(has_it(p.get("genome")) for p in ps), len(ps))
    claims = [p for p in ps if has_it(p.get("genome")) and pl.improves(p)]
    c.best_claims_it = pl.rate(len(claims), len(ps))
    tr = [t for t in pl.trials(state) if t.get("state") != "phase"]
    c.dream_trials = len(tr)
    if claims:
        first = min(int(p["generation"]) for p in claims)
        # The claim is known when its pack is written: count the D-REAM trials up to then.
        written = [e for e in pl.read_jsonl(state / "logs" / "events.jsonl")
                   if e.get("event") == "tournament_done" and e.get("generation") == first]  # fmt: skip
        if written:
            c.dream_trials_to_first_claim = sum(1 for t in tr if float(t["ts"]) <= float(written[0]["ts"]))


def summarise_phase(c: Condition, state: Path) -> None:
    genomes = {x["cand_id"]: x.get("genome") for x in pl.candidate_lines(state, DOMAIN)}
    for res in pl.phase_results(state):
        tested = pl.tested_variants(res, DOMAIN)
        prom = pl.promoted(res, DOMAIN)
        c.windows.append(
            Window(
                run_id=str(res.get("run_id")),
                complete=bool(res.get("complete")),
                trials_run=(res.get("trials") or {}).get("run"),
                tested=len(tested),
                tested_planted=sum(has_it(genomes.get(t)) for t in tested),
                promoted_planted=sum(has_it(v.get("genome")) for v in prom),
                promoted_null=sum(not has_it(v.get("genome")) for v in prom),
            )
        )
    # A window the daemon cut short (host too busy, window closed) is not a default-size window.
    full = [w for w in c.windows if w.complete]
    c.found = pl.rate(sum(w.promoted_planted > 0 for w in full), len(full))
    when = [w for w in full if w.tested_planted > 0]
    c.found_when_tested = pl.rate(sum(w.promoted_planted > 0 for w in when), len(when))
    c.false_promotions = sum(w.promoted_null for w in c.windows)
    # Noise: the stock arm's throughput within each (window, regime) in PHASE, clean trials only.
    spans = pl.phase_spans(state)
    groups: dict[tuple[int, str], list[float]] = {}
    for t in pl.trials(state):
        v = (t.get("kpis") or {}).get("throughput_ops")
        if (
            t.get("cand_id") != "stock"
            or not t.get("ok")
            or t.get("contaminated")
            or not isinstance(v, int | float)
        ):
            continue
        at = float(t["started_at"])
        for i, (a, b) in enumerate(spans):
            if a <= at <= b:
                groups.setdefault((i, str(t.get("regime"))), []).append(float(v))
    cvs = [float(np.std(v, ddof=1) / np.mean(v)) for v in groups.values() if len(v) >= 3 and np.mean(v) > 0]
    if cvs:
        c.stock_cv = float(np.median(cvs))
        c.mde = mde(c.stock_cv)


def run_condition(c: Condition, plan: pl.Schedule, args: argparse.Namespace) -> None:
    cfg = setup(c.seed, args.trial_seconds, c.stock_load, args.outside_cpu)
    tag = f"klr-pl-{uuid.uuid4().hex[:10]}"

    def say(msg: str) -> None:
        print(f"  [load {c.stock_load}] {msg}", flush=True)

    with pl.daemon(cfg, tag, keep=args.keep) as d:
        try:
            pl.run_schedule(d, plan, c.log, say=say)
        except pl.PipelineError as e:
            c.log.notes.append(f"INCOMPLETE: {e}")
            print(f"pipeline_planted [load {c.stock_load}]: {e}", file=sys.stderr)
        summarise_dream(c, d.state)
        summarise_phase(c, d.state)
        if args.keep:
            say(f"kept {d.workdir}")


def goals(conds: list[Condition], cmd: str) -> list[GoalResult]:
    rows = []
    for c in conds:
        effect = f"cpu-load {c.stock_load} → {HIGH}, +{c.planted_score:.1%}"
        figure = f"windows promoting the planted variant ({effect})"
        r = c.found
        if r is None or r.rate is None or r.ci95 is None:
            rows.append(GoalResult("pipeline planted", figure, "not measured", "≥ 80%", None, "", cmd))
            continue
        noise = "" if c.mde is None else f"; stock CV {c.stock_cv:.1%}, detectable ≈ {c.mde:.1%}"
        margin = f"{100 * (r.rate - GOAL):+.1f} points (lower 95% bound {100 * r.ci95[0]:.1f}%){noise}"
        met = None if r.n < MIN_N else r.rate >= GOAL
        rows.append(GoalResult("pipeline planted", figure, r.text(), "≥ 80%", met, margin, cmd))
    return rows


def markdown(conds: list[Condition]) -> str:
    out = ["| stock load (planted score) | tournaments concluded | D-REAM best has it | best claims it | "
           "D-REAM trials to first claim | windows promoting it | ... when evaluated | false promotions | "
           "PHASE trials per window | stock CV, detectable effect |",
           "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in conds:
        r = [x.text() if x else "—" for x in (c.best_has_it, c.best_claims_it, c.found, c.found_when_tested)]
        per = [w.trials_run for w in c.windows if w.trials_run is not None]
        noise = "—" if c.stock_cv is None or c.mde is None else f"{c.stock_cv:.1%}, {c.mde:.1%}"
        first = "—" if c.dream_trials_to_first_claim is None else str(c.dream_trials_to_first_claim)
        out.append(
            f"| {c.stock_load} (+{c.planted_score:.1%}) | {c.tournaments_done - len(c.not_concluded)} of "
            f"{c.tournaments_done} | {r[0]} | {r[1]} | {first} (of {c.dream_trials}) | {r[2]} | {r[3]} | "
            f"{c.false_promotions} | {', '.join(map(str, per)) or '—'} | {noise} |"
        )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="planted-effect power through the real daemon")
    ap.add_argument("--quick", action="store_true", help="stock load 95, 2 windows, 1 tournament before each")
    ap.add_argument("--loads", default=None, help="stock cpu-load values, one daemon each (full: 95,80)")
    ap.add_argument("--windows", type=int, default=None, help="windows per stock load (full: 10)")
    ap.add_argument("--tournaments-per-window", type=int, default=1)
    ap.add_argument("--trial-seconds", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=29)
    ap.add_argument(
        "--outside-cpu",
        type=float,
        default=None,
        help="dream.contamination.outside_cpu for the daemon (default: the daemon's own default)",
    )
    ap.add_argument("--budget-s", type=float, default=None, help="wall-time budget per daemon (quick: 480)")
    ap.add_argument("--keep", action="store_true", help="keep each daemon's directory")
    args = ap.parse_args(argv)
    if shutil.which("stress-ng") is None:
        raise SystemExit("stress-ng is not installed: sudo apt-get install -y stress-ng")
    pl.on_sigterm_exit()
    loads = [int(x) for x in (args.loads or ("95" if args.quick else "95,80")).split(",") if x]
    if any(not 1 <= x < HIGH for x in loads):
        raise SystemExit(f"--loads: each stock load must be in 1..{HIGH - 1}")
    windows = args.windows or (2 if args.quick else 10)
    budget = args.budget_s or (480.0 if args.quick else 86400.0)
    plan = pl.Schedule(args.tournaments_per_window, windows, deadline_s=budget)
    machine = machine_info()
    print(machine_line(machine), flush=True)
    conds = [Condition(x, args.seed + i, planted_score=HIGH / x - 1) for i, x in enumerate(loads)]
    t0 = time.monotonic()
    for c in conds:
        print(f"stock cpu-load {c.stock_load}: {windows} window(s)", flush=True)
        run_condition(c, plan, args)
    elapsed = time.monotonic() - t0
    cmd = command_line()
    rows = goals(conds, cmd)
    print(markdown(conds))
    print()
    print(goal_rows_markdown(rows))
    print(f"\npipeline_planted: {elapsed:.0f} s wall")
    payload = {
        "schema": "bench.pipeline_planted.v1",
        "mode": "quick" if args.quick else "full",
        "command": cmd,
        "machine": machine,
        "elapsed_s": elapsed,
        "sizes": {
            "windows": windows,
            "tournaments_per_window": args.tournaments_per_window,
            "trial_seconds": args.trial_seconds,
            "daemon": "defaults: population 6, trials 3, QTIME 2x4x3, max_variants 3",
        },
        "conditions": [asdict(c) for c in conds],
        "goals": goals_payload(rows),
    }
    print(f"wrote {write_json('pipeline_planted', payload)}")
    incomplete = any(n.startswith("INCOMPLETE") for c in conds for n in c.log.notes)
    clean = all(c.log.exit_code == 0 and c.log.leftover_stress_ng == 0 for c in conds)
    return 0 if clean and not incomplete else 1


if __name__ == "__main__":
    raise SystemExit(main())
