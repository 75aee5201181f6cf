"""candidate_pack.v2 from trials, and reading packs back with file+field errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kloros_orchestrator.errors import SchemaError
from kloros_orchestrator.measure.packs import baseline_entry, build_pack, load_pack
from kloros_orchestrator.model import P95, REGIMES, TEMP, THROUGHPUT, WATTS, TrialResult
from kloros_orchestrator.store import atomic_write_json


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


def pack(cand: Any, stock: Any, **over: Any) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "run_id": "r1",
        "domain": "cpu",
        "cand_id": "g0c1",
        "generation": 0,
        "spica_id": "spica-cpu-x",
        "genome": {"workers": 1},
        "arm": cand,
        "stock": stock,
        "baseline_ids": {r: f"b-{r}" for r in REGIMES},
        "expected_kpis": [THROUGHPUT, P95, TEMP, WATTS],
        "missing_reasons": {TEMP: "no hwmon"},
        "unsafe_reasons": [],
        "min_trials": 2,
        "code_hash": "abc",
        "rng": np.random.default_rng(1),
        "n_boot": 500,
    }
    kw.update(over)
    return build_pack(**kw)


def test_pack_numbers_are_computed_from_the_trials() -> None:
    cand, stock = arms(0.10)
    p = pack(cand, stock)
    assert p["schema"] == "candidate_pack.v2"
    for reg in p["regimes"]:
        vals = reg["kpis"][THROUGHPUT]
        base = reg["baseline"][THROUGHPUT]
        assert base == pytest.approx(np.mean([t.kpis[THROUGHPUT] for t in stock[reg["regime"]]]))
        assert reg["delta"][THROUGHPUT] == pytest.approx([v - base for v in vals])
        lo, hi = reg["ci95"][THROUGHPUT]
        assert lo <= np.mean(vals) <= hi
    agg = p["aggregate"]
    assert agg["score_v2"] == pytest.approx(0.10, abs=0.02)
    lo, hi = agg["score_ci95"]
    assert lo <= agg["score_v2"] <= hi and agg["improves_over_baseline"] == (lo > 0)
    assert p["missing_kpis"] == [TEMP, WATTS]
    assert p["missing_reasons"][TEMP] == "no hwmon"


def test_failed_trials_are_never_padded_and_too_few_means_not_scored() -> None:
    cand, stock = arms(0.0)
    cand["stress"] = [trial("stress", 0, 0, ok=False, failure="short_run: 0.4 s of 1 s"), cand["stress"][0]]
    p = pack(cand, stock)
    stress = next(r for r in p["regimes"] if r["regime"] == "stress")
    assert stress["trials"] == 1 and stress["attempted"] == 2
    assert len(stress["kpis"][THROUGHPUT]) == 1 and 0.0 not in stress["kpis"][THROUGHPUT]
    assert stress["failures"] == ["short_run: 0.4 s of 1 s"]
    assert p["aggregate"]["score_v2"] is None and p["aggregate"]["score_ci95"] is None
    assert "stress: 1 successful trial(s) < minimum 2" in p["aggregate"]["not_scored_reason"]
    assert p["aggregate"]["improves_over_baseline"] is False


def test_baseline_entry() -> None:
    _, stock = arms(0.0)
    e = baseline_entry(
        stock["idle"],
        baseline_id="b",
        code_hash="h",
        measured_at="t",
        rng=np.random.default_rng(0),
        n_boot=200,
    )
    assert e["trials"] == 3 and set(e["kpis"]) == {THROUGHPUT, P95}
    lo, hi = e["ci95"][THROUGHPUT]
    assert lo <= e["kpis"][THROUGHPUT] <= hi


def test_pack_round_trips_and_corruption_names_file_and_field(tmp_path: Path) -> None:
    cand, stock = arms(0.05)
    good = tmp_path / "gen0_best.json"
    atomic_write_json(good, pack(cand, stock))
    loaded = load_pack(good)
    assert loaded.cand_id == "g0c1" and len(loaded.regimes) == 4

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


def test_one_trial_gives_no_interval_and_no_claim() -> None:
    cand, stock = arms(0.5, n=1)  # a large gain, but measured once: no interval, no claim
    p = pack(cand, stock, min_trials=1)
    agg = p["aggregate"]
    assert agg["score_v2"] == pytest.approx(0.5, abs=0.05)
    assert agg["score_ci95"] is None and agg["improves_over_baseline"] is False
    assert "fewer than 2" in agg["score_ci_note"]
    assert all(reg["ci95"] == {} for reg in p["regimes"])
