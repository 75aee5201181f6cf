"""CPU domain: core utilization, placement and priority of the workload; frequency policy where present."""

from __future__ import annotations

from typing import ClassVar

from kloros_orchestrator.model import Genome
from kloros_orchestrator.spica.base import (
    AFFINITY,
    NICE,
    SCHED_POLICY,
    WORKERS,
    SpicaDomain,
    affinity_layouts,
)
from kloros_orchestrator.spica.knobs import Knob
from kloros_orchestrator.spica.registry import register

_CPU = "sys/devices/system/cpu"


@register
class SpicaCpu(SpicaDomain):
    """Process knobs (workers, affinity, nice, sched_policy) always; cpufreq/SMT/boost when present."""

    name: ClassVar[str] = "cpu"
    description: ClassVar[str] = "CPU utilization, placement, priority and frequency policy"

    def declare_knobs(self) -> list[Knob]:
        knobs: list[Knob] = []
        if self.cpus > 1:
            knobs.append(Knob(WORKERS, "int", low=1, high=self.cpus, scope="process", default=self.cpus,
                              description="stressor instances for 'auto' (core utilization)"))
        layouts = affinity_layouts(self.cpu_ids())
        if len(layouts) > 1:
            knobs.append(Knob(AFFINITY, "choice", choices=tuple(layouts), scope="process", default="all",
                              description="CPU set of the workload: " + ", ".join(
                                  f"{n}={list(c)}" for n, c in layouts.items())))
        knobs += [
            Knob(NICE, "int", low=-10, high=10, scope="process", default=0, description="workload niceness"),
            Knob(SCHED_POLICY, "choice", choices=("other", "batch", "idle"), scope="process",
                 default="other", description="workload scheduling policy"),
            # SMT first: restore runs in journal order, and the per-CPU knobs below need
            # every CPU back online before their originals can be written.
            Knob("smt", "choice", choices=("on", "off"), path=_CPU + "/smt/control",
                 description="simultaneous multithreading"),
            Knob("governor", "choice",
                 choices=("performance", "powersave", "schedutil", "ondemand", "conservative"),
                 path=_CPU + "/cpu{cpu}/cpufreq/scaling_governor",
                 choices_path=_CPU + "/cpu0/cpufreq/scaling_available_governors",
                 description="cpufreq governor (every CPU)"),
            Knob("epp", "choice",
                 choices=("performance", "balance_performance", "balance_power", "power"),
                 path=_CPU + "/cpu{cpu}/cpufreq/energy_performance_preference",
                 choices_path=_CPU + "/cpu0/cpufreq/energy_performance_available_preferences",
                 description="energy/performance preference (every CPU)"),
            Knob("boost", "bool", path=_CPU + "/cpufreq/boost", description="frequency boost"),
        ]
        return knobs

    def normalize_genome(self, genome: Genome) -> Genome:
        # intel_pstate refuses any EPP but "performance" (EBUSY) under the performance governor.
        by_name = {k.name: k for k in self.knobs}
        epp = by_name.get("epp")
        if epp is not None and genome.get("governor") == "performance" and "performance" in epp.choices:
            return {**genome, "epp": "performance"}
        return genome
