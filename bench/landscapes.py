"""Noisy mixed-type test landscapes with an exactly known optimum, for ``search_quality.py``.

A landscape is ``value(genome, regime) = discrete(genome, regime) + Σ terms``, where each term
depends on one numeric knob (or one pair of small-range integer knobs) and on the genome's
discrete knobs. That shape is what makes the optimum *exact* rather than estimated: for every
combination of the discrete knobs, each term is maximised (and minimised) on its own, over every
integer of an integer knob, or over a dense grid polished by a bounded scalar search for a float
knob (every float term is a quadratic in the knob's unit coordinate, so the polish is exact).
The true objective is the mean over the landscape's regimes; a noisy *sample* is one regime's
value (a regime drawn uniformly at random) plus the landscape's noise. Interactions come from the
discrete knobs moving a numeric knob's optimum, and from the integer pair of the memory landscape.

Noise is defined as a fraction of the landscape's exact range ``f_max − f_min``, so each
landscape is as noisy, relative to what there is to gain, as it says in its description.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from scipy import optimize as sopt

Genome = dict[str, Any]
Values = Mapping[str, np.ndarray]
TermFn = Callable[[Values, Mapping[str, Any], int], np.ndarray]
NoiseFn = Callable[[Mapping[str, Any], float, np.random.Generator], float]

_FLOAT_GRID = 4001
_MAX_INT_GRID = 2_000_000


def unit(x: np.ndarray | float, lo: float, hi: float, log: bool = False) -> np.ndarray:
    """Position of ``x`` on ``[lo, hi]`` as 0..1 (log scale when ``log``)."""
    a = np.asarray(x, dtype=float)
    if log:
        return (np.log(a) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (a - lo) / (hi - lo)


@dataclass(frozen=True)
class Term:
    knobs: tuple[str, ...]  # one numeric knob, or two integer knobs of small range
    fn: TermFn  # (values by knob, the genome's discrete knobs, regime index) -> values


@dataclass(frozen=True)
class Extremes:
    f_max: float
    f_min: float
    argmax: Genome

    @property
    def range(self) -> float:
        return self.f_max - self.f_min


@dataclass(frozen=True)
class Landscape:
    name: str
    summary: str
    noise_label: str
    space: dict[str, dict[str, Any]]
    discrete: Callable[[Mapping[str, Any], int], float]
    terms: tuple[Term, ...]
    noise: NoiseFn  # (genome, range, rng) -> one noise draw
    regimes: tuple[str, ...] = ("all",)
    weights: tuple[float, ...] = ()  # each regime's probability; empty = uniform
    _unused: dict[str, Any] = field(default_factory=dict, repr=False)

    # --- evaluation ----------------------------------------------------------------------------

    def coerce(self, genome: Mapping[str, Any]) -> Genome:
        """A tool's answer as this space's types (ints rounded, numbers clipped to their range)."""
        out: Genome = {}
        for name, decl in self.space.items():
            v = genome[name]
            t = decl["type"]
            if t == "int":
                out[name] = int(min(max(round(float(v)), decl["low"]), decl["high"]))
            elif t == "float":
                out[name] = float(min(max(float(v), decl["low"]), decl["high"]))
            elif t == "bool":
                out[name] = bool(v)
            else:
                match = [c for c in decl["choices"] if c == v and type(c) is type(v)]
                if not match:  # e.g. numpy scalars from a tool
                    match = [c for c in decl["choices"] if str(c) == str(v)]
                if not match:
                    raise ValueError(f"{self.name}: {name}: {v!r} is not a choice")
                out[name] = match[0]
        return out

    def value(self, genome: Mapping[str, Any], regime: int) -> float:
        g = self.coerce(genome)
        total = self.discrete(g, regime)
        for t in self.terms:
            total += float(t.fn({k: np.asarray([g[k]], dtype=float) for k in t.knobs}, g, regime)[0])
        return float(total)

    @cached_property
    def probabilities(self) -> np.ndarray:
        """Each regime's probability of being drawn for a sample (uniform unless ``weights``)."""
        n = len(self.regimes)
        w = np.asarray(self.weights if self.weights else [1.0] * n, dtype=float)
        if w.size != n or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"{self.name}: weights must be {n} non-negative numbers")
        return np.asarray(w / w.sum(), dtype=float)

    def _expect(self, per_regime: list[Any]) -> Any:
        """The probability-weighted mean over regimes of ``per_regime[r]`` (scalars or arrays)."""
        return sum(
            p * np.asarray(v, dtype=float) for p, v in zip(self.probabilities, per_regime, strict=True)
        )

    def true(self, genome: Mapping[str, Any]) -> float:
        """The noise-free objective: the expectation over the regimes."""
        return float(self._expect([self.value(genome, r) for r in range(len(self.regimes))]))

    def sample(self, genome: Mapping[str, Any], rng: np.random.Generator) -> float:
        """One noisy sample: one regime's value (drawn at random) plus noise."""
        n = len(self.regimes)
        if n == 1:
            r = 0
        elif self.weights:
            r = int(rng.choice(n, p=self.probabilities))
        else:  # uniform: the draw the existing landscapes' noise streams were recorded with
            r = int(rng.integers(n))
        return self.value(genome, r) + self.noise(self.coerce(genome), self.extremes.range, rng)

    def regret(self, genome: Mapping[str, Any]) -> float:
        """True regret normalised by the range: 0 at the optimum, 1 at the worst genome."""
        ex = self.extremes
        return (ex.f_max - self.true(genome)) / ex.range

    # --- the exact optimum ---------------------------------------------------------------------

    def _discrete_combos(self) -> list[Genome]:
        names = [n for n, d in self.space.items() if d["type"] in ("choice", "bool")]
        options = [
            list(self.space[n]["choices"]) if self.space[n]["type"] == "choice" else [False, True]
            for n in names
        ]
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*options)]

    def _grid(self, name: str) -> np.ndarray:
        d = self.space[name]
        lo, hi = d["low"], d["high"]
        if d["type"] == "int":
            if hi - lo + 1 <= _MAX_INT_GRID:
                return np.arange(lo, hi + 1, dtype=float)
            raise ValueError(f"{self.name}: {name}: integer range too large to enumerate")
        u = np.linspace(0.0, 1.0, _FLOAT_GRID)
        if d.get("log"):
            return np.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
        return lo + u * (hi - lo)

    def _term_mean(self, term: Term, vals: Values, d: Mapping[str, Any]) -> np.ndarray:
        return np.asarray(self._expect([term.fn(vals, d, r) for r in range(len(self.regimes))]), dtype=float)

    def _term_extreme(self, term: Term, d: Mapping[str, Any], sign: float) -> tuple[float, dict[str, Any]]:
        """max (sign=+1) or min (sign=-1) of a term for the discrete knobs ``d``, and where."""
        if len(term.knobs) == 1:
            (k,) = term.knobs
            grid = self._grid(k)
            ys = sign * self._term_mean(term, {k: grid}, d)
            i = int(np.argmax(ys))
            best_x, best_y = float(grid[i]), float(ys[i])
            decl = self.space[k]
            if decl["type"] == "float":  # polish between the grid neighbours (the term is smooth)
                a, b = float(grid[max(i - 1, 0)]), float(grid[min(i + 1, grid.size - 1)])
                if b > a:
                    res = sopt.minimize_scalar(
                        lambda x: -sign * float(self._term_mean(term, {k: np.asarray([x])}, d)[0]),
                        bounds=(a, b),
                        method="bounded",
                        options={"xatol": 1e-12 * max(1.0, abs(b))},
                    )
                    if -float(res.fun) > best_y:
                        best_x, best_y = float(res.x), -float(res.fun)
            else:
                best_x = float(int(best_x))
            return sign * best_y, {k: int(best_x) if decl["type"] == "int" else best_x}
        k1, k2 = term.knobs
        if self.space[k1]["type"] != "int" or self.space[k2]["type"] != "int":
            raise ValueError(f"{self.name}: pair terms must be integer knobs")
        g1, g2 = np.meshgrid(self._grid(k1), self._grid(k2), indexing="ij")
        ys = sign * self._term_mean(term, {k1: g1.ravel(), k2: g2.ravel()}, d)
        i = int(np.argmax(ys))
        return sign * float(ys[i]), {k1: int(g1.ravel()[i]), k2: int(g2.ravel()[i])}

    @cached_property
    def extremes(self) -> Extremes:
        best: tuple[float, Genome] | None = None
        worst: float | None = None
        for d in self._discrete_combos():
            base = float(self._expect([self.discrete(d, r) for r in range(len(self.regimes))]))
            hi, lo, where = base, base, dict(d)
            for t in self.terms:
                v, at = self._term_extreme(t, d, +1.0)
                hi += v
                where.update(at)
                lo += self._term_extreme(t, d, -1.0)[0]
            if best is None or hi > best[0]:
                best = (hi, where)
            worst = lo if worst is None else min(worst, lo)
        assert best is not None and worst is not None
        f_max, argmax = best
        check = self.true(argmax)
        if not math.isclose(check, f_max, rel_tol=1e-9, abs_tol=1e-9):
            raise AssertionError(f"{self.name}: optimum {f_max} but its genome evaluates to {check}")
        return Extremes(f_max=f_max, f_min=worst, argmax=argmax)


