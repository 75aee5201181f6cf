"""Everything the report shows, read from ``state_dir`` with the product's own readers.

Sources (README, "Files under state_dir"): the candidate packs, ``state.json`` (hall of fame), the
latest PHASE results, the run manifests, ``baselines.json``, ``host/adopted.json`` and the JSONL logs
(``report.logs``). A missing file is an empty section; an unreadable one is a line under "Problems".
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Final

import msgspec

from kloros_orchestrator.host.store import HostStore
from kloros_orchestrator.measure.packs import Baselines, CandidatePack, load_pack, read_baselines
from kloros_orchestrator.model import P95, THROUGHPUT, WATTS
from kloros_orchestrator.phase.results import LATEST_NAME, RESULTS_NAME, PhaseResults, load_results
from kloros_orchestrator.report.files import Reader, as_dict, clip
from kloros_orchestrator.report.logs import read_logs
from kloros_orchestrator.report.records import FameEntry, GenerationBest, KpiDelta, ReportData
from kloros_orchestrator.runtime.records import MAX_STATE_BYTES, SavedState, state_problems
from kloros_orchestrator.safefs import nesting_exceeds, read_bounded
from kloros_orchestrator.store import StatePaths, read_json

MAX_DOMAINS: Final = 40
MAX_GENERATIONS: Final = 300  # the most recent packs per domain drawn
MAX_MANIFESTS: Final = 1000
DELTA_KPIS: Final = (THROUGHPUT, P95, WATTS)  # the KPIs of the forest plot
_GEN: Final = re.compile(r"gen(\d{1,9})_best\.json")


def gather(state_dir: Path, *, now: float | None = None) -> ReportData:
    """Read ``state_dir``; never raises for what is in it (problems are listed in the result)."""
    reader = Reader(state_dir)
    data = ReportData(generated_at=time.time() if now is None else now)
    packs = _all_packs(reader, data)
    saved = _saved_state(reader, data.generated_at)
    _hall_of_fame(reader, data, saved, packs)
    data.phase, data.phase_runs = _phase(reader)
    read_logs(reader, data)
    data.manifest, data.runs = _manifest(reader)
    data.baselines = _baselines(reader)
    data.adopted = reader.read(lambda _: HostStore(StatePaths(reader.root)).adopted(), "host", "adopted.json")
    names = set(data.domains) | set(data.candidates) | {f.domain for f in data.fame}
    data.domains = sorted(names)[:MAX_DOMAINS]
    data.problems = reader.problems
    return data


def _all_packs(reader: Reader, data: ReportData) -> dict[str, dict[int, CandidatePack]]:
    """Each domain's recent ``gen<N>_best.json`` packs by generation (those that read back)."""
    out: dict[str, dict[int, CandidatePack]] = {}
    for entry in reader.entries("artifacts", "candidates", dirs=True)[:MAX_DOMAINS]:
        domain = entry.name
        files = [
            (int(m.group(1)), e.name)
            for e in reader.entries("artifacts", "candidates", domain, dirs=False)
            if (m := _GEN.fullmatch(e.name))
        ]
        packs: dict[int, CandidatePack] = {}
        for gen, name in sorted(files)[-MAX_GENERATIONS:]:
            pack = reader.read(_pack, "artifacts", "candidates", domain, name)
            if pack is not None:
                packs[gen] = pack
        out[domain] = packs
        data.domains.append(domain)
        data.generations[domain] = [_best(gen, p) for gen, p in sorted(packs.items())]
    return out


def _pack(path: Path) -> CandidatePack:
    return load_pack(path, move_aside=False)


def _best(gen: int, pack: CandidatePack) -> GenerationBest:
    agg = pack.aggregate
    note = agg.not_scored_reason or agg.score_ci_note
    return GenerationBest(
        generation=gen,
        cand_id=clip(pack.cand_id, 40),
        score=agg.score_v2,
        ci=agg.score_ci95,
        improves=agg.improves_over_baseline,
        safe=pack.safe,
        note=None if note is None else clip(note),
    )


def _saved_state(reader: Reader, now: float) -> SavedState | None:
    """``state.json`` decoded and checked as the daemon's start-up read does (``read_saved_state``),
    without its log line about starting afresh: the report starts nothing."""
    return reader.read(lambda path: _decode_state(path, now), "state.json")


