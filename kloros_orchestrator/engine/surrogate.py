"""A cheap surrogate of fitness: ridge regression on per-knob features.

Used by :class:`~kloros_orchestrator.engine.evolution.Evolution` to screen offspring: of several
bred proposals for a slot, the one the model predicts best is asked. With noisy fitness a model
fitted over every evaluated genome averages out noise that comparing single samples cannot.

Features (:func:`knob_features`, on the *declared* bounds so the encoding does not move while the
space adapts): a numeric knob's unit position (log-aware) and its square, a bool as 0/1, a choice
one-hot. Pairwise interactions were tried and left out: on 6–8 knobs they overfit the few dozen
genomes a run has and made the search worse, and evolution handles interactions by itself.
The ridge penalty is chosen by exact leave-one-out error. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np

from kloros_orchestrator.engine.space import BoolParam, ChoiceParam, Param, SearchSpace
from kloros_orchestrator.model import Scalar

__all__ = ["Surrogate", "knob_features"]

_LAMBDAS: Final = tuple(float(10.0**e) for e in np.arange(-3.0, 4.01, 0.5))


def knob_features(param: Param, values: Sequence[Scalar]) -> np.ndarray:
    """Regression columns for one knob: ``[u, u²]`` (numeric), ``[0/1]`` (bool) or one-hot."""
    if isinstance(param, ChoiceParam):
        return np.array([[1.0 if v == c else 0.0 for c in param.choices] for v in values]).reshape(
            len(values), len(param.choices)
        )
    if isinstance(param, BoolParam):
        return np.array([[1.0 if v else 0.0] for v in values]).reshape(len(values), 1)
    u = np.array([param.to_unit(float(v)) for v in values])
    return np.column_stack([u, u**2]).reshape(len(values), 2)


class Surrogate:
    """Ridge model of fitness over a space's knobs; ``fit`` then ``predict``."""

    def __init__(self, space: SearchSpace) -> None:
        self._params = [space.original(n) for n in space.names]
        self._mean: np.ndarray | None = None
        self._scale: np.ndarray | None = None
        self._coef: np.ndarray | None = None
        self._y_mean = 0.0
        self.lam: float | None = None  # the chosen ridge penalty
        self.loo_rmse: float | None = None  # its leave-one-out prediction error

    def _design(self, genomes: Sequence[Mapping[str, Scalar]]) -> np.ndarray:
        return np.column_stack([knob_features(p, [g[p.name] for g in genomes]) for p in self._params])

    def fit(self, genomes: Sequence[Mapping[str, Scalar]], fitness: Sequence[float]) -> Surrogate:
        if len(genomes) != len(fitness) or len(genomes) < 2:
            raise ValueError("surrogate: need at least two genomes, each with a fitness")
        x = self._design(genomes)
        y = np.asarray(fitness, dtype=float)
        self._mean = x.mean(axis=0)
        sd = x.std(axis=0)
        self._scale = np.where(sd > 1e-12, sd, np.inf)  # constant columns drop out
        z = (x - self._mean) / self._scale
        self._y_mean = float(y.mean())
        yc = y - self._y_mean
        u, s, vt = np.linalg.svd(z, full_matrices=False)
        uty = u.T @ yc
        best: tuple[float, float, np.ndarray] | None = None
        for lam in _LAMBDAS:
            coef = vt.T @ (s / (s**2 + lam) * uty)
            hat = (u**2) @ (s**2 / (s**2 + lam)) + 1.0 / len(y)  # + 1/n: the fitted intercept
            loo = float(np.mean(((yc - z @ coef) / np.maximum(1.0 - hat, 1e-9)) ** 2))
            if best is None or loo < best[0]:
                best = (loo, lam, coef)
        assert best is not None
        self.loo_rmse, self.lam, self._coef = float(np.sqrt(best[0])), best[1], best[2]
        return self

    def predict(self, genomes: Sequence[Mapping[str, Scalar]]) -> np.ndarray:
        """Predicted fitness of each genome (higher is better)."""
        if self._coef is None or self._mean is None or self._scale is None:
            raise ValueError("surrogate: predict() before fit()")
        z = (self._design(genomes) - self._mean) / self._scale
        return np.asarray(z @ self._coef + self._y_mean, dtype=float)
