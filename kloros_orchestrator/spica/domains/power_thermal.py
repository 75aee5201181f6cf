"""Power/thermal domain: RAPL power limits, boost/turbo and the platform profile where the host has them."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import ClassVar

from loguru import logger

from kloros_orchestrator.spica.base import SpicaDomain
from kloros_orchestrator.spica.knobs import Knob, read_text
from kloros_orchestrator.spica.registry import register

_POWERCAP = "sys/class/powercap"
_RAPL_ZONE = re.compile(r"^intel-rapl:\d+$")  # package-level zones only


def _read_int(path: Path) -> int | None:
    with contextlib.suppress(OSError, UnicodeDecodeError, ValueError):
        return int(read_text(path).strip())
    return None


@register
class SpicaPowerThermal(SpicaDomain):
    """Package power limits (powercap constraint 0), boost, intel_pstate no_turbo, platform profile."""

    name: ClassVar[str] = "power_thermal"
    description: ClassVar[str] = "power limits and boost"

    def declare_knobs(self) -> list[Knob]:
        knobs: list[Knob] = []
        base = self.sysfs_root / _POWERCAP
        zones: list[str] = []
        with contextlib.suppress(OSError):
            zones = sorted(p.name for p in base.iterdir() if _RAPL_ZONE.match(p.name))
        if not zones:
            logger.info("power_thermal: no intel-rapl zone under {}: no power-limit knobs", base)
        for zone in zones:
            current = _read_int(base / zone / "constraint_0_power_limit_uw")
            top = _read_int(base / zone / "constraint_0_max_power_uw") or current
            if not top or top < 10:
                continue  # nothing to anchor a range to: the file is absent or reads 0
            idx = zone.split(":")[1]
            knobs.append(Knob(
                f"rapl{idx}_limit_uw", "int", low=max(1, top * 3 // 10), high=top,
                path=f"{_POWERCAP}/{zone}/constraint_0_power_limit_uw",
                description=f"long-term package power limit of {zone} (µW)",
            ))
        knobs += [
            Knob("boost", "bool", path="sys/devices/system/cpu/cpufreq/boost", description="frequency boost"),
            Knob("no_turbo", "bool", path="sys/devices/system/cpu/intel_pstate/no_turbo",
                 description="intel_pstate: turbo off"),
            Knob("platform_profile", "choice", path="sys/firmware/acpi/platform_profile",
                 choices_path="sys/firmware/acpi/platform_profile_choices",
                 description="ACPI platform profile (choices offered by the firmware)"),
        ]
        return knobs
