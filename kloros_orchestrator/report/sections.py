"""The report's sections: each one a heading, words, a figure where one helps, and a table.

A section with nothing to show says "No data yet" and why; nothing here raises for missing data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from kloros_orchestrator.phase.results import PhaseResults
from kloros_orchestrator.report import figures
from kloros_orchestrator.report.files import clip
from kloros_orchestrator.report.html import ci, esc, figure, nodata, num, section, table
from kloros_orchestrator.report.records import Candidate, GenerationBest, ReportData

MAX_TABLE_ROWS: Final = 40


def _genome(genome: dict[str, object]) -> str:
    return clip(", ".join(f"{k}={v}" for k, v in genome.items()), 200)


def _verdict(b: GenerationBest) -> str:
    if b.score is None:
        return f"not scored ({b.note})"
    if not b.safe:
        return "unsafe"
    if b.improves:
        return "better than the stock arm (CI above 0)"
    return "not shown better (CI reaches 0)" if b.ci is not None else f"no interval ({b.note})"


def scores(data: ReportData) -> str:
    parts: list[str] = []
    for i, domain in enumerate(data.domains):
        best = data.generations.get(domain, [])
        cands = data.candidates.get(domain, [])
        parts.append(f"<h3>{esc(domain)}</h3>")
        if not any(b.score is not None for b in best) and not any(c.score is not None for c in cands):
            parts.append(nodata("no scored candidate in this domain"))
            continue
        if best:
            b = best[-1]
            parts.append(
                f"<p>{len(best)} generation(s) with a pack. Latest: generation {b.generation}, best "
                f"<code>{esc(b.cand_id)}</code> score {num(b.score)} CI {ci(b.ci)}: {esc(_verdict(b))}.</p>"
            )
        png = figures.scores(domain, best, cands, data.adoptions.get(domain, []))
        parts.append(
            figure(
                f"fig-scores-{i}",
                png,
                f"score over generations, {domain}",
                "score_v2 of each generation's best candidate with its bootstrap 95% CI band, every "
                "candidate evaluated (grey; hollow: eliminated early by racing), and 0: the current "
                "configuration, measured as the stock arm of the same tournament. Dotted lines: from "
                "this generation on the stock arm is a newly adopted (or the factory) configuration.",
            )
        )
    if not data.domains:
        parts.append(nodata("no tournament has finished (no candidate pack, no fitness history)"))
    return section("sec-scores", "Scores over generations", "".join(parts))


def fame(data: ReportData) -> str:
    if not data.fame:
        return section("sec-fame", "Hall of fame", nodata("no hall of fame in state.json"))
    rows = [
        (f.domain, f.cand_id, f.generation, num(f.score), ci(f.ci), f.phase_run_id or "D-REAM",
         _genome(f.genome))
        for f in data.fame
    ]  # fmt: skip
    headers = ["domain", "candidate", "gen", "score_v2", "95% CI", "scored by", "genome"]
    body = table(headers, rows, numeric=(2, 3))
    notes = [f"{f.domain} {f.cand_id}: {f.note}" for f in data.fame if f.note]
    if notes:
        body += "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>"
    if figures.has_forest(data.fame):
        body += figure(
            "fig-forest",
            figures.forest(data.fame),
            "forest plot of the hall of fame's KPI differences",
            "Each entry's KPIs per regime in its own tournament: the mean over its trials as a % "
            "difference from the stock arm's mean, with the bootstrap 95% CI of the candidate's mean "
            "(the stock mean's own uncertainty is not included).",
        )
    else:
        body += nodata("no hall-of-fame entry has a readable pack with KPIs")
    return section("sec-fame", "Hall of fame", body)


def _epochs(results: PhaseResults, domain: str, cand: str) -> str:
    m = results.metrics.get(domain)
    v = (m.variants or {}).get(cand) if m is not None else None
    if v is None or not v.epoch_scores:
        return "no per-epoch scores"
    return "per epoch " + ", ".join(num(e) for e in v.epoch_scores)


def _phase_words(r: PhaseResults) -> str:
    q, t = r.qtime, r.trials
    status = "complete" if r.complete else f"incomplete ({r.stopped_reason or 'no reason recorded'})"
    lines = [
        f"Run <code>{esc(r.run_id)}</code> at {esc(r.timestamp)}: {esc(status)}; QTIME {q.epochs} epoch(s) × "
        f"{q.slices} slice(s) × {q.replicas} replica(s); domains {esc(', '.join(r.domains_tested) or 'none')}"
        + (f"; trials {t.run} run of {t.planned} planned, {t.failed} failed" if t is not None else "")
        + "."
    ]
    if r.shrink:
        lines.append(f"The plan was shrunk to fit the window: {esc(clip(r.shrink.get('reason', r.shrink)))}.")
    promoted = [
        f'<li><span class="good">promoted</span> {esc(p.domain)}: <code>{esc(p.cand_id)}</code> score '
        f"{num(p.score_v2)} CI {ci(p.score_ci95)}, {esc(_epochs(r, p.domain, p.cand_id))}. "
        f"{esc(clip(p.reason))}</li>"
        for p in r.promoted_variants
    ]
    flagged = [
        f'<li><span class="bad">flagged</span> {esc(f.domain)}: <code>{esc(f.cand_id)}</code>: '
        f"{esc(clip('; '.join(f.reasons) or 'no reason recorded'))}</li>"
        for f in r.flagged_variants
    ]
    verdicts = promoted + flagged or ["<li>No variant was promoted and none was flagged.</li>"]
    lines.append("<ul>" + "".join(verdicts) + "</ul>")
    for domain, m in r.metrics.items():
        head = f"{esc(domain)}: fitness {num(m.fitness)} CI {ci(m.ci95)}" + (
            f" (best <code>{esc(m.best_cand_id)}</code>)" if m.best_cand_id else ""
        )
        insights = "".join(f"<li>{esc(clip(i))}</li>" for i in m.insights)
        lines.append(f"<h3>{head}</h3><ul>{insights}</ul>")
    return "".join(f"<p>{x}</p>" if not x.startswith("<") else x for x in lines)


def phase(data: ReportData) -> str:
    r = data.phase
    if r is None:
        return section("sec-phase", "PHASE verdict", nodata("no PHASE window has completed (phase/latest)"))
    body = _phase_words(r)
    recs = [
        (domain, knob, rec.action, clip(rec.reason))
        for domain, knobs in r.search_space_recommendations.items()
        for knob, rec in knobs.items()
    ]
    if recs:
        body += "<h3>Search-space recommendations</h3>" + table(["domain", "knob", "action", "reason"], recs)
    if figures.phase_rows(r):
        body += figure(
            "fig-phase",
            figures.phase(r),
            "PHASE variants with their scores and CIs",
            "Each variant PHASE re-measured against the stock baseline of the same window: score_v2 "
            "with its 95% CI, and the score of each epoch.",
        )
    more = f" ({data.phase_runs} PHASE run(s) on disk; the latest is shown.)" if data.phase_runs > 1 else ""
    return section("sec-phase", "PHASE verdict", body + (f"<p>{esc(more)}</p>" if more else ""))


def _racing_summary(domain: str, cands: Sequence[Candidate]) -> tuple[object, ...]:
    out = [c for c in cands if c.elimination is not None]
    full = [c.trials_used for c in cands if c.elimination is None and c.trials_used is not None]
    cut = [c.trials_used for c in out if c.trials_used is not None]
    mean_full = f"{sum(full) / len(full):.1f}" if full else "–"
    mean_cut = f"{sum(cut) / len(cut):.1f}" if cut else "–"
    return (domain, len(cands), len(out), mean_full, mean_cut)


def racing(data: ReportData) -> str:
    if not data.eliminations and not data.candidates:
        return section("sec-racing", "Racing eliminations", nodata("no candidate in the fitness history"))
    summary = [_racing_summary(d, c) for d, c in sorted(data.candidates.items())]
    body = (
        "<p>After each round, candidates statistically behind the leader stop (paired by round, "
        "one-sided t-test at α = 0.05); the rest run every trial.</p>"
        + table(
            ["domain", "candidates", "eliminated", "trials (ran all)", "trials (eliminated)"],
            summary,
            numeric=(1, 2, 3, 4),
        )
    )
    if data.eliminations:
        recent = data.eliminations[::-1][:MAX_TABLE_ROWS]
        rows = [(e.domain, e.generation, e.cand_id, "–" if e.trials_used is None else e.trials_used, e.reason)
                for e in recent]  # fmt: skip
        shown = f"the last {len(recent)} of {len(data.eliminations)}"
        body += f"<h3>Eliminations ({esc(shown)}, newest first)</h3>" + table(
            ["domain", "gen", "candidate", "trials", "why"], rows, numeric=(1, 3)
        )
    else:
        body += nodata("no candidate was eliminated early")
    return section("sec-racing", "Racing eliminations", body)
