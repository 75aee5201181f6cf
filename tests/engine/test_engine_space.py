from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from kloros_orchestrator.engine import (
    BoolParam,
    ChoiceParam,
    FloatParam,
    IntParam,
    SearchSpace,
    genome_key,
    parse_param,
)

DECL: dict[str, dict[str, Any]] = {
    "swappiness": {"type": "int", "low": 0, "high": 100},
    "readahead_kb": {"type": "int", "low": 4, "high": 4096, "log": True},
    "ratio": {"type": "float", "low": 0.0, "high": 1.0},
    "latency_ns": {"type": "float", "low": 1e3, "high": 1e7, "log": True},
    "scheduler": {"type": "choice", "choices": ["none", "mq-deadline", "bfq", "kyber"]},
    "thp": {"type": "bool"},
}


def space() -> SearchSpace:
    return SearchSpace.from_dict(DECL)


def test_parse_builds_typed_frozen_params_in_declared_order() -> None:
    s = space()
    assert s.names == tuple(DECL)
    assert s.param("swappiness") == IntParam("swappiness", 0, 100)
    assert s.param("readahead_kb") == IntParam("readahead_kb", 4, 4096, log=True)
    assert s.param("latency_ns") == FloatParam("latency_ns", 1e3, 1e7, log=True)
    assert s.param("scheduler") == ChoiceParam("scheduler", ("none", "mq-deadline", "bfq", "kyber"))
    assert s.param("thp") == BoolParam("thp")
    with pytest.raises(AttributeError):
        s.param("swappiness").low = 3  # type: ignore[misc, union-attr]
    assert s.to_dict() == {
        **DECL,
        "readahead_kb": {"type": "int", "low": 4, "high": 4096, "log": True},
        "ratio": {"type": "float", "low": 0.0, "high": 1.0},
    }


@pytest.mark.parametrize(
    ("decl", "key"),
    [
        ({"type": "int", "low": 10, "high": 1}, "low"),
        ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, "log"),
        ({"type": "int", "low": -1, "high": 8, "log": True}, "log"),
        ({"type": "choice", "choices": []}, "choices"),
        ({"type": "choice", "choices": ["a", "a"]}, "choices"),
        ({"type": "enum", "choices": ["a"]}, "type"),
        ({"type": "int", "low": 0, "high": 3, "step": 1}, "step"),
        ({"type": "bool", "low": 0}, "low"),
        ({"type": "int", "low": 0.5, "high": 3}, "low"),
        ({"type": "float", "low": 0.0}, "high"),
        ({"type": "float", "low": 0.0, "high": math.inf}, "high"),
        ({"type": "int", "low": 0, "high": 3, "fixed": 9}, "fixed"),
    ],
)
def test_invalid_declarations_name_the_knob_and_the_key(decl: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=rf"knob 'k': {key}:"):
        parse_param("k", decl)


def test_none_valued_keys_count_as_absent_and_empty_space_is_rejected() -> None:
    p, fixed = parse_param("k", {"type": "int", "low": 1, "high": 3, "log": None, "choices": None})
    assert p == IntParam("k", 1, 3) and fixed is None
    with pytest.raises(ValueError, match="no knobs"):
        SearchSpace.from_dict({})


def test_sample_is_within_bounds_typed_and_json_able() -> None:
    s = space()
    rng = np.random.default_rng(1)
    for _ in range(300):
        g = s.sample(rng)
        assert s.contains(g)
        assert type(g["swappiness"]) is int and type(g["readahead_kb"]) is int
        assert type(g["ratio"]) is float and type(g["thp"]) is bool
    json.dumps(g)


def test_log_int_sampling_covers_the_decades_evenly() -> None:
    p = IntParam("k", 1, 10_000, log=True)
    rng = np.random.default_rng(2)
    draws = np.array([p.sample(rng) for _ in range(4000)])
    decades = np.histogram(np.log10(draws), bins=[0, 1, 2, 3, 4.01])[0] / len(draws)
    assert np.all(np.abs(decades - 0.25) < 0.04), decades


