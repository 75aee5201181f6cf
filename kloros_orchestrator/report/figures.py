"""The report's figures, drawn with matplotlib (Agg, no display) into PNG bytes.

The only module of the package that imports matplotlib, and only the report command imports it:
the daemon never loads matplotlib. Figures are built on ``matplotlib.figure.Figure`` directly (no
pyplot: no global figure registry to leak from). Text from the files is drawn with math text off,
so a ``$`` in a candidate id or a reason is a dollar sign, never a TeX parse error.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import wraps
from typing import Final, ParamSpec

import matplotlib

matplotlib.use("Agg")

from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from kloros_orchestrator.phase.results import PhaseResults
from kloros_orchestrator.report.records import (
    Candidate,
    FailureGroup,
    FameEntry,
    GenerationBest,
    PacingPoint,
)

P = ParamSpec("P")
DPI: Final = 72
WIDTH_IN: Final = 11.0
MAX_ROWS: Final = 48  # rows of a forest plot; the tables list the rest
MAX_BARS: Final = 12
GOOD, BAD, NEUTRAL, STOCK = "#1b7837", "#b2182b", "#4d4d4d", "#2166ac"
REGIME_COLOURS: Final = {"idle": "#66a61e", "normal": "#1f78b4", "stress": "#e7298a", "mixed": "#d95f02"}


def version() -> str:
    return str(matplotlib.__version__)


def drawn(build: Callable[P, Figure]) -> Callable[P, bytes]:
    """A figure builder as a function returning the PNG, with the report's style and math text off."""

    @wraps(build)
    def render(*args: P.args, **kwargs: P.kwargs) -> bytes:
        with rc_context(
            {
                "text.parse_math": False,
                "font.size": 10,
                "axes.grid": True,
                "grid.alpha": 0.3,
                "axes.spines.top": False,
                "axes.spines.right": False,
            }
        ):
            fig = build(*args, **kwargs)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
        return buf.getvalue()

    return render


