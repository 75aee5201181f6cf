"""The run manifest: what produced the numbers (code, config, host, kernel, stress-ng, seed)."""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING, Any

from kloros_orchestrator import __version__
from kloros_orchestrator.spica.base import code_hash
from kloros_orchestrator.store import atomic_write_json

if TYPE_CHECKING:
    from kloros_orchestrator.runtime.driver import Daemon


def manifest_fields(daemon: Daemon) -> dict[str, Any]:
    uname = platform.uname()
    return {
        "code_hash": code_hash(),
        "config_hash": daemon.loaded.config_hash,
        "config_path": str(daemon.loaded.path) if daemon.loaded.path else "embedded default",
        "host": uname.node,
        "kernel": uname.release,
        "machine": uname.machine,
        "cpus": os.cpu_count(),
        "stress_ng_version": daemon.stress_ng_version,
        "stress_ng": daemon.stress_ng,
        "seed": daemon.cfg.seed,
        "version": __version__,
        "python": platform.python_version(),
    }


def write_run_manifest(daemon: Daemon) -> None:
    from kloros_orchestrator.runtime.driver import iso

    data = {
        "schema": "run_manifest.v1",
        "run_id": daemon.run_id,
        "started_at": iso(daemon.started_at),
        "pid": os.getpid(),
        **manifest_fields(daemon),
        "domains": daemon.dream.domain_status(),
        "sensors_missing": dict(daemon.sensors.missing),
    }
    atomic_write_json(daemon.paths.manifests / f"{daemon.run_id}.json", data)
