"""``explain <cand_id>``: what happened to one candidate, in words and numbers, from the files.

D-REAM's side comes from ``logs/fitness_history.jsonl`` (one line per evaluated candidate: its
score and interval, trials used, the race's elimination with t and p, cap breaches, why it was not
scored); PHASE's from ``phase/latest/phase_results.json`` (promoted with its evidence, flagged with
its reasons, or measured with its score per epoch); the host's from ``host/adopted.json``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kloros_orchestrator.errors import KlorosError, SchemaError
from kloros_orchestrator.host.store import HostStore
from kloros_orchestrator.phase.results import PhaseResults, latest_results, load_results
from kloros_orchestrator.store import StatePaths, read_jsonl


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1%}"


def _ci(ci: Iterable[float] | None) -> str:
    if ci is None:
        return "no interval (fewer than two trials per regime)"
    lo, hi = list(ci)
    return f"95% CI {_pct(lo)} to {_pct(hi)}"


def _genome(g: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(g.items())) or "(no knobs)"


def dream_lines(line: dict[str, Any]) -> list[str]:
    """One fitness-history line of a candidate, in words."""
    out = [f"genome      {_genome(line.get('genome') or {})}"]
    trials = line.get("trials_used")
    if line.get("eliminated"):
        out.append(f"race        eliminated after {trials} trial(s): {line.get('elimination')}")
    unsafe = line.get("unsafe_reasons") or []
    if unsafe or line.get("safe") is False:
        out.append("unsafe      " + ("; ".join(unsafe) or "a cap was breached"))
    score = line.get("score")
    if score is None:
        out.append(f"not scored  {line.get('not_scored_reason') or 'no score'}")
    else:
        beat = line.get("improves_over_baseline")
        said = "beat the current configuration" if beat else "did not beat the current configuration"
        ci = _ci(line.get("score_ci95"))
        out.append(f"score       {_pct(score)} ({ci}) over {trials} trial(s): {said}")
    return out


def phase_lines(results: PhaseResults, domain: str, cand_id: str) -> list[str]:
    where = f"PHASE       {results.run_id}:"
    for p in results.promoted_variants:
        if p.domain == domain and p.cand_id == cand_id:
            return [f"{where} promoted: {p.reason}"]
    for f in results.flagged_variants:
        if f.domain == domain and f.cand_id == cand_id:
            return [f"{where} flagged: " + "; ".join(f.reasons)]
    m = results.metrics.get(domain)
    v = (m.variants or {}).get(cand_id) if m is not None else None
    if v is None:
        return []
    epochs = ", ".join(_pct(e) for e in v.epoch_scores or []) or "n/a"
    return [
        f"{where} measured, not promoted: {_pct(v.score_v2)} ({_ci(v.score_ci95)}); per epoch {epochs}; "
        f"{v.trials} trials, {v.failed} failed (promotion needs the CI above 0 and every epoch positive)"
    ]


def explain(paths: StatePaths, cand_id: str, domain: str | None = None) -> list[str]:
    """Every record of ``cand_id`` (in ``domain``, or in any), as lines; KlorosError when none."""
    found = [
        line for line in read_jsonl(paths.fitness_history)
        if line.get("kind") == "candidate" and line.get("cand_id") == cand_id
        and (domain is None or line.get("domain") == domain)
    ]  # fmt: skip
    if not found:
        where = f" in {domain}" if domain else ""
        raise KlorosError(f"no candidate {cand_id}{where} in {paths.fitness_history} (see status, report)")
    results = _latest(paths)
    adopted = HostStore(paths).adopted().domains
    out: list[str] = []
    for line in found:
        name = str(line.get("domain"))
        out.append(f"{cand_id} ({name}, generation {line.get('generation')}, run {line.get('run_id')})")
        out += ["  " + x for x in dream_lines(line)]
        if results is not None:
            out += ["  " + x for x in phase_lines(results, name, cand_id)]
        config = adopted.get(name)
        if config is not None and config.provenance.cand_id == cand_id:
            p = config.provenance
            out.append(f"  host        adopted by {p.by} at {p.at} ({p.evidence})")
    return out


def _latest(paths: StatePaths) -> PhaseResults | None:
    path = latest_results(paths.phase)
    if path is None:
        return None
    try:
        return load_results(path, move_aside=False)
    except SchemaError:
        return None


__all__ = ["dream_lines", "explain", "phase_lines"]
