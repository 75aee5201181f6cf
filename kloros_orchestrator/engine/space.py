"""Search spaces: the knobs of one search, their current bounds, and the moves that adapt them.

The knobs themselves (types, declaration form, sampling, mutation) are in ``engine/params.py``;
:meth:`SearchSpace.to_dict` emits the same declaration form, dropped knobs with ``"fixed"``.

A :class:`SearchSpace` remembers the bounds each knob was declared with: narrowing, widening and
recommendations move the *current* bounds, never beyond the declared ones. A dropped knob keeps
its place in every genome, at its fixed value, so genomes always carry every knob.

Pure: no I/O, randomness only from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

import numpy as np

from kloros_orchestrator.engine.params import (
    BoolParam,
    ChoiceParam,
    FloatParam,
    IntParam,
    NumericParam,
    Param,
    fmt_scalar,
    is_number,
    knob_error,
    parse_param,
    same_scalar,
    unit_to_value,
)
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

_REC_ACTIONS: Final = ("narrow", "widen", "drop", "keep")


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
                raise knob_error(p.name, "name", "declared twice")
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
                raise knob_error(name, "bounds", f"current {p.describe()} exceeds declared bounds")
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
            f"{n}={fmt_scalar(self._fixed[n])}" if n in self._fixed else f"{n}{p.describe()}"
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
                raise knob_error(n, "genome", "missing from the genome")
            v = genome[n]
            if isinstance(p, IntParam | FloatParam):
                if not is_number(v) or not math.isfinite(float(v)):
                    raise knob_error(n, "genome", f"expected a number, got {v!r}")
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
                if not (same_scalar(v, f) or (is_number(v) and is_number(f) and v == f)):
                    return False
            elif not p.contains(genome[n]):
                return False
        return True

    # adaptation moves: each returns a readable description of what it did

    def set_bounds(self, name: str, low: float, high: float) -> str:
        """Set a numeric knob's bounds, intersected with its declared bounds (frees a dropped knob)."""
        orig = self._numeric(name, self._original)
        if not (is_number(low) and is_number(high)) or not (math.isfinite(low) and math.isfinite(high)):
            raise knob_error(name, "bounds", f"expected finite numbers, got [{low!r}, {high!r}]")
        if low > high:
            raise knob_error(name, "low", f"low {low} is greater than high {high}")
        lo, hi = max(low, orig.low), min(high, orig.high)
        if lo > hi:
            raise knob_error(name, "bounds", f"[{low}, {high}] does not overlap declared {orig.describe()}")
        if isinstance(orig, IntParam):
            ilo, ihi = math.ceil(lo), math.floor(hi)
            if ilo > ihi:
                raise knob_error(name, "bounds", f"[{low}, {high}] holds no integer")
            new: Param = replace(orig, low=int(ilo), high=int(ihi))
        else:
            new = replace(orig, low=float(lo), high=float(hi))
        return self._replace(name, new)

    def narrow(self, name: str, center: float, factor: float) -> str:
        """Shrink a numeric knob's range to ``factor`` × its width around ``center``.

        Works in log space for log knobs; the new range stays inside the current one.
        """
        if not 0 < factor <= 1:
            raise knob_error(name, "factor", f"narrowing needs 0 < factor <= 1, got {factor}")
        cur = self._numeric(name, self._current)
        if not is_number(center) or not math.isfinite(center):
            raise knob_error(name, "center", f"expected a finite number, got {center!r}")
        c = cur.to_unit(min(max(center, cur.low), cur.high))
        half = factor / 2
        lo_u, hi_u = c - half, c + half
        if lo_u < 0:
            lo_u, hi_u = 0.0, hi_u - lo_u
        if hi_u > 1:
            lo_u, hi_u = lo_u - (hi_u - 1), 1.0
        lo = unit_to_value(max(lo_u, 0.0), cur.low, cur.high, cur.log)
        hi = unit_to_value(min(hi_u, 1.0), cur.low, cur.high, cur.log)
        if isinstance(cur, IntParam):
            lo, hi = math.floor(lo + 1e-9), math.ceil(hi - 1e-9)
        return self.set_bounds(name, lo, hi)

    def widen(self, name: str, factor: float = 2.0) -> str:
        """Grow a knob's range ``factor`` × around its centre, at most to the declared bounds.

        A choice knob gets all its declared choices back; a dropped knob is freed first.
        """
        if factor < 1:
            raise knob_error(name, "factor", f"widening needs factor >= 1, got {factor}")
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
        lo = unit_to_value(lo_u, orig.low, orig.high, orig.log)
        hi = unit_to_value(hi_u, orig.low, orig.high, orig.log)
        if isinstance(orig, IntParam):
            lo, hi = math.floor(lo + 1e-9), math.ceil(hi - 1e-9)
        return released + self.set_bounds(name, min(lo, cur.low), max(hi, cur.high))

    def drop(self, name: str, fixed_value: object) -> str:
        """Freeze a knob at ``fixed_value`` (within its declared bounds); it stays in genomes."""
        orig = self._original[self._known(name)]
        v = orig.coerce(fixed_value, "fixed")
        if not orig.contains(v):
            raise knob_error(name, "fixed", f"{fixed_value!r} is outside declared {orig.describe()}")
        self._fixed[name] = v
        cur = self._current[name]
        if not cur.contains(v):  # keep current bounds consistent with the frozen value
            self._current[name] = _hull(cur, v)
        return f"{name}: dropped, fixed at {fmt_scalar(v)}"

    def release(self, name: str) -> str:
        """Search a dropped knob again (within its current bounds)."""
        if self._fixed.pop(self._known(name), None) is None:
            return f"{name}: not dropped"
        return f"{name}: released, searched again in {self._current[name].describe()}"

    def restrict_choices(self, name: str, choices: Sequence[object]) -> str:
        """Limit a choice knob to a non-empty subset of its declared choices."""
        orig = self._original[self._known(name)]
        if not isinstance(orig, ChoiceParam):
            raise knob_error(
                name, "choices", f"restricting choices needs a choice knob, {name} is {orig.kind}"
            )
        if isinstance(choices, str) or not isinstance(choices, Sequence) or not choices:
            raise knob_error(
                name, "choices", f"expected a non-empty list of declared choices, got {choices!r}"
            )
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
            raise knob_error(name, "recommendation", f"expected a mapping, got {rec!r}")
        action = rec.get("action")
        if action not in _REC_ACTIONS:
            raise knob_error(name, "action", f"expected one of {', '.join(_REC_ACTIONS)}, got {action!r}")
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
                raise knob_error(name, "value", "a drop recommendation needs the value to freeze at")
            return self.drop(name, value)
        released = self.release(name) + "; " if name in self._fixed else ""
        cur = self._current[name]
        if action == "narrow":
            if isinstance(orig, ChoiceParam):
                if choices is None:
                    raise knob_error(name, "choices", "narrowing a choice knob needs choices")
                return released + self.restrict_choices(name, choices)
            if isinstance(orig, BoolParam):
                raise knob_error(
                    name, "action", "a bool knob cannot be narrowed; recommend drop with a value"
                )
            if low is not None or high is not None:
                assert isinstance(cur, IntParam | FloatParam)
                lo = _number(name, "low", low) if low is not None else cur.low
                hi = _number(name, "high", high) if high is not None else cur.high
                return released + self.set_bounds(name, lo, hi)
            if value is not None:
                return released + self.narrow(name, _number(name, "value", value), 0.5)
            raise knob_error(name, "low", "a narrow recommendation needs low/high or value")
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
            raise knob_error(name, "bounds", f"bounds apply to int/float knobs, {name} is {p.kind}")
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
    if not is_number(v) or not math.isfinite(v):  # type: ignore[arg-type]
        raise knob_error(name, key, f"expected a finite number, got {v!r}")
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
    if isinstance(p, FloatParam) and is_number(v):
        return replace(p, low=min(p.low, float(v)), high=max(p.high, float(v)))
    if isinstance(p, ChoiceParam):
        return ChoiceParam(p.name, (*p.choices, v))
    return p
