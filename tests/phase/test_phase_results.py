from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from kloros_orchestrator.errors import SchemaError
from kloros_orchestrator.phase import results as results_mod
from kloros_orchestrator.phase.results import (
    DomainMetrics,
    FlaggedVariant,
    PhaseResults,
    PromotedVariant,
    Qtime,
    Recommendation,
    ResultsWindow,
    TrialCounts,
    latest_results,
    load_results,
    write_results,
)


def _results(run_id: str = "20260101T030000Z", **overrides: Any) -> PhaseResults:
    fields: dict[str, Any] = {
        "timestamp": "2026-01-01T04:12:00+00:00",
        "run_id": run_id,
        "qtime": Qtime(epochs=2, slices=4, replicas=2),
        "domains_tested": ["cpu", "memory"],
        "metrics": {
            "cpu": DomainMetrics(
                fitness=0.12,
                ci95=(0.05, 0.2),
                baseline={"idle": {"throughput_ops": 1000.0, "p95_latency_us": 80.0}},
                insights=["cpu: workers=4 (stock 2) changed throughput_ops by +12.0% [95% CI +5.0%, +20.0%]"],
                best_cand_id="g3_c1",
            ),
            "memory": DomainMetrics(
                fitness=None, ci95=None, baseline={}, insights=["memory: 0 of 1 variants could be scored"]
            ),
        },
        "promoted_variants": [
            PromotedVariant(
                domain="cpu",
                cand_id="g3_c1",
                spica_id="spica-cpu-7",
                genome={"workers": 4, "governor": "performance", "thp": True, "ratio": 0.5},
                score_v2=0.12,
                score_ci95=(0.05, 0.2),
                reason="score_v2 +12.0%",
            )
        ],
        "flagged_variants": [
            FlaggedVariant(
                domain="cpu", cand_id="g3_c2", genome={"workers": 1}, reasons=["cap breach: temp_c"]
            )
        ],
        "search_space_recommendations": {
            "cpu": {
                "workers": Recommendation(action="narrow", low=3, high=5, value=4, reason="promoted at 4"),
                "governor": Recommendation(action="keep", reason="not varied"),
            }
        },
        "complete": True,
        "qtime_requested": Qtime(epochs=2, slices=4, replicas=3),
        "shrink": {
            "from": {"replicas": 3},
            "to": {"replicas": 2},
            "reason": "estimated 312 s > 240 s available",
        },
        "window": ResultsWindow(id="w1", start="2026-01-01T03:00:00+00:00", end="2026-01-01T07:00:00+00:00"),
        "trials": TrialCounts(planned=96, run=96, failed=1),
    }
    fields.update(overrides)
    return PhaseResults(**fields)


def test_round_trip_through_file_run_dir_and_latest(tmp_path: Path) -> None:
    phase_dir = tmp_path / "phase"
    original = _results()
    path = write_results(phase_dir, original, now=1_767_240_000)
    assert path == phase_dir / original.run_id / "phase_results.json"
    raw = json.loads(path.read_text())
    assert raw["schema"] == "phase_results.v1"
    assert next(iter(raw)) == "schema"
    assert raw["metrics"]["memory"]["fitness"] is None  # null, never an invented number
    assert "low" not in raw["search_space_recommendations"]["cpu"]["governor"]
    assert load_results(path) == original
    assert load_results(phase_dir / "latest") == original
    assert load_results(path.parent) == original
    assert latest_results(phase_dir) == phase_dir / "latest" / "phase_results.json"


def test_flag_file_written_after_results_and_latest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    phase_dir = tmp_path / "phase"
    seen: list[bool] = []
    real = results_mod.atomic_write_bytes

    def spy(path: Path, data: bytes, mode: int = 0o644) -> None:
        if path.name.startswith("phase_complete_"):
            # At the moment the flag appears, complete results must already be reachable via latest.
            seen.append(load_results(phase_dir / "latest").run_id == "r1")
        real(path, data, mode)

    monkeypatch.setattr(results_mod, "atomic_write_bytes", spy)
    path = write_results(phase_dir, _results("r1"), now=1_700_000_123.7)
    assert seen == [True]
    flag = phase_dir / "phase_complete_1700000123"
    assert flag.is_file()
    assert Path(flag.read_text()) == path.resolve()


