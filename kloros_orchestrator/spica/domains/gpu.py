"""GPU domain: NVIDIA power limit and application clocks through nvidia-smi (argv only, no shell)."""

from __future__ import annotations

import math
import shutil
import subprocess
from typing import ClassVar

from loguru import logger

from kloros_orchestrator.errors import DomainError
from kloros_orchestrator.model import Scalar
from kloros_orchestrator.spica.base import SpicaDomain
from kloros_orchestrator.spica.knobs import Discovered, Knob
from kloros_orchestrator.spica.registry import register

POWER = "power_limit_w"
CLOCK = "graphics_clock_mhz"
_MAX_SETTING = 100_000  # no board draws 100 kW or clocks at 100 GHz
_QUERY = (
    "power.limit,power.min_limit,power.max_limit,"
    "clocks.applications.memory,clocks.applications.graphics,clocks.max.graphics"
)


def _number(text: str) -> float | None:
    try:
        return float(text.strip())
    except ValueError:
        return None  # "[N/A]", "[Not Supported]"


@register
class SpicaGpu(SpicaDomain):
    """Power limit (``nvidia-smi -pl``) and graphics application clock (``-ac MEM,GR``) of one GPU.

    Originals come from ``nvidia-smi --query-gpu`` and are journaled as values under the key
    ``nvidia-smi:gpu<index>:<knob>``; a restore (also of a crashed run's journal, at start-up)
    builds the argv from this domain's configured tool and index and the value, never from the
    journal. Runs go through ``journal.runner``.
    """

    name: ClassVar[str] = "gpu"
    description: ClassVar[str] = "NVIDIA power limit and clocks"
    option_keys: ClassVar[frozenset[str]] = frozenset({"gpu_index", "nvidia_smi"})
    _current: dict[str, float] | None = None

    def _validate_options(self) -> None:
        idx = self.options.get("gpu_index", 0)
        if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
            raise DomainError(f"gpu: option gpu_index must be an integer >= 0 (got {idx!r})")
        tool = self.options.get("nvidia_smi")
        if tool is not None and not isinstance(tool, str):
            raise DomainError("gpu: option nvidia_smi must be a path")

    @property
    def tool(self) -> str | None:
        explicit = self.options.get("nvidia_smi")
        return str(explicit) if explicit else shutil.which("nvidia-smi")

    def _base(self) -> list[str]:
        if self.tool is None:
            raise DomainError("gpu: nvidia-smi not found")
        return [self.tool, "-i", str(self.options.get("gpu_index", 0))]

    def _key(self, knob: str) -> str:
        return f"nvidia-smi:gpu{self.options.get('gpu_index', 0)}:{knob}"

    def unsupported_reason(self) -> str | None:
        if self.tool is None:
            return "nvidia-smi not found (no NVIDIA GPU driver)"
        try:
            self._current = self.query()
        except (OSError, subprocess.SubprocessError) as exc:
            return f"nvidia-smi query failed: {exc}"
        return None

    def query(self) -> dict[str, float]:
        """Current values of the GPU; a field the GPU reports as N/A is absent."""
        out = self.journal.runner([*self._base(), f"--query-gpu={_QUERY}", "--format=csv,noheader,nounits"])
        lines = out.strip().splitlines()
        fields = [f.strip() for f in lines[0].split(",")] if lines else []
        values = {n: _number(v) for n, v in zip(_QUERY.split(","), fields, strict=False)}
        return {n: v for n, v in values.items() if v is not None}

    def declare_knobs(self) -> list[Knob]:
        cur = self._current or {}
        knobs: list[Knob] = []
        lo, hi = cur.get("power.min_limit"), cur.get("power.max_limit")
        if lo is not None and hi is not None and lo < hi:
            knobs.append(Knob(POWER, "float", low=lo, high=hi, description="board power limit (W)"))
        else:
            logger.info("gpu: knob {} dropped: {}", POWER, "power limits not reported")
        top = cur.get("clocks.max.graphics")
        if top is not None and top >= 200:
            knobs.append(Knob(CLOCK, "int", low=int(top // 2), high=int(top),
                              description="graphics application clock (MHz)"))
        else:
            logger.info("gpu: knob {} dropped: {}", CLOCK, "maximum graphics clock not reported")
        return knobs

    def _set_argv(self, knob: str, value: Scalar, cur: dict[str, float]) -> list[str]:
        if knob == POWER:
            return [*self._base(), "-pl", f"{float(value):.2f}"]
        mem = cur.get("clocks.applications.memory")
        if mem is None:
            raise DomainError("gpu: memory application clock unknown")
        return [*self._base(), "-ac", f"{int(mem)},{int(value)}"]

    def _original(self, knob: str, cur: dict[str, float]) -> float | None:
        return cur.get("power.limit" if knob == POWER else "clocks.applications.graphics")

    def discover_external(self, knob: Knob) -> Discovered:
        cur = self._current or {}
        original = self._original(knob.name, cur)
        if original is None:
            return Discovered(None, None, "current value not reported (N/A)")
        try:
            stock = knob.coerce(original if knob.type == "float" else round(original))
            # Same-value write: proves the driver accepts the setting without changing anything.
            self.journal.runner(self._set_argv(knob.name, stock, cur))
        except (OSError, subprocess.SubprocessError, DomainError) as exc:
            return Discovered(None, None, f"not settable: {exc}")
        return Discovered(knob, stock)

    def journal_external(self, knob: Knob) -> None:
        cur = self.query()
        original = self._original(knob.name, cur)
        if original is None:
            raise DomainError(f"gpu: cannot read the current {knob.name}")
        value: Scalar = original if knob.type == "float" else int(original)
        self.journal.record(self._key(knob.name), knob.encode(value), self.name, knob.name)

    def apply_external(self, knob: Knob, value: Scalar) -> None:
        self.journal.runner(self._set_argv(knob.name, value, self.query()))

    def restore_knobs(self) -> list[Knob]:
        # Declared before any query (start-up restore): the ranges are only plausibility bounds.
        top = _MAX_SETTING
        return [Knob(POWER, "float", low=1.0, high=top), Knob(CLOCK, "int", low=1, high=top)]

    def external_keys(self, knob: Knob) -> tuple[str, ...]:
        return (self._key(knob.name),)

    def restore_external(self, knob: Knob, original: str) -> None:
        value = float(original)  # older journals wrote the clock as "1500.0"; anything else: ValueError
        if not (math.isfinite(value) and 0 < value <= _MAX_SETTING):
            raise ValueError(f"{knob.name}: {original!r} is not a plausible setting")
        self.apply_external(knob, value if knob.name == POWER else round(value))
