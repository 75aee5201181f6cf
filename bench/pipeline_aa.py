"""A/A through the real pipeline: knobs that nothing reads, so every candidate equals stock in effect.

A generic domain ``aa`` declares three system knobs (an int, an int choice, a bool) whose files sit in
a temporary ``sysfs_root``; its workload is the regimes' own stress-ng stressors (the ``cpu`` domain's
shapes, with the latency probe), which never look at those files. Every difference the daemon sees
between two arms is therefore noise, and every claim is a false one:

* D-REAM: the share of generation-best packs (``gen<N>_best.json``) with
  ``improves_over_baseline`` (the figure the user sees), and beside it the share of all scored
  candidates whose own ``improves_over_baseline`` was true in ``fitness_history.jsonl`` (before any
  correction for being the best of several);
* PHASE: the share of evaluated variants (``metrics.aa.variants``) that were ``promoted``.

Each with a Wilson 95% interval, in two conditions, each its own daemon: **quiet** (only what else
runs on the host) and **load** (an outside stress-ng on every CPU, switched on and off at random,
stretches of 5–40 s: see ``pipeline.OutsideLoad``). Goal (issue 13): ≤ 5% each, in both
conditions (judged from 20 tests on).

Sizes are the daemon's defaults (population 6, 3 trials, racing, QTIME 2×4×3, 3 variants) except
the trial length (``dream.trial_seconds`` = ``phase.trial_seconds``, default 1 s). A window is asked
for when the ``k``-th tournament since the last one starts (it drains that tournament first).

Run: ``.venv/bin/python bench/pipeline_aa.py [--quick] [--windows N] [--tournaments-per-window K]
[--only quiet,load] [--outside-cpu F] [--budget-s S] [--keep]``. Quick: 1 window after 1 concluded
tournament per condition, at most 8 min each (about 2 min when tournaments conclude). Full: 12
windows after 2 concluded tournaments each, per condition (about 1 h each on a quiet host).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
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

DOMAIN = "aa"
GOAL = 0.05
MIN_N = 20  # fewer tests than this: the goal is not judged (0 of 1 would "meet" it)
KNOBS: dict[str, tuple[dict[str, Any], str]] = {  # declaration, factory text
    "unread_level": ({"type": "int", "low": 0, "high": 100, "path": "proc/sys/kernel/klr_aa_level"}, "50\n"),
    "unread_mode": (
        {"type": "choice", "choices": [1, 2, 4, 8], "path": "proc/sys/kernel/klr_aa_mode"},
        "1\n",
    ),
    "unread_flag": ({"type": "bool", "path": "proc/sys/kernel/klr_aa_flag"}, "0\n"),
}


def regimes_text(seconds: float) -> str:
    """The cpu domain's regime shapes (instances ``auto`` = one per CPU), with the latency probe."""
    d = f"duration: {seconds:g}, probe: true"
    return "\n".join(
        [
            f"idle: {{{d}, stressors: [{{name: cpu, instances: 1, options: {{cpu-load: 10}}}}]}}",
            f"normal: {{{d}, stressors: [{{name: cpu, instances: auto, options: {{cpu-load: 50}}}}]}}",
            f"stress: {{{d}, stressors: [{{name: cpu, instances: auto}}]}}",
            f"mixed: {{{d}, stressors: [{{name: cpu, instances: 1}}, "
            "{name: vm, instances: 1, options: {vm-bytes: 64M}}]}",
            "",
        ]
    )


def setup(seed: int, trial_seconds: float, outside_cpu: float | None) -> Path:
    wd = pl.new_workdir("kaa")
    options = {
        "kind": "generic",
        "description": "A/A: knobs that nothing reads",
        "knobs": {name: decl for name, (decl, _) in KNOBS.items()},
        "workload": "stressors",
    }
    cfg = pl.base_config(wd, DOMAIN, options, seed=seed, trial_seconds=trial_seconds, outside_cpu=outside_cpu)
    files = {decl["path"]: text for decl, text in KNOBS.values()}
    return pl.write_tree(wd, files, {DOMAIN: regimes_text(trial_seconds)}, cfg)


