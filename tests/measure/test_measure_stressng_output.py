from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kloros_orchestrator.errors import MissingMetrics, TooShort, WorkloadFailed
from kloros_orchestrator.measure.stressng_output import (
    MetricsUnavailable,
    latency_kpis,
    parse_cyclic_percentiles,
    parse_yaml_metrics,
    read_stress_ng_version,
    short_run_reason,
    stressng_kpis,
    stressor_rates,
    throughput,
)
from kloros_orchestrator.model import P50, P95, P99, THROUGHPUT, StressorMetric

DATA = Path(__file__).parent / "data"
# Real output of `stress-ng --cpu 1 --cyclic 1 --cyclic-method clock_ns --timeout 1 --metrics-brief
# --yaml F` (0.15.06): the YAML file and stderr.
REAL_YAML = (DATA / "cpu_cyclic_metrics.yaml").read_text()
REAL_LOG = (DATA / "cpu_cyclic_stderr.txt").read_text()


def _metric(name: str, rate: float, wall: float = 10.0) -> StressorMetric:
    return StressorMetric(stressor=name, bogo_ops=rate * wall, bogo_ops_per_s_real=rate, wall_clock_s=wall)


def test_real_yaml_gives_every_stressor_with_all_metrics() -> None:
    metrics = parse_yaml_metrics(REAL_YAML)
    assert [m.stressor for m in metrics] == ["cpu", "cyclic"]
    cpu = metrics[0]
    assert cpu.bogo_ops == 1019.0
    assert cpu.bogo_ops_per_s_real == pytest.approx(1011.263694)
    assert cpu.bogo_ops_per_s_usr_sys == pytest.approx(1192.969558)
    assert cpu.wall_clock_s == pytest.approx(1.00765)
    assert cpu.user_time_s == pytest.approx(0.741816)
    assert cpu.system_time_s == pytest.approx(0.112355)
    assert cpu.cpu_usage_per_instance == pytest.approx(84.768609)
    assert cpu.max_rss_kb == 6556.0


def test_sexagesimal_looking_date_does_not_break_parsing() -> None:
    # The real file has `date-yyyy-mm-dd: 2026:11:22`; safe_load would read it as an int.
    assert "date-yyyy-mm-dd: 2026:11:22" in REAL_YAML
    text = REAL_YAML.replace("bogo-ops: 1019", "bogo-ops: 1:30")  # sexagesimal 90 under YAML 1.1
    with pytest.raises(MetricsUnavailable, match="bogo-ops missing or not a finite number"):
        parse_yaml_metrics(text)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty YAML"),
        ((DATA / "quiet_no_metrics.yaml").read_text(), "no metrics section"),
        ("---\nsystem-info:\n  cpus: 2\nmetrics:\n...\n", "no metrics section"),
        ("---\nmetrics: [\n", "not parseable"),
        ("- just\n- a list\n", "not a mapping"),
        ("metrics:\n", "no metrics section"),
        (": : :\n  - [", "not parseable"),
        ("metrics:\n  - bogo-ops: 3\n", "no stressor name"),
        ("metrics:\n  - stressor:\n    bogo-ops: 3\n", "no stressor name"),
        ("metrics:\n  - [cpu, 3]\n", "no stressor name"),
        ("metrics:\n  - stressor: cpu\n    bogo-ops: 3\n    wall-clock-time: 1.0\n", "real-time"),
        (
            "metrics:\n  - stressor: cpu\n    bogo-ops: 3\n    bogo-ops-per-second-real-time: nan\n"
            "    wall-clock-time: 1.0\n",
            "real-time",
        ),
    ],
)
def test_unusable_yaml_raises_workload_failed(text: str, match: str) -> None:
    with pytest.raises(WorkloadFailed, match=match) as info:
        parse_yaml_metrics(text)
    assert isinstance(info.value, MetricsUnavailable)


def test_parser_errors_are_the_products_missing_metrics() -> None:
    # The runtime and its callers catch MissingMetrics; MetricsUnavailable is the same class.
    assert MetricsUnavailable is MissingMetrics
    with pytest.raises(MissingMetrics) as info:
        parse_yaml_metrics("")
    assert info.value.reason == "missing_metrics"


# A hand-trimmed stress-ng file: sexagesimal-looking dates, some optional metrics absent.
YAML_SAMPLE = """---
system-info:
      stress-ng-version: 0.15.06
      date-yyyy-mm-dd: 2026:11:22
      time-hh-mm-ss: 01:39:51
metrics:
    - stressor: cpu
      bogo-ops: 1693
      bogo-ops-per-second-real-time: 1692.226571
      wall-clock-time: 1.000457
      user-time: 0.985258
      max-rss: 6468
    - stressor: vm
      bogo-ops: 11548
      bogo-ops-per-second-real-time: 11464.4
      wall-clock-time: 1.007281
...
"""


