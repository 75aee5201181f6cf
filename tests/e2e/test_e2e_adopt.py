"""From verdict to host, end to end: a generic domain with a planted effect (a knob that sets the
stress-ng workload's ``--cpu-load``, so a higher value is really better), ``promotion: auto``.

PHASE promotes a variant, the daemon adopts it, ``verify`` exits 0, ``export --format tuned`` writes
the profile; a kill -9 mid-tournament after the adoption leaves the adopted value (not the candidate's)
once the daemon has started again; ``rollback`` (no daemon running) restores the factory text byte for
byte. The socket's rollback is covered in-process (tests/runtime/test_runtime_adoption.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from e2e_helpers import Notify, events, query, running_workload, start_daemon

pytestmark = pytest.mark.e2e

REGIMES = ("idle", "normal", "stress", "mixed")
KNOB = "proc/sys/kernel/klr_cpu_load"
FACTORY = "10\n"  # the lowest load: every other value of the knob does more work per second

WORKLOAD = textwrap.dedent(
    """
    import json, os, subprocess, sys, tempfile
    import yaml
    load = int(open(sys.argv[1]).read().split()[0])
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "m.yaml")
        subprocess.run(["stress-ng", "--cpu", "1", "--cpu-load", str(load), "--timeout", "1s",
                        "--metrics", "--yaml", out, "--temp-path", d], check=True, capture_output=True)
        metrics = yaml.safe_load(open(out))["metrics"]
    rate = next(m["bogo-ops-per-second-real-time"] for m in metrics if m["stressor"] == "cpu")
    print(json.dumps({"throughput_ops": rate}))
    """
)


def _setup(workdir: Path, *, domains: list[str]) -> tuple[Path, Path]:
    root = workdir / "root"
    knob = root / KNOB
    knob.parent.mkdir(parents=True)
    knob.write_text(FACTORY)
    (workdir / "load.py").write_text(WORKLOAD)
    regimes = workdir / "regimes"
    regimes.mkdir(exist_ok=True)
    # The command ignores the regime: the four regimes measure the same planted effect.
    (regimes / "planted.yaml").write_text("".join(f"{r}: {{duration: 1, stressors: []}}\n" for r in REGIMES))
    cpu = "{duration: 1, stressors: [{name: cpu, instances: 1, options: {cpu-load: 20}}]}"
    (regimes / "cpu.yaml").write_text("".join(f"{r}: {cpu}\n" for r in REGIMES))
    cfg = {
        "state_dir": str(workdir / "state"),
        "socket": str(workdir / "k.sock"),
        "sysfs_root": str(root),
        "regimes_dir": str(regimes),
        "seed": 5,
        "promotion": {"mode": "auto"},
        "dream": {
            "domains": domains,
            "population": 2,
            "trials": 2,
            "min_trials": 2,
            "contamination": {"outside_cpu": 1.0},  # other work on the machine: see e2e_helpers
        },
        "phase": {
            "window": {"start": "now+3600", "duration": 600},
            "qtime": {"epochs": 2, "slices": 2, "replicas": 2},
        },
        "domain_options": {
            "planted": {
                "kind": "generic",
                "knobs": {"cpu_load": {"type": "int", "low": 10, "high": 100, "path": KNOB}},
                "workload": {"command": [sys.executable, str(workdir / "load.py"), str(knob)]},
                "kpis": {"throughput_ops": "higher"},
            }
        },
    }
    path = workdir / f"dream-{'-'.join(domains)}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, knob


def _cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kloros_orchestrator", *args, "--config", str(cfg)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_auto_adopts_the_promoted_variant_then_verify_export_kill9_rollback(workdir: Path) -> None:
    cfg, knob = _setup(workdir, domains=["planted"])
    state, sock = workdir / "state", str(workdir / "k.sock")
    notify = Notify()
    proc = start_daemon(cfg, notify)
    try:
        notify.wait_for(lambda m: "READY=1" in m, 30, "READY=1")
        # The window drains the first tournament, whose best candidate PHASE then re-measures.
        notify.wait_for(lambda m: "tournament planted gen 0 started" in m, 60, "a first tournament")
        assert query(sock, {"cmd": "phase-now"})["ok"] is True
        notify.wait_for(lambda m: "PHASE" in m and "complete" in m, 300, "PHASE complete")
        msg = notify.wait_for(lambda m: "host: planted now runs" in m, 120, "the adoption on the host")
        assert "adopted configuration" in msg
        ev = events(state)
        adopted = next(e for e in ev if e["event"] == "adopted")
        prov = adopted["provenance"]
        assert prov["by"] == "auto" and prov["score_ci95"][0] > 0, prov
        value = adopted["genome"]["cpu_load"]
        assert value > 10
        assert int(knob.read_text()) == value  # between tournaments the host runs the adopted value
        st = query(sock, {"cmd": "status"})["status"]["host"]
        assert st["promotion"] == "auto" and st["domains"]["planted"]["config"] == "adopted"
        assert st["domains"]["planted"]["adopted"]["cand_id"] == prov["cand_id"]

        v = _cli(cfg, "verify")
        assert v.returncode == 0, v.stdout + v.stderr
        assert "planted: adopted configuration holds (1 file(s))" in v.stdout
        out = workdir / "export"
        x = _cli(cfg, "export", "--domain", "planted", "--format", "tuned", "--out", str(out))
        assert x.returncode == 0, x.stderr
        profile = (out / "kloros-planted" / "tuned.conf").read_text()
        assert f"kernel.klr_cpu_load={value}" in profile and prov["phase_run_id"] in profile

        # kill -9 during a candidate's trial of the next tournament (its stock arm is the adopted value,
        # and which trial runs by now depends on how fast the CLIs above were): the journal holds the
        # adopted value. The knob holds the trial's value while its workload runs (an empty read is a
        # write in progress: not that moment).
        notify.wait_for(
            lambda m: running_workload(m) and knob.read_text().strip() not in ("", str(value)),
            120, "a candidate's trial running after the adoption",
        )  # fmt: skip
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        _stop(proc)
        notify.close()
    # No daemon now: verify sees what the crash left (a candidate's value) as drift.
    assert int(knob.read_text()) != value
    assert _cli(cfg, "verify").returncode == 1
    # Restart with D-REAM on another domain only, so no trial touches the knob after start-up.
    notify = Notify()
    proc = start_daemon(_restart_config(cfg), notify)
    try:
        notify.wait_for(lambda m: "READY=1" in m, 30, "READY=1 after kill -9")
        assert int(knob.read_text()) == value, "start-up must restore the adopted value"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        _stop(proc)
        notify.close()
    v = _cli(cfg, "verify", "--domain", "planted")
    assert v.returncode == 0, v.stdout + v.stderr
    knob.write_text("77\n")  # another tool rewrites it
    v = _cli(cfg, "verify", "--domain", "planted")
    assert v.returncode == 1 and f"drift: {knob}, expected {value}, found 77" in v.stdout, v.stdout
    r = _cli(cfg, "rollback", "--domain", "planted")  # no daemon: done here, under the lock
    assert r.returncode == 0 and "rolled back planted" in r.stdout, r.stdout + r.stderr
    assert knob.read_text() == FACTORY  # byte-identical
    assert _cli(cfg, "verify").returncode == 0
    adopted_file = json.loads((workdir / "state" / "host" / "adopted.json").read_text())
    assert adopted_file["domains"] == {} and adopted_file["factory_pending"] == []


def _restart_config(cfg: Path) -> Path:
    data = yaml.safe_load(cfg.read_text())
    data["dream"]["domains"] = ["cpu"]  # planted stays defined (its journal entries are declared)
    out = cfg.with_name("dream-restart.yaml")
    out.write_text(yaml.safe_dump(data))
    return out
