"""The per-domain files a configuration refers to: ``regimes/<domain>.yaml`` and ``caps/<domain>.yaml``.

Both are read through :func:`~kloros_orchestrator.config_yaml.read_yaml` (bounded size, depth and
alias expansion) and checked value by value, so a trial never starts from a regime that stress-ng or
the argv checker would refuse: durations finite and at most a day, instance counts within what
stress-ng runs, option names and values that are single plain arguments.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Final

import msgspec

from kloros_orchestrator.config_checks import DAY_S, MAX_INT64, key_text, scan_values
from kloros_orchestrator.config_yaml import SHOWN_CHARS, read_yaml, shown
from kloros_orchestrator.errors import ConfigError
from kloros_orchestrator.model import REGIMES, RegimeSpec, StressorSpec

MAX_INSTANCES: Final = 4096  # stress-ng's own limit on instances per stressor
_STRESS_NG_NAME: Final = re.compile(r"[a-z0-9][a-z0-9-]*\Z")


def _option_value_problem(value: object) -> str | None:
    """Why a stressor option value cannot be one stress-ng argument (the argv checker's rules)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if -MAX_INT64 - 1 <= value <= MAX_INT64 else f"integer out of range, got {shown(value)}"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"must be a finite number, got {value}"
    if not value:
        return "must not be empty"
    if not isinstance(value, str):  # pragma: no cover - the struct only admits the types above
        return f"unsupported type {type(value).__name__}"
    if value.startswith("-"):
        return f"must not start with '-', got {shown(value)}"
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        return f"must be one argument without whitespace or control characters, got {shown(value)}"
    return None


def _check_stressor(s: StressorSpec, where: str, file: str, problems: list[str]) -> None:
    if isinstance(s.instances, int) and not 0 <= s.instances <= MAX_INSTANCES:
        count = shown(s.instances)
        problems.append(f"{file}: {where}.instances: a count from 0 to {MAX_INSTANCES}, got {count}")
    if isinstance(s.instances, str) and s.instances != "auto":
        problems.append(f"{file}: {where}.instances: a count or 'auto'")
    if not _STRESS_NG_NAME.match(s.name):
        problems.append(f"{file}: {where}.name: not a stress-ng stressor name: {shown(s.name)}")
    for opt, value in s.options.items():
        if not _STRESS_NG_NAME.match(opt):
            problems.append(f"{file}: {where}.options.{key_text(opt)}: not a stress-ng option")
            continue
        problem = _option_value_problem(value)
        if problem is not None:
            problems.append(f"{file}: {where}.options.{opt}: {problem}")


def _check_regime(name: str, raw: Any, file: str, problems: list[str]) -> RegimeSpec | None:
    try:
        spec = msgspec.convert(raw, type=RegimeSpec, strict=True)
    except msgspec.ValidationError as e:
        problems.append(f"{file}: {name}: {e}")
        return None
    before = len(problems)
    if not math.isfinite(spec.duration) or spec.duration <= 0:
        problems.append(f"{file}: {name}.duration: must be a finite number > 0, got {spec.duration}")
    elif spec.duration > DAY_S:
        problems.append(f"{file}: {name}.duration: at most {DAY_S:g} s (one day), got {spec.duration:g}")
    m = spec.min_seconds
    if m is not None and not (math.isfinite(m) and 0 < m <= spec.duration):
        problems.append(
            f"{file}: {name}.min_seconds: must be > 0 and at most the regime's duration "
            f"({spec.duration:g} s: a shorter regime would measure nothing), got {m:g}"
        )
    for i, s in enumerate(spec.stressors):
        _check_stressor(s, f"{name}.stressors[{i}]", file, problems)
    return spec if len(problems) == before else None


def load_regimes(path: Path, problems: list[str]) -> dict[str, RegimeSpec]:
    """The four regimes of one domain; every problem is added to ``problems``."""
    file = str(path)
    try:
        raw = read_yaml(path)
    except ConfigError as e:
        problems.extend(e.problems)
        return {}
    if raw is None:
        problems.append(f"{file}: (file): empty")
        return {}
    if not isinstance(raw, dict):
        problems.append(f"{file}: (top level): expected a mapping of regime name to spec")
        return {}
    for name in raw:
        if name not in REGIMES:
            problems.append(f"{file}: {key_text(name)}: unknown regime (expected {', '.join(REGIMES)})")
    out: dict[str, RegimeSpec] = {}
    for name in REGIMES:
        if name not in raw:
            problems.append(f"{file}: {name}: regime missing")
            continue
        spec = _check_regime(name, raw[name], file, problems)
        if spec is not None:
            out[name] = spec
    return out


def _shortened(value: Any) -> Any:
    """``value`` with every long text cut: caps take numbers, so text is refused and shown either way."""
    if isinstance(value, str) and len(value) > SHOWN_CHARS:
        return value[: SHOWN_CHARS - 3] + "..."
    if isinstance(value, dict):
        return {_shortened(k): _shortened(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shortened(v) for v in value]
    return value


def load_caps(path: Path, known: set[str], problems: list[str]) -> dict[str, Any]:
    """KPI name -> CapLimit of one domain (no file: no caps); every problem is added to ``problems``."""
    from kloros_orchestrator.measure.caps import parse_caps

    if not path.exists():
        return {}
    file = str(path)
    try:
        raw = read_yaml(path)
    except ConfigError as e:
        problems.extend(e.problems)
        return {}
    if isinstance(raw, dict):
        # Entries parse_caps cannot take (an integer beyond float range would end in OverflowError)
        # are reported here and left out.
        def report(key: str, problem: str) -> None:
            problems.append(f"{file}: {key}: {problem}")

        raw = {k: v for k, v in raw.items() if scan_values({k: v}, "", report, strict_keys=frozenset())}
    caps, cap_problems = parse_caps(_shortened(raw), known_kpis=known, file=file)
    problems.extend(cap_problems)
    return dict(caps)


__all__ = ["MAX_INSTANCES", "load_caps", "load_regimes"]