@dataclass
class Condition:
    name: str
    seed: int
    log: pl.RunLog = field(default_factory=pl.RunLog)
    packs: pl.Rate | None = None
    candidates: pl.Rate | None = None
    promoted: pl.Rate | None = None
    windows_complete: int = 0
    tournaments_done: int = 0
    not_concluded: list[str] = field(default_factory=list)  # reasons of tournaments stopped unconcluded
    trials: int = 0
    failed_trials: int = 0
    contaminated_trials: int | None = None  # absent while the daemon records no such field
    trials_under_load: int | None = None
    load_on_share: float | None = None
    outside_cpu_median: float | None = None
    false_claims: list[dict[str, Any]] = field(default_factory=list)  # the claimed packs, in brief
    false_promotions: list[dict[str, Any]] = field(default_factory=list)


def summarise(c: Condition, state: Path, load: pl.OutsideLoad | None) -> None:
    c.tournaments_done, c.not_concluded = pl.tournaments(state, DOMAIN)
    ps = pl.packs(state, DOMAIN)
    c.packs = pl.rate(sum(pl.improves(p) for p in ps), len(ps))
    for p in ps:
        if pl.improves(p):
            agg = p.get("aggregate") or {}
            keys = ("generation", "cand_id", "selection_ci")
            brief = {k: p.get(k) for k in keys} | {k: agg.get(k) for k in ("score_v2", "score_ci95")}
            c.false_claims.append(brief)
    cl = [x for x in pl.candidate_lines(state, DOMAIN) if x.get("score") is not None]
    c.candidates = pl.rate(sum(bool(x.get("improves_over_baseline")) for x in cl), len(cl))
    tested = promoted = 0
    for res in pl.phase_results(state):
        c.windows_complete += bool(res.get("complete"))
        tested += len(pl.tested_variants(res, DOMAIN))
        for v in pl.promoted(res, DOMAIN):
            promoted += 1
            c.false_promotions.append(
                {"run_id": res.get("run_id"), "cand_id": v.get("cand_id"), "score_v2": v.get("score_v2"),
                 "score_ci95": v.get("score_ci95")}
            )  # fmt: skip
    c.promoted = pl.rate(promoted, tested)
    tr = pl.trials(state)
    c.trials = len(tr)
    c.failed_trials = sum(not t.get("ok", True) for t in tr)
    if any("contaminated" in t for t in tr):
        c.contaminated_trials = sum(bool(t.get("contaminated")) for t in tr)
    shares = pl.trial_outside_share(tr)
    c.outside_cpu_median = float(np.median(shares)) if shares else None
    if load is not None and tr:
        c.trials_under_load = sum(pl.overlapped(t, load.intervals) for t in tr)
        t0 = min(float(t["started_at"]) for t in tr)
        t1 = max(float(t["started_at"]) + float(t["wall_s"]) for t in tr)
        c.load_on_share = load.on_share(t0, t1)


def run_condition(c: Condition, plan: pl.Schedule, args: argparse.Namespace) -> None:
    cfg = setup(c.seed, args.trial_seconds, args.outside_cpu)
    tag = f"klr-aa-{uuid.uuid4().hex[:10]}"

    def say(msg: str) -> None:
        print(f"  [{c.name}] {msg}", flush=True)

    with pl.daemon(cfg, tag, keep=args.keep) as d:
        load = None
        if c.name == "load":
            rng = np.random.default_rng([c.seed, 1])
            load = pl.OutsideLoad(rng, f"{tag}-outside", span_s=(5.0, 40.0), workers=os.cpu_count() or 1)
        try:
            if load is not None:
                load.__enter__()
            pl.run_schedule(d, plan, c.log, say=say)
        except pl.PipelineError as e:
            c.log.notes.append(f"INCOMPLETE: {e}")
            print(f"pipeline_aa [{c.name}]: {e}", file=sys.stderr)
        finally:
            if load is not None:
                load.close()
        summarise(c, d.state, load)
        if args.keep:
            say(f"kept {d.workdir}")


