"""``kloros-orchestrator apply``, ``rollback``, ``export`` and ``verify`` with no daemon running: the
CLI carries the change out itself under the state_dir's lock, on a fake memory tree (``sysfs_root``),
with PHASE results written the way PHASE writes them. Exit codes and output through ``cli.main``."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from memory_tree import (
    BRACKET,
    FACTORY,
    MEMINFO,
    MIN_FREE,
    PLAIN,
    SWAPPINESS,
    THP_DEFRAG,
    THP_ENABLED,
    VFS,
    ZONE,
)

from kloros_orchestrator.cli import main
from kloros_orchestrator.model import Genome
from kloros_orchestrator.phase.results import (
    DomainMetrics,
    FlaggedVariant,
    PhaseResults,
    PromotedVariant,
    Qtime,
    VariantSummary,
    write_results,
)
from kloros_orchestrator.runtime.records import DomainProgress, HallOfFameEntry, SavedState, save_state
from kloros_orchestrator.store import StatePaths, read_jsonl
from kloros_orchestrator.testing import snapshot_files, write_tree

PROMOTED: Genome = {
    "thp_enabled": "never", "thp_defrag": "defer", "swappiness": 10, "vfs_cache_pressure": 200,
    "min_free_kbytes": 32768, "zone_reclaim_mode": 1,
}  # fmt: skip
PROMOTED_TEXT = {
    THP_ENABLED: "never", THP_DEFRAG: "defer", SWAPPINESS: "10", VFS: "200", MIN_FREE: "32768", ZONE: "1",
}  # fmt: skip
RUN = "20260101T030000Z"


@dataclass
class Host:
    """A dream.yaml enabling only memory, its state_dir and fake sysfs tree, no daemon on its socket."""

    base: Path
    config: Path
    root: Path
    paths: StatePaths

    def cli(self, *args: str) -> int:
        return main([args[0], "--config", str(self.config), *args[1:]])

    def knobs(self) -> dict[str, str]:
        return {rel: (self.root / rel).read_text() for rel in FACTORY}

    def events(self, name: str) -> list[dict[str, Any]]:
        if not self.paths.events.exists():
            return []
        return [e for e in read_jsonl(self.paths.events) if e["event"] == name]


@pytest.fixture
def host() -> Iterator[Host]:
    # A short base directory: the socket path (where nothing listens) must fit a Unix socket address.
    base = Path(tempfile.mkdtemp(prefix="kc"))
    try:
        root = base / "sysfs"
        write_tree(root, {**FACTORY, **MEMINFO})
        paths = StatePaths(base / "state")
        config = base / "dream.yaml"
        cfg = {
            "state_dir": str(paths.root),
            "socket": str(base / "k.sock"),
            "sysfs_root": str(root),
            "dream": {"domains": ["memory"]},
        }
        config.write_text(yaml.safe_dump(cfg))
        yield Host(base, config, root, paths)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def active(text: str) -> str:
    """A bracket file's active value (a regular file written with the bare value holds just that)."""
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else text.strip()


def _summary(
    score: float, ci: tuple[float, float], epochs: list[float | None] | None = None
) -> VariantSummary:
    return VariantSummary(score_v2=score, score_ci95=ci, safe=True, trials=8, failed=0, epoch_scores=epochs)


def results() -> PhaseResults:
    """A PHASE verdict on memory: g2c2 (best) and g2c1 promoted, g1c3 measured only, g1c4 flagged."""
    return PhaseResults(
        timestamp="2026-01-01T04:00:00+00:00",
        run_id=RUN,
        qtime=Qtime(epochs=2, slices=4, replicas=2),
        domains_tested=["memory"],
        metrics={
            "memory": DomainMetrics(
                fitness=0.12, ci95=(0.06, 0.2), baseline={}, insights=["memory: 2 promoted"],
                best_cand_id="g2c2",
                variants={
                    "g2c1": _summary(0.1, (0.05, 0.15)),
                    "g2c2": _summary(0.12, (0.06, 0.2)),
                    "g1c3": _summary(0.01, (-0.02, 0.04), [0.03, -0.01]),
                },
            ),
        },
        promoted_variants=[
            PromotedVariant("memory", "g2c1", "spica-m-1", {"swappiness": 30}, 0.1, (0.05, 0.15), "+10%"),
            PromotedVariant("memory", "g2c2", "spica-m-2", dict(PROMOTED), 0.12, (0.06, 0.2), "+12%"),
        ],
        flagged_variants=[FlaggedVariant("memory", "g1c4", {"swappiness": 90}, ["cap breach: temp_c"])],
        search_space_recommendations={},
        complete=True,
    )  # fmt: skip