def test_yaml_reader_keeps_strings_and_leaves_absent_metrics_none() -> None:
    cpu, vm = parse_yaml_metrics(YAML_SAMPLE)
    assert (cpu.stressor, vm.stressor) == ("cpu", "vm")
    assert (cpu.bogo_ops, cpu.bogo_ops_per_s_real, cpu.wall_clock_s) == (1693.0, 1692.226571, 1.000457)
    assert (cpu.user_time_s, cpu.max_rss_kb) == (0.985258, 6468.0)
    assert cpu.system_time_s is None and cpu.bogo_ops_per_s_usr_sys is None  # absent, not 0.0
    assert vm.bogo_ops == 11548.0 and vm.user_time_s is None


def test_one_incomplete_entry_makes_the_whole_file_unusable() -> None:
    # Stricter than dropping the entry and keeping the others: its numbers cannot be trusted either.
    text = YAML_SAMPLE.replace("      bogo-ops-per-second-real-time: 11464.4\n", "")
    with pytest.raises(MissingMetrics, match=r"metrics\[1\] \(vm\): bogo-ops-per-second-real-time missing"):
        parse_yaml_metrics(text)


@pytest.mark.parametrize("key", ["bogo-ops", "bogo-ops-per-second-real-time", "wall-clock-time"])
@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("-1", "is negative"),
        ("-0.5", "is negative"),
        ("-inf", "missing or not a finite number"),
        (".inf", "missing or not a finite number"),
        ("nan", "missing or not a finite number"),
        ("[1, 2]", "missing or not a finite number"),
        ("''", "missing or not a finite number"),
    ],
)
def test_negative_or_non_finite_required_metric_is_not_a_measurement(
    key: str, value: str, match: str
) -> None:
    text = (
        "metrics:\n  - stressor: cpu\n    bogo-ops: 3\n    bogo-ops-per-second-real-time: 3\n"
        "    wall-clock-time: 1.0\n"
    )
    text = re.sub(rf"(?m)^    {key}: .*$", f"    {key}: {value}", text)
    with pytest.raises(MissingMetrics, match=rf"\(cpu\): {key} {match}"):
        parse_yaml_metrics(text)


def test_zero_parses_as_zero_and_bad_optional_metrics_are_none() -> None:
    text = (
        "metrics:\n  - stressor: cpu\n    bogo-ops: 0\n    bogo-ops-per-second-real-time: 0.0\n"
        "    wall-clock-time: 1.0\n    user-time: nan\n    max-rss: lots\n"
    )
    (metric,) = parse_yaml_metrics(text)
    assert (metric.bogo_ops, metric.bogo_ops_per_s_real) == (0.0, 0.0)
    assert metric.user_time_s is None and metric.max_rss_kb is None


def test_optional_metrics_absent_are_none_not_zero() -> None:
    text = (
        "metrics:\n  - stressor: vm\n    bogo-ops: 10\n    bogo-ops-per-second-real-time: 5.5\n"
        "    wall-clock-time: 2.0\n"
    )
    (metric,) = parse_yaml_metrics(text)
    assert metric.bogo_ops_per_s_real == 5.5
    assert metric.max_rss_kb is None
    assert metric.user_time_s is None


def test_real_cyclic_percentiles() -> None:
    pct = parse_cyclic_percentiles(REAL_LOG)
    assert sorted(pct) == [25.0, 50.0, 75.0, 90.0, 95.4, 99.0, 99.5, 99.9, 99.99]
    assert pct[95.4] == 52197.0
    assert pct[99.99] == 23916739.0


def test_cyclic_percentiles_from_brief_line_and_none() -> None:
    line = "stress-ng: info:  [2060] cyclic:   95.40%:      42933 ns\n"
    assert parse_cyclic_percentiles(line) == {95.4: 42933.0}
    assert parse_cyclic_percentiles((DATA / "cyclic_no_latency_stderr.txt").read_text()) == {}
    # The mean/min lines carry "ns" but are not percentiles.
    assert parse_cyclic_percentiles("stress-ng: info:  [1] cyclic:   mean: 42457.54 ns, mode: 20590 ns") == {}


