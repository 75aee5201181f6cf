"""The trial evaluator on real stress-ng with fake sensor trees: KPIs measured or absent, caps live."""

from __future__ import annotations

import math
import shutil
import sys
import time
from pathlib import Path

import anyio
import pytest

from kloros_orchestrator.config import load_config
from kloros_orchestrator.measure.caps import CapLimit
from kloros_orchestrator.measure.sensors import discover_sensors
from kloros_orchestrator.model import P95, TEMP, THROUGHPUT, WATTS
from kloros_orchestrator.runtime.evaluate import Evaluator, kpi_problems
from kloros_orchestrator.runtime.workloads import running_pids
from kloros_orchestrator.spica.domains.audio import SpicaAudio
from kloros_orchestrator.spica.domains.cpu import SpicaCpu
from kloros_orchestrator.spica.knobs import KnobJournal
from kloros_orchestrator.testing import load_regimes

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("stress-ng") is None, reason="stress-ng is not installed"),
]


def cpu_domain(tmp_path: Path, root: Path) -> SpicaCpu:
    regimes = load_config(None).regimes["cpu"]
    dom = SpicaCpu(
        sysfs_root=root,
        journal=KnobJournal(tmp_path / "journal"),
        regimes=regimes,
        scratch_dir=tmp_path / "scratch",
    )
    dom.discover()
    assert dom.support == "ok"
    return dom


def thermal_tree(root: Path, millideg: int) -> None:
    zone = root / "sys" / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text(f"{millideg}\n")


async def test_kpis_are_measured_and_absent_sensors_stay_absent(tmp_path: Path) -> None:
    root = tmp_path / "root"
    thermal_tree(root, 41500)
    dom = cpu_domain(tmp_path, root)
    ev = Evaluator(workdir=tmp_path / "work", sensors=discover_sensors(root), caps={})
    with anyio.fail_after(20):
        tr = await ev.run_trial(dom, dom.stock_genome(), "stress", cand_id="stock", duration_s=1)
    assert tr.ok, tr.failure
    assert tr.kpis[THROUGHPUT] > 0
    assert tr.kpis[P95] > 0
    assert tr.kpis[TEMP] == pytest.approx(41.5)
    assert WATTS not in tr.kpis  # no RAPL in the fake tree: absent, never defaulted
    assert WATTS in ev.missing_reasons()
    assert ev.counters.trials == 1 and ev.counters.failed_trials == 0


async def test_live_cap_breach_kills_the_trial_and_marks_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    thermal_tree(root, 95000)
    dom = cpu_domain(tmp_path, root)
    ev = Evaluator(
        workdir=tmp_path / "work", sensors=discover_sensors(root), caps={"cpu": {TEMP: CapLimit(max=90)}}
    )
    t0 = time.monotonic()
    with anyio.fail_after(20):
        tr = await ev.run_trial(dom, dom.stock_genome(), "stress", cand_id="hot", duration_s=10)
    took = time.monotonic() - t0
    assert not tr.ok
    assert tr.cap_breach is not None and "temp_c" in tr.cap_breach
    assert took < 5, f"a 10 s trial breaching its cap at once must be killed early, took {took:.1f}s"
    assert running_pids() == []
    assert ev.counters.failed_trials == 1


