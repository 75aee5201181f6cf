"""Restart safety: a daemon killed inside an open window resumes that window's PHASE on restart and
never runs a PHASE twice for the same window."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from e2e_helpers import Notify, events, query, running_workload, start_daemon

pytestmark = pytest.mark.e2e


def test_kill9_inside_a_window_resumes_its_phase_once(workdir: Path) -> None:
    # A daily window that started this very minute and lasts an hour: we are inside it now,
    # whatever the hour (the start is taken from the clock, the test does not depend on it).
    start = datetime.now().astimezone().strftime("%H:%M")
    cfg = workdir / "dream.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(workdir / "state"),
                "socket": str(workdir / "k.sock"),
                "seed": 5,
                "dream": {
                    "domains": ["cpu"],
                    "population": 2,
                    "trials": 1,
                    "trial_seconds": 1,
                    "contamination": {"outside_cpu": 1.0},  # other work on the machine: see e2e_helpers
                },
                "phase": {
                    "window": {"start": start, "duration": 3600},
                    "qtime": {"epochs": 2, "slices": 4, "replicas": 2},
                    "trial_seconds": 1,
                },
            }
        )
    )
    state = workdir / "state"
    sock = str(workdir / "k.sock")

    notify = Notify()
    proc = start_daemon(cfg, notify)
    try:
        notify.wait_for(lambda m: m.startswith("STATUS=phase"), 30, "PHASE opened at start-up")
        notify.wait_for(running_workload, 30, "a PHASE trial running")
        proc.send_signal(signal.SIGKILL)  # a crash, mid-trial
        proc.wait(timeout=10)
    finally:
        notify.close()
    first = [e for e in events(state) if e["event"] == "window_opened"]
    assert len(first) == 1
    window_id = first[0]["window_id"]
    assert "phase_complete" not in [e["event"] for e in events(state)]

    notify = Notify()
    proc = start_daemon(cfg, notify)
    try:
        notify.wait_for(lambda m: "READY=1" in m, 30, "READY after restart")
        notify.wait_for(
            lambda m: m.startswith("STATUS=evolving") and "tournament" in m,
            120,
            "D-REAM resumed after the resumed PHASE",
        )
        ev = events(state)
        opened = [e for e in ev if e["event"] == "window_opened"]
        assert [e["window_id"] for e in opened] == [window_id, window_id], "resumed, not a new window"
        completes = [e for e in ev if e["event"] == "phase_complete"]
        assert len(completes) == 1
        st = query(sock, {"cmd": "status"})["status"]
        assert st["last_phase"]["window_id"] == window_id
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        notify.close()

    # A third start, still inside the same window whose PHASE completed: no PHASE again.
    notify = Notify()
    proc = start_daemon(cfg, notify)
    try:
        notify.wait_for(lambda m: "READY=1" in m, 30, "READY on the third start")
        notify.wait_for(lambda m: "tournament cpu" in m, 60, "a tournament")
        st = query(sock, {"cmd": "status"})["status"]
        assert st["state"] == "evolving"
        ev = events(state)
        assert len([e for e in ev if e["event"] == "window_opened"]) == 2
        assert len([e for e in ev if e["event"] == "phase_complete"]) == 1
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - t0 < 5
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        notify.close()
    results = json.loads((state / "phase" / "latest" / "phase_results.json").read_text())
    assert results["window"]["id"] == window_id
