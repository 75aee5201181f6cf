from __future__ import annotations

from pathlib import Path

from kloros_orchestrator.spica.domains.os_scheduler import SpicaOsScheduler
from kloros_orchestrator.testing import SpicaDomainContract, write_tree

SCHED_TREE = {
    "proc/sys/kernel/sched_autogroup_enabled": "1\n",
    "proc/sys/kernel/numa_balancing": "0\n",
    "proc/sys/kernel/sched_rr_timeslice_ms": "100\n",
    "proc/sys/kernel/sched_cfs_bandwidth_slice_us": "5000\n",
    "proc/sys/kernel/sched_child_runs_first": "0\n",
    "proc/sys/kernel/sched_latency_ns": "24000000\n",
    "proc/sys/kernel/sched_min_granularity_ns": "3000000\n",
    "proc/sys/kernel/sched_wakeup_granularity_ns": "4000000\n",
    "proc/sys/kernel/sched_migration_cost_ns": "500000\n",
    "sys/kernel/debug/sched/base_slice_ns": "3000000\n",
    "sys/kernel/debug/sched/migration_cost_ns": "500000\n",
    "sys/kernel/debug/sched/nr_migrate": "32\n",
    "sys/kernel/debug/sched/latency_ns": "24000000\n",
    "sys/kernel/debug/sched/min_granularity_ns": "3000000\n",
    "sys/kernel/debug/sched/wakeup_granularity_ns": "4000000\n",
}


class TestSpicaOsSchedulerContract(SpicaDomainContract):
    domain_cls = SpicaOsScheduler

    def populate(self, root: Path) -> None:
        write_tree(root, SCHED_TREE)


def test_only_what_this_kernel_exposes_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "sysfs"
    eevdf = {k: v for k, v in SCHED_TREE.items() if "granularity" not in k and "latency_ns" not in k}
    write_tree(root, eevdf)
    dom = TestSpicaOsSchedulerContract().make_domain(root, tmp_path)
    dom.discover()
    assert dom.support == "ok"
    assert "base_slice_ns" in dom.search_space()
    assert {"sched_latency_ns", "latency_ns", "min_granularity_ns"} <= set(dom.dropped)
    assert not dom.process_scoped() and dom.parallel_limit(4) == 1
