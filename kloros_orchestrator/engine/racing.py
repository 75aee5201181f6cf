"""Racing: evaluate candidates round by round and stop sampling the clear losers early.

Theory of operation. Every round each surviving candidate gets one more noisy sample (in the
daemon: one trial of each regime, scored against the stock arm's trials of the same round).
Samples are *paired by round* — a round runs all survivors close together in time, so slow drifts
of the machine hit them alike, and every comparison below is between candidates' samples of the
same rounds (differences, in which a round's shift cancels).

**With an indifference zone** (``indifference=δ``, the smallest difference worth acting on, and
``confidence=1−α``) the race is Kim & Nelson's fully sequential procedure (KN, 2001) with c = 1:
after round ``r ≥ n0`` (``n0 = min_rounds``) a survivor ``i`` is eliminated when, for the leader
``l`` (best mean among the survivors),

    mean_l(r) − mean_i(r) > W(r) = max(0, h²·S²/(2·δ·r) − δ/2),
    h² = ν·((2α/(k−1))^(−2/ν) − 1)       (KN's 2·η·(n0−1), with ν df in place of n0−1),

``S²`` the variance of a paired difference between two candidates and ``k`` the candidates at the
start. The race stops when one survivor is left (or the triangle closes, ``W = 0``: the means
decide). At ``max_rounds`` it stops too, and survivors are not eliminated by the rule there: the
winner is the best mean, and survivors whose mean is within δ of it are a tie broken by mean
(:meth:`tied`, :meth:`verdict`).

What differs from KN, and why. KN estimates ``S²_il`` per pair from the first ``n0`` rounds:
with the daemon's ``n0 = 2`` that has 1 df, and ``h²`` for k = 6, α = 0.05 is ~2500 — the race
would never eliminate anyone within ``max_rounds`` (3 in the daemon, 10 in the benchmarks). Here:

1. *Pooled variance.* ``S² = 2·σ̂²``, where ``σ̂²`` is the residual variance of the additive model
   ``sample = candidate effect + round effect + noise``, fitted by least squares over every sample
   taken so far (eliminated candidates' too: they still tell the noise level), with
   ``ν = samples − candidates − rounds + 1`` df — for a complete two-way table the pooled variance
   of the pairwise differences, ``(k−1)(r−1)`` df. It assumes the noise variance is the same for
   every candidate (one machine, one workload; KN allows unequal variances and any correlation).
   With it, after ``n0 = 2`` rounds of 6 candidates ν = 5 and h² = 18.9 (ν → ∞: h² → 7.8).
2. *Variance updating* (Pichitlamken, Nelson & Hong 2006; KN++ in Kim & Nelson 2006): ``σ̂²``,
   ``ν`` and so ``h²`` are re-computed after every round instead of being frozen after ``n0``.
3. *Truncation* at ``max_rounds``: best mean among the survivors (KN's own rule when the triangle
   closes, taken earlier).

Guarantee. With the first-stage pooled variance frozen (1 alone), KN's proof carries over exactly
for normal, homoscedastic noise: the residual variance is independent of the candidate effects and
``ν·σ̂²/σ² ~ χ²_ν``, which is all the bound ``P(eliminate the best) ≤ ½·E[exp(−h²·S²/(2·S²_true))]
= α/(k−1)`` per pair uses — so P(select the best) ≥ 1−α whenever it leads the others by ≥ δ.
Variance updating (2) keeps it asymptotically (δ → 0); the benchmark measures it at small n. The
guarantee needs the triangle to close by the cap, i.e. ``max_rounds ≥ h²·S²/δ²`` (the best mean at
the cap is then KN's own pick); truncated earlier (3), the race is a fixed-N comparison of the
survivors and is as good as its sample size (``bench/racing.py`` reports both). Candidates within
δ of the best may be eliminated: the procedure promises a pick within δ, not to keep every near-tie
alive. Measured (``bench/racing.py``, 10 000 races of 6 candidates, 10 rounds, every other exactly
δ behind): δ = 1.5σ, 97.0 % correct with 38.6 % of fixed-N=10's trials; δ = 1σ (truncated), 93.5 %
with 64 % (fixed N=10: 95.2 %).

**Without an indifference zone** (``indifference=None``, as ``optimize()`` uses it: its
objective has no unit to express δ in) the older rule: after ``min_rounds`` a survivor is
eliminated when a one-sided t-test of (leader − survivor) on the same pooled σ̂² rejects at
``α = 1 − confidence``; the race ends when one survivor is left or at ``max_rounds``. It selects
the best of close candidates no more often than fixed-N sampling (the benchmark's "old rule").

In both, the incumbent is never eliminated by the rule (its estimate should be as good as the
winner's), only by a failed sample; when it is the only one left beside a leader that would have
eliminated it, the race is decided and ends. State schema ``race.v2`` (``race.v1``, the old rule's,
still loads and resumes under the old rule).

Pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kloros_orchestrator.measure.distributions import t_sf

__all__ = ["Race", "kn_h2"]


def _avg(values: Sequence[float]) -> float:
    return sum(values) / len(values)  # np.mean costs ~10 µs on a handful of numbers


def kn_h2(nu: int, k: int, confidence: float) -> float:
    """KN's ``h²`` for a variance with ``nu`` df, ``k`` candidates, ``1 − α = confidence`` (c = 1)."""
    alpha = 1.0 - confidence
    return float(nu * ((2.0 * alpha / max(1, k - 1)) ** (-2.0 / nu) - 1.0))


