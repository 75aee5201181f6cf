"""Parse what stress-ng writes: the ``--yaml`` metrics file, the ``--cyclic`` percentile log lines and
``--version``; and decide whether a run lasted long enough to be a trial.

Pure functions over text; the caller reads the files and runs the processes. Nothing here invents a
number: a value that stress-ng did not print is absent (``None`` or missing from a dict), and a
required metric that is missing, not a number, not finite or negative makes the whole file unusable
(``MissingMetrics``) rather than dropping one entry and keeping the rest.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import yaml

from kloros_orchestrator.errors import MissingMetrics, TooShort
from kloros_orchestrator.model import P50, P95, P99, THROUGHPUT, StressorMetric

# The latency probe's stressor name (it runs in a stress-ng process of its own); excluded from throughput.
PROBE_STRESSOR: Final = "cyclic"

# KPI name -> percentile it reports.
LATENCY_PERCENTILES: Final = {P50: 50.0, P95: 95.0, P99: 99.0}

# A run is a valid trial only when it lasted at least this fraction of the requested duration.
MIN_WALL_FRACTION: Final = 0.9

_REQUIRED_KEYS: Final = ("bogo-ops", "bogo-ops-per-second-real-time", "wall-clock-time")
_OPTIONAL_KEYS: Final = {
    "bogo-ops-per-second-usr-sys-time": "bogo_ops_per_s_usr_sys",
    "user-time": "user_time_s",
    "system-time": "system_time_s",
    "cpu-usage-per-instance": "cpu_usage_per_instance",
    "max-rss": "max_rss_kb",
}

# "stress-ng: info:  [2060] cyclic:   95.40%:      42933 ns"
_CYCLIC_LINE: Final = re.compile(
    r"\bcyclic:\s+(?P<pct>\d+(?:\.\d+)?)%:\s+(?P<ns>\d+(?:\.\d+)?)\s*ns\b",
)
# "stress-ng, version 0.15.06 (gcc 12.2.0, x86_64 Linux 6.1.0)": dotted digits, then an ASCII suffix.
_VERSION: Final = re.compile(r"\bversion\s+(?P<version>\d+(?:\.\d+)+[0-9A-Za-z.\-+~]*)")

# The parser's name for the product's error: the YAML has no usable metrics. Kept as a name because
# ``kloros_orchestrator.measure`` exports it; it *is* ``MissingMetrics``, so callers catch either.
MetricsUnavailable = MissingMetrics


class _StringLoader(yaml.SafeLoader):
    """SafeLoader that resolves no implicit int/float/bool/timestamp: every plain scalar stays a string.

    stress-ng writes ``date-yyyy-mm-dd: 2026:11:22``, which YAML 1.1 reads as a base-60 integer;
    keeping strings and converting the metric fields ourselves avoids that whole class of surprise.
    """


_StringLoader.yaml_implicit_resolvers = {}


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_StringLoader)  # a SafeLoader subclass: safe


def _number(value: object) -> float | None:
    """A finite number written as a YAML string; None for anything else (absent, text, nan, inf)."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _required_number(entry: Mapping[str, object], key: str, where: str) -> float:
    raw = entry.get(key)
    number = _number(raw)
    if number is None:
        got = "" if raw is None else f" (got {raw!r})"
        raise MissingMetrics(f"{where}: {key} missing or not a finite number{got}")
    if number < 0:
        raise MissingMetrics(f"{where}: {key} is negative ({raw}): not a measurement")
    return number


def _parse_entry(index: int, entry: object) -> StressorMetric:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("stressor"), str) or not entry["stressor"]:
        raise MissingMetrics(f"stress-ng YAML metrics[{index}] has no stressor name")
    name: str = entry["stressor"]
    where = f"stress-ng YAML metrics[{index}] ({name})"
    required = {key: _required_number(entry, key, where) for key in _REQUIRED_KEYS}
    optional = {attr: _number(entry.get(key)) for key, attr in _OPTIONAL_KEYS.items()}
    return StressorMetric(
        stressor=name,
        bogo_ops=required["bogo-ops"],
        bogo_ops_per_s_real=required["bogo-ops-per-second-real-time"],
        wall_clock_s=required["wall-clock-time"],
        **optional,
    )


def parse_yaml_metrics(text: str) -> list[StressorMetric]:
    """Every stressor's metrics from a stress-ng ``--yaml`` file, in file order (never empty).

    Raises ``MissingMetrics`` when the file is empty, is not YAML, or has no usable ``metrics``
    section, or when any entry lacks a stressor name or a finite, non-negative bogo-ops, real-time
    rate or wall-clock time. Optional metrics that are absent or unreadable are ``None``, never 0.
    """
    if not text.strip():
        raise MissingMetrics("stress-ng wrote an empty YAML file (run killed before it finished?)")
    try:
        doc = _load_yaml(text)
    except yaml.YAMLError as exc:
        raise MissingMetrics(f"stress-ng YAML is not parseable: {exc}") from exc
    except RecursionError:
        # stress-ng never nests more than a few levels; a 100,000-deep document is not a report.
        raise MissingMetrics("stress-ng YAML is nested too deeply to be a metrics report") from None
    if not isinstance(doc, Mapping):
        raise MissingMetrics("stress-ng YAML is not a mapping")
    entries = doc.get("metrics")
    if not isinstance(entries, list) or not entries:
        raise MissingMetrics(
            "stress-ng YAML has no metrics section (needs --metrics-brief, and no -q before it)"
        )
    return [_parse_entry(index, entry) for index, entry in enumerate(entries)]