def test_latest_points_to_newest_run(tmp_path: Path) -> None:
    phase_dir = tmp_path / "phase"
    write_results(phase_dir, _results("run-a"), now=100)
    write_results(phase_dir, _results("run-b"), now=200)
    link = phase_dir / "latest"
    assert link.is_symlink()
    assert os.readlink(link) == "run-b"  # relative: survives moving the state dir
    assert load_results(link).run_id == "run-b"
    assert (phase_dir / "run-a" / "phase_results.json").is_file()
    assert sorted(p.name for p in phase_dir.glob("phase_complete_*")) == [
        "phase_complete_100",
        "phase_complete_200",
    ]
    assert not list(phase_dir.glob(".latest*"))


def test_write_refuses_invalid_results_and_leaves_nothing(tmp_path: Path) -> None:
    phase_dir = tmp_path / "phase"
    bad = _results(
        metrics={
            "cpu": DomainMetrics(fitness=0.1, ci95=(0.3, 0.1), baseline={}, insights=["cpu: 1"]),
            "memory": DomainMetrics(fitness=None, ci95=None, baseline={}, insights=["memory: 0"]),
        }
    )
    with pytest.raises(SchemaError) as exc:
        write_results(phase_dir, bad, now=1)
    assert exc.value.field == "metrics.cpu.ci95"
    assert not phase_dir.exists()  # validated before anything touched the disk


Mutation = Callable[[dict[str, Any]], None]


