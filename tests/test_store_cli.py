"""``run`` on a state directory another user could steer, or that cannot be used: one line, exit 2.

And on one full of our own bad entries (links, FIFOs, files nested 20,000 deep, a file where a
directory belongs): it runs, moves them aside without following them, and the next start is clean.
Each case runs the real command line in a subprocess with a timeout (a hang fails the test).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kloros_orchestrator.store import StatePaths

NOBODY = 65534


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="ks"))  # short: Unix socket paths are limited to ~107 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


def config(workdir: Path, state_dir: Path) -> Path:
    cfg = {
        "state_dir": str(state_dir),
        "socket": str(workdir / "k.sock"),
        "seed": 3,
        # Other work on a test machine must not stop the tournament as "host too busy" (contaminated
        # rounds have their own tests: tests/runtime/test_runtime_contamination.py).
        "dream": {
            "domains": ["cpu"],
            "population": 2,
            "trials": 1,
            "trial_seconds": 1,
            "contamination": {"outside_cpu": 1.0},
        },
        "phase": {"window": {"start": "now+3600", "duration": 120}, "trial_seconds": 1},
    }
    path = workdir / "dream.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_once(cfg: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kloros_orchestrator", "run", "--config", str(cfg), "--once"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def owned_by_nobody(p: StatePaths) -> Path:
    os.chown(p.root, NOBODY, NOBODY)
    return p.root


def group_writable(p: StatePaths) -> Path:
    os.chmod(p.root, 0o775)
    return p.root


def events_of_nobody(p: StatePaths) -> Path:
    p.events.write_text("")
    os.chown(p.events, NOBODY, NOBODY)
    return p.events


def link_of_nobody(p: StatePaths) -> Path:
    p.lock.symlink_to("/etc/passwd")
    os.chown(p.lock, NOBODY, NOBODY, follow_symlinks=False)
    return p.lock


def state_dir_a_file(p: StatePaths) -> Path:
    shutil.rmtree(p.root)
    p.root.write_text("")
    return p.root


Setup = Callable[[StatePaths], Path]  # plants the fault, returns the path the refusal must name
UNSAFE: list[tuple[str, Setup, str]] = [
    ("state_dir_foreign", owned_by_nobody, f"owned by uid {NOBODY}, not by the daemon's uid"),
    ("state_dir_group_writable", group_writable, "writable by group: run chmod go-w"),
    ("events_foreign", events_of_nobody, f"owned by uid {NOBODY}, not by the daemon's uid"),
    ("lock_link_foreign", link_of_nobody, f"owned by uid {NOBODY}, not by the daemon's uid"),
    ("state_dir_file", state_dir_a_file, "state_dir is a regular file, not a directory"),
]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
@pytest.mark.parametrize(("name", "setup", "reason"), UNSAFE, ids=[u[0] for u in UNSAFE])
def test_an_unsafe_state_dir_is_one_line_and_exit_2(
    workdir: Path, name: str, setup: Setup, reason: str
) -> None:
    paths = StatePaths(workdir / "state")
    paths.logs.mkdir(parents=True)
    culprit = setup(paths)
    assert refusal(config(workdir, paths.root)).startswith(f"error: {culprit}: {reason}")
    assert refusal(config(workdir, paths.root)).startswith(f"error: {culprit}: ")  # until the operator acts


def test_a_state_dir_that_cannot_be_created_is_one_line_and_exit_2(workdir: Path) -> None:
    (workdir / "file").write_text("")
    state_dir = workdir / "file" / "state"
    assert refusal(config(workdir, state_dir)) == f"error: {state_dir}: Not a directory"


def refusal(cfg: Path) -> str:
    """The one stderr line of a ``run`` that must exit 2 at once."""
    proc = run_once(cfg, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and not proc.stdout
    [line] = proc.stderr.splitlines()
    return line


@pytest.mark.e2e
def test_bad_files_are_moved_aside_the_daemon_runs_and_the_second_start_is_clean(workdir: Path) -> None:
    victim = workdir / "victim"
    victim.write_text("precious\n")
    paths = StatePaths(workdir / "state")
    pack = paths.candidates("cpu") / "gen0_best.json"
    pack.parent.mkdir(parents=True)
    paths.logs.mkdir()
    deep = b"[" * 20_000 + b"]" * 20_000
    paths.baselines.write_bytes(deep)
    os.mkfifo(pack)
    paths.runtime_state.symlink_to("/dev/zero")
    for link in (paths.lock, paths.events, paths.daemon_log):
        link.symlink_to(victim)
    paths.journal.write_text("")
    cfg = config(workdir, paths.root)

    first = run_once(cfg)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "Traceback" not in first.stderr
    at_start = ["daemon.log", "events.jsonl", "journal", "lock", "state.json"]  # by check_state_dir
    moved = sorted(p.name.split(".rejected-")[0] for p in paths.root.rglob("*.rejected-*"))
    assert moved == sorted([*at_start, "baselines.json", "gen0_best.json"])  # and by their readers
    assert victim.read_text() == "precious\n"
    logged = [e for e in events(paths) if e["event"] == "state_entry_rejected"]
    assert sorted(Path(e["path"]).name for e in logged) == at_start

    second = run_once(cfg)
    assert second.returncode == 0, second.stderr[-2000:]
    assert sorted(p.name.split(".rejected-")[0] for p in paths.root.rglob("*.rejected-*")) == moved
    assert "rejected" not in second.stderr and "moved" not in second.stderr
    assert victim.read_text() == "precious\n"


def events(paths: StatePaths) -> list[dict[str, Any]]:
    return [json.loads(line) for line in paths.events.read_text().splitlines() if line.strip()]