async def test_failed_trial_has_a_reason_and_no_numbers(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    dom = cpu_domain(tmp_path, root)
    fake = tmp_path / "stress-ng"  # answers --version, then fails every run like a broken stressor
    fake.write_text(
        '#!/bin/sh\n[ "$1" = --version ] && { echo "stress-ng, version 0.15.06"; exit 0; }\n'
        'echo "stress-ng: fail: cpu stressor failed" >&2; exit 2\n'
    )
    fake.chmod(0o755)
    ev = Evaluator(workdir=tmp_path / "work", sensors=discover_sensors(root), caps={}, exe=str(fake))
    with anyio.fail_after(20):
        tr = await ev.run_trial(dom, dom.stock_genome(), "idle", cand_id="x", duration_s=1)
    assert not tr.ok
    assert tr.failure is not None and "stressor_failed" in tr.failure and "cpu stressor failed" in tr.failure
    assert tr.kpis == {}
    assert ev.counters.failed_trials == 1


async def test_stress_ng_vanishing_under_the_daemon_is_a_failed_trial(tmp_path: Path) -> None:
    from kloros_orchestrator.runtime.workloads import stress_ng_version

    root = tmp_path / "root"
    root.mkdir()
    dom = cpu_domain(tmp_path, root)
    exe = tmp_path / "stress-ng"
    shutil.copy(shutil.which("stress-ng") or "", exe)
    stress_ng_version(str(exe))  # cached, as at daemon start-up
    exe.unlink()  # then the package is removed under the running daemon
    ev = Evaluator(workdir=tmp_path / "work", sensors=discover_sensors(root), caps={}, exe=str(exe))
    with anyio.fail_after(20):
        tr = await ev.run_trial(dom, dom.stock_genome(), "idle", cand_id="x", duration_s=1)
    assert not tr.ok
    assert tr.failure is not None and tr.failure.startswith("tool_missing")
    assert "apt-get install -y stress-ng" in tr.failure


# --- every KPI is a finite number >= 0, or the trial fails with its reason ---------------------------

# A stand-in for stress-ng that runs its full second, then writes the YAML metrics (and, as the
# latency probe, the cyclic lines) a test gives it, so every path from the file to the KPI is real.
FAKE_STRESS_NG = """#!{python}
import sys, time
args = sys.argv[1:]
if args == ["--version"]:
    print("stress-ng, version 0.15.06")
    sys.exit(0)
time.sleep(1.0)
if "--cyclic" in args:
    sys.stderr.write({probe_log!r})
    sys.exit(0)
with open(args[args.index("--yaml") + 1], "w") as out:
    out.write({yaml!r})
"""
GOOD_PROBE_LOG = "".join(
    f"stress-ng: info:  [7] cyclic:   {pct}%:  {ns} ns\n"
    for pct, ns in (("25.00", 9000), ("50.00", 10000), ("75.00", 12000), ("90.00", 15000), ("95.40", 20000),
                    ("99.00", 40000))
)  # fmt: skip


def fake_yaml(rates: dict[str, str], bogo_ops: str = "1000") -> str:
    entries = "".join(
        f"    - stressor: {name}\n      bogo-ops: {bogo_ops}\n      bogo-ops-per-second-real-time: {rate}\n"
        f"      wall-clock-time: 1.0\n"
        for name, rate in rates.items()
    )
    return f"---\nmetrics:\n{entries}...\n"


CASES = {
    # name: (regime, YAML, probe log, what the failure says; None for an ok trial, the control)
    "valid": ("idle", fake_yaml({"cpu": "1000.0"}), GOOD_PROBE_LOG, None),
    "negative bogo-ops": (
        "idle", fake_yaml({"cpu": "-20000.0"}, bogo_ops="-20000"), GOOD_PROBE_LOG, "bogo-ops is negative"
    ),
    "overflowing rate": (
        "idle", fake_yaml({"cpu": "1e400"}), GOOD_PROBE_LOG, "not a finite number (got '1e400')"
    ),
    "nan rate": ("idle", fake_yaml({"cpu": "nan"}), GOOD_PROBE_LOG, "not a finite number (got 'nan')"),
    "overflowing sum": (
        "mixed", fake_yaml({"cpu": "1e308", "vm": "1e308", "hdd": "1e308"}), GOOD_PROBE_LOG,
        "throughput overflows",
    ),
    "overflowing latency": (
        "idle", fake_yaml({"cpu": "1000.0"}), "[7] cyclic:   50.00%:  " + "9" * 400 + " ns\n",
        "latency inf ns",
    ),
}  # fmt: skip


async def test_every_kpi_is_finite_and_non_negative_or_the_trial_fails(tmp_path: Path) -> None:
    results = {}

    async def trial(case: str) -> None:
        regime, yaml_text, probe_log, _ = CASES[case]
        base = tmp_path / case.replace(" ", "-")
        (base / "root").mkdir(parents=True)
        fake = base / "stress-ng"
        fake.write_text(FAKE_STRESS_NG.format(python=sys.executable, probe_log=probe_log, yaml=yaml_text))
        fake.chmod(0o755)
        dom = cpu_domain(base, base / "root")
        ev = Evaluator(workdir=base / "work", sensors=discover_sensors(base / "root"), caps={}, exe=str(fake))
        results[case] = await ev.run_trial(dom, dom.stock_genome(), regime, cand_id=case, duration_s=1)

    # The trials last their full second each: run side by side.
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for case in CASES:
                tg.start_soon(trial, case)
    for case, (_, _, _, reason) in CASES.items():
        tr = results[case]
        if reason is None:
            assert tr.ok, tr.failure
            # p95 lies between the printed 90 % (15 µs) and 95.40 % (20 µs)
            assert tr.kpis[THROUGHPUT] == 1000.0 and tr.kpis[P95] == pytest.approx(15 + 5 / 5.4 * 5)
        else:
            assert not tr.ok, f"{case}: an ok trial with {tr.kpis}"
            assert tr.failure is not None and reason in tr.failure, (case, tr.failure)
            assert tr.failure.startswith("missing_metrics: ") and tr.kpis == {}
    assert running_pids() == []


# A command domain's benchmark printing numbers no measurement can have: a negative latency, and two
# finite values whose mean overflows.
BAD_BENCHMARK = (
    "import json\n"
    "print(json.dumps({'latency_ms': -3.5, 'xruns': 1e308}))\n"
    "print(json.dumps({'latency_ms': -3.5, 'xruns': 1e308}))\n"
)


async def test_command_kpis_that_are_no_measurement_fail_the_trial(tmp_path: Path) -> None:
    dom = SpicaAudio(
        sysfs_root=tmp_path,
        journal=KnobJournal(tmp_path / "journal"),
        regimes=load_regimes("audio"),
        scratch_dir=tmp_path / "scratch",
        options={
            "command": [sys.executable, "-c", BAD_BENCHMARK],
            "knobs": {"mode": {"type": "choice", "choices": ["fast", "safe"], "default": "safe"}},
            "kpis": {"latency_ms": "lower", "xruns": "lower"},
        },
    )
    dom.discover()
    ev = Evaluator(workdir=tmp_path / "work", sensors=discover_sensors(tmp_path / "none"), caps={})
    with anyio.fail_after(20):
        tr = await ev.run_trial(dom, dom.stock_genome(), "normal", cand_id="x", duration_s=1)
    assert not tr.ok and tr.kpis == {}
    assert tr.failure is not None
    assert "invalid KPI latency_ms: -3.5 (negative)" in tr.failure
    assert "invalid KPI xruns: inf (infinite: an overflow)" in tr.failure


@pytest.mark.parametrize(
    ("kpis", "problems"),
    [
        ({THROUGHPUT: 0.0, P95: 12.5, WATTS: 3}, []),
        ({TEMP: -5.0}, []),  # a temperature below 0 °C is a reading (the sensors accept down to -50 °C)
        ({THROUGHPUT: -20000.0}, ["invalid KPI throughput_ops: -20000.0 (negative)"]),
        ({THROUGHPUT: math.inf}, ["invalid KPI throughput_ops: inf (infinite: an overflow)"]),
        ({TEMP: -math.inf}, ["invalid KPI temp_c: -inf (infinite: an overflow)"]),
        ({P95: math.nan}, ["invalid KPI p95_latency_us: nan (not a number)"]),
        ({WATTS: True, P95: None}, ["invalid KPI watts: True (not a number but bool)",
                                    "invalid KPI p95_latency_us: None (not a number but NoneType)"]),
    ],
)  # fmt: skip
def test_kpi_problems_name_each_invalid_kpi(kpis: dict[str, object], problems: list[str]) -> None:
    assert kpi_problems(kpis) == problems
