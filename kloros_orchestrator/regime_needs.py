"""How long a regime's trial must last for every stressor to be measured; ``validate`` warns below it.

A trial whose workload stressor completes no bogo-op fails as "too short" (a zero is no measurement),
so a regime must give its slowest stressor time for a few bogo-ops. Most stressors complete hundreds
of bogo-ops per second here (the default regimes' futex, hdd, iomix, malloc, matrix, memcpy, readahead,
seek, sem, switch, vm and yield: ≥ 175 in 1 s), so any duration the configuration accepts is enough for
them. The exception is a stressor throttled by its own options, where one bogo-op is a fixed amount of
work done at a fixed rate. Modelled, from measurements with stress-ng 0.15:

* ``memrate`` with ``memrate-rd-mbs`` / ``memrate-wr-mbs``: one bogo-op is one pass of every read and
  every write method over ``memrate-bytes``, each at the given rate, so it lasts about
  ``MEMRATE_METHODS × bytes / rate`` per limited side. Measured (6 s runs, one instance): 16 MiB at
  200 MB/s 2 bogo-ops, 8 MiB at 200 MB/s and 16 MiB at 400 MB/s and 4 MiB at 100 MB/s 5 each — about
  30 passes of ``bytes / rate`` per bogo-op, half of them reads and half writes.

A regime needs :data:`OPS_NEEDED` expected bogo-ops of its slowest stressor: with one expected op a
trial can still end before the first completes (16 MiB at 200 MB/s: 0 bogo-ops in 2 s, 1 in 3–4 s, 2 in
5 s). The shortest trial a regime can get is its ``min_seconds`` when it declares one (every shorter
override is raised to it), else the shortest of its duration and the overrides (``dream.trial_seconds``,
``dream.first_look_seconds``, ``phase.trial_seconds``). Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from kloros_orchestrator.model import RegimeSpec, StressorSpec

MEMRATE_METHODS: Final = 15  # read (or write) methods per memrate bogo-op, each one pass over the bytes
OPS_NEEDED: Final = 2.0  # expected bogo-ops of the slowest stressor a trial must allow for
# The model is good to about 10 % (the passes of 8 MiB and 16 MiB above differ by that): a trial within
# it of the need is not warned about (memory's idle declares 5 s for a modelled 5.03 s).
MODEL_TOLERANCE: Final = 0.1
_SIZE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgKMG]?)[bB]?\s*$")
_UNIT: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
MEMRATE_DEFAULT_BYTES: Final = 256 << 20  # stress-ng's default --memrate-bytes


def size_bytes(value: object) -> float | None:
    """stress-ng's size notation (``16M``, ``512k``, ``1g``, a plain number of bytes); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    m = _SIZE.match(str(value))
    return float(m.group(1)) * _UNIT[m.group(2).lower()] if m else None


def seconds_per_bogo_op(stressor: StressorSpec) -> float | None:
    """About how long one bogo-op of ``stressor`` lasts when its options throttle it; None when it is
    not throttled (then it is fast: see the module docstring) or the options cannot be read."""
    if stressor.name != "memrate":
        return None
    nbytes = size_bytes(stressor.options.get("memrate-bytes", MEMRATE_DEFAULT_BYTES))
    if nbytes is None:
        return None
    total = 0.0
    for side in ("memrate-rd-mbs", "memrate-wr-mbs"):
        rate = stressor.options.get(side)
        if isinstance(rate, int | float) and not isinstance(rate, bool) and rate > 0:
            total += MEMRATE_METHODS * nbytes / (float(rate) * 1e6)
    return total or None


def seconds_needed(spec: RegimeSpec) -> tuple[float, str] | None:
    """The shortest trial that measures every stressor of ``spec``, with the stressor that sets it."""
    slowest = max(
        ((per_op, s.name) for s in spec.stressors if (per_op := seconds_per_bogo_op(s)) is not None),
        default=None,
    )
    return None if slowest is None else (OPS_NEEDED * slowest[0], slowest[1])


def shortest_trial(spec: RegimeSpec, overrides: Mapping[str, float | None]) -> tuple[float, str]:
    """The shortest trial the regime can get, and what sets it (``min_seconds``, ``duration`` or a key)."""
    if spec.min_seconds is not None:
        return spec.min_seconds, "min_seconds"
    shortest = (spec.duration, "duration")
    for key, value in overrides.items():
        if value is not None and value < shortest[0]:
            shortest = (value, key)
    return shortest


def duration_warnings(
    where: str, regimes: Mapping[str, RegimeSpec], overrides: Mapping[str, float | None]
) -> list[str]:
    """``<where>: <regime>: ...`` for every regime whose shortest trial measures some stressor as zero."""
    out: list[str] = []
    for name, spec in regimes.items():
        need = seconds_needed(spec)
        if need is None:
            continue
        seconds, stressor = need
        have, source = shortest_trial(spec, overrides)
        if have >= seconds * (1.0 - MODEL_TOLERANCE):
            continue
        setter = f"its {source}" if source in ("min_seconds", "duration") else source
        out.append(
            f"{where}: {name}: {stressor} needs trials of at least {seconds:.3g} s (about "
            f"{seconds / OPS_NEEDED:.3g} s per bogo-op), but {setter} allows {have:g} s: such a trial "
            f"measures no bogo-op and fails as too short; declare min_seconds: {seconds:.2g} or more"
        )
    return out


__all__ = [
    "MEMRATE_METHODS",
    "MODEL_TOLERANCE",
    "OPS_NEEDED",
    "duration_warnings",
    "seconds_needed",
    "seconds_per_bogo_op",
    "shortest_trial",
    "size_bytes",
]
