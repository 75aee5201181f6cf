"""Safety caps: ``caps/<domain>.yaml`` maps a KPI name to a limit.

Accepted forms per KPI: ``kpi: 500`` (an upper limit) or ``kpi: {max: 500}`` / ``{min: 10}`` / both.
The same ``check_caps`` serves live sensor samples (partial dicts) and finished trials: a KPI
that is absent from the dict is not a breach.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import msgspec
import yaml

_BOUNDS: Final = ("min", "max")


class CapLimit(msgspec.Struct, frozen=True):
    """Allowed range of one KPI; a bound that is None is not checked."""

    min: float | None = None
    max: float | None = None


def _as_limit(value: object) -> float | None:
    # bool is an int subclass; "true" is not a limit.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def parse_caps(
    raw: object, *, known_kpis: set[str] | frozenset[str], file: str
) -> tuple[dict[str, CapLimit], list[str]]:
    """Validate a loaded caps document; returns the caps and problems as ``file: key: problem``.

    An empty document (``None``) means no caps. Entries with problems are left out of the caps.
    """
    if raw is None:
        return {}, []
    if not isinstance(raw, Mapping):
        return {}, [f"{file}: (top level): expected a mapping of KPI name to limit, got {type(raw).__name__}"]
    caps: dict[str, CapLimit] = {}
    problems: list[str] = []
    for key, value in raw.items():
        if not isinstance(key, str):
            problems.append(f"{file}: {key!r}: cap names must be KPI names (strings)")
            continue
        if key not in known_kpis:
            problems.append(f"{file}: {key}: unknown KPI (known: {', '.join(sorted(known_kpis))})")
            continue
        if isinstance(value, Mapping):
            limit = _parse_bounds(value, key, file, problems)
            if limit is not None:
                caps[key] = limit
            continue
        number = _as_limit(value)
        if number is None:
            problems.append(f"{file}: {key}: expected a finite number or {{min: x, max: y}}, got {value!r}")
            continue
        caps[key] = CapLimit(max=number)
    return caps, problems


def _parse_bounds(
    value: Mapping[object, object], key: str, file: str, problems: list[str]
) -> CapLimit | None:
    ok = True
    bounds: dict[str, float] = {}
    for sub, bound in value.items():
        if sub not in _BOUNDS:
            problems.append(f"{file}: {key}.{sub}: unknown field (expected min or max)")
            ok = False
            continue
        number = _as_limit(bound)
        if number is None:
            problems.append(f"{file}: {key}.{sub}: expected a finite number, got {bound!r}")
            ok = False
            continue
        bounds[str(sub)] = number
    if not ok:
        return None
    if not bounds:
        problems.append(f"{file}: {key}: empty limit (give min, max or both)")
        return None
    lo, hi = bounds.get("min"), bounds.get("max")
    if lo is not None and hi is not None and lo > hi:
        problems.append(f"{file}: {key}: min {lo!r} is greater than max {hi!r}")
        return None
    return CapLimit(min=lo, max=hi)


def load_caps(
    path: Path, *, known_kpis: set[str] | frozenset[str], file: str | None = None
) -> tuple[dict[str, CapLimit], list[str]]:
    """Read and validate one caps YAML file; unreadable or malformed files are problems, not crashes."""
    label = file if file is not None else str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        return {}, [f"{label}: (file): cannot read: {exc.strerror or type(exc).__name__}"]
    except yaml.YAMLError as exc:
        return {}, [f"{label}: (file): not valid YAML: {exc}"]
    return parse_caps(raw, known_kpis=known_kpis, file=label)


def _fmt(x: float) -> str:
    return repr(round(float(x), 3))


def check_caps(caps: Mapping[str, CapLimit], kpis: Mapping[str, float]) -> list[str]:
    """Readable breach reasons (e.g. ``p95_latency_us 812.0 > cap 500.0``); empty when within caps."""
    breaches: list[str] = []
    for kpi, limit in caps.items():
        value = kpis.get(kpi)
        if value is None:
            continue
        if limit.max is not None and value > limit.max:
            breaches.append(f"{kpi} {_fmt(value)} > cap {_fmt(limit.max)}")
        if limit.min is not None and value < limit.min:
            breaches.append(f"{kpi} {_fmt(value)} < cap min {_fmt(limit.min)}")
    return breaches
