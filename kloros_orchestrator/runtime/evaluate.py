"""One trial, for real: apply a genome, run its workload, sample sensors, check caps, return KPIs.

The trial is the unit both D-REAM and PHASE are built from. Everything measured comes from the
stress-ng YAML (throughput), the cyclic probe's percentile lines (latency), and the sensor sampler
(temperature, power). Absent sensors leave their KPI absent. Every KPI a trial returns is a finite
number, and >= 0 except a temperature in °C: anything else (a negative rate, NaN, an overflow to
infinity) is no measurement and fails the trial with its reason. A failed, short or cap-breaching
trial is returned as ``ok=False`` with its reason; its numbers are never used. So is a trial whose
knobs were rewritten under it (read back right after ``apply`` and again once the workload ended):
its failure starts with :data:`DRIFT_PREFIX` (see :func:`is_drift`).

Every trial also records ``outside_cpu``: the share of the host's CPU capacity that processes outside
the daemon's own tree used while its workload ran (``runtime/outside_load.py``; None when the host
cannot tell). Above ``outside_cpu_limit`` the trial is ``contaminated``: D-REAM and PHASE re-run its
round and never score it. The evaluator only measures and marks; the re-running is theirs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import anyio
import msgspec
from loguru import logger

from kloros_orchestrator.errors import DomainError, KnobDrift, MissingMetrics, ToolMissing, WorkloadFailed
from kloros_orchestrator.measure.caps import CapLimit, check_caps
from kloros_orchestrator.measure.sensors import Sensors, TrialSampler
from kloros_orchestrator.measure.stressng_output import (
    latency_kpis,
    parse_cyclic_percentiles,
    stressor_rates,
    total_rate,
)
from kloros_orchestrator.model import TEMP, THROUGHPUT, Genome, TrialResult
from kloros_orchestrator.runtime.outside_load import OutsideMeter
from kloros_orchestrator.runtime.workloads import run_stress_ng
from kloros_orchestrator.spica.base import SpicaDomain

SAMPLE_PERIOD_S = 0.5  # live cap checks at 2 Hz (the contract asks for at least 1 Hz)
# How the failure text of a trial whose knobs another tool rewrote starts: "knob drift: <path>,
# expected <x>, found <y>" (several joined with "; ").
DRIFT_PREFIX: Final = f"{KnobDrift.reason}: "


# KPIs on a scale where a negative value is a real reading (the sensors accept down to -50 °C).
SIGNED_KPIS = frozenset({TEMP})


def kpi_problems(kpis: Mapping[str, object]) -> list[str]:
    """``invalid KPI <name>: <value> (<why>)`` for every KPI that is not a finite number, or is
    negative (except ``SIGNED_KPIS``): rates, counts, latencies and watts cannot be."""
    problems: list[str] = []
    for name, value in kpis.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            why = f"not a number but {type(value).__name__}"
        elif math.isnan(value):
            why = "not a number"
        elif math.isinf(value):
            why = "infinite: an overflow"
        elif value < 0 and name not in SIGNED_KPIS:
            why = "negative"
        else:
            continue
        problems.append(f"invalid KPI {name}: {value!r} ({why})")
    return problems


def is_drift(result_or_failure: TrialResult | str | None) -> bool:
    """Whether a trial (or its failure text) failed because a knob no longer held its value."""
    failure = result_or_failure.failure if isinstance(result_or_failure, TrialResult) else result_or_failure
    return failure is not None and failure.startswith(DRIFT_PREFIX)


async def read_back(domain: SpicaDomain, genome: Genome) -> None:
    """Raise :class:`KnobDrift` when a knob of ``genome`` no longer holds what was applied (off the
    event loop: a knob file can be slow to read)."""
    drift = await anyio.to_thread.run_sync(domain.drift, genome)
    if drift:
        raise KnobDrift(drift)


@dataclass
class TrialCounters:
    trials: int = 0
    failed_trials: int = 0
    contaminated_trials: int = 0  # trials run under outside CPU load above the threshold
    outside_cpu_problem: str | None = None  # why outside load cannot be measured (status says so)


@dataclass
class Evaluator:
    """Runs trials; shared by D-REAM and PHASE so both measure the same way."""

    workdir: Path
    sensors: Sensors
    caps: Mapping[str, Mapping[str, CapLimit]]
    exe: str | None = None
    grace_s: float = 1.0
    counters: TrialCounters = field(default_factory=TrialCounters)
    on_trial: Callable[[TrialResult], None] | None = None
    on_spawn: Callable[[int], object] | None = None  # called with the workload's pid once it runs
    clock: Callable[[], float] = time.time
    # A trial whose outside CPU share exceeds this is contaminated (dream.contamination.outside_cpu);
    # None: trials are measured but never marked.
    outside_cpu_limit: float | None = None
    outside: OutsideMeter = field(default_factory=OutsideMeter)

    def missing_reasons(self) -> dict[str, str]:
        return dict(self.sensors.missing)

    def is_contaminated(self, outside_cpu: float | None) -> bool:
        """Whether a trial with this outside CPU share ran on a host too busy to trust (unknown: no)."""
        limit = self.outside_cpu_limit
        return outside_cpu is not None and limit is not None and outside_cpu > limit

    async def run_trial(
        self,
        domain: SpicaDomain,
        genome: Genome,
        regime: str,
        *,
        cand_id: str,
        duration_s: float | None = None,
        cpus: tuple[int, ...] | None = None,
    ) -> TrialResult:
        """One trial. ``cpus``: a CPU set this trial must stay inside (parallel trials on disjoint
        sets); intersected with the genome's own affinity, or used alone when they do not meet."""
        started = self.clock()
        t0 = time.monotonic()
        placed: list[tuple[int, ...] | None] = [None]
        rates: dict[str, float] = {}  # filled by _measure: each workload stressor's bogo-ops/s
        outside: list[float | None] = [None]  # filled by _measure: outside CPU share during the workload

        def result(
            ok: bool,
            kpis: dict[str, float] | None = None,
            failure: str | None = None,
            cap_breach: str | None = None,
        ) -> TrialResult:
            res = TrialResult(
                domain=domain.name, cand_id=cand_id, regime=regime, ok=ok, kpis=kpis or {},
                failure=failure[:600] if failure else None, cap_breach=cap_breach,
                wall_s=time.monotonic() - t0, started_at=started, cpus=placed[0],
                stressor_ops=rates if ok else {},
                outside_cpu=outside[0], contaminated=self.is_contaminated(outside[0]),
            )  # fmt: skip
            self.counters.trials += 1
            self.counters.failed_trials += 0 if ok else 1
            self.counters.contaminated_trials += int(res.contaminated)
            self.counters.outside_cpu_problem = self.outside.problem
            if self.on_trial is not None:
                self.on_trial(res)
            return res

        try:
            kpis, breach = await self._measure(
                domain, genome, regime, cand_id, duration_s, cpus, placed, rates, outside
            )
        except WorkloadFailed as e:
            logger.warning("trial failed: {} {} {}: {}", domain.name, cand_id, regime, e)
            return result(False, failure=f"{getattr(e, 'reason', type(e).__name__)}: {e}")
        except ToolMissing as e:
            # stress-ng vanished under a running daemon: every trial fails with the install hint
            # (and D-REAM backs off) rather than the daemon dying mid-window.
            logger.error("trial impossible: {}", e)
            return result(False, failure=f"tool_missing: {e}")
        except (OSError, DomainError) as e:
            # A knob write refused mid-run (e.g. EINVAL for a value the kernel rejects) fails this
            # trial, not the daemon.
            logger.warning("trial could not run: {} {} {}: {}", domain.name, cand_id, regime, e)
            return result(False, failure=f"could not apply or run: {e}")
        if breach:
            text = "; ".join(breach)
            return result(False, kpis, failure=f"cap breach: {text}", cap_breach=text)
        return result(True, kpis)

    async def _measure(
        self,
        domain: SpicaDomain,
        genome: Genome,
        regime: str,
        cand_id: str,
        duration_s: float | None,
        cpus: tuple[int, ...] | None,
        placed: list[tuple[int, ...] | None],
        rates: dict[str, float],
        outside: list[float | None],
    ) -> tuple[dict[str, float], list[str]]:
        """Apply, run with live cap checks, extract KPIs; returns (kpis, cap breaches)."""
        # Knob writes can block (a slow sysfs file, an external tool): never on the event loop.
        await anyio.to_thread.run_sync(domain.apply, genome)
        await read_back(domain, genome)
        workload = domain.build_workload(regime, genome, duration_s=duration_s)
        if cpus is not None:
            own = set(workload.cpus) if workload.cpus is not None else set(cpus)
            workload = msgspec.structs.replace(workload, cpus=tuple(sorted(own & set(cpus))) or cpus)
        placed[0] = workload.cpus
        sampler = TrialSampler(self.sensors)
        caps = self.caps.get(domain.name, {})
        breach: list[str] = []
        mark = await anyio.to_thread.run_sync(self.outside.mark)
        sampler.start(self.clock())
        run = None
        failed: WorkloadFailed | ToolMissing | None = None
        async with anyio.create_task_group() as tg:

            async def monitor() -> None:
                while True:
                    await anyio.sleep(SAMPLE_PERIOD_S)
                    reasons = check_caps(caps, sampler.sample(self.clock()))
                    if reasons:
                        breach.extend(reasons)
                        logger.warning("cap breached in {} {} {}: {}", domain.name, cand_id, regime, reasons)
                        tg.cancel_scope.cancel()  # kills the trial's process group
                        return

            tg.start_soon(monitor)
            # Caught here, not around the task group: anyio would wrap it in an ExceptionGroup.
            try:
                run = await run_stress_ng(
                    workload,
                    workdir=self.workdir,
                    exe=self.exe,
                    grace_s=self.grace_s,
                    on_started=self.on_spawn,
                )
            except (WorkloadFailed, ToolMissing) as e:
                failed = e
            tg.cancel_scope.cancel()
        sensor_kpis = sampler.finish(self.clock())
        outside[0] = await anyio.to_thread.run_sync(self.outside.share, mark)
        # First: numbers (and breaches) measured under someone else's settings say nothing of this genome.
        await read_back(domain, genome)
        if breach:
            return {}, breach
        if failed is not None:
            raise failed
        assert run is not None
        kpis: dict[str, float] = {}
        if workload.command is not None:
            kpis.update(domain.extract_kpis(run.stdout_text))
        else:
            rates.update(stressor_rates(run.metrics))
            if not rates:
                raise WorkloadFailed("stress-ng reported no throughput for the workload stressors")
            kpis[THROUGHPUT] = total_rate(rates)
            if workload.probe:
                kpis.update(latency_kpis(parse_cyclic_percentiles(run.log_text)))
        kpis.update(sensor_kpis)
        problems = kpi_problems(kpis)
        if problems:
            raise MissingMetrics("; ".join(problems))
        return kpis, check_caps(caps, kpis)
