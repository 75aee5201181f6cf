"""Shared helpers of the end-to-end tests: a stand-in for systemd's notify socket, the status
socket client, the events log and a daemon launcher."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import yaml

from kloros_orchestrator.runtime import control

TAG = f"klr-e2e-{os.getpid()}"  # inherited by the daemon's stress-ng runs: other runs on the host don't count


def stress_ng_pids() -> list[int]:
    """Live stress-ng processes started by the daemon under test (zombies of others excluded)."""
    found = []
    for p in psutil.process_iter(["name", "status"]):
        if p.info["name"] != "stress-ng" or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if p.environ().get("KLR_E2E_TAG") == TAG:
                found.append(p.pid)
        except psutil.Error:
            continue
    return found


class Notify:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="kn")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.seen: list[str] = []

    def wait_for(self, pred: Callable[[str], bool], timeout: float, what: str) -> str:
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no sd_notify message for {what} within {timeout}s; saw {self.seen[-8:]}"
                )
            self.sock.settimeout(left)
            try:
                msg = self.sock.recv(65536).decode()
            except TimeoutError:
                continue
            self.seen.append(msg)
            if pred(msg):
                return msg

    def close(self) -> None:
        self.sock.close()


def query(sock_path: str, req: dict[str, Any]) -> dict[str, Any]:
    """One NDJSON request on the status socket (the product's own client)."""
    return control.query(Path(sock_path), req)


def events(state: Path) -> list[dict[str, Any]]:
    p = state / "logs" / "events.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def make_config(workdir: Path, **dream: Any) -> Path:
    cfg = {
        "state_dir": str(workdir / "state"),
        "socket": str(workdir / "k.sock"),
        "seed": 3,
        "dream": {
            "domains": ["cpu"],
            "population": 2,
            "epochs_per_cycle": 1,
            "trials": 1,
            "trial_seconds": 1,
            # Other work on a test machine would stop every tournament as "host too busy": contaminated
            # rounds are covered by tests/runtime (test_runtime_contamination, test_outside_load).
            "contamination": {"outside_cpu": 1.0},
            **dream,
        },
        "phase": {
            "window": {"start": "now+3600", "duration": 120},
            "qtime": {"epochs": 1, "slices": 4, "replicas": 1},
            "trial_seconds": 1,
        },
    }
    p = workdir / "dream.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def start_daemon(cfg: Path, notify: Notify, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NOTIFY_SOCKET": notify.path, "KLR_E2E_TAG": TAG}
    log = open(cfg.parent / "daemon.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "kloros_orchestrator", "run", "--config", str(cfg), *extra],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def running_workload(msg: str) -> bool:
    """An sd_notify "workload pid N running" message whose workload is still running now
    (datagrams queue up: an older message may name a trial that has already finished)."""
    if "workload pid " not in msg:
        return False
    pid = int(msg.split("workload pid ")[1].split()[0])
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
