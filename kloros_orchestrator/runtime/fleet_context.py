"""A fleet study as one host's D-REAM sees it: the settings, each domain's study, a turn's target.

``FleetSettings`` come from the ``study`` config section (``fleet_settings``); the lease defaults to
three work units' expected wall time (``unit_seconds``), never below ``MIN_LEASE_S``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kloros_orchestrator.config import LoadedConfig
from kloros_orchestrator.config_checks import MIN_LEASE_S  # the smallest lease the configuration allows
from kloros_orchestrator.fleet.dsn import default_host_id
from kloros_orchestrator.fleet.key import measurement_hash

if TYPE_CHECKING:
    from kloros_orchestrator.fleet.generations import GenerationInfo
    from kloros_orchestrator.fleet.leader import LeaderLock

TRIAL_OVERHEAD_S = 2.0  # apply, start, reap: a trial's wall time beyond its stress-ng duration


@dataclass(frozen=True)
class FleetSettings:
    dsn: str = field(repr=False)  # may hold a password: never in a repr (tracebacks, logs)
    name: str
    host_id: str
    manifest: Mapping[str, Any]  # the run manifest's fields: the host's part of the study key
    lease_s: float
    heartbeat_s: float
    poll_s: float = 1.0  # while other hosts hold the remaining units of a generation
    window_s: float = 4 * 3600.0  # a PHASE window: how long a fleet PHASE verdict waits for the hosts
    measurement: Mapping[str, str] = field(default_factory=dict)  # domain -> key.measurement_hash


@dataclass
class StudyContext:
    """One domain's study as this host sees it."""

    domain: str
    study_id: int
    study_name: str
    key_digest: str
    lock: LeaderLock
    leader: bool = False  # holds the leader lock now (only ever during a turn)
    led: bool = False  # was the leader when it last tried: events say when leadership moves
    hosts_alive: int = 1
    info: GenerationInfo | None = None
    raced: tuple[int, int] = (-1, -1)  # (generation, units done) at the leader's last race replay


@dataclass
class Turn:
    target: int | None = None  # the generation this turn works on, once known
    started: float = field(default_factory=time.monotonic)


def unit_seconds(loaded: LoadedConfig) -> float:
    """The longest expected work unit over the enabled domains: two arms × every regime."""
    d = loaded.config.dream
    per_domain = [
        2 * sum((d.trial_seconds or float(spec.duration)) + TRIAL_OVERHEAD_S for spec in specs.values())
        for specs in loaded.regimes.values()
    ]
    return max(per_domain, default=MIN_LEASE_S)


def fleet_settings(loaded: LoadedConfig, manifest: Mapping[str, Any]) -> FleetSettings:
    st = loaded.config.study
    lease = st.lease_seconds if st.lease_seconds is not None else max(MIN_LEASE_S, 3 * unit_seconds(loaded))
    return FleetSettings(
        dsn=st.store,
        name=st.name or "",
        host_id=st.host_id or default_host_id(loaded.state_dir),
        manifest=dict(manifest),
        lease_s=lease,
        heartbeat_s=min(st.heartbeat_seconds, lease / 2),
        window_s=loaded.window_duration_s,
        measurement={d: measurement_of(loaded, d) for d in loaded.regimes},
    )


def measurement_of(loaded: LoadedConfig, domain: str) -> str:
    """The study key's ``measurement`` field for ``domain`` (``fleet.key.measurement_hash``)."""
    c, d = loaded.config, loaded.config.dream
    settings = {
        "trial_seconds": {"dream": d.trial_seconds, "phase": c.phase.trial_seconds},
        "race": {"indifference": d.racing.indifference, "confidence": d.racing.confidence,
                 "min_trials": d.min_trials},
    }  # fmt: skip
    return measurement_hash(loaded.regimes.get(domain, {}), loaded.caps.get(domain, {}), settings)


def study_status(ctx: StudyContext) -> dict[str, Any]:
    """One study's part of the ``fleet`` status field."""
    info = ctx.info
    return {
        "name": ctx.study_name,
        "study_id": ctx.study_id,
        "key_digest": ctx.key_digest,
        "hosts_alive": ctx.hosts_alive,
        "leader": ctx.led,  # led the study at its last try (the lock itself is held only in a turn)
        "generation": None if info is None else info.generation,
        "units": None if info is None else
        {"open": info.counts.open, "claimed": info.counts.claimed, "done": info.counts.done,
         "dropped": info.counts.dropped},
    }  # fmt: skip


__all__ = [
    "MIN_LEASE_S",
    "FleetSettings",
    "StudyContext",
    "Turn",
    "fleet_settings",
    "study_status",
    "unit_seconds",
]
