"""GPU domain: NVIDIA power limit and application clocks through nvidia-smi (argv only, no shell)."""

from __future__ import annotations

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

    Originals come from ``nvidia-smi --query-gpu`` and are journaled as the argv that sets them
    back, so a crash journal restores without this class. Runs go through ``journal.runner``.
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
        assert self.tool is not None
        return [self.tool, "-i", str(self.options.get("gpu_index", 0))]

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
        self.journal.record(
            f"nvidia-smi:gpu{self.options.get('gpu_index', 0)}:{knob.name}",
            repr(original),
            self.name,
            knob.name,
            restore_argv=self._set_argv(knob.name, value, cur),
        )

    def apply_external(self, knob: Knob, value: Scalar) -> None:
        self.journal.runner(self._set_argv(knob.name, value, self.query()))
