"""Search-space adaptation for :class:`~kloros_orchestrator.engine.evolution.Evolution`.

Three moves, each a function of the space and the evidence, returning readable lines for the
``adaptations`` log (``Evolution.adapt`` decides when each applies and keeps the streaks):

* :func:`narrow_bounds` — shrink numeric ranges around the top genomes (while the best improves);
* :func:`widen_bounds` — grow them back towards the declared bounds, then give restricted choices
  back (after generations without improvement);
* :func:`irrelevance_tests` — for each knob, whether fitness shows any relationship with it: a
  nested-model F-test of the knob's own columns against a model of all the other knobs, and a
  Spearman correlation with the fitness the other knobs leave unexplained. A knob is a candidate
  for dropping only when neither test finds a hint (both p > 0.5, |rho| < 0.15).

Pure numpy; the distribution functions come from ``measure/distributions.py`` (no scipy).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from kloros_orchestrator.engine.space import ChoiceParam, FloatParam, IntParam, SearchSpace
from kloros_orchestrator.engine.surrogate import knob_features
from kloros_orchestrator.measure.distributions import f_sf, spearman
from kloros_orchestrator.model import Genome

__all__ = ["irrelevance_tests", "narrow_bounds", "widen_bounds"]

FloatArray = npt.NDArray[np.float64]

_NARROW_FACTOR: Final = 0.7  # a narrowing keeps at least this share of the current width...
_MIN_WIDTH: Final = 0.05  # ...and never less than this share of the declared (log-)width
_NARROW_MARGIN: Final = 1.25  # keep the top genomes' spread plus a quarter
_WIDEN_FACTOR: Final = 1.5
_DROP_P: Final = 0.5  # drop a knob only when no test finds a hint of a relationship (p > 0.5)
_DROP_RHO: Final = 0.15


def narrow_bounds(space: SearchSpace, top: Sequence[Genome], why: str) -> list[str]:
    """Narrow each free numeric knob around ``top[0]`` (the best genome), keeping every genome of
    ``top`` inside; the new width is at least ``_NARROW_FACTOR`` of the current one."""
    best = top[0]
    out: list[str] = []
    for name in space.free_names:
        cur, orig = space.param(name), space.original(name)
        if not isinstance(cur, IntParam | FloatParam) or not isinstance(orig, IntParam | FloatParam):
            continue
        lo, hi = orig.to_unit(cur.low), orig.to_unit(cur.high)
        width = hi - lo
        vals = [orig.to_unit(float(g[name])) for g in top]
        new_w = max(width * _NARROW_FACTOR, (max(vals) - min(vals)) * _NARROW_MARGIN, _MIN_WIDTH)
        if new_w >= width * 0.95:
            continue
        center = orig.to_unit(float(best[name]))
        n_lo = min(max(center - new_w / 2, lo), hi - new_w)
        n_lo, n_hi = min(n_lo, min(vals)), max(n_lo + new_w, max(vals))
        low, high = orig.from_unit(n_lo), orig.from_unit(n_hi)
        if isinstance(orig, IntParam):  # from_unit rounds; keep the hull of the top values
            low = min(low, *(int(g[name]) for g in top))
            high = max(high, *(int(g[name]) for g in top))
        before = cur
        msg = space.set_bounds(name, max(low, cur.low), min(high, cur.high))
        if space.param(name) != before:
            out.append(f"narrow {msg} around the top {len(top)} genomes ({why})")
    return out


def widen_bounds(space: SearchSpace, why: str) -> list[str]:
    """Widen every narrowed numeric knob; once none is left narrowed, restore restricted choices."""
    out: list[str] = []
    for name in space.free_names:
        cur, orig = space.param(name), space.original(name)
        if isinstance(cur, IntParam | FloatParam) and cur != orig:
            out.append(f"widen {space.widen(name, _WIDEN_FACTOR)} ({why})")
    if not out:  # numeric ranges are whole again: give restricted choices back
        for name in space.free_names:
            cur = space.param(name)
            if isinstance(cur, ChoiceParam) and cur != space.original(name):
                out.append(f"widen {space.widen(name)} ({why})")
    return out


def irrelevance_tests(
    space: SearchSpace,
    genomes: Sequence[Genome],
    fitness: FloatArray,
    names: Sequence[str],
    min_samples: int,
) -> dict[str, tuple[float, str] | None]:
    """For each of ``names``: (p of the F-test, detail) when neither test finds a relationship
    with fitness, else None. Empty when the data cannot support the tests: fewer than
    ``min_samples`` genomes, or than three per regression column, or constant fitness."""
    if len(genomes) < min_samples or np.ptp(fitness) == 0:
        return {}
    blocks = {n: knob_features(space.original(n), [g[n] for g in genomes]) for n in space.names}
    n_cols = 1 + sum(b.shape[1] for b in blocks.values())
    if len(genomes) < max(min_samples, 3 * n_cols):
        return {}
    return {name: _irrelevance(name, blocks, fitness) for name in names}


def _irrelevance(name: str, blocks: Mapping[str, FloatArray], fit: FloatArray) -> tuple[float, str] | None:
    """(p of the F-test, detail) when neither test finds a relationship, else None."""
    own = blocks[name]
    if own.shape[1] == 0 or np.ptp(own, axis=0).max() == 0:
        return None
    ones = np.ones((len(fit), 1))
    others = np.column_stack([ones, *(b for n, b in blocks.items() if n != name)])
    full = np.column_stack([others, own])
    rss_r, rank_r, resid = _rss(others, fit)
    rss_f, rank_f, _ = _rss(full, fit)
    q, df = rank_f - rank_r, len(fit) - rank_f
    if q <= 0 or df < 5 or rss_f <= 0:
        return None
    f_stat = max(rss_r - rss_f, 0.0) / q / (rss_f / df)
    p_f = f_sf(f_stat, q, df)
    # partial rank correlation: with the other knobs' effects removed, a knob that merely
    # hitch-hiked along with good values of another does not look related
    rho, p_s = spearman(own[:, 0], resid) if own.shape[1] <= 2 else (0.0, 1.0)
    if p_f <= _DROP_P or not math.isfinite(rho) or abs(rho) >= _DROP_RHO or p_s <= _DROP_P:
        return None
    return p_f, f"F({q},{df})={f_stat:.2f} p={p_f:.2f}, Spearman rho={rho:+.2f} p={p_s:.2f}"


def _rss(design: FloatArray, y: FloatArray) -> tuple[float, int, FloatArray]:
    coef, _, rank, _ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    return float(resid @ resid), int(rank), resid
