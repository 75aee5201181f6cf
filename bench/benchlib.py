"""Shared helpers of the benchmarks: machine description, small statistics, goal rows, output.

Imported by the sibling scripts (``python bench/<script>.py`` puts ``bench/`` on ``sys.path``).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO_DIR = BENCH_DIR.parent


# --- the machine -------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def _stress_ng_version() -> str | None:
    exe = shutil.which("stress-ng")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    parts = out.split()
    return parts[2].rstrip(",") if len(parts) > 2 and parts[1].startswith("version") else out.strip() or None


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("kloros-orchestrator", "numpy", "scipy", "optuna", "cmaes", "nevergrad"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on, read at run time."""
    return {
        "cpu_model": _cpu_model(),
        "nproc": os.cpu_count(),
        "mem_total_gib": _mem_total_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "stress_ng": _stress_ng_version(),
        "packages": _versions(),
    }


def machine_line(m: dict[str, Any] | None = None) -> str:
    m = m or machine_info()
    return (
        f"Machine: {m['cpu_model']}, {m['nproc']} CPUs, {m['mem_total_gib']} GiB RAM, "
        f"Linux {m['kernel']}, Python {m['python']}, stress-ng {m['stress_ng'] or 'absent'}"
    )


# --- statistics --------------------------------------------------------------------------------------


def bootstrap_median_ci(
    values: Sequence[float] | np.ndarray, *, rng: np.random.Generator, n_boot: int = 4000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the median (one (n_boot, n) index draw)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        raise ValueError("cannot bootstrap an empty sample")
    if arr.size == 1:
        return float(arr[0]), float(arr[0])
    idx = rng.integers(0, arr.size, size=(n_boot, arr.size))
    meds = np.median(arr[idx], axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(meds, [tail, 1.0 - tail])
    return float(lo), float(hi)


def wilson_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion."""
    if n == 0:
        raise ValueError("no trials")
    from scipy import stats

    z = float(stats.norm.ppf(0.5 + level / 2.0))
    p = successes / n
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))


# --- goals -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GoalResult:
    """One measured figure against its goal from the issue."""

    benchmark: str
    figure: str
    measured: str
    goal: str
    met: bool | None  # None: not measured / not applicable on this run
    margin: str  # by how much it is met or missed
    command: str


def goal_rows_markdown(rows: Sequence[GoalResult]) -> str:
    lines = [
        "| benchmark | figure | measured | goal | met? | margin |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = "n/a" if r.met is None else ("met" if r.met else "**not met**")
        lines.append(f"| {r.benchmark} | {r.figure} | {r.measured} | {r.goal} | {met} | {r.margin} |")
    return "\n".join(lines)


# --- output ------------------------------------------------------------------------------------------


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` (temp file + rename, so a reader never sees half a file)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n")
    os.replace(tmp, path)
    return path


def _json_default(obj: object) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, GoalResult):
        return asdict(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def goals_payload(rows: Sequence[GoalResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


def command_line() -> str:
    """How this script was invoked, repo-relative (for the README's reproduce column)."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = str(script.relative_to(REPO_DIR))
    except ValueError:
        shown = str(script)
    return " ".join([".venv/bin/python", shown, *sys.argv[1:]])


def fmt_pct(x: float | None, digits: int = 1) -> str:
    return "absent" if x is None else f"{100 * x:.{digits}f}%"