# --- the four landscapes ---------------------------------------------------------------------------


def _cpu_gauss() -> Landscape:
    """CPU-like: workers × SMT and governor × timeslice interactions; Gaussian noise."""
    gov = {"powersave": 0.0, "ondemand": 0.25, "schedutil": 0.45, "performance": 0.40}
    ts = (100.0, 100_000.0)
    mig = (1000.0, 1_000_000.0)

    def discrete(g: Mapping[str, Any], r: int) -> float:
        return gov[g["governor"]] + (0.10 if g["smt"] else 0.0)

    terms = (
        Term(("workers",), lambda v, g, r: -0.8 * ((v["workers"] - (16 if g["smt"] else 8)) / 31.0) ** 2),
        Term(
            ("timeslice_us",),
            lambda v, g, r: (
                -0.6
                * (unit(v["timeslice_us"], *ts, log=True) - (0.75 if g["governor"] == "performance" else 0.5))
                ** 2
            ),
        ),
        Term(
            ("migration_cost_ns",),
            lambda v, g, r: -0.4 * (unit(v["migration_cost_ns"], *mig, log=True) - 0.6) ** 2,
        ),
    )

    def noise(g: Mapping[str, Any], rng_: float, rng: np.random.Generator) -> float:
        return float(rng.normal(0.0, 0.15 * rng_))

    return Landscape(
        name="cpu_gauss",
        summary="5 knobs (int, log-float, log-int, 4-way choice, bool); SMT moves the workers optimum, "
        "the governor moves the timeslice optimum",
        noise_label="Gaussian, σ = 0.15 × range",
        space={
            "workers": {"type": "int", "low": 1, "high": 32},
            "timeslice_us": {"type": "float", "low": ts[0], "high": ts[1], "log": True},
            "migration_cost_ns": {"type": "int", "low": int(mig[0]), "high": int(mig[1]), "log": True},
            "governor": {"type": "choice", "choices": list(gov)},
            "smt": {"type": "bool"},
        },
        discrete=discrete,
        terms=terms,
        noise=noise,
    )


