from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from kloros_orchestrator.engine import Candidate, Evolution, SearchSpace, genome_key
from kloros_orchestrator.model import Genome

DECL: dict[str, dict[str, Any]] = {
    "x": {"type": "float", "low": 0.0, "high": 1.0},
    "n": {"type": "int", "low": 1, "high": 1024, "log": True},
    "mode": {"type": "choice", "choices": ["a", "b", "c"]},
    "on": {"type": "bool"},
}
STOCK: Genome = {"x": 0.5, "n": 64, "mode": "a", "on": False}


def objective(g: Genome) -> float:
    return -((float(g["x"]) - 0.3) ** 2) - 0.01 * abs(np.log2(float(g["n"])) - 5) + (g["mode"] == "b") * 0.2


def step(evo: Evolution, f: Callable[[Genome], float | None] = objective) -> list[Candidate]:
    cands = evo.ask()
    evo.tell([(c, f(c.genome)) for c in cands])
    evo.adapt()
    return cands


def test_generation_zero_is_initial_genomes_then_random_samples() -> None:
    evo = Evolution(DECL, population=6, seed=1, initial=[STOCK, {**STOCK, "x": 7.0}, STOCK])
    cands = evo.ask()
    assert [c.cand_id for c in cands] == [f"g0c{i}" for i in range(6)]
    assert cands[0].genome == STOCK
    assert cands[1].genome == {**STOCK, "x": 1.0}  # clipped into the space
    assert len({genome_key(c.genome) for c in cands}) == 6  # the duplicate seed is asked once
    assert all(c.generation == 0 and c.parents == () and c.mutations == () for c in cands)
    assert evo.ask() == cands  # asking again before tell: the same generation


def test_tell_validates_and_failures_are_never_selected() -> None:
    evo = Evolution(DECL, population=5, seed=2)
    cands = evo.ask()
    with pytest.raises(ValueError, match="not in generation 0"):
        evo.tell([(Candidate("g9c9", STOCK, 9), 1.0)])
    with pytest.raises(ValueError, match="genome differs"):
        evo.tell([(Candidate(cands[0].cand_id, STOCK, 0), 1.0)])
    with pytest.raises(ValueError, match="more than one result"):
        evo.tell([(cands[0], 1.0), (cands[0], 2.0)])
    # only c3 is scored; c0 failed, c1 is NaN, the rest have no result at all
    evo.tell([(cands[0], None), (cands[1], float("nan")), (cands[3], -5.0)])
    assert evo.best() == (cands[3].genome, -5.0)
    assert [c.cand_id for c, _ in evo.hall_of_fame(5)] == ["g0c3"]
    with pytest.raises(ValueError, match="without a pending"):
        evo.tell([])
    nxt = evo.ask()
    assert nxt[0] == cands[3]  # the only scored genome is the incumbent, under its old id
    assert all(set(c.parents) <= {"g0c3"} for c in nxt)  # failures never became parents


def test_breeding_elitism_lineage_and_no_duplicates() -> None:
    evo = Evolution(DECL, population=8, seed=3, elite=2, initial=[STOCK])
    previous = step(evo)
    for gen in range(1, 8):
        hof = [c.cand_id for c, _ in evo.hall_of_fame(2)]
        cands = evo.ask()
        ids = [c.cand_id for c in cands]
        assert ids[:2] == hof  # the two best so far are asked again, unchanged
        assert len({genome_key(c.genome) for c in cands}) == len(cands)
        assert len(set(ids)) == len(ids)
        new = [c for c in cands if c.generation == gen]
        assert [c.cand_id for c in new] == [f"g{gen}c{i}" for i in range(2, 8)]
        earlier = {c.cand_id for c in previous} | set(hof)
        for c in new:
            assert evo.space.contains(c.genome)  # inside the (possibly adapted) space
            assert set(c.parents) <= earlier
            if c.parents:
                first = next(p for p in previous + cands if p.cand_id == c.parents[0]).genome
                assert c.mutations == tuple(n for n in DECL if c.genome[n] != first[n])
                assert c.mutations  # a child is never a copy of its parent
        evo.tell([(c, objective(c.genome)) for c in cands])
        evo.adapt()
        previous = cands


def test_search_improves_on_a_simple_landscape() -> None:
    evo = Evolution(DECL, population=10, seed=4)
    first = None
    for _ in range(12):
        step(evo)
        first = first if first is not None else evo.best()
    best = evo.best()
    assert best is not None and first is not None
    assert best[1] > first[1]
    assert best[0]["mode"] == "b" and abs(float(best[0]["x"]) - 0.3) < 0.1