class Race:
    """One racing tournament over ``cand_ids`` (see the module docstring for the rule)."""

    def __init__(
        self,
        cand_ids: Sequence[str],
        *,
        incumbent: str | None,
        max_rounds: int,
        min_rounds: int = 2,
        indifference: float | None = None,
        confidence: float = 0.95,
    ) -> None:
        ids = [str(c) for c in cand_ids]
        if not ids:
            raise ValueError("a race needs at least one candidate")
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate candidate ids in {ids}")
        if incumbent is not None and incumbent not in ids:
            raise ValueError(f"incumbent {incumbent!r} is not one of the candidates")
        if max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
        if min_rounds < 2:
            raise ValueError(f"min_rounds must be >= 2 (a variance needs two samples), got {min_rounds}")
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")
        if indifference is not None and not (math.isfinite(indifference) and indifference > 0):
            raise ValueError(f"indifference must be a positive number, got {indifference}")
        self.ids: tuple[str, ...] = tuple(ids)
        self.incumbent = incumbent
        self.max_rounds = max_rounds
        self.min_rounds = min_rounds
        self.indifference = indifference
        self.confidence = confidence
        self._samples: dict[str, list[float]] = {c: [] for c in ids}
        self._alive: list[str] = list(ids)
        self.eliminated: dict[str, str] = {}
        self.trials_used = 0
        self._round = 0  # completed rounds
        self._round_open = False  # a sample or failure was recorded since the last end_round()
        self._incumbent_beaten = False
        self._closed = False  # KN's triangle closed (W = 0): the means decide, nothing more to learn

    @property
    def alpha(self) -> float:
        return 1.0 - self.confidence

    # --- inspection ---------------------------------------------------------------------------

    @property
    def round(self) -> int:
        """Number of completed rounds."""
        return self._round

    @property
    def finished(self) -> bool:
        """True when no more samples are wanted."""
        if self._round >= self.max_rounds or not self._alive:
            return True
        if len(self._alive) == 1:  # a lone survivor still finishes a round in progress
            return not self._round_open and len(self._samples[self._alive[0]]) >= 1
        if self._closed and not self._round_open:
            return True
        return self._incumbent_beaten and len(self._alive) == 2

    def survivors(self) -> list[str]:
        """Candidates still in the race, in the order they were given."""
        return list(self._alive)

    def pending(self) -> list[str]:
        """Survivors that still need their sample for the current round."""
        if self.finished:
            return []
        return [c for c in self._alive if len(self._samples[c]) <= self._round]

    def samples(self, cand_id: str) -> list[float]:
        return list(self._samples[self._known(cand_id)])

    def mean(self, cand_id: str) -> float | None:
        s = self._samples[self._known(cand_id)]
        return _avg(s) if s else None

    def means(self) -> dict[str, float]:
        """Mean sample of every candidate that has one (eliminated ones included)."""
        return {c: _avg(s) for c, s in self._samples.items() if s}

    def counts(self) -> dict[str, int]:
        return {c: len(s) for c, s in self._samples.items()}

    def ranking(self) -> list[str]:
        """Survivors by mean, best first (ties: the incumbent, then the given order)."""
        sampled = [c for c in self._alive if self._samples[c]]
        return sorted(sampled, key=self._rank_key)

    def race_winner(self) -> str | None:
        """The survivor with the best mean (None when every candidate failed or none has a sample)."""
        ranked = self.ranking()
        return ranked[0] if ranked else None

    def tied(self) -> list[str]:
        """Survivors other than the winner whose mean is within δ of the winner's (by mean).

        Non-empty only when the race ended with several survivors (at the cap, or the incumbent
        kept beside its better): the procedure could not tell them apart by δ; the best mean won.
        Empty without an indifference zone."""
        ranked = self.ranking()
        if self.indifference is None or len(ranked) < 2:
            return []
        best = _avg(self._samples[ranked[0]])
        return [c for c in ranked[1:] if best - _avg(self._samples[c]) <= self.indifference]

    def verdict(self) -> str:
        """How the race was decided, in words (for logs and reports)."""
        winner = self.race_winner()
        if winner is None:
            return "no winner: every candidate failed or none has a sample"
        if len(self._alive) == 1:
            return f"{winner}: the only survivor after {self._round} rounds"
        tied = self.tied()
        if tied and self.indifference is not None:
            return (
                f"{winner}: best mean after {self._round} rounds; {', '.join(tied)} within "
                f"δ={self.indifference:g} of it (a tie, broken by mean)"
            )
        return f"{winner}: best mean of {len(self._alive)} survivors after {self._round} rounds"

    # --- events -------------------------------------------------------------------------------

    def record(self, cand_id: str, value: float | None) -> None:
        """One sample for ``cand_id`` in the current round; None (or NaN) means the trial failed."""
        c = self._known(cand_id)
        if self.finished:
            raise ValueError(f"race is finished; no sample wanted for {c!r}")
        if c not in self._alive:
            raise ValueError(f"{c!r} is out of the race ({self.eliminated.get(c)})")
        if len(self._samples[c]) > self._round:
            raise ValueError(f"{c!r} already has its sample for round {self._round + 1}")
        self.trials_used += 1
        self._round_open = True
        if value is None or not math.isfinite(value):
            self.fail(c, f"failed in round {self._round + 1}: no usable sample")
            return
        self._samples[c].append(float(value))

    def fail(self, cand_id: str, reason: str) -> None:
        """Take ``cand_id`` out of the race (failed or unsafe), incumbent included."""
        c = self._known(cand_id)
        if c in self._alive:
            self._alive.remove(c)
            self.eliminated[c] = reason
            self._round_open = True

    def end_round(self) -> list[str]:
        """Close the current round (every survivor sampled); returns the candidates eliminated."""
        if self.finished:
            raise ValueError("race is finished")
        missing = self.pending()
        if missing:
            raise ValueError(f"round {self._round + 1} is not complete: {', '.join(missing)} pending")
        self._round += 1
        self._round_open = False
        if self._round < self.min_rounds or len(self._alive) < 2:
            return []
        if self.indifference is None:
            return self._eliminate_ttest()
        if self._round >= self.max_rounds:  # the cap: a tie within δ, broken by mean (tied())
            return []
        return self._eliminate_kn(self.indifference)

    # --- the rules ----------------------------------------------------------------------------

    def allowance(self) -> tuple[float, float, int] | None:
        """KN's ``(W, σ̂, ν)`` after the completed rounds; None without δ or without a variance."""
        if self.indifference is None or self._round < 1:
            return None
        sigma2, df = self._pooled_variance()
        if df <= 0:
            return None
        delta, r = self.indifference, self._round
        h2 = kn_h2(df, len(self.ids), self.confidence)
        w = max(0.0, h2 * 2.0 * sigma2 / (2.0 * delta * r) - delta / 2.0)
        return w, math.sqrt(sigma2), df

    def _eliminate_kn(self, delta: float) -> list[str]:
        got = self.allowance()
        if got is None:
            return []
        w, sd, df = got
        leader = self.ranking()[0]
        m_lead = _avg(self._samples[leader])
        out: list[str] = []
        self._incumbent_beaten = False
        for c in list(self._alive):
            gap = m_lead - _avg(self._samples[c])
            if c == leader or gap <= w:
                continue
            if c == self.incumbent:
                self._incumbent_beaten = True
                continue
            self._alive.remove(c)
            self.eliminated[c] = (
                f"behind {leader} after {self._round} rounds by {gap:.3g} (more than the allowance "
                f"{w:.3g} at δ={delta:g}, {self.confidence:.0%} confidence; noise sd {sd:.3g}, {df} df)"
            )
            out.append(c)
        self._closed = w == 0.0
        return out

    def _eliminate_ttest(self) -> list[str]:
        n = self._round
        sigma2, df = self._pooled_variance()
        if df <= 0:
            return []
        leader = self.ranking()[0]
        m_lead = _avg(self._samples[leader])
        se = math.sqrt(2.0 * sigma2 / n)
        out: list[str] = []
        self._incumbent_beaten = False
        for c in list(self._alive):
            if c == leader:
                continue
            m = _avg(self._samples[c])
            diff = m_lead - m
            if se > 0:
                t = diff / se
                p = t_sf(t, df)
            else:  # noise-free samples: any gap is certain
                t, p = (math.inf, 0.0) if diff > 0 else (0.0, 1.0)
            if p >= self.alpha:
                continue
            if c == self.incumbent:
                self._incumbent_beaten = True
                continue
            self._alive.remove(c)
            self.eliminated[c] = (
                f"behind {leader} after {n} rounds: mean {m:.6g} vs {m_lead:.6g} "
                f"(t={t:.2f}, df={df}, p={p:.3g} < alpha {self.alpha:.3g})"
            )
            out.append(c)
        return out

    def _pooled_variance(self) -> tuple[float, int]:
        """Residual variance and df of ``sample ~ candidate + round`` over all samples so far."""
        series = [s for s in self._samples.values() if s]
        lens = [len(s) for s in series]
        y = np.fromiter((v for s in series for v in s), dtype=float, count=sum(lens))
        cand = np.repeat(np.arange(len(series)), lens)
        rnd = np.concatenate([np.arange(n) for n in lens])
        design = np.zeros((y.size, len(series) + max(lens) - 1))
        design[np.arange(y.size), cand] = 1.0
        later = np.flatnonzero(rnd > 0)  # round 0 is the reference level
        design[later, len(series) + rnd[later] - 1] = 1.0
        coef, _, rank, _ = np.linalg.lstsq(design, y, rcond=None)
        df = y.size - int(rank)
        if df <= 0:
            return 0.0, 0
        resid = y - design @ coef
        return float(resid @ resid) / df, df

    def _rank_key(self, c: str) -> tuple[float, int, int]:
        return (-_avg(self._samples[c]), 0 if c == self.incumbent else 1, self.ids.index(c))

    def _known(self, cand_id: str) -> str:
        if cand_id not in self._samples:
            raise ValueError(f"unknown candidate {cand_id!r} (racing: {', '.join(self.ids)})")
        return cand_id

    # --- persistence --------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """JSON-able state so an interrupted tournament resumes after a restart."""
        return {
            "schema": "race.v2",
            "ids": list(self.ids),
            "incumbent": self.incumbent,
            "max_rounds": self.max_rounds,
            "min_rounds": self.min_rounds,
            "indifference": self.indifference,
            "confidence": self.confidence,
            "samples": {c: list(s) for c, s in self._samples.items()},
            "alive": list(self._alive),
            "eliminated": dict(self.eliminated),
            "trials_used": self.trials_used,
            "round": self._round,
            "round_open": self._round_open,
            "incumbent_beaten": self._incumbent_beaten,
            "closed": self._closed,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Race:
        """Inverse of :meth:`state`; a ``race.v1`` state (the old rule, ``alpha``) resumes under it."""
        schema = state.get("schema")
        if schema == "race.v1":
            indifference, confidence = None, 1.0 - float(state["alpha"])
        elif schema == "race.v2":
            delta = state["indifference"]
            indifference, confidence = (None if delta is None else float(delta)), float(state["confidence"])
        else:
            raise ValueError(f"race state: unsupported schema {schema!r}")
        race = cls(
            state["ids"],
            incumbent=state["incumbent"],
            max_rounds=int(state["max_rounds"]),
            min_rounds=int(state["min_rounds"]),
            indifference=indifference,
            confidence=confidence,
        )
        samples = state["samples"]
        if set(samples) != set(race.ids) or not set(state["alive"]) <= set(race.ids):
            raise ValueError("race state: samples/alive do not match the candidate ids")
        race._samples = {c: [float(v) for v in samples[c]] for c in race.ids}
        race._alive = [c for c in race.ids if c in set(state["alive"])]
        race.eliminated = {str(k): str(v) for k, v in state["eliminated"].items()}
        race.trials_used = int(state["trials_used"])
        race._round = int(state["round"])
        race._round_open = bool(state.get("round_open", False))
        race._incumbent_beaten = bool(state["incumbent_beaten"])
        race._closed = bool(state.get("closed", False))
        return race
