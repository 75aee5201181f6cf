"""candidate_pack.v2 and baselines.v2: built from trials, written and read back through one schema."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from msgspec.structs import replace

from kloros_orchestrator.errors import SchemaError
from kloros_orchestrator.measure.packs import (
    BaselineEntry,
    CandidatePack,
    PackContext,
    baseline_entry,
    build_pack,
    load_pack,
    read_baselines,
    validate_pack,
    write_baselines,
    write_pack,
)
from kloros_orchestrator.model import P95, REGIMES, TEMP, THROUGHPUT, WATTS, TrialResult

# Every key each format has written so far: the outside checks read them, so none may disappear.
PACK_KEYS = [
    "schema",
    "run_id",
    "domain",
    "cand_id",
    "generation",
    "spica_id",
    "genome",
    "regimes",
    "aggregate",
    "safe",
    "unsafe_reasons",
    "missing_kpis",
    "missing_reasons",
    "code_hash",
    "lineage",
    "eliminated",
    "stress_ng_version",
    "current_genome",
    "same_as_current",
    "selected_from",
    "selection_ci",
    "stressor_throughput",
    "current_stressor_throughput",
]
REGIME_KEYS = ["regime", "trials", "attempted", "failures", "kpis", "baseline", "delta", "ci95"]
AGGREGATE_KEYS = [
    "means",
    "score_v2",
    "score_ci95",
    "improves_over_baseline",
    "score_ci_note",
    "scored",
    "not_scored_reason",
]
BASELINE_KEYS = [
    "kpis",
    "ci95",
    "trials",
    "baseline_id",
    "code_hash",
    "measured_at",
    "stress_ng_version",
    "kernel",
    "genome",
]


def trial(regime: str, tp: float, p95: float, *, ok: bool = True, failure: str | None = None) -> TrialResult:
    kpis = {THROUGHPUT: tp, P95: p95} if ok else {}
    return TrialResult(domain="cpu", cand_id="c", regime=regime, ok=ok, kpis=kpis, failure=failure)


def arms(gain: float, n: int = 3) -> tuple[dict[str, list[TrialResult]], dict[str, list[TrialResult]]]:
    rng = np.random.default_rng(0)
    stock = {r: [trial(r, 100 + rng.normal(0, 1), 50 + rng.normal(0, 1)) for _ in range(n)] for r in REGIMES}
    cand = {
        r: [trial(r, 100 * (1 + gain) + rng.normal(0, 1), 50 + rng.normal(0, 1)) for _ in range(n)]
        for r in REGIMES
    }
    return cand, stock


def context(**over: Any) -> PackContext:
    kw: dict[str, Any] = {
        "run_id": "r1",
        "domain": "cpu",
        "generation": 0,
        "baseline_ids": {r: f"b-{r}" for r in REGIMES},
        "expected_kpis": (THROUGHPUT, P95, TEMP, WATTS),
        "missing_reasons": {TEMP: "no hwmon"},
        "min_trials": 2,
        "code_hash": "abc",
        "n_boot": 500,
        "stress_ng_version": "0.17.06",
    }
    kw.update(over)
    return PackContext(**kw)


def pack(cand: Any, stock: Any, ctx: PackContext | None = None, **over: Any) -> CandidatePack:
    kw: dict[str, Any] = {
        "cand_id": "g0c1",
        "spica_id": "spica-cpu-x",
        "genome": {"workers": 1},
        "arm": cand,
        "stock": stock,
        "unsafe_reasons": [],
        "rng": np.random.default_rng(1),
    }
    kw.update(over)
    return build_pack(ctx or context(), **kw)


def test_pack_numbers_are_computed_from_the_trials() -> None:
    cand, stock = arms(0.10)
    p = pack(cand, stock)
    assert p.schema == "candidate_pack.v2"
    for reg in p.regimes:
        vals = reg.kpis[THROUGHPUT]
        base = reg.baseline[THROUGHPUT]
        assert isinstance(base, float)
        assert base == pytest.approx(np.mean([t.kpis[THROUGHPUT] for t in stock[reg.regime]]))
        assert reg.baseline["baseline_id"] == f"b-{reg.regime}"
        assert reg.delta[THROUGHPUT] == pytest.approx([v - base for v in vals])
        lo, hi = reg.ci95[THROUGHPUT]
        assert lo <= np.mean(vals) <= hi
    agg = p.aggregate
    assert agg.score_v2 == pytest.approx(0.10, abs=0.02)
    assert agg.score_v2 is not None and agg.score_ci95 is not None
    lo, hi = agg.score_ci95
    assert lo <= agg.score_v2 <= hi and agg.improves_over_baseline == (lo > 0)
    assert agg.scored and agg.not_scored_reason is None and agg.score_ci_note is None
    assert agg.means[THROUGHPUT]["overall"] == pytest.approx(
        np.mean([np.mean(reg.kpis[THROUGHPUT]) for reg in p.regimes])
    )
    assert p.missing_kpis == [TEMP, WATTS]
    assert p.missing_reasons == {TEMP: "no hwmon", WATTS: "not measured in any trial"}
    assert p.stress_ng_version == "0.17.06" and p.lineage == {} and p.eliminated is None


def test_failed_trials_are_never_padded_and_too_few_means_not_scored() -> None:
    cand, stock = arms(0.0)
    cand["stress"] = [trial("stress", 0, 0, ok=False, failure="short_run: 0.4 s of 1 s"), cand["stress"][0]]
    p = pack(cand, stock)
    stress = next(r for r in p.regimes if r.regime == "stress")
    assert stress.trials == 1 and stress.attempted == 2
    assert len(stress.kpis[THROUGHPUT]) == 1 and 0.0 not in stress.kpis[THROUGHPUT]
    assert stress.failures == ["short_run: 0.4 s of 1 s"]
    assert p.aggregate.score_v2 is None and p.aggregate.score_ci95 is None
    assert p.aggregate.not_scored_reason is not None
    assert "stress: 1 successful trial(s) < minimum 2" in p.aggregate.not_scored_reason
    assert p.aggregate.improves_over_baseline is False and p.aggregate.scored is False


def test_baseline_entry() -> None:
    _, stock = arms(0.0)
    e = baseline_entry(
        stock["idle"],
        baseline_id="b",
        code_hash="h",
        measured_at="t",
        rng=np.random.default_rng(0),
        n_boot=200,
        stress_ng_version="0.17.06",
        kernel="6.8.0",
        genome={"sched_autogroup": 1},
    )
    assert e.trials == 3 and set(e.kpis) == {THROUGHPUT, P95}
    lo, hi = e.ci95[THROUGHPUT]
    assert lo <= e.kpis[THROUGHPUT] <= hi
    assert (e.stress_ng_version, e.kernel, e.genome) == ("0.17.06", "6.8.0", {"sched_autogroup": 1})


def test_same_trials_and_seed_give_the_same_pack() -> None:
    cand, stock = arms(0.05)
    assert pack(cand, stock) == pack(cand, stock)


def test_pack_round_trips_and_corruption_names_file_and_field(tmp_path: Path) -> None:
    cand, stock = arms(0.05)
    good = tmp_path / "gen0_best.json"
    written = pack(cand, stock, lineage={"parent": None, "generation": 0, "mutations": ("m1",)})
    write_pack(good, written)
    loaded = load_pack(good)
    assert loaded == written
    assert loaded.cand_id == "g0c1" and len(loaded.regimes) == 4
    assert loaded.lineage == {"parent": None, "generation": 0, "mutations": ["m1"]}

    def broken(mutate: Any) -> SchemaError:
        data = json.loads(good.read_text())
        mutate(data)
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(data))
        with pytest.raises(SchemaError) as exc:
            load_pack(bad)
        assert exc.value.path == str(bad)
        return exc.value

    assert broken(lambda d: d.update(generation="zero")).field == "generation"
    assert broken(lambda d: d["regimes"][1].pop("kpis")).field == "regimes[1].kpis"
    assert broken(lambda d: d.update(schema="candidate_pack.v1")).field == "schema"
    e = broken(lambda d: d["regimes"][0]["ci95"].update({THROUGHPUT: [5, 1]}))
    assert e.field == f"regimes[0].ci95.{THROUGHPUT}"
    trunc = tmp_path / "trunc.json"
    trunc.write_text(good.read_text()[:100])
    with pytest.raises(SchemaError) as exc:
        load_pack(trunc)
    assert exc.value.field == "<document>"


def test_every_key_is_written_schema_first(tmp_path: Path) -> None:
    cand, stock = arms(0.05)
    path = tmp_path / "p.json"
    write_pack(path, pack(cand, stock, lineage={"parent": "g0c0"}, eliminated="behind the leader"))
    data = json.loads(path.read_text())
    assert list(data) == PACK_KEYS
    assert all(list(reg) == REGIME_KEYS for reg in data["regimes"])
    assert list(data["aggregate"]) == AGGREGATE_KEYS
    assert data["lineage"] == {"parent": "g0c0"} and data["eliminated"] == "behind the leader"
    assert data["stress_ng_version"] == "0.17.06"


def test_older_packs_load_with_defaults_and_unknown_keys_are_ignored(tmp_path: Path) -> None:
    cand, stock = arms(0.05)
    path = tmp_path / "p.json"
    write_pack(path, pack(cand, stock))
    data = json.loads(path.read_text())
    for later in ("lineage", "eliminated", "stress_ng_version", "stressor_throughput"):
        del data[later]
    del data["current_stressor_throughput"]
    del data["aggregate"]["score_ci_note"]
    data["added_by_a_newer_version"] = {"x": 1}
    path.write_text(json.dumps(data))
    loaded = load_pack(path)
    assert loaded.lineage == {} and loaded.eliminated is None and loaded.stress_ng_version is None
    assert loaded.aggregate.score_ci_note is None
    assert loaded.stressor_throughput == {} and loaded.current_stressor_throughput == {}


def corruptions(p: CandidatePack) -> dict[str, CandidatePack]:
    """Field that is wrong -> a copy of ``p`` wrong there."""
    agg, reg = p.aggregate, p.regimes[0]
    return {
        "aggregate.score_v2": replace(p, aggregate=replace(agg, score_v2=math.nan)),
        "aggregate.score_ci95": replace(p, aggregate=replace(agg, score_ci95=(0.2, 0.1))),
        # One trial per regime: no interval, so claiming an improvement is a lie.
        "aggregate.improves_over_baseline": replace(p, aggregate=replace(agg, improves_over_baseline=True)),
        f"regimes[0].ci95.{THROUGHPUT}": replace(p, regimes=[replace(reg, ci95={THROUGHPUT: (5.0, 1.0)})]),
        f"regimes[0].kpis.{P95}[1]": replace(p, regimes=[replace(reg, kpis={P95: [1.0, math.inf]})]),
        "stressor_throughput.idle.cpu": replace(p, stressor_throughput={"idle": {"cpu": -1.0}}),
        "current_stressor_throughput.mixed.vm": replace(
            p, current_stressor_throughput={"mixed": {"cpu": 1.0, "vm": math.nan}}
        ),
        # A type the Struct does not check on construction; the reader would refuse it.
        "generation": replace(p, generation="zero"),
    }


FIELDS = list(corruptions(pack(*arms(0.5, n=1), ctx=context(min_trials=1))))


@pytest.mark.parametrize("field", FIELDS)
def test_a_pack_that_could_not_be_read_back_cannot_be_written(tmp_path: Path, field: str) -> None:
    bad = corruptions(pack(*arms(0.5, n=1), ctx=context(min_trials=1)))[field]
    path = tmp_path / "p.json"
    with pytest.raises(SchemaError) as exc:
        write_pack(path, bad)
    assert exc.value.path == str(path) and exc.value.field == field
    assert not path.exists()


def test_validate_pack_is_what_the_reader_checks(tmp_path: Path) -> None:
    cand, stock = arms(0.05)
    good = pack(cand, stock)
    validate_pack(good, "here")
    bad = corruptions(good)["aggregate.score_ci95"]
    with pytest.raises(SchemaError) as exc:
        validate_pack(bad, "here")
    assert (exc.value.path, exc.value.field) == ("here", "aggregate.score_ci95")


def test_one_trial_gives_no_interval_and_no_claim() -> None:
    cand, stock = arms(0.5, n=1)  # a large gain, but measured once: no interval, no claim
    p = pack(cand, stock, ctx=context(min_trials=1))
    agg = p.aggregate
    assert agg.score_v2 == pytest.approx(0.5, abs=0.05)
    assert agg.score_ci95 is None and agg.improves_over_baseline is False
    assert agg.score_ci_note is not None and "fewer than 2" in agg.score_ci_note
    assert all(reg.ci95 == {} for reg in p.regimes)


# --- baselines.v2 --------------------------------------------------------------------------------


def entries() -> dict[str, dict[str, BaselineEntry]]:
    _, stock = arms(0.0)
    rng = np.random.default_rng(0)
    return {
        "cpu": {
            r: baseline_entry(
                stock[r],
                baseline_id=f"cpu_{r}",
                code_hash="h",
                measured_at="2026-01-01T00:00:00+00:00",
                rng=rng,
                n_boot=200,
                stress_ng_version="0.17.06",
                kernel="6.8.0",
                genome={"sched_autogroup": 1},
            )
            for r in REGIMES
        }
    }


def test_baselines_round_trip_with_every_key(tmp_path: Path) -> None:
    path = tmp_path / "baselines.json"
    assert read_baselines(path) == ({}, None)  # nothing measured yet is no problem
    write_baselines(path, entries())
    assert read_baselines(path) == (entries(), None)
    data = json.loads(path.read_text())
    assert list(data) == ["schema", "cpu"] and data["schema"] == "baselines.v2"
    assert all(list(e) == BASELINE_KEYS for e in data["cpu"].values())


def test_baselines_older_entries_load_and_bad_ones_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "baselines.json"
    write_baselines(path, entries())
    data = json.loads(path.read_text())
    for later in ("stress_ng_version", "kernel", "genome"):
        del data["cpu"]["idle"][later]
    data["cpu"]["stress"]["ci95"][THROUGHPUT] = [5, 1]
    data["cpu"]["mixed"]["trials"] = "three"
    path.write_text(json.dumps(data))
    got, problem = read_baselines(path)
    assert set(got["cpu"]) == {"idle", "normal"}
    assert got["cpu"]["idle"].kernel is None and got["cpu"]["idle"].genome is None
    assert problem is not None
    assert f"{path}: cpu.stress.ci95.{THROUGHPUT}: lower bound 5.0 above upper 1.0" in problem
    assert f"{path}: cpu.mixed.trials:" in problem


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"schema": "baselines.v1", "cpu": {}}', b"[]"],
)
def test_unreadable_baselines_give_a_problem_not_an_exception(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "baselines.json"
    path.write_bytes(content)
    got, problem = read_baselines(path)
    assert got == {} and problem is not None and problem.startswith(f"{path}: ")


def test_a_baseline_that_could_not_be_read_back_cannot_be_written(tmp_path: Path) -> None:
    path = tmp_path / "baselines.json"
    good = entries()
    bad_entry = replace(good["cpu"]["idle"], kpis={THROUGHPUT: math.nan})
    with pytest.raises(SchemaError) as exc:
        write_baselines(path, {"cpu": {**good["cpu"], "idle": bad_entry}})
    assert exc.value.field == f"cpu.idle.kpis.{THROUGHPUT}"
    wrong_type = replace(good["cpu"]["idle"], trials="three")
    with pytest.raises(SchemaError):
        write_baselines(path, {"cpu": {"idle": wrong_type}})
    assert not path.exists()


# --- files that must not be read as they are: bounded, never through a link, moved aside -------------

DEEP = b"[" * 20_000 + b"]" * 20_000  # RecursionError in json and msgspec alike
BAD_DOCUMENTS: list[tuple[str, Any, str]] = [
    ("nested_20000_deep", lambda p: p.write_bytes(DEEP), "nested deeper than 64 levels"),
    ("dev_zero_link", lambda p: p.symlink_to("/dev/zero"), "unreadable: is a symbolic link"),
    ("fifo", os.mkfifo, "unreadable: is a FIFO, not a regular file"),
]


@pytest.mark.parametrize(("name", "make", "problem"), BAD_DOCUMENTS, ids=[b[0] for b in BAD_DOCUMENTS])
async def test_a_bad_pack_is_refused_promptly_and_moved_aside(
    tmp_path: Path, name: str, make: Any, problem: str
) -> None:
    path = tmp_path / "gen3_best.json"
    make(path)
    with anyio.fail_after(5), pytest.raises(SchemaError) as exc:
        await anyio.to_thread.run_sync(load_pack, path, abandon_on_cancel=True)
    assert exc.value.field == "<document>" and exc.value.problem.startswith(problem)
    assert re.search(r"\(moved aside to gen3_best\.json\.rejected-\d+\)$", exc.value.problem)
    assert not os.path.lexists(path)
    assert [p.name for p in tmp_path.glob("gen*_best.json")] == []  # the next rebuild does not meet it


def test_a_pack_that_fails_its_schema_is_moved_aside_unless_asked_not_to(tmp_path: Path) -> None:
    path = tmp_path / "gen0_best.json"
    path.write_text('{"schema": "candidate_pack.v1"}')
    with pytest.raises(SchemaError):
        load_pack(path, move_aside=False)
    assert path.exists()
    with pytest.raises(SchemaError, match=r"moved aside to gen0_best\.json\.rejected-"):
        load_pack(path)
    assert not path.exists()
    with pytest.raises(SchemaError) as exc:  # missing: nothing to move
        load_pack(path)
    assert "moved aside" not in exc.value.problem
    path.mkdir()
    with pytest.raises(SchemaError, match="is a directory"):
        load_pack(path)
    assert not path.exists()


@pytest.mark.parametrize(("name", "make", "problem"), BAD_DOCUMENTS, ids=[b[0] for b in BAD_DOCUMENTS])
async def test_bad_baselines_are_moved_aside_and_the_next_write_starts_clean(
    tmp_path: Path, name: str, make: Any, problem: str
) -> None:
    path = tmp_path / "baselines.json"
    make(path)
    with anyio.fail_after(5):
        got, found = await anyio.to_thread.run_sync(read_baselines, path, abandon_on_cancel=True)
    assert got == {} and found is not None and found.startswith(f"{path}: <document>: {problem}")
    assert "moved aside to baselines.json.rejected-" in found
    write_baselines(path, entries())  # what the tournament does next: it no longer fails
    assert read_baselines(path) == (entries(), None)


def test_baselines_that_are_not_json_or_not_v2_are_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "baselines.json"
    for content in (b"{not json", b'{"schema": "baselines.v1"}'):
        path.write_bytes(content)
        got, problem = read_baselines(path)
        assert got == {} and problem is not None and "moved aside" in problem and not path.exists()
    path.write_bytes(b"[]")
    assert "moved aside" not in str(read_baselines(path, move_aside=False)[1]) and path.exists()


def test_a_pack_says_which_configuration_it_was_measured_against_and_if_it_is_that_one() -> None:
    import msgspec

    from kloros_orchestrator.errors import SchemaError
    from kloros_orchestrator.measure.packs import CandidatePack, PackAggregate, validate_pack

    agg = PackAggregate(means={}, score_v2=0.1, score_ci95=(0.05, 0.15), improves_over_baseline=True,
                        scored=True, not_scored_reason=None)  # fmt: skip
    pack = CandidatePack(run_id="r", domain="d", cand_id="g0c0", generation=0, spica_id="s", genome={"x": 1},
                         regimes=[], aggregate=agg, safe=True, unsafe_reasons=[], missing_kpis=[],
                         missing_reasons={}, code_hash="c", current_genome={"x": 2})  # fmt: skip
    validate_pack(pack, "p")
    twin = msgspec.structs.replace(pack, current_genome={"x": 1}, same_as_current=True)
    with pytest.raises(SchemaError, match="current configuration itself"):
        validate_pack(twin, "p")
    plain = msgspec.structs.replace(agg, improves_over_baseline=False)
    with pytest.raises(SchemaError, match="same_as_current"):
        validate_pack(msgspec.structs.replace(pack, aggregate=plain, same_as_current=True), "p")


def test_the_best_of_several_claims_an_improvement_only_with_a_selection_corrected_interval() -> None:
    from kloros_orchestrator.measure.packs import corrected_for_selection

    rng = np.random.default_rng(3)
    cand, stock = arms(0.05)  # a clear +5 %: survives the correction
    clear = pack(cand, stock)
    assert clear.aggregate.improves_over_baseline
    kept = corrected_for_selection(clear, cand, stock, 6, rng=rng, n_boot=2000)
    assert kept.aggregate.improves_over_baseline and kept.selected_from == 6
    assert kept.selection_ci is not None and kept.selection_ci[0] > 0
    assert kept.selection_ci[0] < clear.aggregate.score_ci95[0]  # type: ignore[index]
    cand, stock = arms(0.004)  # barely above 0 at 95 %: not once it is the best of six
    thin = pack(cand, stock)
    assert thin.aggregate.improves_over_baseline
    cut = corrected_for_selection(thin, cand, stock, 6, rng=rng, n_boot=2000)
    assert not cut.aggregate.improves_over_baseline and "best of 6" in (cut.aggregate.score_ci_note or "")
    assert cut.selection_ci is not None and cut.selection_ci[0] <= 0
    alone = corrected_for_selection(clear, cand, stock, 1, rng=rng, n_boot=2000)
    assert alone.selection_ci is None and alone.aggregate == clear.aggregate