def test_determinism_and_state_round_trip() -> None:
    def run(seed: int, gens: int) -> Evolution:
        evo = Evolution(DECL, population=6, seed=seed, initial=[STOCK])
        for _ in range(gens):
            step(evo)
        return evo

    a, b, c = run(5, 6), run(5, 6), run(6, 6)
    assert [x.to_dict() for x in a.ask()] == [x.to_dict() for x in b.ask()]
    assert [x.genome for x in a.ask()] != [x.genome for x in c.ask()]
    # persist with a generation pending, resume, and carry on in lockstep with the original
    restored = Evolution.from_state(json.loads(json.dumps(a.state())))
    assert restored.ask() == a.ask()
    for _ in range(4):
        assert [x.to_dict() for x in step(restored)] == [x.to_dict() for x in step(a)]
    assert restored.state() == a.state()
    with pytest.raises(ValueError, match="schema"):
        Evolution.from_state({"schema": "nope"})


def test_adapt_narrows_while_improving_and_widens_on_stagnation() -> None:
    evo = Evolution(DECL, population=8, seed=7, drop_min_samples=1000)
    for offset in range(3):  # every generation's best beats the last one
        step(evo, lambda g, offset=offset: objective(g) + offset)
    narrowed = [a for a in evo.adaptations if "narrow x" in a]
    assert narrowed and "best improved 3 generations running" in narrowed[0]
    x = evo.space.param("x")
    orig = evo.space.original("x")
    assert isinstance(x, type(orig)) and x != orig
    for cand in evo.ask():
        assert evo.space.contains(cand.genome)
    n_before = len(evo.adaptations)
    for _ in range(evo.patience):
        step(evo, lambda g: -100.0)  # nothing beats the best any more
    widened = [a for a in evo.adaptations[n_before:] if "widen x" in a]
    assert widened and f"no improvement for {evo.patience} generations" in widened[0]


def test_adapt_drops_a_knob_unrelated_to_fitness_and_keeps_the_relevant_ones() -> None:
    """``p > 0.5`` on both tests is a coin flip for an irrelevant knob at each check, so this runs
    a dozen seeded searches: about a third drop it within ten generations, and
    none ever drops a knob that matters."""
    decl = {
        "x": {"type": "float", "low": 0.0, "high": 1.0},
        "noise_knob": {"type": "int", "low": 0, "high": 100},
        "mode": {"type": "choice", "choices": ["a", "b", "c"]},
    }
    dropped_noise = 0
    for seed in range(12):
        evo = Evolution(decl, population=10, seed=seed)
        rng = np.random.default_rng(seed)
        for _ in range(10):
            cands = evo.ask()
            if "noise_knob" in evo.space.fixed:  # a dropped knob stays in genomes, at its value
                assert all(c.genome["noise_knob"] == evo.space.fixed["noise_knob"] for c in cands[1:])
            evo.tell([(c, -10 * (float(c.genome["x"]) - 0.6) ** 2 + 0.5 * (c.genome["mode"] == "b")
                       + float(rng.normal(0, 0.1))) for c in cands])
            best = evo.best()
            assert best is not None
            for line in evo.adapt():
                if "dropped" in line:
                    assert line.startswith(f"gen {evo.generation - 1}: noise_knob: dropped, fixed at ")
                    assert evo.space.fixed["noise_knob"] == best[0]["noise_knob"]
                    assert "F(" in line and "Spearman" in line and "p=" in line
        dropped_noise += any("noise_knob: dropped" in a for a in evo.adaptations)
        assert {"x", "mode"} <= set(evo.space.free_names)
    assert dropped_noise >= 3


def test_recommendations_through_the_space_shape_the_next_generation() -> None:
    evo = Evolution(DECL, population=8, seed=9)
    step(evo)
    evo.space.apply_recommendation("mode", {"action": "narrow", "choices": ["c"], "reason": "PHASE"})
    evo.space.apply_recommendation("on", {"action": "drop", "value": True})
    for c in evo.ask():
        if c.generation == evo.generation:
            assert c.genome["mode"] == "c" and c.genome["on"] is True


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"population": 1}, "population"),
        ({"elite": 8}, "elite"),
        ({"tournament_k": 0}, "tournament_k"),
        ({"mutation_rate": 0.0}, "mutation_rate"),
        ({"crossover_rate": 1.5}, "crossover_rate"),
        ({"fresh_fraction": 1.0}, "fresh_fraction"),
    ],
)
def test_invalid_settings(kwargs: dict[str, Any], match: str) -> None:
    settings: dict[str, Any] = {"population": 8, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        Evolution(SearchSpace.from_dict(DECL), **settings)


def test_evolution_works_on_a_private_copy_of_the_space() -> None:
    space = SearchSpace.from_dict(DECL)
    evo = Evolution(space, population=4, seed=0)
    evo.space.drop("on", True)
    assert space.fixed == {} and evo.space.fixed == {"on": True}