def _decode_state(path: Path, now: float) -> SavedState:
    raw = read_bounded(path, max_bytes=MAX_STATE_BYTES)
    if nesting_exceeds(raw):
        raise ValueError("nested too deeply")
    try:
        state = msgspec.json.decode(raw, type=SavedState)
    except msgspec.DecodeError as e:  # ValidationError included
        raise ValueError(str(e)) from None
    problem = next(state_problems(state, now=now), None)
    if problem is not None:
        raise ValueError(problem)
    return state


def _hall_of_fame(
    reader: Reader, data: ReportData, saved: SavedState | None, packs: dict[str, dict[int, CandidatePack]]
) -> None:
    """Each domain's hall of fame (``state.json``) with the per-regime KPI deltas of its pack."""
    if saved is None:
        return
    for domain, progress in sorted(saved.engines.items())[:MAX_DOMAINS]:
        for h in progress.hall_of_fame:
            pack = packs.get(domain, {}).get(h.generation)
            if pack is None and _GEN.fullmatch(f"gen{h.generation}_best.json"):
                pack = reader.read(_pack, "artifacts", "candidates", domain, f"gen{h.generation}_best.json")
            note = None
            deltas: list[KpiDelta] = []
            if pack is None:
                note = f"no readable pack for generation {h.generation}"
            elif pack.cand_id != h.cand_id:
                other = clip(pack.cand_id, 40)
                note = f"the pack of generation {h.generation} is another candidate's ({other})"
            else:
                deltas = kpi_deltas(pack)
            data.fame.append(
                FameEntry(
                    domain=domain,
                    cand_id=clip(h.cand_id, 40),
                    generation=h.generation,
                    score=h.score,
                    ci=h.score_ci95,
                    phase_run_id=None if h.phase_run_id is None else clip(h.phase_run_id, 80),
                    genome={clip(k, 60): v for k, v in h.genome.items()},
                    deltas=deltas,
                    note=note,
                )
            )


def kpi_deltas(pack: CandidatePack) -> list[KpiDelta]:
    """Per regime, each of DELTA_KPIS against the stock mean of the same tournament, in percent.

    The interval is the bootstrap CI of the candidate's mean over the stock mean; the stock mean's
    own uncertainty is not in it (the pack keeps only its mean).
    """
    out: list[KpiDelta] = []
    for reg in pack.regimes:
        for kpi in DELTA_KPIS:
            values, base = reg.kpis.get(kpi), reg.baseline.get(kpi)
            if not values or isinstance(base, str | bool) or base is None or base <= 0:
                continue
            mean = sum(values) / len(values)
            ci = reg.ci95.get(kpi)
            out.append(
                KpiDelta(
                    regime=clip(reg.regime, 20),
                    kpi=kpi,
                    pct=(mean / base - 1) * 100,
                    ci_pct=None if ci is None else ((ci[0] / base - 1) * 100, (ci[1] / base - 1) * 100),
                    trials=reg.trials,
                )
            )
    return out


def _phase(reader: Reader) -> tuple[PhaseResults | None, int]:
    """The results ``phase/latest`` names (read without following the link), and how many runs."""
    runs = [e for e in reader.entries("phase", dirs=True) if not e.name.startswith(".")]
    link = reader.path("phase", LATEST_NAME)
    if link is None:
        return None, len(runs)
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return None, len(runs)
    except OSError as e:
        reader.problem(link, f"not the link PHASE writes ({e.strerror or e})")
        return None, len(runs)
    if not target or "/" in target or target in (".", ".."):
        reader.problem(link, f"points to {clip(target, 80)!r}, not to a run directory beside it")
        return None, len(runs)
    results = reader.read(lambda p: load_results(p, move_aside=False), "phase", target, RESULTS_NAME)
    return results, len(runs)


def _manifest(reader: Reader) -> tuple[dict[str, Any] | None, int]:
    """The most recent run manifest (by modification time) and the number of runs recorded."""
    files = [e for e in reader.entries("artifacts", "manifests", dirs=False) if e.name.endswith(".json")]
    for _, name in sorted(((e.mtime, e.name) for e in files), reverse=True)[:MAX_MANIFESTS]:
        doc = reader.read(read_json, "artifacts", "manifests", name)
        if isinstance(doc, dict):
            return {clip(k, 60): v for k, v in as_dict(doc).items()}, len(files)
    return None, len(files)


def _baselines(reader: Reader) -> Baselines:
    path = reader.path("artifacts", "baselines.json")
    if path is None:
        return {}
    entries, problem = read_baselines(path, move_aside=False)
    if problem is not None:
        reader.problem(path, problem)
    return entries