def phase_done(host: Host) -> None:
    write_results(host.paths.phase, results(), now=1_767_240_000)


def hall_of_fame(host: Host, *entries: HallOfFameEntry) -> None:
    state = SavedState(first_seen=time.time(), engines={"memory": DomainProgress(hall_of_fame=list(entries))})
    assert save_state(host.paths.runtime_state, state)


def applied(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    """``apply --phase latest`` has run and succeeded."""
    phase_done(host)
    assert host.cli("apply", "--domain", "memory", "--phase", "latest") == 0
    capsys.readouterr()


def assert_unchanged_by_a_refusal(host: Host) -> None:
    """Plain knob files byte-identical, bracket files at their active value, nothing adopted."""
    now = host.knobs()
    assert {rel: now[rel] for rel in PLAIN} == {rel: FACTORY[rel] for rel in PLAIN}
    assert {rel: active(now[rel]) for rel in BRACKET} == {THP_ENABLED: "madvise", THP_DEFRAG: "madvise"}
    assert not host.paths.adopted.exists() and host.events("adopted") == []


# --- apply ------------------------------------------------------------------------------------------
def test_apply_latest_without_a_daemon_adopts_writes_and_records_it(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    phase_done(host)
    assert not (host.base / "k.sock").exists()
    assert host.cli("apply", "--domain", "memory", "--phase", "latest") == 0
    out, err = capsys.readouterr()
    assert out.strip() == "memory: adopted g2c2 (+12%); 6 file(s) written (no daemon was running)"
    assert "error" not in err

    assert {rel: active(text) for rel, text in host.knobs().items()} == PROMOTED_TEXT

    adopted = json.loads(host.paths.adopted.read_bytes())
    assert adopted["schema"] == "host_adopted.v1" and list(adopted["domains"]) == ["memory"]
    memory = adopted["domains"]["memory"]
    assert memory["genome"] == PROMOTED
    prov = memory["provenance"]
    assert (prov["by"], prov["cand_id"], prov["phase_run_id"], prov["spica_id"]) == (
        "operator", "g2c2", RUN, "spica-m-2"
    )  # fmt: skip
    assert prov["score_v2"] == 0.12 and prov["evidence"] == "+12%" and not prov.get("forced")

    factory = json.loads(host.paths.factory.read_bytes())["domains"]["memory"]
    originals = {rel: text for k in factory.values() for rel, text in k["originals"].items()}
    assert {rel: originals[rel] for rel in PLAIN} == {rel: FACTORY[rel] for rel in PLAIN}  # as read
    assert {rel: active(originals[rel]) for rel in BRACKET} == {THP_ENABLED: "madvise", THP_DEFRAG: "madvise"}

    [event] = host.events("adopted")
    assert event["domain"] == "memory" and event["genome"] == PROMOTED
    assert event["provenance"]["by"] == "operator" and event["provenance"]["cand_id"] == "g2c2"
    lock = host.paths.lock
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released again: a daemon could start now
    finally:
        os.close(fd)


def test_apply_next_to_a_stale_socket_of_a_dead_daemon_is_carried_out_here(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    phase_done(host)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(host.base / "k.sock"))
    stale.close()  # as after kill -9: the socket file stays, nothing listens on it
    assert (host.base / "k.sock").is_socket()
    assert host.cli("apply", "--domain", "memory", "--phase", "latest") == 0
    assert "(no daemon was running)" in capsys.readouterr().out
    assert {rel: active(text) for rel, text in host.knobs().items()} == PROMOTED_TEXT


def test_apply_of_a_variant_phase_did_not_promote_is_refused_unless_forced(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    phase_done(host)
    hall_of_fame(host, HallOfFameEntry("g1c3", "spica-memory-3", {**PROMOTED, "swappiness": 20}, 1, 0.02))
    assert host.cli("apply", "--domain", "memory", "--variant", "g1c3") == 1
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith(f"error: PHASE {RUN} did not promote g1c3 (score +0.0100")
    assert line.endswith("add --force to adopt it anyway")
    assert_unchanged_by_a_refusal(host)

    assert host.cli("apply", "--domain", "memory", "--variant", "g1c3", "--force") == 0
    assert "memory: adopted g1c3 (forced: " in capsys.readouterr().out
    assert active(host.knobs()[SWAPPINESS]) == "20"
    prov = json.loads(host.paths.adopted.read_bytes())["domains"]["memory"]["provenance"]
    assert prov["forced"] is True and prov["cand_id"] == "g1c3" and prov["by"] == "operator"
    assert prov["evidence"].startswith(f"forced: PHASE {RUN} did not promote g1c3")


def test_apply_without_phase_results_is_refused(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    assert host.cli("apply", "--domain", "memory", "--phase", "latest") == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: no PHASE has completed yet")
    assert_unchanged_by_a_refusal(host)


def test_apply_of_a_domain_not_enabled_is_refused(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    phase_done(host)
    assert host.cli("apply", "--domain", "storage", "--phase", "latest") == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line == "error: domain storage is not enabled in this configuration (dream.domains)"
    assert_unchanged_by_a_refusal(host)


def test_apply_while_another_process_holds_the_state_dir_lock_is_refused(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    phase_done(host)
    host.paths.root.mkdir(mode=0o755, exist_ok=True)
    fd = os.open(host.paths.lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"4242\n")
        fcntl.flock(fd, fcntl.LOCK_EX)  # a daemon (pid 4242 by its lock file) runs on this state_dir
        assert host.cli("apply", "--domain", "memory", "--phase", "latest") == 1
        assert host.cli("rollback", "--domain", "memory") == 1
    finally:
        os.close(fd)
    out, err = capsys.readouterr()
    assert out == ""
    refusal = (
        f"error: another kloros-orchestrator (pid 4242) is running on {host.paths.root}; "
        "stop it or use another state_dir"
    )
    assert err.splitlines() == [refusal, refusal]
    assert host.knobs() == FACTORY  # the lock is taken before any knob file is read or written
    assert not host.paths.adopted.exists() and not host.paths.factory.exists()


# --- rollback ---------------------------------------------------------------------------------------
def test_rollback_restores_the_factory_values(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    applied(host, capsys)
    assert host.cli("rollback", "--domain", "memory") == 0
    assert capsys.readouterr().out.strip() == "rolled back memory: 6 file(s) written"
    now = host.knobs()
    for rel in PLAIN:
        assert (host.root / rel).read_bytes() == FACTORY[rel].encode(), rel  # byte-identical
    assert {rel: active(now[rel]) for rel in BRACKET} == {THP_ENABLED: "madvise", THP_DEFRAG: "madvise"}
    recorded = json.loads(host.paths.adopted.read_bytes())
    assert recorded["domains"] == {} and recorded["factory_pending"] == []
    [event] = host.events("rolled_back")
    assert event["domain"] == "memory" and event["offline"] is True

    assert host.cli("rollback") == 0  # nothing adopted any more
    assert "nothing to roll back" in capsys.readouterr().out


def test_rollback_with_nothing_adopted_says_so(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    assert host.cli("rollback") == 0
    out = capsys.readouterr().out
    assert out.strip() == "nothing to roll back: no domain runs an adopted configuration"
    assert host.knobs() == FACTORY and host.events("rolled_back") == []


# --- verify -----------------------------------------------------------------------------------------
def test_verify_holds_after_apply_and_after_rollback(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    applied(host, capsys)
    assert host.cli("verify") == 0
    assert capsys.readouterr().out.strip() == "memory: adopted configuration holds (6 file(s))"
    assert host.cli("rollback", "--domain", "memory") == 0
    capsys.readouterr()
    assert host.cli("verify") == 0
    assert capsys.readouterr().out.strip() == "memory: factory configuration holds (6 file(s))"


# --- export -----------------------------------------------------------------------------------------
def test_export_sysctl_of_the_adopted_configuration(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    applied(host, capsys)
    out_dir = host.base / "out"
    argv = ["export", "--config", str(host.config), "--domain", "memory", "--format", "sysctl"]
    assert main([*argv, "--out", str(out_dir)]) == 0
    sysctl = out_dir / "sysctl.d" / "90-kloros-memory.conf"
    tmpfiles = out_dir / "tmpfiles.d" / "kloros-memory.conf"
    assert capsys.readouterr().out.splitlines() == [str(sysctl), str(tmpfiles)]
    assert sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.conf")) == [
        "sysctl.d/90-kloros-memory.conf", "tmpfiles.d/kloros-memory.conf"
    ]  # fmt: skip

    command = f"# produced by: kloros-orchestrator {' '.join(argv)} --out {out_dir}"
    for text in (sysctl.read_text(), tmpfiles.read_text()):
        header = text.split("\n\n", 1)[0].splitlines()
        assert f"# phase_run_id: {RUN}" in header and "# cand_id: g2c2" in header
        assert "# label: adopted" in header and "# provenance: adopted by operator at " in header[3]
        assert header[-1] == command
    body = [line for line in sysctl.read_text().splitlines() if line and not line.startswith("#")]
    assert body == [
        "vm.swappiness = 10", "vm.vfs_cache_pressure = 200", "vm.min_free_kbytes = 32768",
        "vm.zone_reclaim_mode = 1",
    ]  # fmt: skip
    lines = [line for line in tmpfiles.read_text().splitlines() if line.startswith("w ")]
    assert lines == [f"w /{THP_ENABLED} - - - - never", f"w /{THP_DEFRAG} - - - - defer"]


def test_export_with_nothing_adopted_is_refused(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    phase_done(host)
    out_dir = host.base / "out"
    assert host.cli("export", "--domain", "memory", "--format", "sysctl", "--out", str(out_dir)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith("error: memory runs its factory configuration: nothing adopted to export")
    assert "--variant ID" in line
    assert not out_dir.exists()


def test_export_of_a_variant_needs_no_adoption_and_writes_no_knob(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    phase_done(host)
    before = snapshot_files(host.root)
    out_dir = host.base / "out"
    assert host.cli("export", "--domain", "memory", "--variant", "g2c2", "--format", "tuned", "--out",
                    str(out_dir)) == 0  # fmt: skip
    profile = out_dir / "kloros-memory" / "tuned.conf"
    assert capsys.readouterr().out.splitlines() == [str(profile)]
    text = profile.read_text()
    assert "# label: g2c2" in text and f"# phase_run_id: {RUN}" in text
    assert "# evidence: exported, not adopted: +12%" in text
    assert "\n[sysctl]\n" in text and "\nvm.swappiness=10\n" in text
    assert "\nvm.min_free_kbytes=32768\n" in text
    assert "\n[vm]\n" in text and "\ntransparent_hugepages=never\n" in text
    assert "\ntransparent_hugepage.defrag=defer\n" in text

    assert snapshot_files(host.root) == before  # declared knobs only: nothing probed, nothing written
    assert not host.paths.host.exists() and host.events("adopted") == []


def test_export_systemd_of_memory_is_refused_in_one_line(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    applied(host, capsys)
    out_dir = host.base / "out"
    assert host.cli("export", "--domain", "memory", "--format", "systemd", "--out", str(out_dir)) == 1
    [no_unit] = capsys.readouterr().err.splitlines()
    assert no_unit == (
        "error: export --format systemd needs the unit whose workload these knobs shape: "
        "set domain_options.memory.unit"
    )
    assert host.cli("export", "--domain", "memory", "--format", "systemd", "--unit", "db", "--out",
                    str(out_dir)) == 1  # fmt: skip
    [no_process_knob] = capsys.readouterr().err.splitlines()
    assert no_process_knob == (
        "error: domain memory has no process knobs, nothing for --format systemd to set: "
        "use --format tuned or --format sysctl"
    )
    assert not out_dir.exists()


# --- after a crash (kill -9 mid-trial: the journal holds the adopted values) ------------------------
def _crash_mid_trial(host: Host) -> None:
    """What a kill -9 during a trial leaves: the journal (originals = adopted values), a candidate live."""
    from kloros_orchestrator.config import load_config
    from kloros_orchestrator.runtime.startup import open_domains
    from kloros_orchestrator.spica.registry import open_journal

    loaded = load_config(host.config)
    journal = open_journal(host.paths.journal, sysfs_root=loaded.sysfs_root, scratch_root=host.paths.scratch,
                           domain_options=loaded.config.domain_options)  # fmt: skip
    dom = open_domains(loaded, journal, host.paths)["memory"]
    dom.apply({**dom.stock_genome(), "swappiness": 77})
    journal.close()


def test_an_offline_rollback_after_a_crash_is_not_undone_by_the_next_start(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    from kloros_orchestrator.config import load_config
    from kloros_orchestrator.spica.registry import open_journal

    applied(host, capsys)
    _crash_mid_trial(host)
    assert host.knobs()[SWAPPINESS] == "77"
    assert host.cli("rollback", "--domain", "memory") == 0
    loaded = load_config(host.config)
    journal = open_journal(host.paths.journal, sysfs_root=loaded.sysfs_root, scratch_root=host.paths.scratch,
                           domain_options=loaded.config.domain_options)  # fmt: skip
    assert journal.restore_all() == []  # what the next start does first: nothing left to put back
    assert host.knobs()[SWAPPINESS] == FACTORY[SWAPPINESS]


def test_verify_without_a_daemon_reports_a_crashed_trials_values_as_drift(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    applied(host, capsys)
    _crash_mid_trial(host)
    assert host.cli("verify") == 1
    out = capsys.readouterr().out
    assert "expected 10, found 77" in out and "in trial" not in out


def test_verify_of_a_domain_with_nothing_recorded(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    assert host.cli("verify", "--domain", "memory") == 0
    assert "memory: nothing adopted" in capsys.readouterr().out
    assert host.cli("verify", "--domain", "memroy") == 1
    assert "no domain memroy here" in capsys.readouterr().err
