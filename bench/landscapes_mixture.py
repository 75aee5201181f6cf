"""Landscapes with mixture noise: every sample comes from one of several conditions drawn at random.

In the field a trial's outcome depends on conditions the tuner neither chooses nor sees: which
host of a fleet ran it, what else the machine was doing. Each landscape here is a small set of
conditions ``c`` with probabilities ``p_c`` and a noise-free response ``f_c(x)`` per condition; one
noisy sample of genome ``x`` is ``f_c(x) + ε`` for a condition drawn afresh for that sample (never
shared by two samples, so racing rounds cannot pair it away), and the target is the expectation
``Σ_c p_c f_c(x)``. The spread between conditions is most of a sample's noise, and that noise is
not Gaussian: it is a discrete mixture (multi-modal, skewed), with a small Gaussian ``ε`` on top.

Two structures, because they defeat a search in different ways:

* ``hosts_shift`` — *conditions shift the optimum*. Three host types (probabilities 0.5 / 0.3 / 0.2)
  with their own best thread count, batch size, prefetch fraction and allocator, and their own
  speed level. The expectation's optimum is a compromise that no single host prefers: chasing the
  best single samples leads to whichever host type the lucky samples came from. The host levels
  differ by up to 0.8 of the expectation's range, so one sample says more about the host drawn
  than about the genome.
* ``load_scale`` — *conditions scale the response*. One optimum for all conditions, but the
  machine is quiet (0.55: full response), busy (0.30: response × 0.45, level −0.35) or saturated
  (0.15: response × 0.05, level −1.2 — knobs hardly matter, every sample is a deep outlier).
  Samples of good genomes spread widest; a single saturated sample sinks a candidate's mean, and
  the best *observed* sample is always a quiet one.

Both are built on :class:`landscapes.Landscape` (regimes = conditions, ``weights`` = their
probabilities), so the optimum of the expectation is exact in the same way as for the other
landscapes (each term is maximised on its own for every combination of the discrete knobs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from landscapes import Landscape, Term, Values, unit


def _hosts_shift() -> Landscape:
    """Three host types whose optima differ; the target is the fleet-weighted expectation."""
    hosts = ("small", "large", "numa")
    level = (0.0, 0.45, -0.35)  # host speed: part of every sample, not of any genome's merit
    threads_opt = (6.0, 40.0, 24.0)
    batch_opt = (0.25, 0.65, 0.85)  # unit position on the log range
    prefetch_opt = (0.2, 0.7, 0.5)
    alloc = {
        "glibc": (0.10, -0.05, -0.10),
        "jemalloc": (0.00, 0.20, 0.05),
        "tcmalloc": (0.05, 0.10, 0.15),
        "mimalloc": (0.15, -0.15, 0.00),
    }
    hugepages = (-0.10, 0.12, 0.10)
    batch = (1.0, 4096.0)

    def discrete(g: Mapping[str, Any], r: int) -> float:
        return level[r] + alloc[g["allocator"]][r] + (hugepages[r] if g["hugepages"] else 0.0)

    def prefetch(v: Values, g: Mapping[str, Any], r: int) -> np.ndarray:
        shift = 0.15 if g["hugepages"] else 0.0  # hugepages move the prefetch optimum up
        out: np.ndarray = -0.5 * (v["prefetch"] - min(prefetch_opt[r] + shift, 1.0)) ** 2
        return out

    terms = (
        Term(("threads",), lambda v, g, r: -0.9 * ((v["threads"] - threads_opt[r]) / 63.0) ** 2),
        Term(
            ("batch",),
            lambda v, g, r: -0.6 * (unit(v["batch"], *batch, log=True) - batch_opt[r]) ** 2,
        ),
        Term(("prefetch",), prefetch),
        Term(("spin_us",), lambda v, g, r: -0.25 * ((v["spin_us"] - 50.0) / 200.0) ** 2),
    )

    def noise(g: Mapping[str, Any], rng_: float, rng: np.random.Generator) -> float:
        return float(rng.normal(0.0, 0.05 * rng_))

    return Landscape(
        name="hosts_shift",
        summary="6 knobs (ints, log-int, float, 4-way choice, bool) on 3 host types drawn per sample "
        "(p 0.5/0.3/0.2) whose optima differ (threads 6/40/24, best allocator mimalloc/jemalloc/"
        "tcmalloc, hugepages hurt on one) and whose speed levels differ; objective = fleet expectation",
        noise_label="mixture: one host type drawn per sample (levels 0/+0.45/−0.35 raw, optima shifted) "
        "+ Gaussian σ = 0.05 × range",
        space={
            "threads": {"type": "int", "low": 1, "high": 64},
            "batch": {"type": "int", "low": int(batch[0]), "high": int(batch[1]), "log": True},
            "prefetch": {"type": "float", "low": 0.0, "high": 1.0},
            "spin_us": {"type": "int", "low": 0, "high": 200},
            "allocator": {"type": "choice", "choices": list(alloc)},
            "hugepages": {"type": "bool"},
        },
        discrete=discrete,
        terms=terms,
        noise=noise,
        regimes=hosts,
        weights=(0.5, 0.3, 0.2),
    )


def _load_scale() -> Landscape:
    """One optimum, three load conditions that scale the response and drop the level."""
    loads = ("quiet", "busy", "saturated")
    scale = (1.0, 0.45, 0.05)
    level = (0.0, -0.35, -1.2)
    gov = {"powersave": -0.15, "schedutil": 0.10, "performance": 0.15}
    window = (0.1, 1000.0)

    def discrete(g: Mapping[str, Any], r: int) -> float:
        merit = gov[g["governor"]] + (0.08 if g["irq_affinity"] else 0.0) + (-0.06 if g["audit"] else 0.0)
        return level[r] + scale[r] * merit

    def window_term(v: Values, g: Mapping[str, Any], r: int) -> np.ndarray:
        opt = 0.7 if g["governor"] == "performance" else 0.45  # the governor moves the window optimum
        out: np.ndarray = -0.6 * scale[r] * (unit(v["window_ms"], *window, log=True) - opt) ** 2
        return out

    terms = (
        Term(("workers",), lambda v, g, r: -0.8 * scale[r] * ((v["workers"] - 20.0) / 47.0) ** 2),
        Term(("queue_depth",), lambda v, g, r: -0.5 * scale[r] * ((v["queue_depth"] - 96.0) / 255.0) ** 2),
        Term(("window_ms",), window_term),
        Term(("swappiness",), lambda v, g, r: -0.3 * scale[r] * ((v["swappiness"] - 30.0) / 100.0) ** 2),
    )

    def noise(g: Mapping[str, Any], rng_: float, rng: np.random.Generator) -> float:
        return float(rng.normal(0.0, 0.05 * rng_))

    return Landscape(
        name="load_scale",
        summary="7 knobs (ints, log-float, 3-way choice, bools) under 3 load conditions drawn per sample "
        "(quiet/busy/saturated, p 0.55/0.30/0.15) that scale the response (× 1/0.45/0.05) and drop the "
        "level; one optimum, the governor moves the window optimum; objective = expectation",
        noise_label="mixture: one load drawn per sample (saturated samples are outliers 1.2 raw below, "
        "knobs hardly matter there) + Gaussian σ = 0.05 × range",
        space={
            "workers": {"type": "int", "low": 1, "high": 48},
            "queue_depth": {"type": "int", "low": 1, "high": 256},
            "window_ms": {"type": "float", "low": window[0], "high": window[1], "log": True},
            "swappiness": {"type": "int", "low": 0, "high": 100},
            "governor": {"type": "choice", "choices": list(gov)},
            "irq_affinity": {"type": "bool"},
            "audit": {"type": "bool"},
        },
        discrete=discrete,
        terms=terms,
        noise=noise,
        regimes=loads,
        weights=(0.55, 0.30, 0.15),
    )


def mixture_landscapes() -> dict[str, Landscape]:
    lands = [_hosts_shift(), _load_scale()]
    return {land.name: land for land in lands}
