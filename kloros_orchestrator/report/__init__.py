"""``kloros-orchestrator report``: one self-contained HTML page about a ``state_dir``.

``gather`` reads the state directory with the product's bounded readers (nothing moved aside,
nothing followed through a symbolic link); ``render`` draws the figures with matplotlib and writes
the page with every string escaped and every image inline (``data:`` URIs), under a
Content-Security-Policy that forbids any request: the page opens offline and fetches nothing.

matplotlib is imported by ``report.figures`` only, and only when a report is rendered: importing
this package does not load it, and the daemon never imports this package.
"""

from __future__ import annotations

from pathlib import Path

from kloros_orchestrator import __version__
from kloros_orchestrator.report.gather import gather
from kloros_orchestrator.report.html import page, when
from kloros_orchestrator.report.records import ReportData

INDEX = "index.html"

NAV = (
    ("sec-scores", "Scores"),
    ("sec-fame", "Hall of fame"),
    ("sec-phase", "PHASE"),
    ("sec-racing", "Racing"),
    ("sec-pacing", "Pacing"),
    ("sec-failures", "Failures"),
    ("sec-host", "Host"),
    ("sec-machine", "Machine"),
)


def render(data: ReportData) -> str:
    """The whole page for ``data`` (imports matplotlib)."""
    from kloros_orchestrator.report import sections, sections_ops

    body = "".join(
        (
            sections.scores(data),
            sections.fame(data),
            sections.phase(data),
            sections.racing(data),
            sections_ops.pacing(data),
            sections_ops.failures(data),
            sections_ops.host(data),
            sections_ops.machine(data),
            sections_ops.problems(data),
        )
    )
    phase = data.phase
    verdict = (
        "no PHASE yet"
        if phase is None
        else f"last PHASE {phase.run_id}: {len(phase.promoted_variants)} variant(s) promoted"
    )
    subtitle = (
        f"Generated {when(data.generated_at)} by kloros-orchestrator {__version__}; domains: "
        f"{', '.join(data.domains) or 'none yet'}; {data.trials_total} trials; {verdict}."
    )
    nav = [*NAV, ("sec-problems", "Problems")] if data.problems else list(NAV)
    return page("kloros-orchestrator report", subtitle, nav, body)


def build_report(state_dir: Path, out_dir: Path, *, now: float | None = None) -> Path:
    """Read ``state_dir``, write ``out_dir/index.html`` atomically, return its path."""
    from kloros_orchestrator.store import atomic_write_bytes

    text = render(gather(state_dir, now=now))
    path = Path(out_dir) / INDEX
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


__all__ = ["INDEX", "build_report", "gather", "render"]
