"""End to end: the real daemon process, real stress-ng, real socket, real signals, real sd_notify.

The test synchronises on the daemon's own sd_notify datagrams (READY=1, STATUS=<state>: ...)
received on a socket it binds, exactly as systemd would — no sleeping to wait for readiness.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from e2e_helpers import (
    TAG,
    Notify,
    events,
    make_config,
    query,
    running_workload,
    start_daemon,
    stress_ng_pids,
)

pytestmark = pytest.mark.e2e


def test_window_drains_phase_runs_dream_resumes_and_sigterm_is_clean(workdir: Path) -> None:
    cfg = make_config(workdir)
    state = workdir / "state"
    sock = str(workdir / "k.sock")
    notify = Notify()
    proc = start_daemon(cfg, notify)
    try:
        notify.wait_for(lambda m: "READY=1" in m, 30, "READY=1")
        st = query(sock, {"cmd": "status"})["status"]
        assert st["state"] in ("evolving",)
        assert {
            "state",
            "domain",
            "generation",
            "tournament",
            "next_window",
            "last_phase",
            "pacing",
            "domains",
            "pid",
            "uptime_s",
            "version",
            "counters",
        } <= set(st)
        assert st["pid"] == proc.pid
        assert oct(os.stat(sock).st_mode & 0o777) == "0o660"
        # a malformed line is answered, the daemon stays up
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(sock)
        s.sendall(b"{not json\n")
        assert json.loads(s.recv(65536))["ok"] is False
        s.close()

        # Open a window while the first tournament is running: D-REAM must drain, not be cut.
        notify.wait_for(lambda m: "tournament cpu gen 0 started" in m, 30, "tournament start")
        notify.wait_for(lambda m: "trial 2/" in m, 60, "a trial into the tournament")
        assert query(sock, {"cmd": "phase-now"})["ok"] is True
        assert query(sock, {"cmd": "status"})["status"]["state"] == "draining"
        notify.wait_for(lambda m: m.startswith("STATUS=phase"), 120, "PHASE")
        notify.wait_for(lambda m: m.startswith("STATUS=collapsing"), 120, "collapse")
        notify.wait_for(lambda m: m.startswith("STATUS=evolving"), 30, "D-REAM resumed")
        st = query(sock, {"cmd": "status"})["status"]
        assert st["last_phase"] is not None and Path(st["last_phase"]["results"]).is_file()

        ev = events(state)
        names = [e["event"] for e in ev]
        iw = names.index("window_opened")
        ipc = names.index("phase_complete", iw)
        irc = names.index("results_collapsed", ipc)
        assert "tournament_done" in names[iw:ipc], "the running tournament must finish before PHASE"
        assert names.index("phase_started", iw) > names.index("tournament_done", iw)
        assert "tournament_started" not in names[iw:irc]
        nxt = names.index("tournament_started", irc)
        resume_latency = ev[nxt]["ts"] - ev[irc]["ts"]
        assert resume_latency < 1.0, resume_latency
        results = json.loads(Path(st["last_phase"]["results"]).read_text())
        assert results["schema"] == "phase_results.v1" and results["domains_tested"] == ["cpu"]
        assert list((state / "phase").glob("phase_complete_*"))

        # SIGTERM mid-trial: exit 0 within 5 s, no stress-ng left, socket removed.
        notify.wait_for(running_workload, 60, "a trial running after resume")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=10)
        dt = time.monotonic() - t0
        assert rc == 0
        assert dt < 5.0, dt
        assert not stress_ng_pids()
        assert not os.path.exists(sock)
        assert not any((state / "journal").iterdir())
        print(f"SIGTERM-to-exit {dt:.2f} s, resume latency {resume_latency * 1000:.1f} ms")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        notify.close()


def test_run_once_writes_packs_baselines_and_manifest(workdir: Path) -> None:
    cfg = make_config(workdir, trials=2, population=2)
    raw = yaml.safe_load(cfg.read_text())
    raw["state_dir"] = "state"  # relative to the working directory, like the default "./var"
    cfg.write_text(yaml.safe_dump(raw))
    r = subprocess.run(
        [sys.executable, "-m", "kloros_orchestrator", "run", "--config", str(cfg), "--once"],
        cwd=workdir,
        env={**os.environ, "KLR_E2E_TAG": TAG},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    state = workdir / "state"
    b = json.loads((state / "artifacts" / "baselines.json").read_text())
    assert b["schema"] == "baselines.v2" and set(b["cpu"]) == {"idle", "normal", "stress", "mixed"}
    trials = [json.loads(x) for x in (state / "logs" / "trials.jsonl").read_text().splitlines()]
    assert trials and all(t["ok"] for t in trials), [t["failure"] for t in trials if not t["ok"]][:3]
    pack = json.loads((state / "artifacts" / "candidates" / "cpu" / "gen0_best.json").read_text())
    assert pack["schema"] == "candidate_pack.v2"
    assert all("throughput_ops" in reg["kpis"] and "p95_latency_us" in reg["kpis"] for reg in pack["regimes"])
    assert {"temp_c", "watts"} <= set(pack["missing_kpis"])
    for reg in pack["regimes"]:
        for kpi, vals in reg["kpis"].items():
            assert 0 < len(vals) <= reg["trials"]
            assert kpi not in ("temp_c", "watts")
            lo, hi = reg["ci95"][kpi]
            assert lo <= sum(vals) / len(vals) <= hi
            base = reg["baseline"][kpi]
            assert reg["delta"][kpi] == pytest.approx([v - base for v in vals])
    agg = pack["aggregate"]
    lo, hi = agg["score_ci95"]
    assert lo <= agg["score_v2"] <= hi
    assert agg["improves_over_baseline"] == (lo > 0)
    manifest = json.loads(next((state / "artifacts" / "manifests").glob("*.json")).read_text())
    assert manifest["stress_ng_version"].startswith("0.")
    assert manifest["code_hash"] == pack["code_hash"]
    history = [json.loads(x) for x in (state / "logs" / "fitness_history.jsonl").read_text().splitlines()]
    assert len(history) == 2 and all("score" in h for h in history)
    assert not stress_ng_pids()


def test_max_parallel_only_for_process_scoped_domains_on_disjoint_cpus(workdir: Path) -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two CPUs")
    cfg = make_config(workdir, domains=["cpu", "memory"], population=2, trials=1, max_parallel=2)
    r = subprocess.run(
        [sys.executable, "-m", "kloros_orchestrator", "run", "--config", str(cfg), "--once"],
        env={**os.environ, "KLR_E2E_TAG": TAG},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    trials = [json.loads(x) for x in (workdir / "state" / "logs" / "trials.jsonl").read_text().splitlines()]

    def spans(domain: str) -> list[tuple[float, float, tuple[int, ...]]]:
        return sorted(
            (t["started_at"], t["started_at"] + t["wall_s"], tuple(t["cpus"] or ()))
            for t in trials
            if t["domain"] == domain
        )

    cpu, mem = spans("cpu"), spans("memory")
    assert cpu and mem
    cpu_overlaps = [(a, b) for a, b in itertools.pairwise(cpu) if b[0] < a[1] - 0.05]
    assert cpu_overlaps, "process-scoped cpu trials should run side by side"
    for a, b in cpu_overlaps:
        assert a[2] and b[2] and not set(a[2]) & set(b[2]), "parallel trials must use disjoint CPU sets"
    assert not [1 for a, b in itertools.pairwise(mem) if b[0] < a[1] - 0.05], (
        "system-scoped memory knobs must never be tried in parallel"
    )
    assert not any((workdir / "state" / "journal").iterdir())


def test_second_daemon_on_the_same_state_dir_is_refused_and_double_sigterm_is_clean(workdir: Path) -> None:
    cfg = make_config(workdir)
    state = workdir / "state"
    notify = Notify()
    proc = start_daemon(cfg, notify)
    try:
        notify.wait_for(lambda m: "READY=1" in m, 30, "READY=1")
        other = workdir / "other.yaml"
        raw = yaml.safe_load(cfg.read_text())
        raw["socket"] = str(workdir / "o.sock")  # even with its own socket: the state_dir is taken
        other.write_text(yaml.safe_dump(raw))
        r = subprocess.run(
            [sys.executable, "-m", "kloros_orchestrator", "run", "--config", str(other)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 1
        assert f"(pid {proc.pid}) is running on {state}" in r.stderr
        assert "Traceback" not in r.stderr
        assert query(str(workdir / "k.sock"), {"cmd": "status"})["ok"] is True

        notify.wait_for(running_workload, 60, "a trial running")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)  # an impatient operator: must not cut the cleanup short
        # More, every few milliseconds until the process is gone: a late one (after "stopped",
        # while the handlers are being removed) must not kill it either.
        rc = None
        while rc is None and time.monotonic() - t0 < 10:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                rc = proc.wait(timeout=0.003)
        rc = proc.wait(timeout=10)
        assert rc == 0
        assert time.monotonic() - t0 < 5
        assert not stress_ng_pids()
        assert events(state)[-1]["event"] == "stopped"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        notify.close()
