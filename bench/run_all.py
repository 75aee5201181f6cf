"""Run every benchmark, one after the other, and print the table of goals.

Each benchmark runs as its own process, strictly in sequence (the overhead benchmark measures the
real daemon and must never share the machine with another benchmark). Each writes
``bench/results/<name>.json``; this script then prints every measured figure against its goal
from the issue and writes ``bench/results/summary.json`` and ``bench/results/summary.md``.

Run: ``.venv/bin/python bench/run_all.py [--quick]`` (``make bench`` / ``make bench-quick``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from benchlib import (
    BENCH_DIR,
    RESULTS_DIR,
    GoalResult,
    goal_rows_markdown,
    machine_info,
    machine_line,
    write_json,
)

BENCHMARKS = ("search_quality", "racing", "overhead", "pipeline_aa", "pipeline_planted", "fleet_scaling")


@dataclass(frozen=True)
class Ran:
    name: str
    command: str
    returncode: int
    seconds: float


def run_one(name: str, quick: bool) -> Ran:
    script = BENCH_DIR / f"{name}.py"
    argv = [sys.executable, str(script), *(["--quick"] if quick else [])]
    shown = " ".join([".venv/bin/python", f"bench/{name}.py", *(["--quick"] if quick else [])])
    print(f"\n=== {shown}", flush=True)
    t0 = time.monotonic()
    rc = subprocess.run(argv, cwd=BENCH_DIR.parent, check=False).returncode
    return Ran(name, shown, rc, time.monotonic() - t0)


def load_goals(name: str) -> tuple[list[GoalResult], str | None]:
    path = RESULTS_DIR / f"{name}.json"
    if not path.exists():
        return [], None
    data = json.loads(path.read_text())
    return [GoalResult(**g) for g in data.get("goals", [])], data.get("mode")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="run all benchmarks in sequence and print the goals table")
    ap.add_argument("--quick", action="store_true", help="each benchmark's quick mode (minutes)")
    ap.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset, run in this order")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        raise SystemExit(f"unknown benchmarks: {sorted(unknown)}")
    machine = machine_info()
    print(machine_line(machine), flush=True)
    ran = [run_one(n, args.quick) for n in names]
    rows: list[GoalResult] = []
    modes: dict[str, str | None] = {}
    for r in ran:
        goals, mode = load_goals(r.name)
        modes[r.name] = mode
        if r.returncode != 0:
            rows.append(
                GoalResult(
                    r.name, "benchmark run", f"exit code {r.returncode}", "exit 0", False, "", r.command
                )
            )
        rows.extend(
            GoalResult(g.benchmark, g.figure, g.measured, g.goal, g.met, g.margin, r.command) for g in goals
        )
    table = goal_rows_markdown(rows)
    timing = ", ".join(f"{r.name} {r.seconds:.0f} s" for r in ran)
    met = sum(1 for g in rows if g.met)
    missed = sum(1 for g in rows if g.met is False)
    title = "quick" if args.quick else "full"
    md = "\n".join(
        [
            f"## Benchmark goals ({title} run)",
            "",
            machine_line(machine),
            "",
            table,
            "",
            f"{met} met, {missed} not met. Wall time: {timing}.",
            "",
            "Reproduce a row: the command in its benchmark's section of bench/README.md "
            + "("
            + "; ".join(f"{r.name}: `{r.command}`" for r in ran)
            + ").",
        ]
    )
    print("\n" + md)
    (RESULTS_DIR / "summary.md").write_text(md + "\n")
    write_json(
        "summary",
        {
            "schema": "bench.summary.v1",
            "mode": title,
            "machine": machine,
            "runs": [asdict(r) for r in ran],
            "modes": modes,
            "goals": [asdict(g) for g in rows],
        },
    )
    return 0 if all(r.returncode == 0 for r in ran) else 1


if __name__ == "__main__":
    raise SystemExit(main())