def _memory_heavytail() -> Landscape:
    """Memory-like: an integer pair (dirty ratios), THP × min_free interaction; Student-t noise."""
    thp = {"always": 0.15, "madvise": 0.30, "never": 0.0}
    overcommit = {0: 0.05, 1: 0.0, 2: -0.10}
    vfs = (1.0, 1000.0)
    mf = (1024.0, 1_048_576.0)

    def discrete(g: Mapping[str, Any], r: int) -> float:
        return thp[g["thp"]] + (-0.12 if g["zone_reclaim"] else 0.0) + overcommit[g["overcommit"]]

    def dirty(v: Values, g: Mapping[str, Any], r: int) -> np.ndarray:
        ratio, bg = v["dirty_ratio"], v["dirty_background_ratio"]
        out: np.ndarray = (
            -0.4 * ((ratio - 20.0) / 99.0) ** 2 - 0.6 * ((bg - ratio / 4.0) / 99.0) ** 2 - 0.15 * (bg > ratio)
        )
        return out

    terms = (
        Term(("swappiness",), lambda v, g, r: -0.5 * ((v["swappiness"] - 10.0) / 200.0) ** 2),
        Term(("dirty_ratio", "dirty_background_ratio"), dirty),
        Term(
            ("vfs_cache_pressure",),
            lambda v, g, r: (
                -0.3 * (unit(v["vfs_cache_pressure"], *vfs, log=True) - unit(50.0, *vfs, log=True)) ** 2
            ),
        ),
        Term(
            ("min_free_kbytes",),
            lambda v, g, r: (
                -0.4
                * (
                    unit(v["min_free_kbytes"], *mf, log=True)
                    - unit(262_144.0 if g["thp"] == "always" else 65_536.0, *mf, log=True)
                )
                ** 2
            ),
        ),
    )

    def noise(g: Mapping[str, Any], rng_: float, rng: np.random.Generator) -> float:
        return float(0.06 * rng_ * rng.standard_t(2.5))

    return Landscape(
        name="memory_heavytail",
        summary="8 knobs (ints, log-int, log-float, two choices, bool); dirty_background_ratio's optimum "
        "depends on dirty_ratio, THP moves the min_free_kbytes optimum",
        noise_label="Student-t df=2.5 × 0.06 × range (sd ≈ 0.13 × range, heavy tails)",
        space={
            "swappiness": {"type": "int", "low": 0, "high": 200},
            "dirty_ratio": {"type": "int", "low": 1, "high": 100},
            "dirty_background_ratio": {"type": "int", "low": 1, "high": 100},
            "vfs_cache_pressure": {"type": "int", "low": 1, "high": 1000, "log": True},
            "min_free_kbytes": {"type": "float", "low": mf[0], "high": mf[1], "log": True},
            "thp": {"type": "choice", "choices": list(thp)},
            "zone_reclaim": {"type": "bool"},
            "overcommit": {"type": "choice", "choices": list(overcommit)},
        },
        discrete=discrete,
        terms=terms,
        noise=noise,
    )


