"""Measurement: stress-ng output parsing, sensors, caps, bootstrap statistics and the score."""

from __future__ import annotations

from kloros_orchestrator.measure.caps import CapLimit, check_caps, load_caps, parse_caps
from kloros_orchestrator.measure.scoring import (
    OVERALL,
    SCORE_KPIS,
    SCORE_TERMS,
    aggregate_means,
    improves_over_baseline,
    score_candidate,
    score_regime,
    score_regime_array,
    score_terms,
    score_v2,
)
from kloros_orchestrator.measure.sensors import (
    RaplZone,
    SensorReadError,
    Sensors,
    TrialSampler,
    discover_sensors,
    energy_delta_uj,
)
from kloros_orchestrator.measure.stats import (
    bootstrap_mean_ci,
    bootstrap_mean_ci_batch,
    expanded_tail,
    kpi_cis,
    prob_better,
    score_ci,
    welch_p_value,
)
from kloros_orchestrator.measure.stressng_output import (
    PROBE_STRESSOR,
    MetricsUnavailable,
    latency_kpis,
    parse_cyclic_percentiles,
    parse_yaml_metrics,
    read_stress_ng_version,
    short_run_reason,
    stressng_kpis,
    throughput,
)

__all__ = [
    "OVERALL",
    "PROBE_STRESSOR",
    "SCORE_KPIS",
    "SCORE_TERMS",
    "CapLimit",
    "MetricsUnavailable",
    "RaplZone",
    "SensorReadError",
    "Sensors",
    "TrialSampler",
    "aggregate_means",
    "bootstrap_mean_ci",
    "bootstrap_mean_ci_batch",
    "check_caps",
    "discover_sensors",
    "energy_delta_uj",
    "expanded_tail",
    "improves_over_baseline",
    "kpi_cis",
    "latency_kpis",
    "load_caps",
    "parse_caps",
    "parse_cyclic_percentiles",
    "parse_yaml_metrics",
    "prob_better",
    "read_stress_ng_version",
    "score_candidate",
    "score_ci",
    "score_regime",
    "score_regime_array",
    "score_terms",
    "score_v2",
    "short_run_reason",
    "stressng_kpis",
    "throughput",
    "welch_p_value",
]