def parse_cyclic_percentiles(log_text: str) -> dict[float, float]:
    """``{percentile: nanoseconds}`` from the cyclic stressor's log lines; ``{}`` when none printed.

    If several cyclic instances each print a table, the worst (largest) value per percentile is kept.
    """
    result: dict[float, float] = {}
    for match in _CYCLIC_LINE.finditer(log_text):
        pct = float(match["pct"])
        ns = float(match["ns"])
        result[pct] = max(ns, result.get(pct, ns))
    return result


def _interpolate(percentiles: Mapping[float, float], target: float) -> float | None:
    if target in percentiles:
        return percentiles[target]
    below = [p for p in percentiles if p < target]
    above = [p for p in percentiles if p > target]
    if not below or not above:
        return None
    lo, hi = max(below), min(above)
    frac = (target - lo) / (hi - lo)
    return percentiles[lo] + frac * (percentiles[hi] - percentiles[lo])


def latency_kpis(percentiles: Mapping[float, float]) -> dict[str, float]:
    """p50/p95/p99 in microseconds, linearly interpolated between the bracketing printed percentiles.

    stress-ng prints 25, 50, 75, 90, 95.40, 99, 99.5, 99.9, 99.99; a KPI whose percentile is not
    printed and not bracketed by two printed ones is omitted. Raises ``MissingMetrics`` when a
    printed latency is not a finite number >= 0 (a value too long for a float overflows to inf).
    """
    for pct, printed in percentiles.items():
        if not (math.isfinite(pct) and math.isfinite(printed) and printed >= 0):
            raise MissingMetrics(f"cyclic {pct:g}% latency {printed!r} ns is not a finite number >= 0")
    kpis: dict[str, float] = {}
    for kpi, target in LATENCY_PERCENTILES.items():
        ns = _interpolate(percentiles, target)
        if ns is not None:
            kpis[kpi] = ns / 1000.0
    return kpis


def stressor_rates(
    metrics: Iterable[StressorMetric], exclude: Iterable[str] = (PROBE_STRESSOR,)
) -> dict[str, float]:
    """Each workload stressor's bogo-ops per second (real time), ``{stressor: rate}``; empty when none.

    Raises ``MissingMetrics`` when a rate is not a finite number >= 0 (or a stressor's repeated entries
    overflow), and ``TooShort`` when a workload stressor completed no bogo-op at all.
    """
    excluded = set(exclude)
    rates: dict[str, float] = {}
    for m in metrics:
        if m.stressor in excluded:
            continue
        if m.bogo_ops == 0:  # a zero is no measurement: the trial was too short for this stressor
            raise TooShort(m.stressor, m.wall_clock_s)
        rate = m.bogo_ops_per_s_real
        if not (math.isfinite(rate) and rate >= 0):
            raise MissingMetrics(f"{m.stressor}: bogo-ops/s rate {rate!r} is not a finite number >= 0")
        rates[m.stressor] = rates.get(m.stressor, 0.0) + rate
        if not math.isfinite(rates[m.stressor]):
            raise MissingMetrics(f"{m.stressor}: bogo-ops/s rates overflow when added up")
    return rates


def throughput(metrics: Iterable[StressorMetric], exclude: Iterable[str] = (PROBE_STRESSOR,)) -> float | None:
    """Sum of bogo-ops per second (real time) over workload stressors; None when there are none.

    This sum is the pack's ``throughput_ops``; the score compares stressor by stressor
    (:func:`stressor_rates`). Raises like :func:`stressor_rates`, and ``MissingMetrics`` when the sum
    overflows.
    """
    rates = stressor_rates(metrics, exclude)
    return total_rate(rates) if rates else None


def total_rate(rates: Mapping[str, float]) -> float:
    """The sum of per-stressor rates (``throughput_ops``); ``MissingMetrics`` when it overflows."""
    total = sum(rates.values())
    if not math.isfinite(total):
        raise MissingMetrics(f"throughput overflows: the sum of {len(rates)} bogo-ops/s rates is {total!r}")
    return total


def short_run_reason(
    metrics: Iterable[StressorMetric],
    duration_s: float,
    *,
    min_fraction: float = MIN_WALL_FRACTION,
    wall_s: float | None = None,
) -> str | None:
    """Why the run is not a valid trial because it stopped early; None when it ran long enough.

    Every stressor's wall-clock time, and ``wall_s`` (the caller's own clock, spawn to exit) when
    given, must reach ``min_fraction`` of the requested duration. A stress-ng stopped by
    SIGINT/SIGTERM exits 0 with shortened metrics, so the exit code alone cannot tell a full run
    from an interrupted one.
    """
    need = duration_s * min_fraction
    lasted = [(f"{m.stressor} ran", m.wall_clock_s) for m in metrics]
    if wall_s is not None:
        lasted.append(("the run lasted", wall_s))
    for what, seconds in lasted:
        if seconds < need:
            return f"{what} {seconds:.3f} s of the requested {duration_s:g}s (below {need:.2f}s)"
    return None


def stressng_kpis(
    yaml_text: str, log_text: str, *, exclude: Iterable[str] = (PROBE_STRESSOR,)
) -> dict[str, float]:
    """Throughput and latency KPIs of one run; KPIs that were not measured are absent.

    Raises ``MissingMetrics`` when the YAML has no usable metrics.
    """
    kpis = latency_kpis(parse_cyclic_percentiles(log_text))
    total = throughput(parse_yaml_metrics(yaml_text), exclude)
    if total is not None:
        kpis[THROUGHPUT] = total
    return kpis


def read_stress_ng_version(text: str) -> str | None:
    """``"0.15.06"`` from ``stress-ng --version`` output; None when no version is recognisable."""
    match = _VERSION.search(text)
    return match["version"] if match else None
