"""Fault-injection campaign: does the daemon survive hostile inputs, files, clients, signals and tools?

Drives the product only through its public contract — ``python -m kloros_orchestrator`` subprocesses,
the files under ``state_dir``, the status socket, signals — each case in a sandbox of its own
(``tempfile.mkdtemp``: its config, state directory, a temporary ``sysfs_root`` with one knob, files
outside the state directory that must not change), every wait bounded by a timeout. Five classes,
each input generated from ``--seed``:

* ``config``   hostile dream.yaml / regimes / caps through ``validate`` and ``run --once``
  (``faults_config.py``);
* ``state``    hostile files under ``state_dir`` before a start, and a second start (``faults_state.py``);
* ``socket``   hostile clients of the status socket (``faults_socket.py``);
* ``signals``  bursts of SIGTERM/SIGINT/SIGHUP at random moments (``faults_procs.py``);
* ``stressng`` a fake ``stress-ng`` first on PATH that fails in every documented way (``faults_procs.py``).

Each case is classified SURVIVED or FAILED with a one-line reason (the criteria are in each module's
docstring). A case that outlives its timeout is killed and FAILED ("hang"). Every process a case
starts carries ``KLR_FAULT_TAG=<uuid>``; whatever is left with that tag is killed, and every sandbox
is removed. Results: ``bench/results/faults.json``. Exit 0 when every case survived, 1 otherwise.

Run: ``.venv/bin/python bench/faults.py [--quick] [--seed N] [--only config,state,...] [--jobs N]``.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import Any

import faults_config
import faults_procs
import faults_socket
import faults_state
from benchlib import REPO_DIR, command_line, machine_info, machine_line, write_json
from faults_lib import Case, Sandbox, fail, kill_tagged, raise_fd_limit, short

CLASSES: dict[str, Callable[[random.Random, int], list[Case]]] = {
    "config": faults_config.cases,
    "state": faults_state.cases,
    "socket": faults_socket.cases,
    "signals": faults_procs.signal_cases,
    "stressng": faults_procs.stressng_cases,
}
# Inputs per class: full (a few hundred in all, < 10 min on 2 CPUs) and quick (~60, < 2 min).
SIZES = {
    "full": {"config": 110, "state": 150, "socket": 24, "signals": 30, "stressng": 30},
    "quick": {"config": 18, "state": 16, "socket": 6, "signals": 10, "stressng": 10},
}
WATCHDOG_SLACK_S = 30.0


@dataclass(frozen=True)
class Outcome:
    cls: str
    name: str
    survived: bool
    reason: str
    seconds: float


def interleave(cases: list[Case], classes: list[str]) -> list[Case]:
    """One case of each class in turn, the slowest first (the pool's tail stays short)."""
    queues = {c: sorted((x for x in cases if x.cls == c), key=lambda x: -x.timeout) for c in classes}
    out: list[Case] = []
    while any(queues.values()):
        for c in classes:
            if queues[c]:
                out.append(queues[c].pop(0))
    return out


def run_case(case: Case, box: dict[str, Any], keep: bool = False) -> Outcome:
    t0 = time.monotonic()
    sb = Sandbox.create()
    box["sb"], box["t0"] = sb, t0
    try:
        try:
            v = case.fn(sb)
        except Exception as e:  # a harness error is a FAILED case, never a crashed campaign
            v = fail(f"harness error: {type(e).__name__}: {short(str(e), 100)}")
        if sb.overdue:
            v = fail(f"hang: case killed after {case.timeout + WATCHDOG_SLACK_S:.0f} s")
    finally:
        sb.cleanup(keep)
    reason = v.reason if keep else anonymise(v.reason, sb)
    if keep:
        reason += f" [kept {sb.wd}]"
    return Outcome(case.cls, case.name, v.survived, reason, time.monotonic() - t0)


def anonymise(text: str, sb: Sandbox) -> str:
    """Reasons name no machine path: sandboxes become <sandbox>, this checkout <repo>."""
    text = text.replace(str(sb.wd), "<sandbox>").replace(str(REPO_DIR), "<repo>")
    return re.sub(re.escape(tempfile.gettempdir()) + r"/kf\w+", "<sandbox>", text)


def run_all(cases: list[Case], jobs: int, progress: bool, keep: bool = False) -> list[Outcome]:
    """Run every case on ``jobs`` threads; a watchdog kills the processes of a case past its time."""
    outcomes: list[Outcome] = []
    started: dict[Future[Outcome], tuple[Case, dict[str, Any]]] = {}
    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for case in cases:
            box: dict[str, Any] = {}
            started[pool.submit(run_case, case, box, keep)] = (case, box)
        pending = set(started)
        while pending:
            done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            for fut in done:
                out = fut.result()
                with lock:
                    outcomes.append(out)
                if progress:
                    mark = "ok  " if out.survived else "FAIL"
                    print(
                        f"  [{len(outcomes):3d}/{len(cases)}] {mark} {out.cls}: {short(out.name, 60)}"
                        f" — {short(out.reason, 90)} ({out.seconds:.1f} s)",
                        flush=True,
                    )
            _watchdog(started, pending)
    return outcomes


def _watchdog(started: dict[Future[Outcome], tuple[Case, dict[str, Any]]], pending: set[Any]) -> None:
    now = time.monotonic()
    for fut in pending:
        case, box = started[fut]
        sb, t0 = box.get("sb"), box.get("t0")
        if sb is None or t0 is None or sb.overdue or now - t0 <= case.timeout + WATCHDOG_SLACK_S:
            continue
        sb.overdue = True  # every wait of the case now ends at once, as a hang
        kill_tagged(sb.tag)
        for proc in sb.procs:
            if proc.poll() is None:
                proc.kill()


# --- report ------------------------------------------------------------------------------------------


def summarise(outcomes: list[Outcome], classes: list[str]) -> dict[str, dict[str, int]]:
    return {
        c: {
            "tried": sum(1 for o in outcomes if o.cls == c),
            "survived": sum(1 for o in outcomes if o.cls == c and o.survived),
        }
        for c in classes
    }


def first_per_class(failed: list[Outcome], classes: list[str], n: int) -> list[Outcome]:
    """Up to ``n`` failures, one from each class in turn, so that no class hides the others."""
    queues = {c: [o for o in failed if o.cls == c] for c in classes}
    out: list[Outcome] = []
    while len(out) < n and any(queues.values()):
        for c in classes:
            if queues[c] and len(out) < n:
                out.append(queues[c].pop(0))
    return sorted(out, key=lambda o: classes.index(o.cls))


def print_report(outcomes: list[Outcome], classes: list[str], wall: float) -> None:
    per = summarise(outcomes, classes)
    print("\nclass      tried  survived  failed")
    for c, n in per.items():
        print(f"{c:<10} {n['tried']:5d}  {n['survived']:8d}  {n['tried'] - n['survived']:6d}")
    tried, surv = sum(n["tried"] for n in per.values()), sum(n["survived"] for n in per.values())
    print(f"{'total':<10} {tried:5d}  {surv:8d}  {tried - surv:6d}")
    failed = [o for o in outcomes if not o.survived]
    if failed:
        print(
            f"\nFAILED cases (20 of {len(failed)}, taken in turn from each class):"
            if len(failed) > 20
            else f"\nFAILED cases ({len(failed)}):"
        )
        for o in first_per_class(failed, classes, 20):
            print(f"  {o.cls}: {short(o.name, 70)}\n      → {short(o.reason, 150)}")
    print(f"\nwall time {wall:.0f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="~60 inputs, under 2 minutes")
    p.add_argument("--seed", type=int, default=1, help="seed of every generated input (default 1)")
    p.add_argument(
        "--only", default=",".join(CLASSES), help=f"comma-separated classes ({', '.join(CLASSES)})"
    )
    p.add_argument("--jobs", type=int, default=3, help="cases run at once (default 3)")
    p.add_argument("--out", default="faults", help="results file name under bench/results/ (default faults)")
    p.add_argument("--keep", action="store_true", help="keep every sandbox (processes are still killed)")
    p.add_argument("--match", default="", help="only inputs whose name contains this text (debugging)")
    p.add_argument("-q", "--no-progress", action="store_true", help="no line per finished case")
    args = p.parse_args(argv)
    classes = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = [c for c in classes if c not in CLASSES]
    if unknown:
        p.error(f"unknown class(es) {', '.join(unknown)} (known: {', '.join(CLASSES)})")
    mode = "quick" if args.quick else "full"
    machine = machine_info()
    print(machine_line(machine))
    raise_fd_limit()
    t0 = time.monotonic()
    cases: list[Case] = []
    for c in classes:
        cases += CLASSES[c](random.Random(f"{args.seed}:{c}"), SIZES[mode][c])
    cases = interleave([x for x in cases if args.match in x.name], classes)
    print(
        f"{len(cases)} inputs ({mode}, seed {args.seed}, {args.jobs} at once): "
        + ", ".join(f"{c} {sum(1 for x in cases if x.cls == c)}" for c in classes),
        flush=True,
    )
    try:
        outcomes = run_all(cases, max(1, args.jobs), not args.no_progress, args.keep)
    finally:
        faults_state.cleanup_template()
    rank = {(c.cls, c.name): i for i, c in enumerate(cases)}
    outcomes.sort(key=lambda o: rank.get((o.cls, o.name), 0))
    wall = time.monotonic() - t0
    print_report(outcomes, classes, wall)
    write_json(
        args.out,
        {
            "benchmark": "faults",
            "mode": mode,
            "seed": args.seed,
            "classes": classes,
            "jobs": args.jobs,
            "command": command_line(),
            "machine": machine,
            "wall_s": round(wall, 1),
            "summary": summarise(outcomes, classes),
            "failed": [asdict(o) for o in outcomes if not o.survived],
            "cases": [asdict(o) for o in outcomes],
        },
    )
    print(f"results: bench/results/{args.out}.json")
    return 0 if all(o.survived for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