def _log_scale(ax: Axes, axis: str) -> None:
    """A log axis labelled in plain numbers (its default labels are math text, which is off here)."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def _label(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@drawn
def scores(
    domain: str,
    best: Sequence[GenerationBest],
    candidates: Sequence[Candidate],
    adoptions: Sequence[tuple[int, str]],
) -> Figure:
    """score_v2 over generations: every candidate, each generation's best with its CI band, 0 = stock."""
    fig = Figure(figsize=(WIDTH_IN, 3.6))
    ax = fig.subplots()
    raced = [(c.generation, c.score) for c in candidates if c.score is not None and c.elimination is None]
    out = [(c.generation, c.score) for c in candidates if c.score is not None and c.elimination is not None]
    if raced:
        ax.scatter([g for g, _ in raced], [v for _, v in raced], s=14, color="#999999",
                   label="candidate (ran every trial)", zorder=2)  # fmt: skip
    if out:
        ax.scatter([g for g, _ in out], [v for _, v in out], s=16, facecolors="none", edgecolors="#999999",
                   label="candidate eliminated by racing", zorder=2)  # fmt: skip
    # Scores on either side of a change of configuration are against different stock arms: the
    # line and the band are broken there rather than drawn across.
    for k, seg in enumerate(_segments([b for b in best if b.score is not None], [g for g, _ in adoptions])):
        band = [(b.generation, b.ci[0], b.ci[1]) for b in seg if b.ci is not None]
        if band:
            ax.fill_between([g for g, _, _ in band], [lo for _, lo, _ in band], [hi for *_, hi in band],
                            color=GOOD, alpha=0.18, label=None if k else "95% CI of the best",
                            zorder=1)  # fmt: skip
        line = [(b.generation, b.score) for b in seg if b.score is not None]
        ax.plot([g for g, _ in line], [v for _, v in line], "-o", color=GOOD, ms=4,
                label=None if k else "generation's best (score_v2)", zorder=3)  # fmt: skip
    ax.axhline(0.0, color=STOCK, lw=1.5, ls="--", label="current configuration (stock arm)", zorder=1)
    for gen, text in adoptions:
        ax.axvline(gen - 0.5, color=NEUTRAL, lw=1, ls=":")
        ax.annotate(_label(text, 30), (gen - 0.5, 1.0), xycoords=("data", "axes fraction"),
                    rotation=90, va="top", ha="right", fontsize=8, color=NEUTRAL)  # fmt: skip
    ax.set_title(_label(f"{domain}: score over generations"))
    ax.set_xlabel("generation")
    ax.set_ylabel("score_v2 (0 = stock)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


def _segments(best: Sequence[GenerationBest], cuts: Sequence[int]) -> list[list[GenerationBest]]:
    """``best`` split where the stock arm changed (before each generation in ``cuts``)."""
    out: dict[int, list[GenerationBest]] = {}
    for b in best:
        out.setdefault(sum(1 for c in cuts if b.generation >= c), []).append(b)
    return list(out.values())


Values = dict[str, tuple[float, tuple[float, float] | None]]  # KPI -> (% difference, CI)
ForestRow = tuple[str, str, str, Values]  # domain, entry label, regime, values


def _forest_rows(fame: Sequence[FameEntry]) -> list[ForestRow]:
    rows: list[ForestRow] = []
    for f in fame:
        by_regime: dict[str, Values] = {}
        for d in f.deltas:
            by_regime.setdefault(d.regime, {})[d.kpi] = (d.pct, d.ci_pct)
        label = f"{f.cand_id} (gen {f.generation})"
        rows += [(f.domain, label, regime, values) for regime, values in by_regime.items()]
    return rows[:MAX_ROWS]


@drawn
def forest(fame: Sequence[FameEntry]) -> Figure:
    """Per hall-of-fame entry and regime, each KPI's difference from the stock mean, with its CI:
    one row of panels per domain (each on its own scale), one column per KPI."""
    kpis = _kpi_order(fame)
    rows = _forest_rows(fame)
    domains = list(dict.fromkeys(r[0] for r in rows))
    per = [[r for r in rows if r[0] == d] for d in domains]
    fig = Figure(figsize=(WIDTH_IN, 0.9 + 0.55 * len(domains) + 0.22 * len(rows)))
    grid = fig.subplots(len(domains), len(kpis), sharey="row", squeeze=False,
                        gridspec_kw={"height_ratios": [len(p) for p in per]})  # fmt: skip
    for i, (domain, drows) in enumerate(zip(domains, per, strict=True)):
        ys = list(range(len(drows)))[::-1]
        for j, kpi in enumerate(kpis):
            ax: Axes = grid[i][j]
            _forest_panel(ax, kpi, ys, drows)
            if i == 0:
                better = "lower" if "latency" in kpi or kpi in ("watts", "temp_c") else "higher"
                ax.set_title(f"{kpi}: % vs stock ({better} is better)", fontsize=9)
            if i == len(domains) - 1:
                ax.set_xlabel("% difference from the stock mean")
        labels = [_label(f"{label} · {regime}", 48) for _, label, regime, _ in drows]
        grid[i][0].set_yticks(ys, labels, fontsize=8)
        grid[i][0].set_ylabel(_label(domain, 24), fontsize=9)
    return fig


def _forest_panel(ax: Axes, kpi: str, ys: list[int], rows: Sequence[ForestRow]) -> None:
    for y, (_, _, regime, values) in zip(ys, rows, strict=True):
        if kpi not in values:
            continue
        pct, ci = values[kpi]
        colour = REGIME_COLOURS.get(regime, NEUTRAL)
        err = None if ci is None else [[max(0.0, pct - ci[0])], [max(0.0, ci[1] - pct)]]
        ax.errorbar([pct], [y], xerr=err, fmt="o", color=colour, ms=4, capsize=2)
    ax.axvline(0.0, color=STOCK, lw=1.2, ls="--")
    ax.set_ylim(-0.6, len(ys) - 0.4)


def _kpi_order(fame: Sequence[FameEntry]) -> list[str]:
    seen: list[str] = []
    for f in fame:
        for d in f.deltas:
            if d.kpi not in seen:
                seen.append(d.kpi)
    return seen


def has_forest(fame: Sequence[FameEntry]) -> bool:
    return any(f.deltas for f in fame)


@drawn
def phase(results: PhaseResults) -> Figure:
    """Each variant PHASE measured: score_v2 with its CI, the score of each epoch, the verdict."""
    promoted = {(p.domain, p.cand_id) for p in results.promoted_variants}
    flagged = {(f.domain, f.cand_id) for f in results.flagged_variants}
    rows = phase_rows(results)[:MAX_ROWS]
    fig = Figure(figsize=(WIDTH_IN, 1.4 + 0.3 * len(rows)))
    ax = fig.subplots()
    ys = list(range(len(rows)))[::-1]
    for y, (domain, cand, score, ci, epochs) in zip(ys, rows, strict=True):
        colour = GOOD if (domain, cand) in promoted else BAD if (domain, cand) in flagged else NEUTRAL
        if score is not None:
            err = None if ci is None else [[max(0.0, score - ci[0])], [max(0.0, ci[1] - score)]]
            ax.errorbar([score], [y], xerr=err, fmt="D", color=colour, ms=6, capsize=3)
        pts = [e for e in epochs if e is not None]
        ax.scatter(pts, [y - 0.18] * len(pts), marker="|", s=80, color=colour, alpha=0.8)
    ax.axvline(0.0, color=STOCK, lw=1.2, ls="--", label="stock (re-measured in PHASE)")
    ax.set_yticks(ys, [_label(f"{d} · {c}", 50) for d, c, *_ in rows], fontsize=9)
    ax.set_xlabel("score_v2 vs stock (◆ with 95% CI; | = one epoch)")
    ax.set_title("PHASE: green = promoted, red = flagged, grey = neither")
    ax.legend(loc="lower right", fontsize=8)
    return fig


PhaseRow = tuple[str, str, float | None, tuple[float, float] | None, list[float | None]]


def phase_rows(results: PhaseResults) -> list[PhaseRow]:
    rows: list[PhaseRow] = []
    for domain, m in results.metrics.items():
        for cand, v in (m.variants or {}).items():
            rows.append((domain, cand, v.score_v2, v.score_ci95, list(v.epoch_scores or [])))
        if not m.variants and m.best_cand_id is not None:
            rows.append((domain, m.best_cand_id, m.fitness, m.ci95, []))
    return rows


@drawn
def pacing(points: Sequence[PacingPoint]) -> Figure:
    """The rest D-REAM chose after each cycle, over time (UTC); deferrals to a window marked."""
    fig = Figure(figsize=(WIDTH_IN, 3.0))
    ax = fig.subplots()
    when = [p.ts for p in points]
    ax.plot(when, [p.sleep_s for p in points], "-o", color=STOCK, ms=3, lw=1, label="sleep after a cycle")
    deferred = [(w, p.sleep_s) for w, p in zip(when, points, strict=True) if p.defer]
    if deferred:
        ax.scatter([w for w, _ in deferred], [s for _, s in deferred], marker="s", s=30, color=BAD,
                   label="deferred to the PHASE window", zorder=3)  # fmt: skip
    sleeps = [p.sleep_s for p in points]
    if min(sleeps) > 0 and max(sleeps) / min(sleeps) > 50:
        _log_scale(ax, "y")
    ax.set_ylabel("sleep (s)")
    ax.set_xlabel("time (UTC)")
    ax.set_title("Pacing decisions")
    ax.legend(loc="upper left", fontsize=8)
    ax.xaxis.set_major_formatter(FuncFormatter(_clock))
    fig.autofmt_xdate()
    return fig


def _clock(ts: float, _: object = None) -> str:
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return ""


@drawn
def failures(groups: Sequence[FailureGroup], total: int, failed: int) -> Figure:
    """Trials by outcome: the successful ones and each kind of failure (log scale, counts written)."""
    bars = [("ok", total - failed, GOOD)] + [(g.reason, g.count, BAD) for g in groups[:MAX_BARS]]
    rest = sum(g.count for g in groups[MAX_BARS:])
    if rest:
        bars.append(("other kinds", rest, BAD))
    fig = Figure(figsize=(WIDTH_IN, 1.2 + 0.32 * len(bars)))
    ax = fig.subplots()
    ys = list(range(len(bars)))[::-1]
    ax.barh(ys, [max(n, 0.0) for _, n, _ in bars], color=[c for *_, c in bars], left=0.0, height=0.6)
    for y, (_, n, _) in zip(ys, bars, strict=True):
        ax.annotate(str(n), (max(n, 1), y), xytext=(4, 0), textcoords="offset points", va="center",
                    fontsize=8)  # fmt: skip
    _log_scale(ax, "x")
    ax.set_xlim(0.8, max(max(n for _, n, _ in bars), 1) * 3)
    ax.set_yticks(ys, [_label(name, 40) for name, *_ in bars], fontsize=9)
    ax.set_xlabel("trials (log scale)")
    share = 100.0 * failed / total if total else 0.0
    ax.set_title(f"Trials by outcome: {failed} of {total} failed ({share:.1f}%)")
    return fig
