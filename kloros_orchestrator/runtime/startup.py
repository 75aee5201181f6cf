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
from kloros_orchestrator.config import LoadedConfig, class_options
from kloros_orchestrator.core.coordinator import WindowOpened
from kloros_orchestrator.errors import KlorosError, UnsafeStateDir
from kloros_orchestrator.fleet.key import cpu_model, memory_gib
from kloros_orchestrator.runtime.ports import EventLog
from kloros_orchestrator.runtime.records import SavedState, read_saved_state
from kloros_orchestrator.safefs import RefusedFile, open_regular
from kloros_orchestrator.spica.base import SpicaDomain, code_hash
from kloros_orchestrator.spica.knobs import KnobJournal
from kloros_orchestrator.spica.registry import get_domain_class
from kloros_orchestrator.statedir import check_state_dir
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


def open_state_dir(
    paths: StatePaths, *, socket_dir: Path, events: EventLog, now: float
) -> tuple[int, SavedState]:
    """Check the state directory (refusing one another user could steer, moving our own bad
    entries aside), take its lock, and read the saved state; returns (lock fd, saved state).

    What was moved aside is recorded (``state_entry_rejected``, ``state_rejected``), so the same bad
    state never fails two starts in a row.
    """
    moved = check_state_dir(paths.root, socket_dir=socket_dir)
    fd = lock_state_dir(paths.root)  # before touching the journal or state
    for r in moved:
        events.record("state_entry_rejected", **r.fields())
    saved, rejected = read_saved_state(paths.runtime_state, now=now)
    if rejected is not None:
        logger.error("saved state rejected: {}", rejected.reason)
        events.record("state_rejected", **rejected.fields())
    return fd, saved


def window_after_restart(saved: SavedState, now: float, duration_s: float) -> WindowOpened | None:
    """The window to open at start-up for one whose PHASE never completed (``saved.open_window``):
    itself while it is still open; one catch-up when it closed during the downtime (Persistent-style,
    see the README; never a burst); nothing for a manual one that closed. Clears what is settled."""
    ow = saved.open_window
    if ow is None:
        return None
    if now < ow.end:
        logger.info("resuming PHASE for window {} opened before the restart", ow.window_id)
        return WindowOpened(
            window_id=ow.window_id,
            start=ow.start,
            end=ow.end,
            catch_up=ow.catch_up,
            manual=ow.manual,
            now=now,
        )
    saved.open_window = None
    if ow.manual:
        logger.warning("manual window {} closed while the daemon was down", ow.window_id)
        return None
    logger.warning("window {} closed while its PHASE was interrupted; catching up now", ow.window_id)
    return WindowOpened(
        window_id=f"{ow.window_id}+catchup", start=now, end=now + duration_s, catch_up=True, now=now
    )


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
            options=class_options(cfg.domain_options.get(name, {})),
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
        # With cpus, kernel and stress_ng_version: the host's part of a fleet's study key (None: unread).
        "cpu_model": cpu_model(),
        "memory_gib": memory_gib(),
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


__all__ = [
    "host_timezone",
    "lock_state_dir",
    "manifest_fields",
    "open_domains",
    "open_state_dir",
    "window_after_restart",
    "write_run_manifest",
]
