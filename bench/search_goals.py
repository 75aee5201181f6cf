"""The goals ``search_quality.py`` judges its cells against (the figures of issues 5 and 13).

* On the original four landscapes: ``optimize`` has the lowest median regret on at least 3/4 of
  them at budget 300, and its median is never above random search's in any landscape × budget.
* On the mixture-noise landscapes (``landscapes_mixture.py``, issue 13 point 8): at budgets 100 and
  300, ``optimize``'s median regret is at most Optuna TPE's in every cell.

A cell is ``{"arms": {arm: ArmSummary}, "vs_optimize": {arm: Comparison}}`` (``search_quality.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from benchlib import GoalResult

OURS = "optimize"
TPE = "optuna_tpe"
GOAL_BUDGET = 300
MIXTURE_BUDGETS = (100, 300)

Cells = Mapping[tuple[str, int], Mapping[str, Any]]


def goals(cells: Cells, cmd: str, mixture: set[str]) -> list[GoalResult]:
    """The goal rows: the original landscapes' two, then the mixture landscapes' (issue 13)."""
    rows: list[GoalResult] = []
    plain = {k: v for k, v in cells.items() if k[0] not in mixture}
    at = {k[0]: v for k, v in plain.items() if k[1] == GOAL_BUDGET}
    if at and all(OURS in v["arms"] for v in at.values()):
        lowest = []
        gaps = []
        for land, v in sorted(at.items()):
            s = v["arms"]
            other_best = min((x.median, a) for a, x in s.items() if a != OURS)
            if s[OURS].median <= other_best[0] + 1e-12:
                lowest.append(land)
            else:
                gaps.append(f"{land}: {s[OURS].median:.3f} vs {other_best[1]} {other_best[0]:.3f}")
        need = math.ceil(0.75 * len(at))
        rows.append(
            GoalResult(
                benchmark="search quality",
                figure=f"landscapes where optimize has the lowest median regret (budget {GOAL_BUDGET})",
                measured=f"{len(lowest)} of {len(at)}" + (f" ({', '.join(lowest)})" if lowest else ""),
                goal=f"≥ {need} of {len(at)}",
                met=len(lowest) >= need,
                margin=(
                    f"{len(lowest) - need:+d} landscapes" + (f"; behind on {'; '.join(gaps)}" if gaps else "")
                ),
                command=cmd,
            )
        )
    worse = []
    compared = 0
    for (land, b), v in sorted(plain.items()):
        s = v["arms"]
        if OURS in s and "random" in s:
            compared += 1
            if s[OURS].median > s["random"].median + 1e-12:
                worse.append(f"{land}@{b}: {s[OURS].median:.3f} vs {s['random'].median:.3f}")
    if compared:
        rows.append(
            GoalResult(
                benchmark="search quality",
                figure="landscape × budget cells where optimize's median regret is above random search's",
                measured=f"{len(worse)} of {compared}",
                goal="0 (never worse than random)",
                met=not worse,
                margin="; ".join(worse) if worse else "never worse",
                command=cmd,
            )
        )
    return rows + mixture_goal(cells, cmd, mixture)


def mixture_goal(cells: Cells, cmd: str, mixture: set[str]) -> list[GoalResult]:
    """Issue 13 point 8: on the mixture-noise landscapes, at budgets 100 and 300, optimize's median
    regret is at most Optuna TPE's (ties count as met)."""
    keys = sorted(
        (k for k in cells if k[0] in mixture and k[1] in MIXTURE_BUDGETS and _has(cells[k], OURS, TPE)),
        key=lambda k: (k[1], k[0]),
    )
    if not keys:
        return []
    behind = []
    for land, b in keys:
        ours, tpe = cells[(land, b)]["arms"][OURS], cells[(land, b)]["arms"][TPE]
        if ours.median > tpe.median + 1e-12:
            c = cells[(land, b)]["vs_optimize"][TPE]
            p = "all tied" if c.p_value is None else f"p = {c.p_value:.3g}"
            behind.append(f"{land}@{b}: {ours.median:.3f} vs {tpe.median:.3f} ({p})")
    return [
        GoalResult(
            benchmark="search quality",
            figure="mixture-noise cells (landscape × budget 100/300) where optimize's median regret ≤ TPE's",
            measured=f"{len(keys) - len(behind)} of {len(keys)}",
            goal=f"{len(keys)} of {len(keys)}",
            met=not behind,
            margin="behind on " + "; ".join(behind) if behind else "never behind TPE",
            command=cmd,
        )
    ]


def _has(cell: Mapping[str, Any], *arms: str) -> bool:
    return all(a in cell["arms"] for a in arms)
