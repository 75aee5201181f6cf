"""The operational sections: pacing, trial failures, the host's configuration and notable events,
the machine and versions, and the problems met while reading ``state_dir``."""

from __future__ import annotations

import platform
from typing import Final

from kloros_orchestrator import __version__
from kloros_orchestrator.model import P95, THROUGHPUT
from kloros_orchestrator.report import figures
from kloros_orchestrator.report.files import clip
from kloros_orchestrator.report.html import ci, esc, figure, nodata, num, section, table, when
from kloros_orchestrator.report.records import ReportData

MAX_TABLE_ROWS: Final = 40
MANIFEST_KEYS: Final = (
    "run_id", "started_at", "host", "machine", "cpus", "kernel", "python", "version", "stress_ng_version",
    "code_hash", "config_hash", "seed",
)  # fmt: skip


def pacing(data: ReportData) -> str:
    points = data.pacing
    if not points:
        return section("sec-pacing", "Pacing", nodata("no pacing decision in events.jsonl"))
    body = figure(
        "fig-pacing",
        figures.pacing(points),
        "pacing decisions over time",
        "The rest D-REAM took after each cycle over the enabled domains (events.jsonl, event pacing): "
        "a share of the recent tournament length, stretched when the search has converged or the host "
        "is busy, bounded by dream.pacing, and cut short before a PHASE window.",
    )
    recent = points[::-1][:15]
    rows = [(when(p.ts), f"{p.sleep_s:.1f}", "yes" if p.defer else "no", p.reason) for p in recent]
    body += f"<h3>The last {len(recent)} of {len(points)} decisions</h3>" + table(
        ["time", "sleep (s)", "deferred to window", "reason"], rows, numeric=(1,)
    )
    return section("sec-pacing", "Pacing", body)


def failures(data: ReportData) -> str:
    if data.trials_total == 0:
        return section("sec-failures", "Trial failures", nodata("no trial in trials.jsonl"))
    share = 100.0 * data.trials_failed / data.trials_total
    body = f"<p>{data.trials_failed} of {data.trials_total} trials failed ({share:.1f}%).</p>" + figure(
        "fig-failures",
        figures.failures(data.failures, data.trials_total, data.trials_failed),
        "trials by outcome and failure reason",
        "Every trial D-REAM and PHASE ran (trials.jsonl): successful ones, and failed ones by kind "
        "(the failure text up to its first colon). A failed trial is never a number in any score.",
    )
    if data.failures:
        rows = [(g.reason, g.count, ", ".join(g.domains), g.example) for g in data.failures[:MAX_TABLE_ROWS]]
        body += table(["kind", "trials", "domains", "latest failure"], rows, numeric=(1,))
    return section("sec-failures", "Trial failures", body)


def host(data: ReportData) -> str:
    body = "<h3>Adopted configurations (host/adopted.json)</h3>"
    adopted = data.adopted.domains if data.adopted is not None else {}
    if adopted:
        rows = []
        for name, a in sorted(adopted.items()):
            p = a.provenance
            genome = clip(", ".join(f"{k}={v}" for k, v in a.genome.items()), 200)
            rows.append((name, p.cand_id or "–", p.by, p.at, num(p.score_v2), ci(p.score_ci95),
                         clip(p.evidence or "–"), genome))  # fmt: skip
        body += table(["domain", "candidate", "by", "at", "score_v2", "95% CI", "evidence", "genome"], rows)
    else:
        body += "<p>Every domain runs its factory configuration (nothing adopted).</p>"
    if data.adopted is not None and data.adopted.factory_pending:
        pending = ", ".join(clip(d, 60) for d in data.adopted.factory_pending)
        body += f"<p>Rolled back, files not all written back yet: {esc(pending)}.</p>"
    body += "<h3>Notable events (newest first)</h3>"
    if data.notable:
        rows_n = [(when(n.ts), n.event, n.domain or "–", n.text) for n in data.notable[::-1]]
        body += table(["time", "event", "domain", "what"], rows_n)
    else:
        body += nodata("no adoption, rollback, back-off, adaptation or failure recorded")
    return section("sec-host", "Host configuration and events", body)


def machine(data: ReportData) -> str:
    m = data.manifest
    if m is None:
        body = nodata("no run manifest in artifacts/manifests")
    else:
        rows = [(k, clip(m[k], 120)) for k in MANIFEST_KEYS if k in m]
        body = f"<p>The most recent of {data.runs} run(s) recorded:</p>" + table(["", "value"], rows)
    body += "<h3>Stock baselines (artifacts/baselines.json)</h3>"
    if data.baselines:
        rows_b = [
            (domain, regime, e.trials, _kpi(e.kpis.get(THROUGHPUT)), _kpi(e.kpis.get(P95)),
             clip(e.measured_at, 40), clip(e.stress_ng_version or "–", 40), clip(e.kernel or "–", 60))
            for domain, regimes in sorted(data.baselines.items())
            for regime, e in regimes.items()
        ]  # fmt: skip
        body += table(
            ["domain", "regime", "trials", THROUGHPUT, P95, "measured at", "stress-ng", "kernel"],
            rows_b[:MAX_TABLE_ROWS],
            numeric=(2, 3, 4),
        )
    else:
        body += nodata("no stock baseline measured")
    tools = [
        ("kloros-orchestrator (this report)", __version__),
        ("Python", platform.python_version()),
        ("matplotlib", figures.version()),
    ]
    body += "<h3>This report was made with</h3>" + table(["", "version"], tools)
    return section("sec-machine", "Machine and versions", body)


def _kpi(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def problems(data: ReportData) -> str:
    if not data.problems:
        return ""
    items = "".join(f'<li class="problem">{esc(p)}</li>' for p in data.problems[:MAX_TABLE_ROWS])
    return section(
        "sec-problems",
        "Files that could not be read",
        "<p>Left where they are; the sections above show what could be read.</p>" + f"<ul>{items}</ul>",
    )
