"""Search spaces: typed knobs, their current bounds, and the moves that adapt them.

A knob is declared as ``{"type": "int"|"float"|"choice"|"bool", "low", "high", "log", "choices"}``
(the domains' knob form, DESIGN.md "Contract: Python API"). One additive key is accepted and
emitted by :meth:`SearchSpace.to_dict`: ``"fixed": value`` marks a dropped knob frozen at a value.

A :class:`SearchSpace` remembers the bounds each knob was declared with: narrowing, widening and
recommendations move the *current* bounds, never beyond the declared ones. A dropped knob keeps
its place in every genome, at its fixed value, so genomes always carry every knob.

Pure: no I/O, randomness only from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Final, TypeAlias

import numpy as np

from kloros_orchestrator.model import Genome, Scalar

__all__ = [
    "BoolParam",
    "ChoiceParam",
    "FloatParam",
    "IntParam",
    "Param",
    "SearchSpace",
    "genome_key",
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
_REC_ACTIONS: Final = ("narrow", "widen", "drop", "keep")


def _err(name: str, key: str, problem: str) -> ValueError:
    return ValueError(f"knob {name!r}: {key}: {problem}")


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _same_scalar(a: object, b: object) -> bool:
    """Equality that keeps ``True`` and ``1`` apart (they are different choices)."""
    return type(a) is type(b) and a == b


def _fmt(v: Scalar) -> str:
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
        return self.clip(_from_unit(u, self.low, self.high, self.log))

    def coerce(self, value: object, key: str = "value") -> int:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _err(self.name, key, f"expected an integer, got {value!r}")
        if value != int(value):
            raise _err(self.name, key, f"expected an integer, got {value!r}")
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
        return self.clip(_from_unit(u, self.low, self.high, self.log))

    def coerce(self, value: object, key: str = "value") -> float:
        if not _is_number(value) or not math.isfinite(float(value)):  # type: ignore[arg-type]
            raise _err(self.name, key, f"expected a finite number, got {value!r}")
        return float(value)  # type: ignore[arg-type]

    def clip(self, value: float) -> float:
        return float(min(max(float(value), self.low), self.high))

    def contains(self, value: object) -> bool:
        return _is_number(value) and self.low <= float(value) <= self.high  # type: ignore[arg-type]

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
            raise _err(self.name, "choices", "must not be empty")
        for i, c in enumerate(self.choices):
            if not isinstance(c, str | int | float | bool):
                raise _err(self.name, "choices", f"choice {c!r} is not a string, number or bool")
            if any(_same_scalar(c, o) for o in self.choices[:i]):
                raise _err(self.name, "choices", f"duplicate choice {c!r}")

    def index(self, value: object) -> int:
        for i, c in enumerate(self.choices):
            if _same_scalar(c, value):
                return i
        return -1

    def coerce(self, value: object, key: str = "value") -> Scalar:
        i = self.index(value)
        if i < 0:
            raise _err(self.name, key, f"{value!r} is not one of {list(self.choices)!r}")
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
        others = [c for c in self.choices if not _same_scalar(c, value)]
        if not others:
            return self.choices[0]
        return others[int(rng.integers(len(others)))]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "choice", "choices": list(self.choices)}

    def describe(self) -> str:
        return "{" + ", ".join(_fmt(c) for c in self.choices) + "}"


@dataclass(frozen=True)
class BoolParam:
    """An on/off knob."""

    name: str
    kind: ClassVar[str] = "bool"

    def coerce(self, value: object, key: str = "value") -> bool:
        if not isinstance(value, bool):
            raise _err(self.name, key, f"expected true or false, got {value!r}")
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
        if not _is_number(v) or not math.isfinite(v):
            raise _err(name, key, f"expected a finite number, got {v!r}")
    if not isinstance(log, bool):
        raise _err(name, "log", f"expected true or false, got {log!r}")
    if low > high:
        raise _err(name, "low", f"low {low} is greater than high {high}")
    if log and low <= 0:
        raise _err(name, "log", f"a log scale needs low > 0, got low {low}")


def _to_unit(value: float, low: float, high: float, log: bool) -> float:
    if high == low:
        return 0.5
    if log:
        return (math.log(max(value, low)) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


def _from_unit(u: float, low: float, high: float, log: bool) -> float:
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
        raise _err(name, "declaration", f"expected a mapping, got {type(decl).__name__}")
    d = {k: v for k, v in decl.items() if v is not None}
    unknown = sorted(str(k) for k in d if k not in _DECL_KEYS)
    if unknown:
        raise _err(name, unknown[0], f"unknown key (allowed: {', '.join(sorted(_DECL_KEYS))})")
    kind = d.get("type")
    if kind not in _KEYS_BY_TYPE:
        raise _err(name, "type", f"expected one of int, float, choice, bool, got {kind!r}")
    extra = sorted(str(k) for k in d if k not in _KEYS_BY_TYPE[str(kind)])
    if extra:
        raise _err(name, extra[0], f"does not apply to type {kind}")
    param: Param
    if kind in ("int", "float"):
        for key in ("low", "high"):
            if key not in d:
                raise _err(name, key, f"required for type {kind}")
        log = d.get("log", False)
        if not isinstance(log, bool):
            raise _err(name, "log", f"expected true or false, got {log!r}")
        if kind == "int":
            probe = IntParam(name, 0, 0)
            param = IntParam(name, probe.coerce(d["low"], "low"), probe.coerce(d["high"], "high"), log)
        else:
            fprobe = FloatParam(name, 0.0, 0.0)
            param = FloatParam(name, fprobe.coerce(d["low"], "low"), fprobe.coerce(d["high"], "high"), log)
    elif kind == "choice":
        choices = d.get("choices")
        if not isinstance(choices, list | tuple):
            raise _err(name, "choices", f"expected a non-empty list, got {choices!r}")
        param = ChoiceParam(name, tuple(choices))
    else:
        param = BoolParam(name)
    fixed: Scalar | None = None
    if "fixed" in d:
        fixed = param.coerce(d["fixed"], "fixed")
        if not param.contains(fixed):
            raise _err(name, "fixed", f"{d['fixed']!r} is outside {param.describe()}")
    return param, fixed


def genome_key(genome: Mapping[str, Scalar]) -> str:
    """A canonical string for a genome (equal genomes, equal keys); JSON so it can be persisted."""
    return json.dumps({k: genome[k] for k in sorted(genome)}, separators=(",", ":"))


# --- the space ----------------------------------------------------------------------------------


class SearchSpace:
    """Ordered knobs with current bounds, declared (original) bounds and dropped (fixed) knobs."""

    def __init__(self, params: Iterable[Param], fixed: Mapping[str, Scalar] | None = None) -> None:
        self._original: dict[str, Param] = {}
        for p in params:
            if p.name in self._original:
                raise _err(p.name, "name", "declared twice")
            self._original[p.name] = p
        if not self._original:
            raise ValueError("search space has no knobs")
        self._current: dict[str, Param] = dict(self._original)
        self._fixed: dict[str, Scalar] = {}
        for name, value in (fixed or {}).items():
            self.drop(name, value)

    # construction and persistence

    @classmethod
    def from_dict(cls, decl: Mapping[str, Mapping[str, object]]) -> SearchSpace:
        """Build from the declaration form (knob name → declaration)."""
        if not isinstance(decl, Mapping):
            raise ValueError(f"search space: expected a mapping of knob name to declaration, got {decl!r}")
        params: list[Param] = []
        fixed: dict[str, Scalar] = {}
        for name, d in decl.items():
            p, f = parse_param(name, d)
            params.append(p)
            if f is not None:
                fixed[name] = f
        return cls(params, fixed)

    @classmethod
    def coerce(cls, space: SearchSpace | Mapping[str, Mapping[str, object]]) -> SearchSpace:
        """A private copy of ``space`` given as a SearchSpace or in declaration form."""
        return space.copy() if isinstance(space, SearchSpace) else cls.from_dict(space)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The declaration form with the current bounds; dropped knobs carry ``"fixed"``."""
        out: dict[str, dict[str, Any]] = {}
        for name, p in self._current.items():
            d = p.to_dict()
            if name in self._fixed:
                d["fixed"] = self._fixed[name]
            out[name] = d
        return out

    def state(self) -> dict[str, Any]:
        """Declared and current bounds, JSON-able; inverse of :meth:`from_state`."""
        return {
            "original": {n: p.to_dict() for n, p in self._original.items()},
            "current": self.to_dict(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> SearchSpace:
        space = cls.from_dict(state["original"])
        cur = cls.from_dict(state["current"])
        if cur.names != space.names:
            raise ValueError("search space state: current knobs differ from the declared knobs")
        for name in space.names:
            p = cur._current[name]
            if not _within(p, space._original[name]):
                raise _err(name, "bounds", f"current {p.describe()} exceeds declared bounds")
            space._current[name] = p
        space._fixed = dict(cur._fixed)
        return space

    def copy(self) -> SearchSpace:
        return self._clone()

    def _clone(self) -> SearchSpace:
        new = SearchSpace.__new__(SearchSpace)
        new._original = dict(self._original)
        new._current = dict(self._current)
        new._fixed = dict(self._fixed)
        return new

    # inspection

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._original)

    @property
    def params(self) -> tuple[Param, ...]:
        """Current parameters, in declaration order (dropped ones included)."""
        return tuple(self._current.values())

    @property
    def free_names(self) -> tuple[str, ...]:
        """Knobs that are searched (not dropped)."""
        return tuple(n for n in self._original if n not in self._fixed)

    @property
    def fixed(self) -> dict[str, Scalar]:
        """Dropped knobs and the values they are frozen at."""
        return dict(self._fixed)

    def param(self, name: str) -> Param:
        """The knob's current parameter (current bounds)."""
        return self._current[self._known(name)]

    def original(self, name: str) -> Param:
        """The knob as declared (the outermost bounds)."""
        return self._original[self._known(name)]

    def __len__(self) -> int:
        return len(self._original)

    def __contains__(self, name: object) -> bool:
        return name in self._original

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SearchSpace):
            return NotImplemented
        return self.state() == other.state()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        parts = [
            f"{n}={_fmt(self._fixed[n])}" if n in self._fixed else f"{n}{p.describe()}"
            for n, p in self._current.items()
        ]
        return f"SearchSpace({', '.join(parts)})"

    def _known(self, name: str) -> str:
        if name not in self._original:
            raise ValueError(f"unknown knob {name!r} (known: {', '.join(self._original)})")
        return name

    # genomes

    def sample(self, rng: np.random.Generator) -> Genome:
        """A random genome within the current bounds; dropped knobs at their fixed values."""
        return {
            n: self._fixed[n] if n in self._fixed else p.sample(rng) for n, p in self._current.items()
        }

    def clip(self, genome: Mapping[str, Scalar]) -> Genome:
        """The nearest genome inside the current bounds (keys outside the space are ignored).

        Numbers are clipped (ints rounded), an unknown category becomes the first allowed one,
        dropped knobs take their fixed value. A missing knob is a ValueError.
        """
        out: Genome = {}
        for n, p in self._current.items():
            if n in self._fixed:
                out[n] = self._fixed[n]
                continue
            if n not in genome:
                raise _err(n, "genome", "missing from the genome")
            v = genome[n]
            if isinstance(p, IntParam | FloatParam):
                if not _is_number(v) or not math.isfinite(float(v)):
                    raise _err(n, "genome", f"expected a number, got {v!r}")
                out[n] = p.clip(float(v))
            else:
                out[n] = p.clip(v)
        return out

    def contains(self, genome: Mapping[str, Scalar]) -> bool:
        """True when ``genome`` has exactly this space's knobs, each within its current bounds."""
        if set(genome) != set(self._original):
            return False
        for n, p in self._current.items():
            if n in self._fixed:
                v, f = genome[n], self._fixed[n]
                if not (_same_scalar(v, f) or (_is_number(v) and _is_number(f) and v == f)):
                    return False
            elif not p.contains(genome[n]):
                return False
        return True

    # adaptation moves: each returns a readable description of what it did

    def set_bounds(self, name: str, low: float, high: float) -> str:
        """Set a numeric knob's bounds, intersected with its declared bounds (frees a dropped knob)."""
        orig = self._numeric(name, self._original)
        if not (_is_number(low) and _is_number(high)) or not (math.isfinite(low) and math.isfinite(high)):
            raise _err(name, "bounds", f"expected finite numbers, got [{low!r}, {high!r}]")
        if low > high:
            raise _err(name, "low", f"low {low} is greater than high {high}")
        lo, hi = max(low, orig.low), min(high, orig.high)
        if lo > hi:
            raise _err(name, "bounds", f"[{low}, {high}] does not overlap declared {orig.describe()}")
        if isinstance(orig, IntParam):
            ilo, ihi = math.ceil(lo), math.floor(hi)
            if ilo > ihi:
                raise _err(name, "bounds", f"[{low}, {high}] holds no integer")
            new: Param = replace(orig, low=int(ilo), high=int(ihi))
        else:
            new = replace(orig, low=float(lo), high=float(hi))
        return self._replace(name, new)

    def narrow(self, name: str, center: float, factor: float) -> str:
        """Shrink a numeric knob's range to ``factor`` × its width around ``center``.

        Works in log space for log knobs; the new range stays inside the current one.
        """
        if not 0 < factor <= 1:
            raise _err(name, "factor", f"narrowing needs 0 < factor <= 1, got {factor}")
        cur = self._numeric(name, self._current)
        if not _is_number(center) or not math.isfinite(center):
            raise _err(name, "center", f"expected a finite number, got {center!r}")
        c = cur.to_unit(min(max(center, cur.low), cur.high))
        half = factor / 2
        lo_u, hi_u = c - half, c + half
        if lo_u < 0:
            lo_u, hi_u = 0.0, hi_u - lo_u
        if hi_u > 1:
            lo_u, hi_u = lo_u - (hi_u - 1), 1.0
        lo = _from_unit(max(lo_u, 0.0), cur.low, cur.high, cur.log)
        hi = _from_unit(min(hi_u, 1.0), cur.low, cur.high, cur.log)
        if isinstance(cur, IntParam):
            lo, hi = math.floor(lo + 1e-9), math.ceil(hi - 1e-9)
        return self.set_bounds(name, lo, hi)

    def widen(self, name: str, factor: float = 2.0) -> str:
        """Grow a knob's range ``factor`` × around its centre, at most to the declared bounds.

        A choice knob gets all its declared choices back; a dropped knob is freed first.
        """
        if factor < 1:
            raise _err(name, "factor", f"widening needs factor >= 1, got {factor}")
        released = self.release(name) + "; " if name in self._fixed else ""
        cur = self._current[self._known(name)]
        if isinstance(cur, ChoiceParam):
            return released + self._replace(name, self._original[name])
        if isinstance(cur, BoolParam):
            return released + f"{name}: unchanged {cur.describe()}"
        orig = self._numeric(name, self._original)
        lo_u, hi_u = orig.to_unit(cur.low), orig.to_unit(cur.high)
        c, half = (lo_u + hi_u) / 2, (hi_u - lo_u) * factor / 2
        if half == 0:  # a point range grows by a tenth of the declared width
            half = 0.05 * factor
        lo_u, hi_u = max(c - half, 0.0), min(c + half, 1.0)
        lo = _from_unit(lo_u, orig.low, orig.high, orig.log)
        hi = _from_unit(hi_u, orig.low, orig.high, orig.log)
        if isinstance(orig, IntParam):
            lo, hi = math.floor(lo + 1e-9), math.ceil(hi - 1e-9)
        return released + self.set_bounds(name, min(lo, cur.low), max(hi, cur.high))

    def drop(self, name: str, fixed_value: object) -> str:
        """Freeze a knob at ``fixed_value`` (within its declared bounds); it stays in genomes."""
        orig = self._original[self._known(name)]
        v = orig.coerce(fixed_value, "fixed")
        if not orig.contains(v):
            raise _err(name, "fixed", f"{fixed_value!r} is outside declared {orig.describe()}")
        self._fixed[name] = v
        cur = self._current[name]
        if not cur.contains(v):  # keep current bounds consistent with the frozen value
            self._current[name] = _hull(cur, v)
        return f"{name}: dropped, fixed at {_fmt(v)}"

    def release(self, name: str) -> str:
        """Search a dropped knob again (within its current bounds)."""
        if self._fixed.pop(self._known(name), None) is None:
            return f"{name}: not dropped"
        return f"{name}: released, searched again in {self._current[name].describe()}"

    def restrict_choices(self, name: str, choices: Sequence[object]) -> str:
        """Limit a choice knob to a non-empty subset of its declared choices."""
        orig = self._original[self._known(name)]
        if not isinstance(orig, ChoiceParam):
            raise _err(name, "choices", f"restricting choices needs a choice knob, {name} is {orig.kind}")
        if isinstance(choices, str) or not isinstance(choices, Sequence) or not choices:
            raise _err(name, "choices", f"expected a non-empty list of declared choices, got {choices!r}")
        picked = {orig.index(orig.coerce(c, "choices")) for c in choices}
        new = ChoiceParam(name, tuple(orig.choices[i] for i in sorted(picked)))
        return self._replace(name, new)

    def apply_recommendation(self, name: str, rec: Mapping[str, Any]) -> str:
        """Apply one PHASE recommendation ``{"action", "low", "high", "choices", "value", "reason"}``.

        narrow: ``low``/``high`` (numeric), ``choices`` (choice) or ``value`` (numeric centre);
        widen: grows to include ``low``/``high`` or ``choices`` if given, else doubles / restores;
        drop: freezes at ``value``; keep: nothing. Invalid input raises ValueError, space unchanged.
        """
        self._known(name)
        if not isinstance(rec, Mapping):
            raise _err(name, "recommendation", f"expected a mapping, got {rec!r}")
        action = rec.get("action")
        if action not in _REC_ACTIONS:
            raise _err(name, "action", f"expected one of {', '.join(_REC_ACTIONS)}, got {action!r}")
        trial = self._clone()  # apply to a copy first so a bad recommendation changes nothing
        msg = trial._apply(name, str(action), rec)
        self._current, self._fixed = trial._current, trial._fixed
        reason = rec.get("reason")
        return f"{msg} ({reason})" if reason else msg

    def _apply(self, name: str, action: str, rec: Mapping[str, Any]) -> str:
        orig = self._original[name]
        low, high, choices, value = rec.get("low"), rec.get("high"), rec.get("choices"), rec.get("value")
        if action == "keep":
            return f"{name}: kept {self._current[name].describe()}"
        if action == "drop":
            if value is None:
                raise _err(name, "value", "a drop recommendation needs the value to freeze at")
            return self.drop(name, value)
        released = self.release(name) + "; " if name in self._fixed else ""
        cur = self._current[name]
        if action == "narrow":
            if isinstance(orig, ChoiceParam):
                if choices is None:
                    raise _err(name, "choices", "narrowing a choice knob needs choices")
                return released + self.restrict_choices(name, choices)
            if isinstance(orig, BoolParam):
                raise _err(name, "action", "a bool knob cannot be narrowed; recommend drop with a value")
            if low is not None or high is not None:
                assert isinstance(cur, IntParam | FloatParam)
                lo = _number(name, "low", low) if low is not None else cur.low
                hi = _number(name, "high", high) if high is not None else cur.high
                return released + self.set_bounds(name, lo, hi)
            if value is not None:
                return released + self.narrow(name, _number(name, "value", value), 0.5)
            raise _err(name, "low", "a narrow recommendation needs low/high or value")
        # widen
        if isinstance(orig, ChoiceParam):
            if choices is None:
                return released + self.widen(name)
            assert isinstance(cur, ChoiceParam)
            return released + self.restrict_choices(name, [*cur.choices, *choices])
        if isinstance(orig, BoolParam):
            return released + self.widen(name)
        if low is not None or high is not None:
            assert isinstance(cur, IntParam | FloatParam)
            lo = min(_number(name, "low", low), cur.low) if low is not None else cur.low
            hi = max(_number(name, "high", high), cur.high) if high is not None else cur.high
            return released + self.set_bounds(name, lo, hi)
        return released + self.widen(name, 2.0)

    def _numeric(self, name: str, table: Mapping[str, Param]) -> NumericParam:
        p = table[self._known(name)]
        if not isinstance(p, IntParam | FloatParam):
            raise _err(name, "bounds", f"bounds apply to int/float knobs, {name} is {p.kind}")
        return p

    def _replace(self, name: str, new: Param) -> str:
        old = self._current[name]
        if name in self._fixed and not new.contains(self._fixed[name]):
            new = _hull(new, self._fixed[name])
        self._current[name] = new
        if new == old:
            return f"{name}: unchanged {new.describe()}"
        return f"{name}: {old.describe()} -> {new.describe()}"


def _number(name: str, key: str, v: object) -> float:
    if not _is_number(v) or not math.isfinite(v):  # type: ignore[arg-type]
        raise _err(name, key, f"expected a finite number, got {v!r}")
    return float(v)  # type: ignore[arg-type]


def _within(p: Param, orig: Param) -> bool:
    if type(p) is not type(orig):
        return False
    if isinstance(p, IntParam | FloatParam):
        assert isinstance(orig, IntParam | FloatParam)
        return orig.low <= p.low and p.high <= orig.high and p.log == orig.log
    if isinstance(p, ChoiceParam):
        assert isinstance(orig, ChoiceParam)
        return all(orig.contains(c) for c in p.choices)
    return True


def _hull(p: Param, v: Scalar) -> Param:
    """``p`` grown just enough to contain ``v``."""
    if isinstance(p, IntParam) and isinstance(v, int):
        return replace(p, low=min(p.low, v), high=max(p.high, v))
    if isinstance(p, FloatParam) and _is_number(v):
        return replace(p, low=min(p.low, float(v)), high=max(p.high, float(v)))
    if isinstance(p, ChoiceParam):
        return ChoiceParam(p.name, (*p.choices, v))
    return p