def _set(*keys: Any, value: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        target = doc
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return mutate


def _delete(*keys: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        target = doc
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return mutate


MALFORMED: list[tuple[str, Mutation, str, str]] = [
    ("missing top key", _delete("run_id"), "run_id", "missing"),
    ("missing schema", _delete("schema"), "schema", "missing"),
    ("missing nested key", _delete("metrics", "cpu", "baseline"), "metrics.cpu.baseline", "missing"),
    (
        "missing list item key",
        _delete("promoted_variants", 0, "spica_id"),
        "promoted_variants[0].spica_id",
        "missing",
    ),
    ("wrong schema", _set("schema", value="phase_results.v2"), "schema", "phase_results.v1"),
    ("wrong type bool", _set("complete", value="yes"), "complete", "bool"),
    ("wrong type fitness", _set("metrics", "cpu", "fitness", value="high"), "metrics.cpu.fitness", "float"),
    (
        "wrong type in dict",
        _set("metrics", "cpu", "baseline", "idle", "throughput_ops", value=[1]),
        "metrics.cpu.baseline.idle.throughput_ops",
        "float",
    ),
    ("ci95 not a pair", _set("metrics", "cpu", "ci95", value=[0.1]), "metrics.cpu.ci95", "length 2"),
    ("ci95 lo > hi", _set("metrics", "cpu", "ci95", value=[0.3, 0.1]), "metrics.cpu.ci95", "lower bound"),
    (
        "score ci lo > hi",
        _set("promoted_variants", 0, "score_ci95", value=[0.3, 0.1]),
        "promoted_variants[0].score_ci95",
        "lower bound",
    ),
    (
        "NaN value",
        _set("metrics", "cpu", "baseline", "idle", "p95_latency_us", value=float("nan")),
        "metrics.cpu.baseline.idle.p95_latency_us",
        "finite",
    ),
    (
        "infinite fitness",
        _set("metrics", "cpu", "fitness", value=float("inf")),
        "metrics.cpu.fitness",
        "finite",
    ),
    (
        "bad action",
        _set("search_space_recommendations", "cpu", "workers", "action", value="explode"),
        "search_space_recommendations.cpu.workers.action",
        "explode",
    ),
    (
        "genome value not scalar",
        _set("promoted_variants", 0, "genome", "workers", value=[4]),
        "promoted_variants[0].genome.workers",
        "Expected",
    ),
    (
        "metrics for untested domain",
        _set("domains_tested", value=["cpu"]),
        "metrics.memory",
        "domains_tested",
    ),
    (
        "tested domain without metrics",
        _set("domains_tested", value=["cpu", "memory", "storage"]),
        "metrics.storage",
        "missing",
    ),
    ("bad timestamp", _set("timestamp", value="yesterday"), "timestamp", "ISO 8601"),
    ("run id escapes the dir", _set("run_id", value="../x"), "run_id", "directory"),
    (
        "empty insights",
        _set("metrics", "memory", "insights", value=[]),
        "metrics.memory.insights",
        "at least one",
    ),
]


@pytest.mark.parametrize(("name", "mutate", "field", "problem"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_results_name_the_field(
    tmp_path: Path, name: str, mutate: Mutation, field: str, problem: str
) -> None:
    doc = copy.deepcopy(msgspec.to_builtins(_results()))
    mutate(doc)
    path = tmp_path / "phase_results.json"
    path.write_text(json.dumps(doc))  # json.dumps writes NaN/Infinity tokens, as a careless writer would
    with pytest.raises(SchemaError) as exc:
        load_results(path)
    assert exc.value.field == field, name
    assert problem in exc.value.problem
    assert exc.value.path == str(path)
    assert str(exc.value).startswith(f"{path}: {field}: ")


def test_truncated_json_is_a_document_error(tmp_path: Path) -> None:
    path = tmp_path / "phase_results.json"
    text = msgspec.json.encode(_results()).decode()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(SchemaError) as exc:
        load_results(path)
    assert exc.value.field == "<document>"
    assert "malformed JSON" in exc.value.problem
    assert "line 1" in exc.value.problem


def test_non_object_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "phase_results.json"
    path.write_text("[1, 2]")
    with pytest.raises(SchemaError, match="expected a JSON object, got array"):
        load_results(path)
    with pytest.raises(SchemaError) as exc:
        load_results(tmp_path / "nope" / "phase_results.json")
    assert exc.value.field == "<document>"
    assert latest_results(tmp_path) is None


def test_unknown_extra_keys_are_accepted(tmp_path: Path) -> None:
    # Additive contract changes must not break older readers.
    doc = msgspec.to_builtins(_results())
    doc["future_key"] = {"anything": 1}
    doc["metrics"]["cpu"]["new_field"] = 3
    path = tmp_path / "phase_results.json"
    path.write_text(json.dumps(doc))
    assert load_results(path).run_id == "20260101T030000Z"


# --- files that must not be read as they are: bounded, never through a link, moved aside -------------

DEEP = b"[" * 20_000 + b"]" * 20_000  # RecursionError in json.loads
BAD_FILES: list[tuple[str, Callable[[Path], None], str]] = [
    ("nested_20000_deep", lambda p: p.write_bytes(DEEP), "nested deeper than 64 levels"),
    ("dev_zero_link", lambda p: p.symlink_to("/dev/zero"), "cannot read: is a symbolic link"),
    ("fifo", lambda p: os.mkfifo(p), "cannot read: is a FIFO, not a regular file"),
]


@pytest.mark.parametrize(("name", "make", "problem"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
async def test_bad_latest_results_are_moved_aside_and_never_met_twice(
    tmp_path: Path, name: str, make: Callable[[Path], None], problem: str
) -> None:
    phase_dir = tmp_path / "phase"
    path = write_results(phase_dir, _results("r1"), now=100)
    path.unlink()
    make(path)
    found = latest_results(phase_dir)
    assert found == phase_dir / "latest" / "phase_results.json"
    with anyio.fail_after(5), pytest.raises(SchemaError) as exc:
        await anyio.to_thread.run_sync(load_results, found, abandon_on_cancel=True)
    assert exc.value.field == "<document>" and exc.value.problem.startswith(problem)
    assert "(moved aside to phase_results.json.rejected-" in exc.value.problem
    assert latest_results(phase_dir) is None  # the next start finds nothing to collapse


def test_results_can_be_read_without_moving_them(tmp_path: Path) -> None:
    path = tmp_path / "phase_results.json"
    path.write_bytes(DEEP)
    with pytest.raises(SchemaError, match="nested deeper"):
        load_results(path, move_aside=False)
    assert path.exists()
    path.write_text("[]")
    with pytest.raises(SchemaError, match="expected a JSON object"):
        load_results(path)
    assert not path.exists() and len(list(tmp_path.glob("phase_results.json.rejected-*"))) == 1


@pytest.mark.parametrize("target", ["/etc", "../elsewhere", ".."])
def test_latest_that_leaves_the_phase_directory_is_ignored(tmp_path: Path, target: str) -> None:
    phase_dir = tmp_path / "phase"
    write_results(phase_dir, _results("r1"), now=100)
    (phase_dir / "latest").unlink()
    (phase_dir / "latest").symlink_to(target)
    assert latest_results(phase_dir) is None


def test_latest_that_is_not_a_link_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "latest").mkdir()
    (tmp_path / "latest" / "phase_results.json").write_text("{}")
    assert latest_results(tmp_path) is None
