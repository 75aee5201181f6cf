"""Start-up steps of the daemon, each a function with its inputs spelled out.

The state-directory lock, the host's time zone for ``HH:MM`` windows, the enabled SPICA domains
discovered on this host, and the run manifest. The driver calls them from ``Daemon.startup`` (the
blocking ones in a worker thread, so the event loop never waits on a disk or a probe).
"""

from __future__ import annotations

import fcntl
import os
import platform
import zoneinfo
from pathlib import Path
from typing import Any

from loguru import logger

from kloros_orchestrator import __version__
from kloros_orchestrator.config import LoadedConfig
from kloros_orchestrator.errors import KlorosError, UnsafeStateDir
from kloros_orchestrator.safefs import RefusedFile, open_regular
from kloros_orchestrator.spica.base import SpicaDomain, code_hash
from kloros_orchestrator.spica.knobs import KnobJournal
from kloros_orchestrator.spica.registry import get_domain_class
from kloros_orchestrator.store import StatePaths, atomic_write_json


def lock_state_dir(root: Path) -> int:
    """One daemon per state_dir: a second one would restore the first one's knobs mid-trial.

    The lock is opened with O_NOFOLLOW and must be a regular file of ours: a link planted there
    would have its target truncated. Anything else raises UnsafeStateDir (one line).
    """
    path = StatePaths(root).lock
    try:
        fd = open_regular(path, os.O_RDWR | os.O_CREAT, 0o644)
    except RefusedFile as e:
        raise UnsafeStateDir(path, f"{e.strerror}: remove it") from None
    owner, euid = os.fstat(fd).st_uid, os.geteuid()
    if owner != euid:
        os.close(fd)
        raise UnsafeStateDir(path, f"owned by uid {owner}, not by the daemon's uid {euid}: remove it")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise KlorosError(
            f"another kloros-orchestrator (pid {holder}) is running on {root}; "
            "stop it or use another state_dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def host_timezone(name: str | None) -> zoneinfo.ZoneInfo:
    """The zone for "HH:MM" windows, with its DST rules (a fixed UTC offset would drift by an hour)."""
    if name:
        return zoneinfo.ZoneInfo(name)
    tz_env = os.environ.get("TZ", "").lstrip(":")
    if tz_env:
        try:
            return zoneinfo.ZoneInfo(tz_env)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            logger.warning("TZ={!r} is not a known zone; using /etc/localtime", tz_env)
    try:
        with open("/etc/localtime", "rb") as f:
            return zoneinfo.ZoneInfo.from_file(f, key="localtime")
    except OSError:
        logger.warning("no /etc/localtime: PHASE windows use UTC")
        return zoneinfo.ZoneInfo("UTC")


def open_domains(loaded: LoadedConfig, journal: KnobJournal, paths: StatePaths) -> dict[str, SpicaDomain]:
    """Every enabled domain, constructed and discovered on this host (unsupported ones say why)."""
    cfg = loaded.config
    domains: dict[str, SpicaDomain] = {}
    for name in cfg.dream.domains:
        dom = get_domain_class(name)(
            sysfs_root=loaded.sysfs_root,
            journal=journal,
            regimes=loaded.regimes.get(name, {}),
            scratch_dir=paths.scratch / name,
            options={k: v for k, v in cfg.domain_options.get(name, {}).items() if k != "kind"},
            config_hash=loaded.config_hash,
        )
        dom.discover()
        if dom.support != "ok":
            logger.warning("domain {} is {}: {}", name, dom.support, dom.support_reason)
        domains[name] = dom
    return domains


def manifest_fields(loaded: LoadedConfig, stress_ng: str, stress_ng_version: str) -> dict[str, Any]:
    """What produced the numbers: code, config, host, kernel, stress-ng, seed."""
    uname = platform.uname()
    return {
        "code_hash": code_hash(),
        "config_hash": loaded.config_hash,
        "config_path": str(loaded.path) if loaded.path else "embedded default",
        "host": uname.node,
        "kernel": uname.release,
        "machine": uname.machine,
        "cpus": os.cpu_count(),
        "stress_ng_version": stress_ng_version,
        "stress_ng": stress_ng,
        "seed": loaded.config.seed,
        "version": __version__,
        "python": platform.python_version(),
    }


def write_run_manifest(
    path: Path, *, run_id: str, started_at: str | None, fields: dict[str, Any], **extra: Any
) -> None:
    """``artifacts/manifests/<run_id>.json`` (``run_manifest.v1``), written atomically."""
    atomic_write_json(
        path,
        {
            "schema": "run_manifest.v1",
            "run_id": run_id,
            "started_at": started_at,
            "pid": os.getpid(),
            **fields,
            **extra,
        },
    )


__all__ = ["host_timezone", "lock_state_dir", "manifest_fields", "open_domains", "write_run_manifest"]
