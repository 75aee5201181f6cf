"""The trial evaluator on real stress-ng with fake sensor trees: KPIs measured or absent, caps live."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import anyio
import pytest

from kloros_orchestrator.config import load_config
from kloros_orchestrator.measure.caps import CapLimit
from kloros_orchestrator.measure.sensors import discover_sensors
from kloros_orchestrator.model import P95, TEMP, THROUGHPUT, WATTS
from kloros_orchestrator.runtime.evaluate import Evaluator
from kloros_orchestrator.runtime.workloads import running_pids
from kloros_orchestrator.spica.domains.cpu import SpicaCpu
from kloros_orchestrator.spica.knobs import KnobJournal

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
