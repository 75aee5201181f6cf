"""OS scheduler domain: autogroup, NUMA balancing, RR timeslice and the CFS/EEVDF tunables present."""

from __future__ import annotations

from typing import ClassVar

from kloros_orchestrator.spica.base import SpicaDomain
from kloros_orchestrator.spica.knobs import Knob
from kloros_orchestrator.spica.registry import register

_K = "proc/sys/kernel"
_DBG = "sys/kernel/debug/sched"


@register
class SpicaOsScheduler(SpicaDomain):
    """Scheduler sysctls (proc/sys/kernel) and debugfs tunables (sys/kernel/debug/sched) where present.

    Kernels move these around (5.13 moved the CFS granularities to debugfs, 6.6 replaced them with
    EEVDF's base_slice_ns), so every generation's names are declared and discovery keeps what exists.
    """

    name: ClassVar[str] = "os_scheduler"
    description: ClassVar[str] = "CPU scheduler tunables"

    def declare_knobs(self) -> list[Knob]:
        return [
            Knob("sched_autogroup_enabled", "bool", path=f"{_K}/sched_autogroup_enabled",
                 description="group tasks by session"),
            Knob("numa_balancing", "bool", path=f"{_K}/numa_balancing",
                 description="automatic NUMA page migration"),
            Knob("sched_rr_timeslice_ms", "int", low=10, high=500, log=True,
                 path=f"{_K}/sched_rr_timeslice_ms", description="SCHED_RR timeslice"),
            Knob("sched_cfs_bandwidth_slice_us", "int", low=1000, high=50000, log=True,
                 path=f"{_K}/sched_cfs_bandwidth_slice_us", description="CFS bandwidth slice"),
            Knob("sched_child_runs_first", "bool", path=f"{_K}/sched_child_runs_first",
                 description="fork: child runs first"),
            # Pre-5.13 kernels keep the CFS tunables in proc/sys/kernel.
            Knob("sched_latency_ns", "int", low=1_000_000, high=100_000_000, log=True,
                 path=f"{_K}/sched_latency_ns", description="CFS target latency"),
            Knob("sched_min_granularity_ns", "int", low=100_000, high=30_000_000, log=True,
                 path=f"{_K}/sched_min_granularity_ns", description="CFS minimum slice"),
            Knob("sched_wakeup_granularity_ns", "int", low=100_000, high=30_000_000, log=True,
                 path=f"{_K}/sched_wakeup_granularity_ns", description="CFS wakeup preemption granularity"),
            Knob("sched_migration_cost_ns", "int", low=50_000, high=5_000_000, log=True,
                 path=f"{_K}/sched_migration_cost_ns", description="task cache-hot time"),
            # debugfs (5.13+; base_slice_ns is EEVDF, 6.6+).
            Knob("base_slice_ns", "int", low=750_000, high=12_000_000, log=True,
                 path=f"{_DBG}/base_slice_ns", description="EEVDF base slice"),
            Knob("migration_cost_ns", "int", low=50_000, high=5_000_000, log=True,
                 path=f"{_DBG}/migration_cost_ns", description="task cache-hot time"),
            Knob("nr_migrate", "int", low=4, high=128, log=True, path=f"{_DBG}/nr_migrate",
                 description="tasks moved per load-balance pass"),
            Knob("latency_ns", "int", low=1_000_000, high=100_000_000, log=True,
                 path=f"{_DBG}/latency_ns", description="CFS target latency (5.13-6.5)"),
            Knob("min_granularity_ns", "int", low=100_000, high=30_000_000, log=True,
                 path=f"{_DBG}/min_granularity_ns", description="CFS minimum slice (5.13-6.5)"),
            Knob("wakeup_granularity_ns", "int", low=100_000, high=30_000_000, log=True,
                 path=f"{_DBG}/wakeup_granularity_ns", description="wakeup granularity (5.13-6.5)"),
        ]
