"""Seeds injected when PHASE results are collapsed join the next bred generation."""

from __future__ import annotations

from kloros_orchestrator.engine import Evolution

SPACE = {
    "x": {"type": "int", "low": 0, "high": 100},
    "mode": {"type": "choice", "choices": ["a", "b", "c"]},
}


def test_injected_genome_is_in_the_next_generation_once_and_survives_a_state_round_trip() -> None:
    evo = Evolution(SPACE, population=4, seed=1)
    first = evo.ask()
    evo.tell([(c, float(c.genome["x"])) for c in first])
    seed = {"x": 37, "mode": "c"}
    evo.inject([seed])
    restored = Evolution.from_state(evo.state())  # a restart between collapse and the next ask
    for engine in (evo, restored):
        nxt = engine.ask()
        genomes = [c.genome for c in nxt]
        assert genomes.count(seed) == 1
        assert next(c for c in nxt if c.genome == seed).mutations == ("seed",)
    evo.tell([(c, 1.0) for c in evo.ask()])
    assert seed not in [c.genome for c in evo.ask()] or evo.fitness(seed)  # consumed, not re-injected


def test_injected_genome_is_clipped_into_the_space() -> None:
    evo = Evolution(SPACE, population=4, seed=2)
    evo.tell([(c, 0.0) for c in evo.ask()])
    evo.inject([{"x": 1000, "mode": "a"}])
    assert {"x": 100, "mode": "a"} in [c.genome for c in evo.ask()]
