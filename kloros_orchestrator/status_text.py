"""``status`` for people: the status object (``status --json``) as aligned lines."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kloros_orchestrator.runtime.records import format_duration


def when(iso: str | None) -> str:
    if not iso:
        return "-"
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    except ValueError:
        return iso


def format_status(s: dict[str, Any]) -> str:
    """Readable summary of the status object (``status --json``; README, "Command line (contract)")."""
    t = s.get("tournament") or {}
    nw = s.get("next_window") or {}
    lp = s.get("last_phase")
    pacing = s.get("pacing") or {}
    counters = s.get("counters") or {}
    domains = s.get("domains") or {}
    lines = [
        f"state       {s.get('state')}  (pid {s.get('pid')}, up {float(s.get('uptime_s') or 0):.0f} s, "
        f"version {s.get('version')})",
        f"domain      {s.get('domain') or '-'}  generation {s.get('generation')}",
        "tournament  " + _tournament(s, t),
        f"next window {when(nw.get('start'))} → {when(nw.get('end'))}",
        "last PHASE  " + (f"{when(lp.get('completed_at'))}  {lp.get('results')}" if lp else "none yet"),
        f"pacing      last sleep {pacing.get('last_sleep_s', '-')} s: {pacing.get('reason', '-')}",
        "domains     " + ", ".join(f"{k}={v}" for k, v in domains.items()),
        "counters    " + ", ".join(f"{k}={v}" for k, v in counters.items()),
    ]
    lines[3:3] = _best_lines(s.get("best") or {}) + _phase_lines(s.get("phase"))
    lines += _host_lines(s.get("host") or {}, s.get("backoff") or {})
    lines += _fleet_lines(s.get("fleet"))
    problem = (s.get("contamination") or {}).get("problem")
    if problem:
        lines.append(f"contamination cannot be detected: {problem}")
    return "\n".join(lines)


def _tournament(s: dict[str, Any], t: dict[str, Any]) -> str:
    """``cpu gen 0 round 2/3: 40/64 trials (24 left, about 1m20s), now g0c3 in stress; leader ...``."""
    done, total = t.get("done", 0), t.get("total", 0)
    if s.get("state") in ("phase", "collapsing"):
        return f"paused while PHASE runs (the last: {s.get('domain') or '-'} gen {s.get('generation')})"
    text = f"{done}/{total} trials"
    if t.get("round"):
        text = f"{s.get('domain')} gen {s.get('generation')} round {t['round']}/{t.get('rounds')}: " + text
    left = t.get("remaining")
    if left:
        eta = t.get("eta_s")
        text += f" ({left} left" + (f", about {format_duration(eta)})" if eta is not None else ")")
    if t.get("arm"):
        text += f", now {t['arm']} in {t.get('regime')}"
    lead = t.get("leader")
    if lead:
        text += f"; leader {lead['cand_id']} {lead['mean_score']:+.1%} vs the stock arm"
    if t.get("contaminated_rounds"):
        text += f"; {t['contaminated_rounds']} contaminated round(s) dropped"
    if t.get("stopped"):
        text += f"; stopped: {t['stopped']}"
    return text


def _best_lines(best: dict[str, Any]) -> list[str]:
    return [f"verdict     {name} gen {b.get('generation')}: {b.get('text')}" for name, b in best.items()]


def _phase_lines(p: dict[str, Any] | None) -> list[str]:
    if not p or "epoch" not in p:
        return []
    eta = p.get("eta_s")
    left = f", about {format_duration(eta)} left" if eta is not None else ""
    return [
        f"PHASE       {p.get('run_id')}: epoch {p['epoch']}/{p.get('epochs')}, {p.get('regime')}, replica "
        f"{p.get('replica')}/{p.get('replicas')}, {p.get('arm')} on {p.get('domain')}: "
        f"{p.get('done')}/{p.get('total')} trials{left}"
    ]


def _host_lines(host: dict[str, Any], backoff: dict[str, Any]) -> list[str]:
    """What each domain runs (adopted or factory), pending promotions, domains backed off."""
    domains = host.get("domains") or {}
    if not domains and not backoff:
        return []
    runs = []
    for name, d in domains.items():
        a = d.get("adopted") or {}
        what = f"adopted {a.get('cand_id')} ({a.get('by')})" if d.get("config") == "adopted" else "factory"
        runs.append(f"{name}={what}" + (" (change pending)" if d.get("change_pending") else ""))
    lines = [f"host        promotion {host.get('promotion', '-')}; " + ", ".join(runs)]
    for name, d in domains.items():
        for p in d.get("pending_promotions") or []:
            lo, hi = p.get("score_ci95") or (0.0, 0.0)
            lines.append(
                f"pending     {name}: {p['cand_id']} score {p['score_v2']:+.4f} CI [{lo:+.4f}, {hi:+.4f}] "
                f"-> kloros-orchestrator {p['apply']}"
            )
        if d.get("note"):
            lines.append(f"problem     {name}: {d['note']}")
    for name, b in backoff.items():
        lines.append(f"backed off  {name} until {when(b.get('until'))}: {b.get('reason')}")
    return lines


def _fleet_lines(f: dict[str, Any] | None) -> list[str]:
    """The shared study: store (password hidden), this host, the database, each domain's study."""
    if not f:
        return []
    db = f.get("database") or {}
    reach = (
        "reachable" if db.get("reachable", True) else f"unreachable since {when(db.get('unreachable_since'))}"
    )
    u = f.get("units") or {}
    lines = [
        f"fleet       {f.get('name')} at {f.get('store')} as {f.get('host_id')}: database {reach}; "
        f"units claimed {u.get('claimed', 0)}, done {u.get('done', 0)}; spool {f.get('spool', 0)}"
    ]
    for name, st in (f.get("studies") or {}).items():
        units = st.get("units") or {}
        lines.append(
            f"study       {name}: {st.get('name')} key {str(st.get('key_digest'))[:12]}, "
            f"{st.get('hosts_alive')} host(s) alive, {'leader' if st.get('leader') else 'not leader'}, "
            f"gen {st.get('generation')}: {units.get('done', 0)} done, {units.get('claimed', 0)} claimed, "
            f"{units.get('open', 0)} open" + (f", {units['dropped']} dropped" if units.get("dropped") else "")
        )
    for name, ph in (f.get("phase") or {}).items():
        dec = ph.get("decision")
        if ph.get("state") == "waiting" or dec is None:
            lines.append(f"fleet PHASE {name}: {ph.get('why')}")
        else:
            pick = f"promoted {dec['promoted']}, " if dec.get("promoted") else ""
            lines.append(
                f"fleet PHASE {name}: {dec.get('phase_run_id')} over {dec.get('hosts')} host(s): {pick}"
                f"{dec.get('reason')}"
            )
    return lines


__all__ = ["format_status", "when"]
