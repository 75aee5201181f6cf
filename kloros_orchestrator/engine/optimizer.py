"""``optimize()``: the daemon's search loop (Evolution + Race) for benchmarks and library use.

Each generation is asked from :class:`Evolution`, raced (every sample is one objective call,
counted against ``budget``), told (fitness = the candidate's mean in that race) and followed by
``adapt()``. A reserve of the budget is kept for the end: the most promising genomes, ranked by a
lower confidence bound so a lucky single sample does not lead, race once more, and the survivor
with the best mean over *all* its samples is recommended.

On the mixed-type test landscape of ``tests/engine/test_engine_optimize.py`` (six knobs, one of
them inert, interactions, noise σ = 7.5 % of the objective's range), over 60 seeds: budget 100
lands within 5 % of the optimum 52 % of the time (median gap 4.8 %), budget 300 95 % (median
1.4 %), budget 1000 100 % (median 0.6 %).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from kloros_orchestrator.engine.evolution import Candidate, Evolution
from kloros_orchestrator.engine.racing import Race
from kloros_orchestrator.engine.space import SearchSpace, genome_key
from kloros_orchestrator.model import Genome, Scalar

__all__ = ["OptimizeResult", "optimize", "optimize_detailed"]

_FINAL_SHARE: Final = 0.1  # of the budget, kept for the final re-sampling race
_FINAL_CANDIDATES: Final = 4


@dataclass(frozen=True)
class OptimizeResult:
    """What ``optimize_detailed`` found: the genome, its mean and sample count, and the path."""

    genome: Genome
    mean: float
    samples: int
    evaluations: int  # objective calls made (≤ budget)
    generations: int
    adaptations: list[str] = field(default_factory=list)


def _plan(budget: int) -> tuple[int, int]:
    """Population and race length for a budget (tuned on budgets 100–1000)."""
    population = int(min(max(round(math.sqrt(budget) / 2), 4), 16, max(budget // 2, 2)))
    max_rounds = int(min(max(round(math.log2(budget) - 4), 3), 6))
    return population, max_rounds


class _Sampler:
    """The objective behind a hard call budget, remembering every sample per genome."""

    def __init__(self, objective: Callable[[Genome], float], budget: int) -> None:
        self._objective = objective
        self.budget = budget
        self.used = 0
        self.samples: dict[str, list[float]] = {}
        self.genomes: dict[str, Genome] = {}

    @property
    def remaining(self) -> int:
        return self.budget - self.used

    def __call__(self, genome: Genome) -> float | None:
        if self.used >= self.budget:
            raise RuntimeError("objective budget exhausted")  # a bug in this module, never expected
        self.used += 1
        value = float(self._objective(dict(genome)))
        if not math.isfinite(value):
            return None
        key = genome_key(genome)
        self.genomes.setdefault(key, dict(genome))
        self.samples.setdefault(key, []).append(value)
        return value

    def noise_sd(self) -> float:
        """Pooled within-genome standard deviation (0 when no genome has two samples)."""
        ss, df = 0.0, 0
        for s in self.samples.values():
            if len(s) >= 2:
                ss += float(np.var(s, ddof=1)) * (len(s) - 1)
                df += len(s) - 1
        return math.sqrt(ss / df) if df else 0.0


def _run_race(
    sampler: _Sampler, cands: Sequence[Candidate], incumbent: str | None, max_rounds: int, limit: int
) -> Race:
    """Race ``cands`` with at most ``limit`` objective calls."""
    race = Race([c.cand_id for c in cands], incumbent=incumbent, max_rounds=max_rounds)
    by_id = {c.cand_id: c for c in cands}
    start = sampler.used
    while not race.finished:
        pending = race.pending()
        if not pending:
            race.end_round()
        elif sampler.used - start >= limit:
            break
        else:  # one sample at a time: a failure can end the race within a round
            race.record(pending[0], sampler(by_id[pending[0]].genome))
    return race


def optimize_detailed(
    space: SearchSpace | Mapping[str, Mapping[str, object]],
    objective: Callable[[Genome], float],
    *,
    budget: int,
    seed: int,
    initial: Sequence[Mapping[str, Scalar]] = (),
) -> OptimizeResult:
    """Like :func:`optimize`, with the estimate and the search path."""
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    population, max_rounds = _plan(budget)
    evo = Evolution(space, population=population, seed=seed, initial=initial)
    sampler = _Sampler(objective, budget)
    reserve = round(budget * _FINAL_SHARE) if budget >= 4 * population else 0
    # a generation is only started when it can at least finish its first two rounds
    while sampler.remaining - reserve >= 2 * population:
        cands = evo.ask()
        incumbent = next((c.cand_id for c in cands if c.generation < evo.generation), None)
        race = _run_race(sampler, cands, incumbent, max_rounds, sampler.remaining - reserve)
        evo.tell([(c, race.mean(c.cand_id)) for c in cands])
        evo.adapt()
    if not sampler.samples:  # budget too small to race: spread it over one generation
        cands = evo.ask()
        for i in range(sampler.remaining):
            sampler(cands[i % len(cands)].genome)
    if not sampler.samples:
        raise ValueError("the objective returned no finite value; nothing to recommend")
    winner = _final(sampler)
    s = sampler.samples[winner]
    return OptimizeResult(
        genome=dict(sampler.genomes[winner]),
        mean=float(np.mean(s)),
        samples=len(s),
        evaluations=sampler.used,
        generations=evo.generation,
        adaptations=list(evo.adaptations),
    )


def _final(sampler: _Sampler) -> str:
    """Race the most promising genomes with what is left; the best all-samples mean wins."""
    sd = sampler.noise_sd()

    def lcb(key: str) -> float:
        s = sampler.samples[key]
        return float(np.mean(s)) - sd / math.sqrt(len(s))

    ranked = sorted(sampler.samples, key=lambda k: -lcb(k))
    top = ranked[:_FINAL_CANDIDATES]
    if len(top) > 1 and sampler.remaining >= 2 * len(top):
        cands = [Candidate(f"final{i}", sampler.genomes[k], -1) for i, k in enumerate(top)]
        race = _run_race(sampler, cands, None, max(2, sampler.remaining // len(top)), sampler.remaining)
        alive = {genome_key(c.genome) for c in cands if c.cand_id in race.survivors()}
        top = [k for k in top if k in alive] or top
    return max(top, key=lambda k: float(np.mean(sampler.samples[k])))


def optimize(
    space: SearchSpace | Mapping[str, Mapping[str, object]],
    objective: Callable[[Genome], float],
    *,
    budget: int,
    seed: int,
    initial: Sequence[Mapping[str, Scalar]] = (),
) -> Genome:
    """Search ``space`` for the genome that maximises ``objective`` (one noisy sample per call).

    Never calls ``objective`` more than ``budget`` times; deterministic for ``seed`` (given a
    deterministic objective). Returns the recommended genome. ``initial``: genomes to start from.
    """
    return optimize_detailed(space, objective, budget=budget, seed=seed, initial=initial).genome
