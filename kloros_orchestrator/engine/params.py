"""Typed knobs of a search space: their declaration form, validation, sampling and mutation.

A knob is declared as ``{"type": "int"|"float"|"choice"|"bool", "low", "high", "log", "choices"}``
(the domains' knob form, README "Search engine"). One additive key is accepted: ``"fixed": value``
marks a dropped knob frozen at a value (:func:`parse_param` returns it beside the parameter).

Pure: no I/O, randomness only from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeAlias

import numpy as np

from kloros_orchestrator.model import Scalar

__all__ = [
    "BoolParam",
    "ChoiceParam",
    "FloatParam",
    "IntParam",
    "NumericParam",
    "Param",
    "parse_param",
]

_DECL_KEYS: Final = frozenset({"type", "low", "high", "log", "choices", "fixed"})
_KEYS_BY_TYPE: Final = {
    "int": frozenset({"type", "low", "high", "log", "fixed"}),
    "float": frozenset({"type", "low", "high", "log", "fixed"}),
    "choice": frozenset({"type", "choices", "fixed"}),
    "bool": frozenset({"type", "fixed"}),
}
# Probability that a numeric mutation jumps straight to a bound: this is what lets search reach
# the edges of a range (many kernel knobs are best at 0 or at their maximum).
_SNAP_P: Final = 0.08


def knob_error(name: str, key: str, problem: str) -> ValueError:
    return ValueError(f"knob {name!r}: {key}: {problem}")


def is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def same_scalar(a: object, b: object) -> bool:
    """Equality that keeps ``True`` and ``1`` apart (they are different choices)."""
    return type(a) is type(b) and a == b


def fmt_scalar(v: Scalar) -> str:
    return f"{v:.6g}" if isinstance(v, float) else repr(v) if isinstance(v, str) else str(v)


# --- parameters ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntParam:
    """An integer knob on ``[low, high]``; ``log`` searches it on a log scale (``low`` ≥ 1)."""

    name: str
    low: int
    high: int
    log: bool = False
    kind: ClassVar[str] = "int"

    def __post_init__(self) -> None:
        _check_numeric(self.name, self.low, self.high, self.log)

    def to_unit(self, value: float) -> float:
        return _to_unit(value, self.low, self.high, self.log)

    def from_unit(self, u: float) -> int:
        return self.clip(unit_to_value(u, self.low, self.high, self.log))

    def coerce(self, value: object, key: str = "value") -> int:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise knob_error(self.name, key, f"expected an integer, got {value!r}")
        if value != int(value):
            raise knob_error(self.name, key, f"expected an integer, got {value!r}")
        return int(value)

    def clip(self, value: float) -> int:
        return int(min(max(round(value), self.low), self.high))

    def contains(self, value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high

    def sample(self, rng: np.random.Generator) -> int:
        if self.log:
            # floor of a log-uniform draw on [low, high+1): each integer gets mass ∝ log((k+1)/k)
            x = math.exp(rng.uniform(math.log(self.low), math.log(self.high + 1)))
            return int(min(max(math.floor(x), self.low), self.high))
        return int(rng.integers(self.low, self.high + 1))

    def mutate(self, value: Scalar, rng: np.random.Generator, scale: float) -> int:
        """A gaussian step of ``scale`` × the (log-)range, rounded; sometimes a snap to a bound."""
        if self.low == self.high:
            return self.low
        if rng.random() < _SNAP_P:
            return self.low if rng.random() < 0.5 else self.high
        cur = self.clip(float(value))
        u = self.to_unit(cur) + rng.normal(0.0, scale)
        new = self.from_unit(min(max(u, 0.0), 1.0))
        if new == cur:  # a step too small to move an integer still moves it by one
            step = 1 if rng.random() < 0.5 else -1
            new = cur + step if self.low <= cur + step <= self.high else cur - step
        return new

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "int", "low": self.low, "high": self.high}
        if self.log:
            d["log"] = True
        return d

    def describe(self) -> str:
        return f"[{self.low}, {self.high}]" + (" log" if self.log else "")


@dataclass(frozen=True)
class FloatParam:
    """A real knob on ``[low, high]``; ``log`` searches it on a log scale (``low`` > 0)."""

    name: str
    low: float
    high: float
    log: bool = False
    kind: ClassVar[str] = "float"

    def __post_init__(self) -> None:
        _check_numeric(self.name, self.low, self.high, self.log)

    def to_unit(self, value: float) -> float:
        return _to_unit(value, self.low, self.high, self.log)

    def from_unit(self, u: float) -> float:
        return self.clip(unit_to_value(u, self.low, self.high, self.log))

    def coerce(self, value: object, key: str = "value") -> float:
        if not is_number(value) or not math.isfinite(float(value)):  # type: ignore[arg-type]
            raise knob_error(self.name, key, f"expected a finite number, got {value!r}")
        return float(value)  # type: ignore[arg-type]

    def clip(self, value: float) -> float:
        return float(min(max(float(value), self.low), self.high))

    def contains(self, value: object) -> bool:
        return is_number(value) and self.low <= float(value) <= self.high  # type: ignore[arg-type]

    def sample(self, rng: np.random.Generator) -> float:
        return self.from_unit(float(rng.random()))

    def mutate(self, value: Scalar, rng: np.random.Generator, scale: float) -> float:
        """A gaussian step of ``scale`` × the (log-)range, clipped; sometimes a snap to a bound."""
        if self.low == self.high:
            return self.low
        if rng.random() < _SNAP_P:
            return self.low if rng.random() < 0.5 else self.high
        u = self.to_unit(self.clip(float(value))) + rng.normal(0.0, scale)
        return self.from_unit(min(max(u, 0.0), 1.0))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "float", "low": self.low, "high": self.high}
        if self.log:
            d["log"] = True
        return d

    def describe(self) -> str:
        return f"[{self.low:.6g}, {self.high:.6g}]" + (" log" if self.log else "")


@dataclass(frozen=True)
class ChoiceParam:
    """A categorical knob; ``choices`` in declaration order."""

    name: str
    choices: tuple[Scalar, ...]
    kind: ClassVar[str] = "choice"

    def __post_init__(self) -> None:
        if not self.choices:
            raise knob_error(self.name, "choices", "must not be empty")
        for i, c in enumerate(self.choices):
            if not isinstance(c, str | int | float | bool):
                raise knob_error(self.name, "choices", f"choice {c!r} is not a string, number or bool")
            if any(same_scalar(c, o) for o in self.choices[:i]):
                raise knob_error(self.name, "choices", f"duplicate choice {c!r}")

    def index(self, value: object) -> int:
        for i, c in enumerate(self.choices):
            if same_scalar(c, value):
                return i
        return -1

    def coerce(self, value: object, key: str = "value") -> Scalar:
        i = self.index(value)
        if i < 0:
            raise knob_error(self.name, key, f"{value!r} is not one of {list(self.choices)!r}")
        return self.choices[i]

    def clip(self, value: object) -> Scalar:
        """``value`` when allowed, else the first allowed choice (categories have no nearest)."""
        i = self.index(value)
        return self.choices[i] if i >= 0 else self.choices[0]

    def contains(self, value: object) -> bool:
        return self.index(value) >= 0

    def sample(self, rng: np.random.Generator) -> Scalar:
        return self.choices[int(rng.integers(len(self.choices)))]

    def mutate(self, value: Scalar, rng: np.random.Generator, scale: float) -> Scalar:
        """A uniformly drawn *other* category (``scale`` does not apply to categories)."""
        others = [c for c in self.choices if not same_scalar(c, value)]
        if not others:
            return self.choices[0]
        return others[int(rng.integers(len(others)))]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "choice", "choices": list(self.choices)}

    def describe(self) -> str:
        return "{" + ", ".join(fmt_scalar(c) for c in self.choices) + "}"


@dataclass(frozen=True)
class BoolParam:
    """An on/off knob."""

    name: str
    kind: ClassVar[str] = "bool"

    def coerce(self, value: object, key: str = "value") -> bool:
        if not isinstance(value, bool):
            raise knob_error(self.name, key, f"expected true or false, got {value!r}")
        return value

    def clip(self, value: object) -> bool:
        return bool(value)

    def contains(self, value: object) -> bool:
        return isinstance(value, bool)

    def sample(self, rng: np.random.Generator) -> bool:
        return bool(rng.random() < 0.5)

    def mutate(self, value: Scalar, rng: np.random.Generator, scale: float) -> bool:
        return not bool(value)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "bool"}

    def describe(self) -> str:
        return "{false, true}"


Param: TypeAlias = IntParam | FloatParam | ChoiceParam | BoolParam
NumericParam: TypeAlias = IntParam | FloatParam


def _check_numeric(name: str, low: float, high: float, log: bool) -> None:
    for key, v in (("low", low), ("high", high)):
        if not is_number(v) or not math.isfinite(v):
            raise knob_error(name, key, f"expected a finite number, got {v!r}")
    if not isinstance(log, bool):
        raise knob_error(name, "log", f"expected true or false, got {log!r}")
    if low > high:
        raise knob_error(name, "low", f"low {low} is greater than high {high}")
    if log and low <= 0:
        raise knob_error(name, "log", f"a log scale needs low > 0, got low {low}")


def _to_unit(value: float, low: float, high: float, log: bool) -> float:
    if high == low:
        return 0.5
    if log:
        return (math.log(max(value, low)) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


def unit_to_value(u: float, low: float, high: float, log: bool) -> float:
    if log:
        return math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    return low + u * (high - low)


def parse_param(name: str, decl: Mapping[str, object]) -> tuple[Param, Scalar | None]:
    """Parse one declaration; returns the parameter and its ``fixed`` value (None when free).

    Keys whose value is None count as absent. Errors are ValueErrors naming the knob and the key.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"knob names must be non-empty strings, got {name!r}")
    if not isinstance(decl, Mapping):
        raise knob_error(name, "declaration", f"expected a mapping, got {type(decl).__name__}")
    d = {k: v for k, v in decl.items() if v is not None}
    unknown = sorted(str(k) for k in d if k not in _DECL_KEYS)
    if unknown:
        raise knob_error(name, unknown[0], f"unknown key (allowed: {', '.join(sorted(_DECL_KEYS))})")
    kind = d.get("type")
    if kind not in _KEYS_BY_TYPE:
        raise knob_error(name, "type", f"expected one of int, float, choice, bool, got {kind!r}")
    extra = sorted(str(k) for k in d if k not in _KEYS_BY_TYPE[str(kind)])
    if extra:
        raise knob_error(name, extra[0], f"does not apply to type {kind}")
    param: Param
    if kind in ("int", "float"):
        for key in ("low", "high"):
            if key not in d:
                raise knob_error(name, key, f"required for type {kind}")
        log = d.get("log", False)
        if not isinstance(log, bool):
            raise knob_error(name, "log", f"expected true or false, got {log!r}")
        if kind == "int":
            probe = IntParam(name, 0, 0)
            param = IntParam(name, probe.coerce(d["low"], "low"), probe.coerce(d["high"], "high"), log)
        else:
            fprobe = FloatParam(name, 0.0, 0.0)
            param = FloatParam(name, fprobe.coerce(d["low"], "low"), fprobe.coerce(d["high"], "high"), log)
    elif kind == "choice":
        choices = d.get("choices")
        if not isinstance(choices, list | tuple):
            raise knob_error(name, "choices", f"expected a non-empty list, got {choices!r}")
        param = ChoiceParam(name, tuple(choices))
    else:
        param = BoolParam(name)
    fixed: Scalar | None = None
    if "fixed" in d:
        fixed = param.coerce(d["fixed"], "fixed")
        if not param.contains(fixed):
            raise knob_error(name, "fixed", f"{d['fixed']!r} is outside {param.describe()}")
    return param, fixed