def test_several_cyclic_tables_keep_the_worst_value() -> None:
    log = "[1] cyclic:   50.00%:  100 ns\n[2] cyclic:   50.00%:  300 ns\n[3] cyclic:   50.00%:  200 ns\n"
    assert parse_cyclic_percentiles(log) == {50.0: 300.0}


def test_latency_kpis_exact_and_interpolated_in_microseconds() -> None:
    kpis = latency_kpis(parse_cyclic_percentiles(REAL_LOG))
    assert kpis[P50] == pytest.approx(23.385)
    assert kpis[P99] == pytest.approx(550.4)
    # 95 lies between 90 (35352 ns) and 95.40 (52197 ns).
    assert kpis[P95] == pytest.approx((35352 + (5.0 / 5.4) * (52197 - 35352)) / 1000)


def test_latency_kpis_omit_what_cannot_be_bracketed() -> None:
    assert latency_kpis({25.0: 1000.0, 75.0: 3000.0}) == {P50: 2.0}
    assert latency_kpis({96.0: 5000.0, 99.9: 9000.0}) == {P99: pytest.approx(5.0 + 4.0 * 3 / 3.9)}
    assert latency_kpis({}) == {}


def test_throughput_excludes_probe_and_is_none_without_workload() -> None:
    metrics = [_metric("cpu", 100.0), _metric("vm", 50.5), _metric("cyclic", 7000.0)]
    assert throughput(metrics) == pytest.approx(150.5)
    assert throughput(metrics, exclude=()) == pytest.approx(7150.5)
    assert throughput([_metric("cyclic", 7000.0)]) is None
    assert throughput([]) is None
    assert throughput(parse_yaml_metrics(REAL_YAML)) == pytest.approx(1011.263694)


def test_stressor_rates_keep_each_workload_stressor_and_add_repeats() -> None:
    metrics = [_metric("cpu", 100.0), _metric("vm", 50.5), _metric("cyclic", 7000.0), _metric("vm", 0.5)]
    assert stressor_rates(metrics) == {"cpu": 100.0, "vm": 51.0}
    assert stressor_rates([_metric("cyclic", 7000.0)]) == {}
    assert sum(stressor_rates(parse_yaml_metrics(REAL_YAML)).values()) == pytest.approx(1011.263694)
    with pytest.raises(TooShort, match="no bogo-op"):
        stressor_rates([_metric("cpu", 3.0), _metric("memrate", 0.0)])
    with pytest.raises(MissingMetrics, match="vm: bogo-ops/s rates overflow"):
        stressor_rates([_metric("vm", 1e308), _metric("vm", 1e308)])


def test_throughput_that_overflows_or_adds_no_measurement_is_refused() -> None:
    # Each rate is finite, but their sum is not a float any more: no KPI rather than inf (JSON null).
    with pytest.raises(MissingMetrics, match=r"throughput overflows: the sum of 2 bogo-ops/s rates is inf"):
        throughput([_metric("cpu", 1e308), _metric("vm", 1e308)])
    for rate in (-20000.0, math.inf, math.nan):
        with pytest.raises(MissingMetrics, match=r"vm: bogo-ops/s rate .* is not a finite number >= 0"):
            throughput([_metric("cpu", 1.0), _metric("vm", rate)])
    with pytest.raises(TooShort, match="no bogo-op"):  # zero bogo-ops is no measurement (a too short run)
        throughput([_metric("cpu", 0.0)])


def test_latency_that_overflows_is_refused() -> None:
    # A value too long for a float parses as inf; it must not become a latency KPI.
    huge = parse_cyclic_percentiles("[1] cyclic:   50.00%:  " + "9" * 400 + " ns\n")
    assert huge == {50.0: math.inf}
    with pytest.raises(MissingMetrics, match=r"cyclic 50% latency inf ns is not a finite number >= 0"):
        latency_kpis(huge)
    for bad in ({50.0: -1.0}, {50.0: math.nan}, {math.inf: 1.0}):
        with pytest.raises(MissingMetrics, match="not a finite number >= 0"):
            latency_kpis({25.0: 1000.0, **bad})


def test_stressng_kpis_refuses_an_overflowing_sum() -> None:
    entry = "  - stressor: {}\n    bogo-ops: 1\n    bogo-ops-per-second-real-time: 1.5e308\n"
    entry += "    wall-clock-time: 1\n"
    text = "metrics:\n" + entry.format("cpu") + entry.format("vm")
    assert [m.bogo_ops_per_s_real for m in parse_yaml_metrics(text)] == [1.5e308, 1.5e308]
    with pytest.raises(MissingMetrics, match="throughput overflows"):
        stressng_kpis(text, REAL_LOG)


