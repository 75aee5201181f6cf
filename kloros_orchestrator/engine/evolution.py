"""Ask/tell evolutionary search over a :class:`SearchSpace`, with search-space adaptation.

Theory of operation. ``ask()`` returns one generation of candidates; the caller measures them
(the daemon races them) and hands the fitness back with ``tell()`` (higher is better; None =
failed, never selected). Generation 0 is the ``initial`` genomes (stock config, PHASE seeds) plus
random samples. Every later generation is bred from the one before:

* elitism — the best ``elite`` genomes of the whole archive are asked again under their old ids:
  they are the incumbents, and re-measuring them keeps a lucky first estimate from ruling;
* genomes handed in with ``inject()`` (PHASE-promoted variants), once each;
* one *probe*: the best genome with one choice/bool knob changed (categories interact, and a
  population otherwise settles on one category before the others were tried with good numbers);
* tournament selection (``tournament_k``) on the archive mean fitness of each genome;
* uniform crossover with probability ``crossover_rate``, then type-respecting mutation of each
  free knob with probability ``mutation_rate`` (default 1/number of free knobs, and at least one
  knob always changes);
* ``fresh_fraction`` random immigrants; no duplicate genomes within a generation and no re-asking
  of archived genomes (except elites) when avoidable.

Surrogate screening: once a dozen genomes are scored, each bred slot takes the best of
``screening`` proposals as predicted by a ridge model over the whole archive (``surrogate.py``),
and each immigrant the best of ``4 × screening`` random draws. On noisy landscapes this roughly
halves the distance to the optimum for the same number of samples; ``screening=1`` turns it off.

``adapt()`` (call it after each ``tell``) narrows numeric ranges around the top genomes while the
best keeps improving (three generations running), widens them back towards the declared bounds
after ``patience`` generations without improvement, and drops (freezes at the best genome's
value) a knob whose values show no relationship with fitness. Every change is appended to
``adaptations`` as a readable line. The moves themselves are in ``adaptation.py``; this class
decides when they apply.

Pure and deterministic for a seed: no I/O, randomness only from the instance's own Generator,
whose state travels with ``state()``/``from_state()``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from kloros_orchestrator.engine.adaptation import irrelevance_tests, narrow_bounds, widen_bounds
from kloros_orchestrator.engine.space import BoolParam, ChoiceParam, SearchSpace, genome_key
from kloros_orchestrator.engine.surrogate import Surrogate
from kloros_orchestrator.model import Genome, Scalar

__all__ = ["Candidate", "Evolution"]

_STATE_SCHEMA: Final = "evolution.v1"
# Mutation step, as a fraction of the knob's current (log-)range: mostly local steps, sometimes
# a long jump so a narrowed population can still escape.
_STEP: Final = 0.12
_LONG_STEP: Final = 0.4
_LONG_STEP_P: Final = 0.2
_RETRIES: Final = 24  # attempts to breed a genome not yet seen before accepting a duplicate
_NARROW_STREAK: Final = 3  # generations of improvement in a row before a narrowing
_NARROW_TOP: Final = 0.25  # narrow around this share of the population's size of top genomes
_DROP_STREAK: Final = 2  # consecutive adapt() calls that must agree before a drop
_SCREEN_MIN_SAMPLES: Final = 12  # scored genomes before offspring are screened by the surrogate


@dataclass(frozen=True)
class Candidate:
    """One genome to evaluate, with its lineage (for SPICA identity and manifests).

    ``generation`` is the generation the genome was born in (an elite asked again keeps its id and
    birth generation); ``mutations`` names the knobs whose value differs from the first parent.
    """

    cand_id: str
    genome: Genome
    generation: int
    parents: tuple[str, ...] = ()
    mutations: tuple[str, ...] = ()

    def __hash__(self) -> int:  # the genome is a dict; the id identifies the candidate
        return hash((self.cand_id, self.generation))

    def to_dict(self) -> dict[str, Any]:
        return {
            "cand_id": self.cand_id,
            "genome": dict(self.genome),
            "generation": self.generation,
            "parents": list(self.parents),
            "mutations": list(self.mutations),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Candidate:
        return cls(
            cand_id=str(d["cand_id"]),
            genome=dict(d["genome"]),
            generation=int(d["generation"]),
            parents=tuple(str(p) for p in d.get("parents", ())),
            mutations=tuple(str(m) for m in d.get("mutations", ())),
        )


@dataclass
class _Entry:
    """Everything told about one distinct genome."""

    candidate: Candidate
    values: list[float] = field(default_factory=list)
    failures: int = 0

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None


class Evolution:
    """Ask/tell evolutionary search (see the module docstring)."""

    def __init__(
        self,
        space: SearchSpace | Mapping[str, Mapping[str, object]],
        *,
        population: int,
        seed: int,
        elite: int = 1,
        tournament_k: int = 3,
        mutation_rate: float | None = None,
        crossover_rate: float = 0.5,
        fresh_fraction: float = 0.15,
        initial: Sequence[Mapping[str, Scalar]] = (),
        patience: int = 3,
        drop_min_samples: int = 20,
        screening: int = 8,
    ) -> None:
        if population < 2:
            raise ValueError(f"population must be >= 2, got {population}")
        if not 0 <= elite < population:
            raise ValueError(f"elite must be in [0, population), got {elite}")
        if tournament_k < 1:
            raise ValueError(f"tournament_k must be >= 1, got {tournament_k}")
        if mutation_rate is not None and not 0 < mutation_rate <= 1:
            raise ValueError(f"mutation_rate must be in (0, 1], got {mutation_rate}")
        if not 0 <= crossover_rate <= 1:
            raise ValueError(f"crossover_rate must be in [0, 1], got {crossover_rate}")
        if not 0 <= fresh_fraction < 1:
            raise ValueError(f"fresh_fraction must be in [0, 1), got {fresh_fraction}")
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        if screening < 1:
            raise ValueError(f"screening must be >= 1, got {screening}")
        if drop_min_samples < 3:
            raise ValueError(f"drop_min_samples must be >= 3, got {drop_min_samples}")
        self.space = SearchSpace.coerce(space)
        self.population = population
        self.seed = seed
        self.elite = elite
        self.tournament_k = tournament_k
        self.mutation_rate = mutation_rate
        self.crossover_rate = crossover_rate
        self.fresh_fraction = fresh_fraction
        self.patience = patience
        self.drop_min_samples = drop_min_samples
        self.screening = screening
        self._initial = [self.space.clip(g) for g in initial]
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._archive: dict[str, _Entry] = {}  # genome key → entry, in order of first evaluation
        self._last: list[Candidate] = []  # the last told generation
        self._pending: list[Candidate] | None = None
        self._generation = 0  # number of the generation asked next (or pending)
        self._best_mark: float | None = None  # high-water mark of the best archive mean
        self._improve_streak = 0
        self._stagnant = 0
        self._drop_order: list[str] = []  # dropped by adapt(), oldest first
        self._released_at: dict[str, int] = {}
        self._irrelevant_streak: dict[str, int] = {}
        self.adaptations: list[str] = []
        self._seeds: list[Genome] = []  # injected genomes for the next bred generation

    # --- ask / tell ---------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """The generation the next (or pending) ``ask()`` belongs to."""
        return self._generation

    def ask(self) -> list[Candidate]:
        """The current generation's candidates; asking again before ``tell`` returns the same."""
        if self._pending is None:
            genomes = self._first_generation() if self._generation == 0 else self._breed()
            self._pending = genomes
        return list(self._pending)

    def tell(self, results: Sequence[tuple[Candidate, float | None]]) -> None:
        """Fitness for the pending generation (higher is better; None = failed).

        Candidates without a result count as failed. Unknown ids, changed genomes or two results
        for one candidate are ValueErrors, and nothing is recorded.
        """
        if self._pending is None:
            raise ValueError("tell() without a pending ask()")
        by_id = {c.cand_id: c for c in self._pending}
        told: dict[str, float | None] = {}
        for cand, fitness in results:
            known = by_id.get(cand.cand_id)
            if known is None:
                raise ValueError(f"{cand.cand_id!r} is not in generation {self._generation}")
            if genome_key(known.genome) != genome_key(cand.genome):
                raise ValueError(f"{cand.cand_id!r}: genome differs from the one asked")
            if cand.cand_id in told:
                raise ValueError(f"{cand.cand_id!r}: more than one result")
            ok = fitness is not None and math.isfinite(fitness)
            told[cand.cand_id] = float(fitness) if ok and fitness is not None else None
        for cand in self._pending:
            key = genome_key(cand.genome)
            entry = self._archive.setdefault(key, _Entry(cand))
            value = told.get(cand.cand_id)
            if value is None:
                entry.failures += 1
            else:
                entry.values.append(value)
        self._last = self._pending
        self._pending = None
        self._generation += 1
        self._track_progress()

    def _track_progress(self) -> None:
        best = self.best()
        improved = best is not None and (self._best_mark is None or best[1] > self._best_mark)
        if improved and best is not None:
            self._best_mark = best[1]
            self._improve_streak += 1
            self._stagnant = 0
        else:
            self._improve_streak = 0
            self._stagnant += 1

    # --- results ------------------------------------------------------------------------------

    def best(self) -> tuple[Genome, float] | None:
        """The genome with the best mean fitness so far, and that mean (None before any score)."""
        hof = self.hall_of_fame(1)
        return (dict(hof[0][0].genome), hof[0][1]) if hof else None

    def hall_of_fame(self, k: int) -> list[tuple[Candidate, float]]:
        """The ``k`` distinct genomes with the best mean fitness, best first."""
        scored = [(e.candidate, m) for e in self._archive.values() if (m := e.mean) is not None]
        scored.sort(key=lambda cm: -cm[1])  # stable: ties keep the order of first evaluation
        return scored[: max(k, 0)]

    def fitness(self, genome: Mapping[str, Scalar]) -> list[float]:
        """Every fitness told for ``genome`` (empty when never scored)."""
        entry = self._archive.get(genome_key(genome))
        return list(entry.values) if entry else []

    @property
    def evaluated(self) -> int:
        """Number of distinct genomes told so far."""
        return len(self._archive)

    def inject(self, genomes: Sequence[Mapping[str, Scalar]]) -> None:
        """Seed the next bred generation with ``genomes`` (e.g. variants PHASE promoted).

        They are clipped to the current space and take the places right after the elites; a seed
        already in the generation is not repeated. Used when PHASE results are collapsed back.
        """
        self._seeds.extend(self.space.clip(g) for g in genomes)

    # --- breeding -----------------------------------------------------------------------------

    def _first_generation(self) -> list[Candidate]:
        genomes: list[Genome] = []
        seen: set[str] = set()
        for g in self._initial:
            if genome_key(g) not in seen and len(genomes) < self.population:
                genomes.append(g)
                seen.add(genome_key(g))
        while len(genomes) < self.population:
            g = self._fresh(seen)
            genomes.append(g)
            seen.add(genome_key(g))
        return [Candidate(f"g0c{i}", g, 0) for i, g in enumerate(genomes)]

    def _breed(self) -> list[Candidate]:
        gen = self._generation
        out: list[Candidate] = []
        seen: set[str] = set()
        for cand, _ in self._elites():
            out.append(cand)
            seen.add(genome_key(cand.genome))
        seeds, self._seeds = self._seeds, []
        for g in seeds:
            if genome_key(g) not in seen and len(out) < self.population - 1:
                out.append(Candidate(f"g{gen}c{len(out)}", g, gen, mutations=("seed",)))
                seen.add(genome_key(g))
        pool = [c for c in self._last if self._mean(c) is not None]
        model = self._surrogate()
        probe = self._probe(gen, len(out), seen) if len(out) < self.population - 1 else None
        if probe is not None:
            out.append(probe)
            seen.add(genome_key(probe.genome))
        n_fresh = round(self.fresh_fraction * self.population) if pool else self.population
        n_fresh = min(n_fresh, self.population - len(out))
        while len(out) < self.population - n_fresh:
            out.append(self._child(gen, len(out), pool, seen, model))
            seen.add(genome_key(out[-1].genome))
        while len(out) < self.population:
            g = self._immigrant(seen, model)
            out.append(Candidate(f"g{gen}c{len(out)}", g, gen))
            seen.add(genome_key(g))
        return out

    def _immigrant(self, seen: set[str], model: Surrogate | None) -> Genome:
        """A random genome; with a surrogate, the best predicted of several random ones."""
        if model is None:
            return self._fresh(seen)
        pool = [self._fresh(seen) for _ in range(4 * self.screening)]
        return pool[int(np.argmax(model.predict(pool)))]

    def _elites(self) -> list[tuple[Candidate, float]]:
        if self.elite == 0:
            return []
        hof = [(c, m) for c, m in self.hall_of_fame(len(self._archive)) if self.space.contains(c.genome)]
        return hof[: self.elite]

    def _mean(self, cand: Candidate) -> float | None:
        entry = self._archive.get(genome_key(cand.genome))
        return entry.mean if entry else None

    def _tournament(self, pool: Sequence[Candidate]) -> Candidate:
        picks = self._rng.integers(len(pool), size=self.tournament_k)
        contenders = [pool[int(i)] for i in picks]
        return max(contenders, key=lambda c: m if (m := self._mean(c)) is not None else -math.inf)

    def _probe(self, gen: int, index: int, seen: set[str]) -> Candidate | None:
        """The best genome with one choice/bool knob changed, not evaluated before.

        Interactions between categories make an evolving population converge on one category
        early; probing the incumbent's categorical neighbours keeps each category measured
        against the best numeric values found so far.
        """
        hof = [(c, m) for c, m in self.hall_of_fame(len(self._archive)) if self.space.contains(c.genome)]
        if not hof:
            return None
        best = hof[0][0]
        options: list[tuple[str, Scalar]] = []
        for name in self.space.free_names:
            p = self.space.param(name)
            if isinstance(p, ChoiceParam):
                options += [(name, c) for c in p.choices if c != best.genome[name]]
            elif isinstance(p, BoolParam):
                options.append((name, not best.genome[name]))
        fresh = []
        for name, value in options:
            g = dict(best.genome)
            g[name] = value
            key = genome_key(g)
            if key not in seen and key not in self._archive:
                fresh.append((name, g))
        if not fresh:
            return None
        name, g = fresh[int(self._rng.integers(len(fresh)))]
        return Candidate(f"g{gen}c{index}", g, gen, (best.cand_id,), (name,))

    def _surrogate(self) -> Surrogate | None:
        """A model of fitness over the archive, once there is enough data to screen with."""
        if self.screening < 2:
            return None
        scored = [(e.candidate.genome, m) for e in self._archive.values() if (m := e.mean) is not None]
        if len(scored) < _SCREEN_MIN_SAMPLES:
            return None
        return Surrogate(self.space).fit([g for g, _ in scored], [m for _, m in scored])

    def _child(
        self, gen: int, index: int, pool: Sequence[Candidate], seen: set[str], model: Surrogate | None
    ) -> Candidate:
        """One bred child; with a surrogate, the best predicted of ``screening`` proposals."""
        if model is None:
            return self._propose(gen, index, pool, seen)
        proposals: list[Candidate] = []
        for _ in range(self.screening):
            cand = self._propose(gen, index, pool, seen)
            if all(genome_key(cand.genome) != genome_key(p.genome) for p in proposals):
                proposals.append(cand)
        predicted = model.predict([p.genome for p in proposals])
        return proposals[int(np.argmax(predicted))]

    def _propose(self, gen: int, index: int, pool: Sequence[Candidate], seen: set[str]) -> Candidate:
        free = self.space.free_names
        rate = self.mutation_rate if self.mutation_rate is not None else 1.0 / max(len(free), 1)
        fallback: Candidate | None = None  # new to this generation, though evaluated before
        for _ in range(_RETRIES):
            p1 = p2 = self._tournament(pool)
            if len(pool) > 1 and self._rng.random() < self.crossover_rate:
                p2 = self._tournament(pool)
                if p2.cand_id == p1.cand_id:
                    p2 = self._tournament(pool)
            child = dict(p1.genome)
            if p2.cand_id != p1.cand_id:
                for name in free:
                    if self._rng.random() < 0.5:
                        child[name] = p2.genome[name]
            child = self.space.clip(child)
            for name in free:
                if self._rng.random() < rate:
                    child[name] = self._mutate(name, child[name])
            if free and genome_key(child) in (genome_key(p1.genome), genome_key(p2.genome)):
                name = free[int(self._rng.integers(len(free)))]  # a child is never a copy
                child[name] = self._mutate(name, child[name])
            parents = (p1.cand_id,) if p2.cand_id == p1.cand_id else (p1.cand_id, p2.cand_id)
            changed = tuple(n for n in self.space.names if child[n] != p1.genome.get(n))
            cand = Candidate(f"g{gen}c{index}", child, gen, parents, changed)
            key = genome_key(child)
            if key not in seen and key not in self._archive:
                return cand
            if key not in seen and fallback is None:
                fallback = cand
        if fallback is not None:
            return fallback
        return Candidate(f"g{gen}c{index}", self._fresh(seen), gen)

    def _mutate(self, name: str, value: Scalar) -> Scalar:
        scale = _LONG_STEP if self._rng.random() < _LONG_STEP_P else _STEP
        return self.space.param(name).mutate(value, self._rng, scale)

    def _fresh(self, seen: set[str]) -> Genome:
        g = self.space.sample(self._rng)
        for _ in range(_RETRIES):
            if genome_key(g) not in seen and genome_key(g) not in self._archive:
                break
            g = self.space.sample(self._rng)
        return g

    # --- search-space adaptation --------------------------------------------------------------

    def adapt(self) -> list[str]:
        """Adapt the search space to the results so far; returns the changes (also logged in
        ``adaptations``). Call after each ``tell``; a no-op before the first."""
        if self._generation == 0 or self._pending is not None:
            return []
        changes: list[str] = []
        if self._improve_streak >= _NARROW_STREAK:
            changes += self._narrow(f"best improved {self._improve_streak} generations running")
            self._improve_streak = 0
        elif self._stagnant >= self.patience:
            changes += self._widen(f"no improvement for {self._stagnant} generations")
            self._stagnant = 0
        changes += self._drop_irrelevant()
        lines = [f"gen {self._generation - 1}: {c}" for c in changes]
        self.adaptations += lines
        return lines

    def _narrow(self, why: str) -> list[str]:
        scored = [(c, m) for c, m in self.hall_of_fame(len(self._archive)) if self.space.contains(c.genome)]
        top = scored[: max(3, int(self.population * _NARROW_TOP))]
        if len(top) < 3:
            return []
        return narrow_bounds(self.space, [c.genome for c, _ in top], why)

    def _widen(self, why: str) -> list[str]:
        out = widen_bounds(self.space, why)
        if not out and self._drop_order:  # still stuck: search the oldest dropped knob again
            name = self._drop_order.pop(0)
            if name in self.space.fixed:
                self._released_at[name] = self._generation
                out.append(f"{self.space.release(name)} ({why})")
        return out

    def _drop_irrelevant(self) -> list[str]:
        """Drop at most one knob per call: the one least related to fitness, when nothing relates.

        The evidence has to hold twice in a row (two calls, more genomes the second time) and on
        both tests: a nested-model F-test (the knob's linear + quadratic terms, or its categories,
        against a model of all the other knobs, so big effects elsewhere do not mask it) and a
        Spearman correlation with the fitness left unexplained by the other knobs.
        """
        free = self.space.free_names
        best = self.best()
        if len(free) < 2 or best is None:
            return []
        entries = [(e.candidate.genome, m) for e in self._archive.values() if (m := e.mean) is not None]
        fit = np.array([m for _, m in entries])
        names = [n for n in free if not self._recently_released(n)]
        tests = irrelevance_tests(self.space, [g for g, _ in entries], fit, names, self.drop_min_samples)
        verdicts: list[tuple[float, str, str]] = []
        for name, verdict in tests.items():
            if verdict is None:
                self._irrelevant_streak.pop(name, None)
                continue
            self._irrelevant_streak[name] = self._irrelevant_streak.get(name, 0) + 1
            if self._irrelevant_streak[name] >= _DROP_STREAK:
                verdicts.append((verdict[0], name, verdict[1]))
        if not verdicts:
            return []
        _, name, detail = max(verdicts)
        msg = self.space.drop(name, best[0][name])
        self._drop_order.append(name)
        self._irrelevant_streak.pop(name, None)
        return [f"{msg} (no relationship with fitness over {len(entries)} genomes: {detail})"]

    def _recently_released(self, name: str) -> bool:
        """Released by ``_widen`` less than two patience periods ago: not judged again yet."""
        released = self._released_at.get(name)
        return released is not None and self._generation - released < 2 * self.patience

    # --- persistence --------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """JSON-able state (space, archive, pending generation, RNG) for :meth:`from_state`."""
        return {
            "schema": _STATE_SCHEMA,
            "config": {
                "population": self.population,
                "seed": self.seed,
                "elite": self.elite,
                "tournament_k": self.tournament_k,
                "mutation_rate": self.mutation_rate,
                "crossover_rate": self.crossover_rate,
                "fresh_fraction": self.fresh_fraction,
                "patience": self.patience,
                "drop_min_samples": self.drop_min_samples,
                "screening": self.screening,
            },
            "space": self.space.state(),
            "initial": [dict(g) for g in self._initial],
            "archive": [
                {"candidate": e.candidate.to_dict(), "values": list(e.values), "failures": e.failures}
                for e in self._archive.values()
            ],
            "last": [c.to_dict() for c in self._last],
            "pending": None if self._pending is None else [c.to_dict() for c in self._pending],
            "generation": self._generation,
            "best_mark": self._best_mark,
            "improve_streak": self._improve_streak,
            "stagnant": self._stagnant,
            "drop_order": list(self._drop_order),
            "released_at": dict(self._released_at),
            "irrelevant_streak": dict(self._irrelevant_streak),
            "adaptations": list(self.adaptations),
            "seeds": [dict(g) for g in self._seeds],
            "rng": self._rng.bit_generator.state,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Evolution:
        if state.get("schema") != _STATE_SCHEMA:
            raise ValueError(f"evolution state: unsupported schema {state.get('schema')!r}")
        cfg = state["config"]
        space = SearchSpace.from_state(state["space"])
        evo = cls(space, initial=state["initial"], **cfg)
        evo.space = space
        evo._initial = [dict(g) for g in state["initial"]]
        evo._seeds = [dict(g) for g in state.get("seeds", [])]
        for rec in state["archive"]:
            cand = Candidate.from_dict(rec["candidate"])
            evo._archive[genome_key(cand.genome)] = _Entry(
                cand, [float(v) for v in rec["values"]], int(rec["failures"])
            )
        evo._last = [Candidate.from_dict(c) for c in state["last"]]
        pending = state["pending"]
        evo._pending = None if pending is None else [Candidate.from_dict(c) for c in pending]
        evo._generation = int(state["generation"])
        mark = state["best_mark"]
        evo._best_mark = None if mark is None else float(mark)
        evo._improve_streak = int(state["improve_streak"])
        evo._stagnant = int(state["stagnant"])
        evo._drop_order = [str(n) for n in state["drop_order"]]
        evo._released_at = {str(k): int(v) for k, v in state["released_at"].items()}
        evo._irrelevant_streak = {str(k): int(v) for k, v in state["irrelevant_streak"].items()}
        evo.adaptations = [str(a) for a in state["adaptations"]]
        evo._rng.bit_generator.state = state["rng"]
        return evo
