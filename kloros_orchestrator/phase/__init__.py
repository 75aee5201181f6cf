"""PHASE: the QTIME plan, the ``phase_results.json`` schema and the pure analysis of a run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kloros_orchestrator.phase.qtime import (
    QtimeSpec,
    Slot,
    build_plan,
    estimate_s,
    fit_plan,
)
from kloros_orchestrator.phase.records import DomainData, PhaseData, TrialRecord, VariantInfo
from kloros_orchestrator.phase.results import (
    FLAG_PREFIX,
    LATEST_NAME,
    RESULTS_NAME,
    SCHEMA,
    DomainMetrics,
    FlaggedVariant,
    PhaseResults,
    PromotedVariant,
    Qtime,
    Recommendation,
    ResultsWindow,
    TrialCounts,
    VariantSummary,
    latest_results,
    load_results,
    results_path,
    write_results,
)

if TYPE_CHECKING:
    from kloros_orchestrator.phase.analysis import (
        DROP_SCORE_MARGIN,
        MIN_EPOCHS_DROP,
        MIN_PAIRS_DROP,
        MIN_PAIRS_EFFECT,
        KpiEffect,
        PhaseAnalysis,
        analyze_domain,
        analyze_phase,
        build_results,
    )

# The analysis needs the statistics stack (scipy); the daemon, which imports this package for its
# plan, records and results, does not. Its names load on first use.
_ANALYSIS_NAMES = frozenset(
    {
        "DROP_SCORE_MARGIN",
        "MIN_EPOCHS_DROP",
        "MIN_PAIRS_DROP",
        "MIN_PAIRS_EFFECT",
        "KpiEffect",
        "PhaseAnalysis",
        "analyze_domain",
        "analyze_phase",
        "build_results",
    }
)


def __getattr__(name: str) -> object:
    if name in _ANALYSIS_NAMES:
        from kloros_orchestrator.phase import analysis

        return getattr(analysis, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DROP_SCORE_MARGIN",
    "FLAG_PREFIX",
    "LATEST_NAME",
    "MIN_EPOCHS_DROP",
    "MIN_PAIRS_DROP",
    "MIN_PAIRS_EFFECT",
    "RESULTS_NAME",
    "SCHEMA",
    "DomainData",
    "DomainMetrics",
    "FlaggedVariant",
    "KpiEffect",
    "PhaseAnalysis",
    "PhaseData",
    "PhaseResults",
    "PromotedVariant",
    "Qtime",
    "QtimeSpec",
    "Recommendation",
    "ResultsWindow",
    "Slot",
    "TrialCounts",
    "TrialRecord",
    "VariantInfo",
    "VariantSummary",
    "analyze_domain",
    "analyze_phase",
    "build_plan",
    "build_results",
    "estimate_s",
    "fit_plan",
    "latest_results",
    "load_results",
    "results_path",
    "write_results",
]
