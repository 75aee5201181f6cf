"""The async layer: workload processes, the status socket, sd_notify (and the driver that uses them)."""

from __future__ import annotations

from kloros_orchestrator.runtime.control import MAX_LINE_BYTES, Handler, query, serve_control
from kloros_orchestrator.runtime.notify import Notifier
from kloros_orchestrator.runtime.workloads import (
    INSTALL_HINT,
    PROBE_STRESSOR,
    StressRun,
    build_argv,
    build_command_argv,
    find_stress_ng,
    kill_all_running,
    kill_all_running_now,
    live_children,
    run_stress_ng,
    running_pids,
    stress_ng_version,
    timeout_seconds,
)

__all__ = [
    "INSTALL_HINT",
    "MAX_LINE_BYTES",
    "PROBE_STRESSOR",
    "Handler",
    "Notifier",
    "StressRun",
    "build_argv",
    "build_command_argv",
    "find_stress_ng",
    "kill_all_running",
    "kill_all_running_now",
    "live_children",
    "query",
    "run_stress_ng",
    "running_pids",
    "serve_control",
    "stress_ng_version",
    "timeout_seconds",
]
