"""The report's share of the JSONL logs: candidates and racing eliminations (``fitness_history``),
pacing, adoptions and notable events (``events``), trial failures by reason (``trials``).

Lines are read with ``store.read_jsonl`` (bounded, a torn line skipped); each field is checked for
its type here, since a line is whatever was appended to the file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any, Final

from kloros_orchestrator.report.files import Reader, as_dict, clip, count, interval, number
from kloros_orchestrator.report.records import (
    Candidate,
    Elimination,
    FailureGroup,
    Notable,
    PacingPoint,
    ReportData,
)
from kloros_orchestrator.store import read_jsonl

MAX_CANDIDATES: Final = 3000  # per domain, the most recent
MAX_PACING: Final = 2000
MAX_NOTABLE: Final = 60
MAX_ELIMINATIONS: Final = 2000
RACE_EVENT: Final = "race_eliminated"  # fields: domain, generation, cand_id, reason (when recorded)
NOTABLE: Final = frozenset(
    {
        "adopted", "rolled_back", "domain_backoff", "search_space_adapted", "search_restarted",
        "tournament_failed", "tournament_all_failed", "phase_failed", "qtime_shrunk", "host_config_failed",
        "state_rejected", "state_entry_rejected", "pack_rejected", "phase_results_rejected",
    }
)  # fmt: skip
_PLUMBING: Final = frozenset({"ts", "event", "state", "prev_state"})


def read_logs(reader: Reader, data: ReportData) -> None:
    history = reader.read(read_jsonl, "logs", "fitness_history.jsonl") or []
    events = reader.read(read_jsonl, "logs", "events.jsonl") or []
    trials = reader.read(read_jsonl, "logs", "trials.jsonl") or []
    _candidates(data, history)
    data.eliminations = _eliminations(data, events)
    data.pacing = _pacing(events)
    data.adoptions = _adoptions(events)
    data.notable = _notable(events)
    _failures(data, trials)


def _candidates(data: ReportData, history: Iterable[dict[str, Any]]) -> None:
    for row in history:
        if row.get("kind") != "candidate" or not isinstance(row.get("domain"), str):
            continue
        gen = count(row.get("generation"))
        if gen is None:
            continue
        elimination = row.get("elimination") if row.get("eliminated") is True else None
        data.candidates.setdefault(row["domain"], []).append(
            Candidate(
                domain=clip(row["domain"], 60),
                generation=gen,
                cand_id=clip(row.get("cand_id", "?"), 40),
                score=number(row.get("score")),
                ci=interval(row.get("score_ci95")),
                trials_used=count(row.get("trials_used")),
                elimination=None if elimination is None else clip(elimination or "no reason recorded"),
                ts=number(row.get("ts")) or 0.0,
            )
        )
    for domain, rows in data.candidates.items():
        data.candidates[domain] = rows[-MAX_CANDIDATES:]


def _eliminations(data: ReportData, events: Iterable[dict[str, Any]]) -> list[Elimination]:
    """Every candidate racing stopped early, with why: from the fitness history, and from
    ``race_eliminated`` events for any the history does not have."""
    out = [
        Elimination(c.domain, c.generation, c.cand_id, c.elimination, c.trials_used, c.ts)
        for rows in data.candidates.values()
        for c in rows
        if c.elimination is not None
    ]
    seen = {(e.domain, e.generation, e.cand_id) for e in out}
    for ev in events:
        if ev.get("event") != RACE_EVENT:
            continue
        domain, cand = clip(ev.get("domain", "?"), 60), clip(ev.get("cand_id", "?"), 40)
        gen = count(ev.get("generation"))
        if gen is None or (domain, gen, cand) in seen:
            continue
        seen.add((domain, gen, cand))
        reason = clip(ev.get("reason") or "no reason recorded")
        out.append(Elimination(domain, gen, cand, reason, None, number(ev.get("ts")) or 0.0))
    out.sort(key=lambda e: e.ts)  # stable: the files' own order within one timestamp
    return out[-MAX_ELIMINATIONS:]


def _pacing(events: Iterable[dict[str, Any]]) -> list[PacingPoint]:
    out: list[PacingPoint] = []
    for ev in events:
        if ev.get("event") != "pacing":
            continue
        ts, sleep_s = number(ev.get("ts")), number(ev.get("sleep_s"))
        if ts is None or sleep_s is None:
            continue
        out.append(PacingPoint(ts, sleep_s, clip(ev.get("reason", "")), ev.get("defer_to_window") is True))
    return out[-MAX_PACING:]


def _adoptions(events: list[dict[str, Any]]) -> dict[str, list[tuple[int, str]]]:
    """Per domain, the generations from which the stock arm (score 0) is another configuration: the
    first tournament started after an ``adopted``/``rolled_back`` event (in the log's order: the
    host changes at that boundary)."""
    pending: dict[str, str] = {}
    out: dict[str, list[tuple[int, str]]] = {}
    for ev in events:
        name, domain = ev.get("event"), ev.get("domain")
        if not isinstance(domain, str):
            continue
        if name == "adopted":
            cand = as_dict(ev.get("provenance")).get("cand_id")
            pending[domain] = f"adopted {clip(cand, 30)}"
        elif name == "rolled_back":
            pending[domain] = "rolled back to factory"
        elif name == "tournament_started" and domain in pending:
            gen = count(ev.get("generation"))
            if gen is not None:
                out.setdefault(domain, []).append((gen, pending.pop(domain)))
    return out


def _notable(events: Iterable[dict[str, Any]]) -> list[Notable]:
    out: list[Notable] = []
    for ev in events:
        name, ts = ev.get("event"), number(ev.get("ts"))
        if name not in NOTABLE or ts is None:
            continue
        domain = ev.get("domain")
        fields = {k: v for k, v in ev.items() if k not in _PLUMBING and k != "domain"}
        out.append(
            Notable(
                ts=ts,
                event=str(name),
                domain=clip(domain, 60) if isinstance(domain, str) else None,
                text=clip(_describe(str(name), fields)),
            )
        )
    return out[-MAX_NOTABLE:]


def _describe(name: str, fields: dict[str, Any]) -> str:
    """The event's own words where it has them (reason, change, error), else its fields."""
    if name == "adopted":
        prov = as_dict(fields.get("provenance"))
        return f"{prov.get('cand_id')} by {prov.get('by')}: {prov.get('evidence') or 'no evidence recorded'}"
    for key in ("reason", "change", "error", "problem"):
        if isinstance(fields.get(key), str):
            return str(fields[key])
    return ", ".join(f"{k}={clip(v, 80)}" for k, v in fields.items())


def _failures(data: ReportData, trials: Iterable[dict[str, Any]]) -> None:
    """Trials counted; failed ones grouped by the kind of failure (the text before its first ':')."""
    counts: Counter[str] = Counter()
    domains: dict[str, set[str]] = {}
    example: dict[str, str] = {}
    for row in trials:
        ok = row.get("ok")
        if not isinstance(ok, bool):
            continue
        data.trials_total += 1
        if ok:
            continue
        data.trials_failed += 1
        text = row.get("failure") if isinstance(row.get("failure"), str) and row.get("failure") else ""
        kind = clip(text.split(":", 1)[0].strip(), 60) if text else "no reason recorded"
        counts[kind] += 1
        domains.setdefault(kind, set()).add(clip(row.get("domain", "?"), 40))
        example[kind] = clip(text or "no reason recorded")
    data.failures = [
        FailureGroup(kind, n, sorted(domains[kind]), example[kind]) for kind, n in counts.most_common()
    ]
