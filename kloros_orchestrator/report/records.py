"""What the report shows, gathered from ``state_dir`` once (``gather``) and drawn twice (figures, HTML).

Plain frozen dataclasses of builtins: every number is already checked finite and every string cut
to a length a page can hold, so the drawing code never meets a file's surprises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kloros_orchestrator.host.records import AdoptedFile
from kloros_orchestrator.measure.packs import Baselines
from kloros_orchestrator.phase.results import PhaseResults

Interval = tuple[float, float]


@dataclass(frozen=True)
class GenerationBest:
    """One generation's best candidate (``gen<N>_best.json``)."""

    generation: int
    cand_id: str
    score: float | None
    ci: Interval | None
    improves: bool
    safe: bool
    note: str | None  # why it has no score, or no interval


@dataclass(frozen=True)
class Candidate:
    """One evaluated candidate (``fitness_history.jsonl``, kind ``candidate``)."""

    domain: str
    generation: int
    cand_id: str
    score: float | None
    ci: Interval | None
    trials_used: int | None
    elimination: str | None  # why racing eliminated it; None when it ran every trial
    ts: float = 0.0  # when it was recorded (Unix seconds)


@dataclass(frozen=True)
class KpiDelta:
    """A hall-of-fame entry's KPI in one regime against the stock mean of the same tournament (%)."""

    regime: str
    kpi: str
    pct: float
    ci_pct: Interval | None
    trials: int


@dataclass(frozen=True)
class FameEntry:
    domain: str
    cand_id: str
    generation: int
    score: float | None
    ci: Interval | None
    phase_run_id: str | None
    genome: dict[str, Any]
    deltas: list[KpiDelta]
    note: str | None  # why there are no deltas (no pack for it)


@dataclass(frozen=True)
class Elimination:
    domain: str
    generation: int
    cand_id: str
    reason: str
    trials_used: int | None
    ts: float = 0.0


@dataclass(frozen=True)
class PacingPoint:
    ts: float
    sleep_s: float
    reason: str
    defer: bool


@dataclass(frozen=True)
class FailureGroup:
    reason: str  # the text before the first ':' of the failure ("timeout", "knob drift", ...)
    count: int
    domains: list[str]
    example: str  # the most recent failure text of this kind


@dataclass(frozen=True)
class Notable:
    """An event worth a line: adopted, rolled back, backed off, search space adapted, failures."""

    ts: float
    event: str
    domain: str | None
    text: str


@dataclass
class ReportData:
    generated_at: float
    domains: list[str] = field(default_factory=list)
    generations: dict[str, list[GenerationBest]] = field(default_factory=dict)
    candidates: dict[str, list[Candidate]] = field(default_factory=dict)
    adoptions: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # domain -> (gen, label)
    fame: list[FameEntry] = field(default_factory=list)
    phase: PhaseResults | None = None
    phase_runs: int = 0
    eliminations: list[Elimination] = field(default_factory=list)
    pacing: list[PacingPoint] = field(default_factory=list)
    trials_total: int = 0
    trials_failed: int = 0
    failures: list[FailureGroup] = field(default_factory=list)
    notable: list[Notable] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    runs: int = 0
    baselines: Baselines = field(default_factory=dict)
    adopted: AdoptedFile | None = None
    problems: list[str] = field(default_factory=list)  # "file: problem" for whatever could not be read
