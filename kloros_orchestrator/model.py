"""Data shared across layers: KPI names, regime/workload specs and trial results.

Frozen msgspec Structs, validated on construction from YAML/JSON through ``msgspec.convert``.
Nothing here does I/O.
"""

from __future__ import annotations

from typing import Final

import msgspec

# --- KPI names -------------------------------------------------------------------------------------
# Every KPI this product records has one of these names; caps/<domain>.yaml may only name these
# (or KPIs a command domain declares). A KPI the host cannot measure is *absent*, never defaulted.
THROUGHPUT: Final = "throughput_ops"  # bogo-ops per second (real time), summed over workload stressors
P50: Final = "p50_latency_us"  # scheduling latency percentiles from the cyclic probe, microseconds
P95: Final = "p95_latency_us"
P99: Final = "p99_latency_us"
TEMP: Final = "temp_c"  # max temperature over the trial (hwmon / thermal zones)
WATTS: Final = "watts"  # mean package power over the trial (RAPL energy_uj delta / wall time)

STANDARD_KPIS: Final = (THROUGHPUT, P50, P95, P99, TEMP, WATTS)
# Direction: +1 = higher is better, -1 = lower is better.
KPI_DIRECTION: Final = {THROUGHPUT: 1, P50: -1, P95: -1, P99: -1, TEMP: -1, WATTS: -1}

REGIMES: Final = ("idle", "normal", "stress", "mixed")

# The arm every candidate is compared with: the configuration found at start-up, measured in the same
# tournament (D-REAM) or the same slice (PHASE). One name everywhere: trials.jsonl, plans, analyses.
STOCK_ARM: Final = "stock"

Scalar = str | int | float | bool
Genome = dict[str, Scalar]


class StressorSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One stress-ng stressor: ``--<name> <instances>`` plus ``--<option> <value>`` flags.

    ``instances`` is a count (0 = one per online CPU, stress-ng's own convention) or "auto"
    (resolved by the domain, e.g. from a worker-count knob). ``options`` keys are full stress-ng
    option names without the leading dashes (``cpu-load``, ``vm-bytes``, ``hdd-bytes``).
    """

    name: str
    instances: int | str = 1
    options: dict[str, str | int | float | bool] = msgspec.field(default_factory=dict)


class RegimeSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A regime: stressors run together for ``duration`` seconds, plus an optional latency probe."""

    duration: float
    stressors: list[StressorSpec]
    probe: bool = True
    # The shortest trial that gives every stressor a measurement (a rate-limited memrate completes no
    # bogo-op in 2 s): a shorter override (dream.trial_seconds, the first look) is raised to it.
    min_seconds: float | None = None


class WorkloadSpec(msgspec.Struct, frozen=True):
    """Exactly what one trial executes; built by a domain from a regime and a genome."""

    stressors: tuple[StressorSpec, ...]
    duration_s: float
    probe: bool = True
    cpus: tuple[int, ...] | None = None  # CPU affinity for every stressor (stress-ng --taskset)
    nice: int | None = None  # niceness for the whole run
    sched_policy: str | None = None  # stress-ng --sched POLICY (other, batch, idle, fifo, rr)
    sched_prio: int | None = None
    extra_args: tuple[str, ...] = ()  # further stress-ng arguments (e.g. --temp-path DIR)
    env: dict[str, str] = msgspec.field(default_factory=dict)
    command: tuple[str, ...] | None = None  # command domains: run this instead of stress-ng


class StressorMetric(msgspec.Struct, frozen=True):
    stressor: str
    bogo_ops: float
    bogo_ops_per_s_real: float
    wall_clock_s: float
    # Further stress-ng --yaml metrics; None where this stress-ng version did not write the key.
    bogo_ops_per_s_usr_sys: float | None = None
    user_time_s: float | None = None
    system_time_s: float | None = None
    cpu_usage_per_instance: float | None = None  # percent
    max_rss_kb: float | None = None  # getrusage ru_maxrss, KiB on Linux


class TrialResult(msgspec.Struct, frozen=True):
    """One trial's outcome. A failed trial has ``ok=False`` and a reason, never padded numbers."""

    domain: str
    cand_id: str
    regime: str
    ok: bool
    kpis: dict[str, float] = msgspec.field(default_factory=dict)
    failure: str | None = None
    cap_breach: str | None = None
    wall_s: float = 0.0
    started_at: float = 0.0
    cpus: tuple[int, ...] | None = None  # the CPU set the workload was confined to (None = all)
    # Each workload stressor's bogo-ops/s ({stressor: rate}); empty for a command workload or a
    # failed trial. A regime's throughput score compares these stressor by stressor (README).
    stressor_ops: dict[str, float] = msgspec.field(default_factory=dict)
    # CPU time used outside the daemon's own process tree while the trial ran, as a share of the
    # host's CPU capacity over the trial (0..1); None when it could not be measured.
    outside_cpu: float | None = None
    # The trial's round ran under outside load above the threshold: kept in trials.jsonl, re-run,
    # never in a score or a claim.
    contaminated: bool = False