def goals(conds: list[Condition], cmd: str) -> list[GoalResult]:
    rows = []
    for c in conds:
        for figure, r in (
            ("generation-best packs claiming improves_over_baseline", c.packs),
            ("PHASE variants promoted", c.promoted),
        ):
            if r is None or r.rate is None or r.ci95 is None:
                rows.append(
                    GoalResult("pipeline A/A", f"{figure} ({c.name})", "not measured", "≤ 5%", None, "", cmd)
                )
                continue
            margin = f"{100 * (r.rate - GOAL):+.1f} points (upper 95% bound {100 * r.ci95[1]:.1f}%)"
            met = None if r.n < MIN_N else r.rate <= GOAL
            rows.append(
                GoalResult("pipeline A/A", f"{figure} ({c.name})", r.text(), "≤ 5%", met, margin, cmd)
            )
    return rows


def markdown(conds: list[Condition]) -> str:
    out = ["| condition | best packs claiming | all candidates claiming (uncorrected) | PHASE promoted | "
           "tournaments concluded | windows complete | trials (failed, contaminated, under outside load) | "
           "outside load on |",
           "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in conds:
        r = [x.text() if x else "—" for x in (c.packs, c.candidates, c.promoted)]
        cont = "—" if c.contaminated_trials is None else str(c.contaminated_trials)
        under = "—" if c.trials_under_load is None else str(c.trials_under_load)
        on = "—" if c.load_on_share is None else f"{100 * c.load_on_share:.0f}% of the time"
        concluded = f"{c.tournaments_done - len(c.not_concluded)} of {c.tournaments_done}"
        out.append(
            f"| {c.name} | {r[0]} | {r[1]} | {r[2]} | {concluded} | "
            f"{c.windows_complete} of {c.log.windows_collapsed} | "
            f"{c.trials} ({c.failed_trials}, {cont}, {under}) | {on} |"
        )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="A/A false-claim rates through the real daemon")
    ap.add_argument("--quick", action="store_true", help="1 window after 1 tournament per condition")
    ap.add_argument("--windows", type=int, default=None, help="windows per condition (full: 12)")
    ap.add_argument("--tournaments-per-window", type=int, default=None, help="full: 2")
    ap.add_argument("--trial-seconds", type=float, default=1.0)
    ap.add_argument("--only", default="quiet,load", help="subset of quiet,load")
    ap.add_argument("--seed", type=int, default=13)
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
    windows = args.windows or (1 if args.quick else 12)
    per = args.tournaments_per_window or (1 if args.quick else 2)
    budget = args.budget_s or (480.0 if args.quick else 86400.0)
    plan = pl.Schedule(tournaments_per_window=per, windows=windows, deadline_s=budget)
    machine = machine_info()
    print(machine_line(machine), flush=True)
    conds = [
        Condition(n, args.seed + i) for i, n in enumerate(("quiet", "load")) if n in args.only.split(",")
    ]
    t0 = time.monotonic()
    for c in conds:
        print(f"{c.name}: {windows} window(s), {per} tournament(s) before each", flush=True)
        run_condition(c, plan, args)
    elapsed = time.monotonic() - t0
    cmd = command_line()
    rows = goals(conds, cmd)
    print(markdown(conds))
    print()
    print(goal_rows_markdown(rows))
    print(f"\npipeline_aa: {elapsed:.0f} s wall")
    mode = "quick" if args.quick else "full"
    payload = {
        "schema": "bench.pipeline_aa.v1",
        "mode": mode,
        "command": cmd,
        "machine": machine,
        "elapsed_s": elapsed,
        "sizes": {
            "windows": windows,
            "tournaments_per_window": per,
            "trial_seconds": args.trial_seconds,
            "daemon": "defaults: population 6, trials 3, QTIME 2x4x3, max_variants 3",
        },
        "conditions": [asdict(c) for c in conds],
        "goals": goals_payload(rows),
    }
    print(f"wrote {write_json('pipeline_aa', payload)}")
    incomplete = any(n.startswith("INCOMPLETE") for c in conds for n in c.log.notes)
    clean = all(c.log.exit_code == 0 and c.log.leftover_stress_ng == 0 for c in conds)
    return 0 if clean and not incomplete else 1


if __name__ == "__main__":
    raise SystemExit(main())