def _storage_hetero() -> Landscape:
    """Storage-like: the optimum (no scheduler + polling, deep queue) is the noisiest corner."""
    sched = {"none": 0.30, "mq-deadline": 0.35, "bfq": 0.05, "kyber": 0.25}
    sched_noise = {"none": 1.5, "mq-deadline": 1.0, "bfq": 1.0, "kyber": 1.2}
    rq = {0: 0.0, 1: 0.05, 2: 0.08}
    ra = (4.0, 16384.0)
    si = (0.5, 500.0)
    nr = (4.0, 1024.0)

    def discrete(g: Mapping[str, Any], r: int) -> float:
        poll = (0.25 if g["scheduler"] == "none" else -0.05) if g["io_poll"] else 0.0
        return sched[g["scheduler"]] + poll + (-0.05 if g["add_random"] else 0.0) + rq[g["rq_affinity"]]

    terms = (
        Term(
            ("read_ahead_kb",),
            lambda v, g, r: (
                -0.4 * (unit(v["read_ahead_kb"], *ra, log=True) - unit(512.0, *ra, log=True)) ** 2
            ),
        ),
        Term(("nr_requests",), lambda v, g, r: -0.3 * ((v["nr_requests"] - 768.0) / 1020.0) ** 2),
        Term(
            ("slice_idle_ms",),
            lambda v, g, r: (
                -0.3
                * (unit(v["slice_idle_ms"], *si, log=True) - (0.1 if g["scheduler"] == "bfq" else 0.3)) ** 2
            ),
        ),
    )

    def noise(g: Mapping[str, Any], rng_: float, rng: np.random.Generator) -> float:
        frac = (0.03 + 0.25 * float(unit(g["nr_requests"], *nr))) * sched_noise[g["scheduler"]]
        return float(rng.normal(0.0, frac * rng_))

    return Landscape(
        name="storage_hetero",
        summary="6 knobs (log-int, int, log-float, two choices, two bools); polling pays only without a "
        "scheduler; noise grows with queue depth and is largest at the optimum",
        noise_label="heteroscedastic Gaussian, σ = (0.03 + 0.25 × nr_requests position) × scheduler factor "
        "(1–1.5) × range: 0.03–0.42 × range, 0.33 at the optimum",
        space={
            "scheduler": {"type": "choice", "choices": list(sched)},
            "io_poll": {"type": "bool"},
            "add_random": {"type": "bool"},
            "rq_affinity": {"type": "choice", "choices": list(rq)},
            "read_ahead_kb": {"type": "int", "low": int(ra[0]), "high": int(ra[1]), "log": True},
            "nr_requests": {"type": "int", "low": int(nr[0]), "high": int(nr[1])},
            "slice_idle_ms": {"type": "float", "low": si[0], "high": si[1], "log": True},
        },
        discrete=discrete,
        terms=terms,
        noise=noise,
    )