def test_clip_contains_and_missing_knobs() -> None:
    s = space()
    g = {"swappiness": 140.6, "readahead_kb": 2, "ratio": -3.0, "latency_ns": 5e7}
    g |= {"scheduler": "cfq", "thp": 1}
    clipped = s.clip(g)  # type: ignore[arg-type]
    assert clipped == {
        "swappiness": 100,
        "readahead_kb": 4,
        "ratio": 0.0,
        "latency_ns": 1e7,
        "scheduler": "none",
        "thp": True,
    }
    assert s.contains(clipped) and not s.contains(g)  # type: ignore[arg-type]
    assert not s.contains({**clipped, "extra": 1})
    del clipped["ratio"]
    with pytest.raises(ValueError, match="'ratio'"):
        s.clip(clipped)


def test_narrow_stays_inside_current_bounds_and_widen_never_passes_the_declared_ones() -> None:
    s = space()
    assert "-> [40, 60]" in s.narrow("swappiness", 50, 0.2)
    assert s.param("swappiness") == IntParam("swappiness", 40, 60)
    s.narrow("swappiness", 59, 0.5)  # centre near the edge: shifted inside the current range
    assert s.param("swappiness") == IntParam("swappiness", 50, 60)
    for _ in range(10):
        s.widen("swappiness", 3.0)
    assert s.param("swappiness") == IntParam("swappiness", 0, 100)
    s.narrow("latency_ns", 1e5, 0.5)  # log knob: half the decades, centred on 1e5
    p = s.param("latency_ns")
    assert isinstance(p, FloatParam)
    assert p.low == pytest.approx(1e4) and p.high == pytest.approx(1e6)
    with pytest.raises(ValueError, match="'scheduler'"):
        s.narrow("scheduler", 1, 0.5)
    with pytest.raises(ValueError, match="unknown knob"):
        s.widen("nope")


def test_drop_freezes_a_knob_that_stays_in_every_genome() -> None:
    s = space()
    s.narrow("swappiness", 50, 0.2)
    s.drop("swappiness", 60)
    assert s.free_names == tuple(n for n in DECL if n != "swappiness")
    rng = np.random.default_rng(3)
    assert all(s.sample(rng)["swappiness"] == 60 for _ in range(50))
    assert s.clip({**s.sample(rng), "swappiness": 3})["swappiness"] == 60
    assert s.to_dict()["swappiness"]["fixed"] == 60
    again = SearchSpace.from_dict(s.to_dict())
    assert again.fixed == {"swappiness": 60}
    with pytest.raises(ValueError, match="'swappiness': fixed"):
        s.drop("swappiness", 101)
    with pytest.raises(ValueError, match="'thp': fixed"):
        s.drop("thp", 1)
    s.release("swappiness")
    assert "swappiness" in s.free_names


def test_restrict_choices_and_widen_gives_them_back() -> None:
    s = space()
    s.restrict_choices("scheduler", ["kyber", "none"])
    assert s.param("scheduler") == ChoiceParam("scheduler", ("none", "kyber"))  # declared order
    with pytest.raises(ValueError, match="'scheduler': choices"):
        s.restrict_choices("scheduler", ["cfq"])
    with pytest.raises(ValueError, match="'scheduler': choices"):
        s.restrict_choices("scheduler", [])
    with pytest.raises(ValueError, match="'thp': choices"):
        s.restrict_choices("thp", [True])
    s.widen("scheduler")
    assert s.param("scheduler") == s.original("scheduler")


def test_apply_recommendation_every_action() -> None:
    s = space()
    msg = s.apply_recommendation(
        "swappiness", {"action": "narrow", "low": -50, "high": 30, "reason": "PHASE: best 10"}
    )
    assert s.param("swappiness") == IntParam("swappiness", 0, 30)  # clipped to the declared bounds
    assert "PHASE: best 10" in msg
    s.apply_recommendation("swappiness", {"action": "widen", "high": 70})
    assert s.param("swappiness") == IntParam("swappiness", 0, 70)
    s.apply_recommendation("swappiness", {"action": "widen"})
    assert s.param("swappiness") == IntParam("swappiness", 0, 100)
    s.apply_recommendation("ratio", {"action": "narrow", "value": 0.9})
    ratio = s.param("ratio")
    assert isinstance(ratio, FloatParam)
    assert (ratio.low, ratio.high) == (pytest.approx(0.5), 1.0)
    s.apply_recommendation("scheduler", {"action": "narrow", "choices": ["bfq"]})
    assert s.param("scheduler") == ChoiceParam("scheduler", ("bfq",))
    s.apply_recommendation("thp", {"action": "drop", "value": False})
    assert s.fixed == {"thp": False}
    before = s.state()
    s.apply_recommendation("thp", {"action": "keep", "reason": "no evidence"})
    assert s.state() == before
    s.apply_recommendation("thp", {"action": "widen"})
    assert s.fixed == {}