def test_short_run_is_detected() -> None:
    assert short_run_reason([_metric("cpu", 1.0, wall=9.95)], 10.0) is None
    reason = short_run_reason([_metric("cpu", 1.0, wall=10.0), _metric("vm", 1.0, wall=3.2)], 10.0)
    assert reason is not None and reason.startswith("vm ran 3.200 s of the requested 10s")


def test_short_run_checks_every_stressor_and_the_callers_clock() -> None:
    # Every stressor must reach the floor (not only the longest one), and so must the caller's own
    # spawn-to-exit clock when it is given.
    metrics = [_metric("cpu", 1.0, wall=1.0), _metric("vm", 1.0, wall=0.85)]
    assert short_run_reason(metrics, 1.0) == "vm ran 0.850 s of the requested 1s (below 0.90s)"
    assert short_run_reason(metrics, 1.0, min_fraction=0.8) is None
    assert short_run_reason(metrics[:1], 1.0, wall_s=1.02) is None
    reason = short_run_reason(metrics[:1], 1.0, wall_s=0.5)
    assert reason == "the run lasted 0.500 s of the requested 1s (below 0.90s)"


def test_stressng_kpis_combines_throughput_and_latency() -> None:
    kpis = stressng_kpis(REAL_YAML, REAL_LOG)
    assert set(kpis) == {THROUGHPUT, P50, P95, P99}
    assert kpis[THROUGHPUT] == pytest.approx(1011.263694)


def test_read_stress_ng_version() -> None:
    text = "stress-ng, version 0.15.06 (gcc 12.2.0, x86_64 Linux 6.18.44-fc-v657)\n"
    assert read_stress_ng_version(text) == "0.15.06"
    assert read_stress_ng_version("stress-ng, version 0.17.08-rc1 💻🔥\n") == "0.17.08-rc1"
    assert read_stress_ng_version("stress-ng, version 0.18.02~git+1\n") == "0.18.02~git+1"
    assert read_stress_ng_version("command not found") is None


@pytest.mark.parametrize("text", ["stress-ng, version 5\n", "version v0.15.06\n", "version .15\n"])
def test_version_must_be_dotted_digits(text: str) -> None:
    # A bare number or a "v" prefix is not how stress-ng prints its version: no guess is stored.
    assert read_stress_ng_version(text) is None


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("stress-ng") is None, reason="stress-ng not installed")
def test_real_stress_ng_run_parses(tmp_path: Path) -> None:
    yaml_path = tmp_path / "m.yaml"
    proc = subprocess.run(
        ["stress-ng", "--cpu", "1", "--cyclic", "1", "--cyclic-method", "clock_ns",
         "--timeout", "1", "--metrics-brief", "--yaml", str(yaml_path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = parse_yaml_metrics(yaml_path.read_text())
    assert {m.stressor for m in metrics} == {"cpu", "cyclic"}
    assert short_run_reason(metrics, 1.0) is None
    kpis = stressng_kpis(yaml_path.read_text(), proc.stderr)
    assert kpis[THROUGHPUT] > 0
    # A probe that reported percentiles gives ordered latencies.
    if P99 in kpis:
        assert kpis[P50] <= kpis[P95] <= kpis[P99]
    version = subprocess.run(["stress-ng", "--version"], capture_output=True, text=True, check=False)
    assert read_stress_ng_version(version.stdout + version.stderr) is not None


@pytest.mark.parametrize("nested", ["[" * 100_000, "metrics:\n" + "- " * 50_000 + "x\n", "{a: " * 60_000])
def test_absurdly_nested_yaml_is_missing_metrics_not_a_crash(nested: str) -> None:
    # A broken or hostile stress-ng must fail the trial with a reason, never the tournament.
    with pytest.raises(MissingMetrics):
        parse_yaml_metrics(nested)


def test_a_stressor_with_no_bogo_op_is_too_short_not_a_zero() -> None:
    ok = StressorMetric("cpu", 120.0, 120.0, 1.0)
    none = StressorMetric("memrate", 0.0, 0.0, 1.02)
    assert throughput([ok]) == 120.0
    with pytest.raises(TooShort) as e:
        throughput([ok, none])
    assert e.value.reason == "too short for memrate"
    text = f"{e.value.reason}: {e.value}"
    assert text.startswith("too short for memrate: it completed no bogo-op in 1.02 s")
    assert throughput([ok, StressorMetric("cyclic", 0.0, 0.0, 1.0)]) == 120.0  # the probe is not workload
