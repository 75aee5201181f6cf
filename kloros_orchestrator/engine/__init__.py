"""Pure ask/tell search engine: typed search spaces, evolution, racing, and ``optimize()``.

No I/O, no anyio, no logging; every random draw comes from a local, seeded numpy Generator.
"""

from __future__ import annotations

from kloros_orchestrator.engine.evolution import Candidate, Evolution
from kloros_orchestrator.engine.optimizer import OptimizeResult, optimize, optimize_detailed
from kloros_orchestrator.engine.racing import Race
from kloros_orchestrator.engine.space import (
    BoolParam,
    ChoiceParam,
    FloatParam,
    IntParam,
    Param,
    SearchSpace,
    genome_key,
    parse_param,
)

__all__ = [
    "BoolParam",
    "Candidate",
    "ChoiceParam",
    "Evolution",
    "FloatParam",
    "IntParam",
    "OptimizeResult",
    "Param",
    "Race",
    "SearchSpace",
    "genome_key",
    "optimize",
    "optimize_detailed",
    "parse_param",
]