@pytest.mark.parametrize(
    ("name", "rec", "match"),
    [
        ("nope", {"action": "keep"}, "unknown knob"),
        ("swappiness", {"action": "explode"}, "action"),
        ("swappiness", {"action": "narrow"}, "low/high or value"),
        ("swappiness", {"action": "narrow", "low": 200, "high": 300}, "does not overlap"),
        ("swappiness", {"action": "narrow", "low": 50, "high": 10}, "greater than high"),
        ("swappiness", {"action": "drop"}, "value"),
        ("swappiness", {"action": "drop", "value": "high"}, "integer"),
        ("scheduler", {"action": "narrow", "choices": ["cfq"]}, "not one of"),
        ("thp", {"action": "narrow", "value": True}, "cannot be narrowed"),
        ("ratio", {"action": "narrow", "low": "x"}, "finite number"),
    ],
)
def test_invalid_recommendations_raise_and_change_nothing(name: str, rec: dict[str, Any], match: str) -> None:
    s = space()
    s.drop("ratio", 0.25)
    before = s.state()
    with pytest.raises(ValueError, match=match):
        s.apply_recommendation(name, rec)
    assert s.state() == before


def test_state_round_trip_keeps_the_declared_bounds() -> None:
    s = space()
    s.narrow("readahead_kb", 64, 0.3)
    s.drop("thp", True)
    s.restrict_choices("scheduler", ["bfq", "kyber"])
    restored = SearchSpace.from_state(json.loads(json.dumps(s.state())))
    assert restored == s
    restored.widen("readahead_kb", 100.0)
    assert restored.param("readahead_kb") == IntParam("readahead_kb", 4, 4096, log=True)
    bad = s.state()
    bad["current"]["swappiness"]["high"] = 500
    with pytest.raises(ValueError, match="exceeds declared bounds"):
        SearchSpace.from_state(bad)


def test_genome_key_is_order_independent_and_keeps_true_apart_from_1() -> None:
    assert genome_key({"a": 1, "b": "x"}) == genome_key({"b": "x", "a": 1})
    assert genome_key({"a": True}) != genome_key({"a": 1})


@pytest.mark.parametrize(
    "param",
    [
        IntParam("i", 0, 100),
        IntParam("li", 1, 1 << 20, log=True),
        IntParam("tiny", 3, 4),
        FloatParam("f", -2.0, 2.0),
        FloatParam("lf", 1e-4, 10.0, log=True),
    ],
)
def test_numeric_mutation_reaches_both_bounds_and_always_moves(param: IntParam | FloatParam) -> None:
    rng = np.random.default_rng(4)
    start = param.from_unit(0.5)
    values = [param.mutate(start, rng, 0.12) for _ in range(3000)]
    assert min(values) == param.low and max(values) == param.high
    assert all(param.contains(v) for v in values)
    if isinstance(param, IntParam):
        assert all(type(v) is int for v in values)
        assert sum(v == start for v in values) <= 0.1 * len(values)  # only a snap can land on start


def test_choice_and_bool_mutation_reach_every_other_value() -> None:
    rng = np.random.default_rng(5)
    choice = ChoiceParam("c", ("a", "b", "c", "d", "e"))
    seen = {choice.mutate("c", rng, 0.1) for _ in range(500)}
    assert seen == {"a", "b", "d", "e"}  # uniform over the *other* categories
    assert BoolParam("b").mutate(True, rng, 0.1) is False
    assert BoolParam("b").mutate(False, rng, 0.1) is True
