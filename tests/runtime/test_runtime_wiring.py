"""What #12 wired into the daemon: the metrics file at every event, the watchdog ping, systemd's
directories standing in for unset paths."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from test_runtime_driver import DOMAIN, WAIT_S, Rig, new_rig, running

from kloros_orchestrator.config import load_config
from kloros_orchestrator.runtime.notify import Notifier, keep_watchdog


@pytest.fixture(name="rig")
def _rig() -> Iterator[Rig]:
    yield from new_rig()


def samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_the_metrics_file_follows_the_daemon(rig: Rig) -> None:
    textfile = rig.root / "metrics" / "kloros.prom"
    cfg = yaml.safe_load((rig.root / "dream.yaml").read_text())
    cfg["metrics"] = {"textfile": str(textfile)}
    (rig.root / "dream.yaml").write_text(yaml.safe_dump(cfg))
    rig.loaded = load_config(rig.root / "dream.yaml")
    d = rig.daemon()
    async with running(d) as log:
        await log.wait_for("pacing")  # one tournament done
        during = samples(textfile)
    after = samples(textfile)
    assert during[("kloros_state", (("state", "evolving"),))] == 1.0
    assert during[("kloros_state", (("state", "stopping"),))] == 0.0
    assert during[("kloros_tournaments_total", ())] == 1.0  # (trials are counted by the real evaluator)
    assert ("kloros_best_score", (("domain", DOMAIN),)) in during
    assert ("kloros_duty_cycle_ratio", ()) not in during  # the fake clock never moved: unknown, absent
    assert after[("kloros_state", (("state", "stopping"),))] == 1.0  # the last write, at stop


async def test_keep_watchdog_pings_while_the_loop_turns_and_not_without_a_watchdog() -> None:
    d = tempfile.mkdtemp(prefix="kw")
    path = os.path.join(d, "n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(WAIT_S)
        notifier = Notifier(path, watchdog_s=0.01)
        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_watchdog, notifier)
            got = [await anyio.to_thread.run_sync(sock.recv, 64) for _ in range(3)]
            tg.cancel_scope.cancel()
    assert got == [b"WATCHDOG=1"] * 3
    with anyio.fail_after(1):
        await keep_watchdog(Notifier(path))  # no WatchdogSec: returns at once
    os.unlink(path)
    os.rmdir(d)


def test_systemd_directories_stand_in_for_unset_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/lib:{tmp_path}/other")
    monkeypatch.setenv("RUNTIME_DIRECTORY", f"{tmp_path}/run")
    bare = tmp_path / "bare.yaml"
    bare.write_text("seed: 1\n")
    loaded = load_config(bare)
    assert loaded.state_dir == tmp_path / "lib" and loaded.socket_path == tmp_path / "run" / "kloros.sock"
    named = tmp_path / "named.yaml"
    named.write_text(f"state_dir: {tmp_path / 'mine'}\n")
    assert load_config(named).state_dir == tmp_path / "mine"  # the file wins
