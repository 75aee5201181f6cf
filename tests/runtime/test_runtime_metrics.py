"""The Prometheus text file: exact samples read back with prometheus_client's own parser, absent values
absent (never 0), atomic replacement, write failures logged once and never raised, bounded reasons."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from loguru import logger
from prometheus_client.parser import text_string_to_metric_families

from kloros_orchestrator.model import TrialResult
from kloros_orchestrator.runtime.metrics import MAX_REASONS_PER_DOMAIN, MetricsFile, reason_class

Key = tuple[str, tuple[tuple[str, str], ...]]
NOW = 1_800_000_000.0


def read(path: Path) -> dict[Key, float]:
    out: dict[Key, float] = {}
    for family in text_string_to_metric_families(path.read_text()):
        assert family.documentation, f"{family.name} has no help text"
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"duplicate sample {key}"
            out[key] = s.value
    return out


def k(name: str, **labels: str) -> Key:
    return (name, tuple(sorted(labels.items())))


def trial(domain: str, failure: str | None = None, *, cap_breach: str | None = None) -> TrialResult:
    ok = failure is None and cap_breach is None
    return TrialResult(domain=domain, cand_id="g0c0", regime="normal", ok=ok, failure=failure,
                       cap_breach=cap_breach)  # fmt: skip


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m).strip()), level="INFO", format="{level} {message}")
    yield lines
    logger.remove(sink)


FULL_STATUS: dict[str, Any] = {
    "state": "evolving",
    "domain": "cpu",
    "generation": 4,
    "tournament": {"done": 3, "total": 12},
    "last_phase": {
        "completed_at": "2027-01-15T03:58:20+00:00",
        "results": "x/phase_results.json",
        "window_id": "w1",
        "complete": True,
        "run_id": "phase-1",
    },
    "pacing": {"last_sleep_s": 2.0, "reason": "steady", "defer_to_window": False},
    "domains": {"cpu": "ok", "memory": "ok", "gpu": "unsupported", "audio": "disabled"},
    "counters": {"tournaments": 7, "trials": 9, "failed_trials": 6},
    "uptime_s": 3600.5,
    "host": {
        "promotion": "manual",
        "domains": {
            "cpu": {
                "config": "adopted",
                "adopted": {"cand_id": "g1c2"},
                "pending_promotions": [{"cand_id": "g3c0"}, {"cand_id": "g3c1"}],
            },
            "memory": {"config": "factory", "change_pending": True, "note": "x"},
        },
    },
    "backoff": {"memory": {"until": "2027-01-15T05:00:00+00:00", "reason": "knob drift"}},
    "best": {
        "cpu": {"cand_id": "g3c0", "score": 0.125, "ci95": [0.05, 0.2]},
        "memory": {"cand_id": "g1c1", "score": -0.5, "ci95": None},
        "gpu": {"cand_id": None, "score": None, "ci95": None},
    },
    "phase_verdicts": {"promoted": 2, "flagged": 1},
    "duty_cycle": 0.75,
}


def feed_trials(m: MetricsFile) -> None:
    for t in (
        trial("cpu"),
        trial("cpu"),
        trial("cpu", "knob drift: /proc/sys/kernel/x, expected 1, found 2"),
        trial("cpu", "knob drift: /proc/sys/kernel/y, expected 0, found 3"),
        trial("cpu", "cap breach: temp_c 96.0 > 90", cap_breach="temp_c 96.0 > 90"),
        trial("cpu", "tool_missing: stress-ng not found (apt-get install stress-ng)"),
        trial("memory", "could not apply or run: [Errno 22] Invalid argument"),
        trial("memory", "timeout: stress-ng ran past its deadline"),
        trial("memory"),
    ):
        m.trial(t)


def test_every_sample_exactly(tmp_path: Path) -> None:
    path = tmp_path / "kloros.prom"
    m = MetricsFile(path, clock=lambda: NOW)
    feed_trials(m)
    m.write(FULL_STATUS)
    states = {s: 1.0 if s == "evolving" else 0.0
              for s in ("starting", "evolving", "draining", "phase", "collapsing", "stopping")}  # fmt: skip
    supports = {"cpu": "ok", "memory": "ok", "gpu": "unsupported", "audio": "disabled"}
    expected = {
        k("kloros_up"): 1.0,
        k("kloros_metrics_written_timestamp_seconds"): NOW,
        k("kloros_uptime_seconds"): 3600.5,
        **{k("kloros_state", state=s): v for s, v in states.items()},
        k("kloros_duty_cycle_ratio"): 0.75,
        k("kloros_tournaments_total"): 7.0,
        **{
            k("kloros_domain_supported", domain=d, support=s): 1.0 if s == have else 0.0
            for d, have in supports.items()
            for s in ("ok", "unsupported", "disabled")
        },
        **{k("kloros_domain_backed_off", domain=d): 1.0 if d == "memory" else 0.0 for d in supports},
        k("kloros_best_score", domain="cpu"): 0.125,
        k("kloros_best_score_ci_low", domain="cpu"): 0.05,
        k("kloros_best_score_ci_high", domain="cpu"): 0.2,
        k("kloros_best_score", domain="memory"): -0.5,
        k("kloros_last_phase_timestamp_seconds"): 1_799_985_500.0,
        k("kloros_phase_verdicts", kind="promoted"): 2.0,
        k("kloros_phase_verdicts", kind="flagged"): 1.0,
        k("kloros_promotions", domain="cpu", kind="pending"): 2.0,
        k("kloros_promotions", domain="cpu", kind="adopted"): 1.0,
        k("kloros_promotions", domain="memory", kind="pending"): 0.0,
        k("kloros_promotions", domain="memory", kind="adopted"): 0.0,
        k("kloros_trials_total", domain="cpu", outcome="ok", reason=""): 2.0,
        k("kloros_trials_total", domain="cpu", outcome="failed", reason="knob drift"): 2.0,
        k("kloros_trials_total", domain="cpu", outcome="failed", reason="cap breach"): 1.0,
        k("kloros_trials_total", domain="cpu", outcome="failed", reason="tool_missing"): 1.0,
        k("kloros_trials_total", domain="memory", outcome="failed", reason="could not apply or run"): 1.0,
        k("kloros_trials_total", domain="memory", outcome="failed", reason="timeout"): 1.0,
        k("kloros_trials_total", domain="memory", outcome="ok", reason=""): 1.0,
        k("kloros_knob_drift_trials_total", domain="cpu"): 2.0,
    }
    assert read(path) == expected


def test_unknown_values_are_absent_never_zero(tmp_path: Path) -> None:
    path = tmp_path / "kloros.prom"
    m = MetricsFile(path, clock=lambda: NOW)
    m.write({"state": "starting", "last_phase": None, "best": {"cpu": {"score": None, "ci95": None}}})
    got = read(path)
    names = {name for name, _ in got}
    assert names == {"kloros_up", "kloros_metrics_written_timestamp_seconds", "kloros_state"}
    m.write({})  # nothing known at all: still a valid file
    assert read(path) == {k("kloros_up"): 1.0, k("kloros_metrics_written_timestamp_seconds"): NOW}


def test_malformed_or_partial_status_does_not_raise(tmp_path: Path) -> None:
    path = tmp_path / "kloros.prom"
    m = MetricsFile(path, clock=lambda: NOW)
    m.write({
        "state": "mystery", "uptime_s": float("nan"), "duty_cycle": True, "counters": None,
        "host": {"promotion": "manual", "error": "adopted.json unreadable"}, "backoff": [],
        "best": {"cpu": {"score": "high", "ci95": [0.1]}, "memory": 3},
        "last_phase": {"completed_at": "not a time"}, "phase_verdicts": {"promoted": None, "other": 4},
        "domains": {"cpu": 1, "gpu": "weird"},
    })  # fmt: skip
    got = read(path)
    assert got[k("kloros_state", state="mystery")] == 1.0
    assert got[k("kloros_state", state="evolving")] == 0.0
    assert got[k("kloros_domain_supported", domain="gpu", support="weird")] == 1.0
    assert not any(name.startswith(("kloros_best", "kloros_phase", "kloros_last", "kloros_uptime",
                                    "kloros_duty", "kloros_tournaments")) for name, _ in got)  # fmt: skip


def test_duty_cycle_is_clamped_to_a_ratio(tmp_path: Path) -> None:
    path = tmp_path / "kloros.prom"
    m = MetricsFile(path)
    m.write({"duty_cycle": 1.0000001})
    assert read(path)[k("kloros_duty_cycle_ratio")] == 1.0


def test_atomic_replacement_by_rename(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "dirs" / "kloros.prom"
    m = MetricsFile(path, clock=lambda: NOW)
    m.write({"state": "evolving"})
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o755
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    first = path.stat().st_ino
    with path.open("rb") as reader:  # a reader holding the old file keeps a whole old file
        m.write({"state": "phase"})
        assert b'kloros_state{state="evolving"} 1.0' in reader.read()
    assert path.stat().st_ino != first
    assert read(path)[k("kloros_state", state="phase")] == 1.0
    assert os.listdir(path.parent) == ["kloros.prom"]  # no temporary file left


def test_a_symlink_at_the_path_is_replaced_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me")
    path = tmp_path / "kloros.prom"
    path.symlink_to(target)
    MetricsFile(path).write({"state": "evolving"})
    assert target.read_text() == "keep me"
    assert not path.is_symlink() and read(path)[k("kloros_up")] == 1.0


def test_unwritable_location_logs_once_and_never_raises(tmp_path: Path, log_lines: list[str]) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    m = MetricsFile(blocker / "kloros.prom")
    m.write({"state": "evolving"})
    m.write({"state": "phase"})
    warnings = [line for line in log_lines if line.startswith("WARNING")]
    assert len(warnings) == 1 and "cannot write" in warnings[0] and "kloros.prom" in warnings[0]
    blocker.unlink()
    m.write({"state": "phase"})
    assert read(blocker / "kloros.prom")[k("kloros_state", state="phase")] == 1.0
    assert any(line.startswith("INFO") and "written again" in line for line in log_lines)


def test_full_disk_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_lines: list[str]
) -> None:
    path = tmp_path / "kloros.prom"
    m = MetricsFile(path)
    m.write({"state": "evolving"})
    before = path.read_bytes()

    def full(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)  # the module calls os.replace
    for _ in range(3):
        m.write({"state": "phase"})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["kloros.prom"]
    assert len([line for line in log_lines if "No space left" in line]) == 1


def test_reasons_are_capped_per_domain(tmp_path: Path) -> None:
    path = tmp_path / "kloros.prom"
    m = MetricsFile(path)
    extra = 5
    for i in range(MAX_REASONS_PER_DOMAIN + extra):
        m.trial(trial("cpu", f"reason{i}: details {i}"))
    m.trial(trial("cpu", "reason0: again"))  # a reason seen before the cap keeps its own series
    m.trial(trial("cpu", "knob drift: after the cap"))  # counted as other, still counted as drift
    m.trial(trial("memory", "reason99: its own budget"))
    m.write({})
    got = read(path)
    cpu: dict[str, float] = {}
    for (name, labels), value in got.items():
        if name == "kloros_trials_total" and dict(labels)["domain"] == "cpu":
            cpu[dict(labels)["reason"]] = value
    assert len(cpu) == MAX_REASONS_PER_DOMAIN + 1
    assert cpu["other"] == extra + 1 and cpu["reason0"] == 2.0
    assert got[k("kloros_knob_drift_trials_total", domain="cpu")] == 1.0
    assert got[k("kloros_trials_total", domain="memory", outcome="failed", reason="reason99")] == 1.0


@pytest.mark.parametrize(
    ("failure", "cap_breach", "expected"),
    [
        (None, None, ""),
        ("knob drift: a; b", None, "knob drift"),
        ("  short_run :  ran 0.2 s of 1 s", None, "short_run"),
        ("no colon at all", None, "no colon at all"),
        (None, "p99_latency_us 900 > 500", "cap breach"),
        ("", None, "other"),
        (": nothing before the colon", None, "other"),
        ("x" * 200 + ": too long to be a class", None, "other"),
    ],
)
def test_reason_class(failure: str | None, cap_breach: str | None, expected: str) -> None:
    ok = failure is None and cap_breach is None
    r = TrialResult(domain="cpu", cand_id="c", regime="idle", ok=ok, failure=failure, cap_breach=cap_breach)
    assert reason_class(r) == expected


def test_own_registry_never_the_global_one(tmp_path: Path) -> None:
    a, b = MetricsFile(tmp_path / "a.prom"), MetricsFile(tmp_path / "b.prom")
    a.trial(trial("cpu"))
    a.write({})
    b.write({})
    assert prometheus_client.REGISTRY.get_sample_value("kloros_up") is None
    assert k("kloros_trials_total", domain="cpu", outcome="ok", reason="") in read(tmp_path / "a.prom")
    assert not any(name == "kloros_trials_total" for name, _ in read(tmp_path / "b.prom"))