def _regimes_mean() -> Landscape:
    """Four regimes with different optima; the objective is their mean, a sample is one regime's."""
    regimes = ("idle", "normal", "stress", "mixed")
    offset = (0.20, 0.0, -0.30, -0.10)  # regimes differ in level too: part of a sample's spread
    workers_opt = (2.0, 8.0, 24.0, 12.0)
    nice_opt = (10.0, 0.0, -10.0, -5.0)
    lat_opt = (0.2, 0.5, 0.8, 0.4)
    policy = {
        "other": (0.10, 0.20, 0.05, 0.15),
        "batch": (0.00, 0.15, 0.30, 0.10),
        "idle": (0.25, -0.10, -0.30, -0.20),
        "fifo": (-0.10, 0.10, 0.20, 0.25),
    }
    boost = (-0.10, 0.05, 0.15, 0.05)
    lat = (0.1, 100.0)

    def discrete(g: Mapping[str, Any], r: int) -> float:
        return offset[r] + policy[g["policy"]][r] + (boost[r] if g["boost"] else 0.0)

    terms = (
        Term(("workers",), lambda v, g, r: -0.9 * ((v["workers"] - workers_opt[r]) / 31.0) ** 2),
        Term(("nice",), lambda v, g, r: -0.3 * ((v["nice"] - nice_opt[r]) / 39.0) ** 2),
        Term(
            ("latency_target_ms",),
            lambda v, g, r: (
                -0.6
                * (
                    unit(v["latency_target_ms"], *lat, log=True)
                    - (lat_opt[r] - (0.2 if g["policy"] == "fifo" else 0.0))
                )
                ** 2
            ),
        ),
    )

    def noise(g: Mapping[str, Any], rng_: float, rng: np.random.Generator) -> float:
        return float(rng.normal(0.0, 0.08 * rng_))

    return Landscape(
        name="regimes_mean",
        summary="5 knobs (ints, log-float, 4-way choice, bool) under 4 regimes whose optima differ "
        "(workers 2/8/24/12, nice 10/0/−10/−5, best policy idle/other/batch/fifo); objective = mean "
        "over regimes",
        noise_label="one sample = one regime drawn at random (regime spread) + Gaussian σ = 0.08 × range",
        space={
            "workers": {"type": "int", "low": 1, "high": 32},
            "nice": {"type": "int", "low": -20, "high": 19},
            "latency_target_ms": {"type": "float", "low": lat[0], "high": lat[1], "log": True},
            "policy": {"type": "choice", "choices": list(policy)},
            "boost": {"type": "bool"},
        },
        discrete=discrete,
        terms=terms,
        noise=noise,
        regimes=regimes,
    )


def all_landscapes() -> dict[str, Landscape]:
    lands = [_cpu_gauss(), _memory_heavytail(), _storage_hetero(), _regimes_mean()]
    return {land.name: land for land in lands}
