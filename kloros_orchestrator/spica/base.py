"""SpicaDomain: the one base class every tuning domain derives from, and the SpicaInstance it spawns."""

from __future__ import annotations

import abc
import functools
import hashlib
import json
import math
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, final

import msgspec
from loguru import logger

from kloros_orchestrator import model
from kloros_orchestrator.errors import DomainError, KlorosError
from kloros_orchestrator.model import Genome, RegimeSpec, Scalar, StressorSpec, WorkloadSpec
from kloros_orchestrator.spica.knobs import (
    Discovered,
    Knob,
    KnobJournal,
    RestoreTarget,
    checked_original,
    discover_knob,
    file_target,
    journal_original,
    read_knob,
    same_value,
    write_value,
)

Support = Literal["ok", "unsupported", "disabled"]
Kind = Literal["stress", "command", "generic"]

MANIFEST_SCHEMA: Final = "spica_manifest.v1"
# Process knobs the base class turns into WorkloadSpec fields (see SpicaDomain.workload).
WORKERS: Final = "workers"
AFFINITY: Final = "affinity"
NICE: Final = "nice"
SCHED_POLICY: Final = "sched_policy"
AFFINITY_LAYOUTS: Final = ("all", "first_half", "second_half", "spread")


@functools.cache
def code_hash() -> str:
    """sha256 over the package's .py sources (relative path and bytes, in path order); cached."""
    pkg = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(pkg.rglob("*.py")):
        h.update(path.relative_to(pkg).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    return json.dumps(msgspec.to_builtins(obj), sort_keys=True, separators=(",", ":"))


def parse_command_output(stdout: str) -> dict[str, list[float]]:
    """KPIs printed by a command as JSON lines ``{"kpi": value, ...}``; other lines are ignored.

    Only finite numbers count (a bool or a string is not a measurement).
    """
    out: dict[str, list[float]] = {}
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        for key, value in obj.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                out.setdefault(str(key), []).append(float(value))
    return out


def affinity_layouts(cpu_ids: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Named CPU layouts for this host's CPUs; layouts giving the same CPU set are kept once."""
    ids = tuple(sorted(cpu_ids))
    half = max(1, len(ids) // 2)
    candidates = {
        "all": ids,
        "first_half": ids[:half],
        "second_half": ids[half:] or ids[-1:],
        "spread": ids[::2],
    }
    out: dict[str, tuple[int, ...]] = {}
    for name, cpus in candidates.items():
        if cpus and cpus not in out.values():
            out[name] = cpus
    return out


@dataclass(frozen=True)
class Lineage:
    parent: str | None
    generation: int
    mutations: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class SpicaInstance:
    """One candidate as D-REAM spawns and PHASE evaluates it: genome + identity + provenance."""

    spica_id: str
    domain_name: str
    genome: Genome
    lineage: Lineage
    code_hash: str
    config_hash: str
    domain: SpicaDomain = field(repr=False)

    def manifest(self) -> dict[str, Any]:
        """Code hash, config hash, knobs and lineage: what is needed to reproduce this candidate."""
        return {
            "schema": MANIFEST_SCHEMA,
            "spica_id": self.spica_id,
            "domain": self.domain_name,
            "kind": self.domain.kind,
            "class": f"{type(self.domain).__module__}.{type(self.domain).__qualname__}",
            "code_hash": self.code_hash,
            "config_hash": self.config_hash,
            "genome": dict(self.genome),
            "knobs": {k.name: k.describe() for k in self.domain.knobs},
            "lineage": {
                "parent": self.lineage.parent,
                "generation": self.lineage.generation,
                "mutations": list(self.lineage.mutations),
            },
        }

    def workload(self, regime_name: str, *, duration_s: float | None = None) -> WorkloadSpec:
        return self.domain.build_workload(regime_name, self.genome, duration_s=duration_s)

    def apply(self) -> None:
        self.domain.apply(self.genome)

    def restore(self) -> list[str]:
        return self.domain.restore()

    def telemetry(self, event: str, **fields: Any) -> dict[str, Any]:
        return self.domain.telemetry(
            event,
            spica_id=self.spica_id,
            generation=self.lineage.generation,
            parent=self.lineage.parent,
            **fields,
        )


class SpicaDomain(abc.ABC):
    """Base of every tuning domain (``Spica<Domain>``). The registry refuses anything else.

    A domain declares its knobs (:meth:`declare_knobs`) and may override the data hooks
    (:meth:`workload`, :meth:`kpi_names`, :meth:`extract_kpis`, :meth:`normalize_genome`, ...).
    The public template methods (``discover``, ``search_space``, ``stock_genome``, ``apply``,
    ``restore``, ``spawn``, ``telemetry``) are final: knob safety and identity work the same
    everywhere.

    Life cycle: ``discover()`` once (probes every knob under ``sysfs_root``; absent or
    non-writable knobs are dropped with one log line each; no knob left → ``unsupported``), then
    per candidate ``apply(genome)`` → trials → ``restore()``. System knobs are written only through
    the :class:`KnobJournal`, originals first; process knobs are never written anywhere — they shape
    the :class:`WorkloadSpec` (instances, CPU set, nice, scheduling policy, environment). Before and
    after every trial :meth:`drift` reads the knob files back: a value another tool (TuneD,
    ``sysctl --system``, an operator) rewrote fails the trial as ``knob drift`` instead of measuring
    someone else's settings.

    Restore: a journal acts only on declared knobs (see ``spica/journal.py``). ``discover()``
    declares this domain's knobs in its journal; at start-up, before a crashed run's journal is
    restored, :meth:`restore_targets` declares :meth:`restore_knobs` (every knob the domain may
    have changed, without probing). A file-less knob is restorable after a crash only when the
    domain names its journal keys (:meth:`external_keys`); :meth:`restore_external` puts the
    journaled value back with the domain's own code.

    Parallel trials (``max_parallel``): only when :meth:`process_scoped` is true — every usable
    knob has scope ``process`` — may trials of different candidates run at the same time, each
    on its own disjoint CPU set. A domain with any system knob runs one trial at a time: two
    candidates would share one sysctl. :meth:`parallel_limit` applies the rule.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    kind: ClassVar[Kind] = "stress"
    option_keys: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        *,
        sysfs_root: Path,
        journal: KnobJournal,
        regimes: Mapping[str, RegimeSpec],
        scratch_dir: Path,
        options: Mapping[str, Any] | None = None,
        config_hash: str = "",
        cpus: int | None = None,
    ) -> None:
        self.sysfs_root = Path(sysfs_root)
        self.journal = journal
        self.regimes: dict[str, RegimeSpec] = dict(regimes)
        self.scratch_dir = Path(scratch_dir)
        self.options: dict[str, Any] = dict(options or {})
        self.config_hash = config_hash
        self.cpus: int = cpus if cpus is not None else (os.cpu_count() or 1)
        if self.cpus < 1:
            raise DomainError(f"{self.name}: cpus must be >= 1")
        unknown = sorted(set(self.options) - self.option_keys)
        if unknown:
            allowed = ", ".join(sorted(self.option_keys)) or "none"
            raise DomainError(f"{self.name}: unknown option(s) {unknown}; allowed: {allowed}")
        self.knobs: list[Knob] = []
        self.dropped: dict[str, str] = {}
        self.support: Support = "unsupported"
        self.support_reason: str = "discover() has not run"
        self.discovered = False
        self._stock: Genome = {}
        self._validate_options()

    # --- hooks: data only --------------------------------------------------------------------
    @abc.abstractmethod
    def declare_knobs(self) -> list[Knob]:
        """Every knob this domain can tune, before discovery (paths relative to ``sysfs_root``)."""

    def _validate_options(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Hook: raise DomainError for a bad option value (keys are already checked)."""

    def disabled_reason(self) -> str | None:
        """Hook: why the domain is off by configuration (e.g. no command configured), else None."""
        return None

    def unsupported_reason(self) -> str | None:
        """Hook: why this host cannot run the domain at all (checked before probing), else None."""
        return None

    def discover_external(self, knob: Knob) -> Discovered:
        """Hook for system knobs without a file (applied by running a tool)."""
        return Discovered(None, None, "no file path and no probe for it")

    def journal_external(self, knob: Knob) -> None:
        """Hook: journal the original of a file-less system knob under one of its
        :meth:`external_keys` (a ``restore_argv`` given to ``record`` is only run by this process)."""
        raise DomainError(f"{self.name}: knob {knob.name} has no file and no journal hook")

    def apply_external(self, knob: Knob, value: Scalar) -> None:
        """Hook: set a file-less system knob."""
        raise DomainError(f"{self.name}: knob {knob.name} has no file and no apply hook")

    def external_keys(self, knob: Knob) -> tuple[str, ...]:
        """Hook: the journal keys :meth:`journal_external` records a file-less knob under.

        Default none: such a knob's journal entry is restored only by the process that wrote it
        (with its in-memory restore command); after a crash it is rejected.
        """
        return ()

    def restore_external(self, knob: Knob, original: str) -> None:
        """Hook: put a journaled ``original`` of a file-less knob back. Raise ValueError for a value
        the knob cannot have (the entry is then rejected). Default: apply the decoded original."""
        self.apply_external(knob, knob.decode(checked_original(knob, original)))

    def restore_knobs(self) -> list[Knob]:
        """Hook: every system knob whose original this domain may have journaled on this host, as
        declared at start-up, before discovery (default :meth:`declare_knobs`). A domain whose files
        depend on a choice made at discovery (which disk) declares every possibility here."""
        return self.declare_knobs()

    def normalize_genome(self, genome: Genome) -> Genome:
        """Hook: fix combinations the host would refuse (values are already range-checked)."""
        return genome

    def command_argv(self) -> tuple[str, ...] | None:
        """Hook: the argv a command workload runs instead of stress-ng (None: stress-ng)."""
        return None

    def kpi_names(self) -> set[str]:
        """KPI names this domain reports (caps may name only these)."""
        return set(model.STANDARD_KPIS)

    def kpi_directions(self) -> dict[str, int]:
        """KPI name → +1 (higher is better) or -1 (lower is better), for every name in kpi_names()."""
        return {k: model.KPI_DIRECTION[k] for k in self.kpi_names() if k in model.KPI_DIRECTION}

    def extract_kpis(self, stdout: str) -> dict[str, float]:
        """KPIs from a command's stdout (JSON lines): the mean of each declared KPI's values.

        A KPI the command did not print is absent, not zero.
        """
        values = parse_command_output(stdout)
        wanted = self.kpi_names()
        return {k: sum(v) / len(v) for k, v in values.items() if k in wanted and v}

    def cpu_ids(self) -> tuple[int, ...]:
        """CPU ids the workload may use (this process's affinity, or 0..cpus-1)."""
        try:
            ids = tuple(sorted(os.sched_getaffinity(0)))
        except (AttributeError, OSError):
            ids = ()
        return ids if len(ids) == self.cpus else tuple(range(self.cpus))

    def workload(self, regime_name: str, regime: RegimeSpec, genome: Genome) -> WorkloadSpec:
        """What one trial of ``regime`` runs for ``genome``.

        Default: the regime's stressors, ``instances: auto`` → the ``workers`` knob (else one per
        CPU), stressors confined to ``affinity``, ``nice`` and ``sched_policy`` from the genome,
        files in ``scratch_dir`` (``--temp-path``), knobs with an ``env`` name exported to a
        command workload.
        """
        auto = int(genome.get(WORKERS, self.cpus))
        stressors = tuple(_resolve_instances(s, auto, self.name) for s in regime.stressors)
        cpus: tuple[int, ...] | None = None
        if AFFINITY in genome:
            layout = str(genome[AFFINITY])
            layouts = affinity_layouts(self.cpu_ids())
            if layout not in layouts:
                raise DomainError(f"{self.name}: unknown affinity layout {layout!r}")
            chosen = layouts[layout]
            cpus = None if chosen == self.cpu_ids() else chosen
        env = {k.env_name(): k.encode(genome[k.name]) for k in self.knobs if k.env and k.name in genome}
        command = self.command_argv()
        if command is not None:
            env = {"KLR_REGIME": regime_name, "KLR_DURATION_S": repr(float(regime.duration)), **env}
        extra: tuple[str, ...] = ("--temp-path", str(self.scratch_dir)) if stressors else ()
        return WorkloadSpec(
            stressors=stressors,
            duration_s=float(regime.duration),
            probe=regime.probe,
            cpus=cpus,
            nice=int(genome[NICE]) if NICE in genome else None,
            sched_policy=str(genome[SCHED_POLICY]) if SCHED_POLICY in genome else None,
            extra_args=extra,
            env=env,
            command=command,
        )

    # --- template methods --------------------------------------------------------------------
    @final
    def discover(self) -> None:
        """Probe every declared knob on this host; set ``knobs``, ``dropped``, ``support``."""
        self.knobs, self.dropped, self._stock = [], {}, {}
        self.discovered = True
        disabled = self.disabled_reason()
        if disabled is not None:
            self.support, self.support_reason = "disabled", disabled
            logger.info("domain {} disabled: {}", self.name, disabled)
            return
        unsupported = self.unsupported_reason()
        if unsupported is not None:
            self.support, self.support_reason = "unsupported", unsupported
            logger.info("domain {} unsupported: {}", self.name, unsupported)
            return
        declared = self.declare_knobs()
        names = [k.name for k in declared]
        if len(set(names)) != len(names):
            raise DomainError(f"{self.name}: duplicate knob names in {names}")
        self.journal.declare(self.restore_targets(declared))
        for knob in declared:
            found = (
                self.discover_external(knob)
                if knob.scope == "system" and knob.path is None
                else discover_knob(knob, self.sysfs_root)
            )
            if found.knob is None or found.stock is None:
                self.dropped[knob.name] = found.reason
                logger.info("domain {}: knob {} dropped: {}", self.name, knob.name, found.reason)
                continue
            self.knobs.append(found.knob)
            self._stock[knob.name] = found.stock
        if self.knobs:
            self.support, self.support_reason = "ok", ""
        elif declared:
            detail = "; ".join(f"{k}: {r}" for k, r in self.dropped.items())
            self.support, self.support_reason = "unsupported", f"no usable knob on this host ({detail})"
        else:
            self.support, self.support_reason = "unsupported", "declares no knob on this host"
        if self.support != "ok":
            logger.info("domain {} unsupported: {}", self.name, self.support_reason)

    @final
    def status(self) -> dict[str, Any]:
        return {
            "support": self.support,
            "reason": self.support_reason,
            "knobs": [k.name for k in self.knobs],
            "dropped": dict(self.dropped),
            "process_scoped": self.process_scoped(),
        }

    def _require_discovered(self) -> None:
        if not self.discovered:
            raise DomainError(f"{self.name}: discover() must run first")

    @final
    def search_space(self) -> dict[str, dict[str, Any]]:
        """Usable knobs in the engine's declaration form."""
        self._require_discovered()
        return {k.name: k.space_entry() for k in self.knobs}

    @final
    def stock_genome(self) -> Genome:
        """The baseline: system knobs as found at discovery, process knobs at their stock default."""
        self._require_discovered()
        return dict(self._stock)

    @final
    def process_scoped(self) -> bool:
        """True only when every usable knob is process-scoped (trials may then run in parallel)."""
        return bool(self.knobs) and all(k.scope == "process" for k in self.knobs)

    @final
    def parallel_limit(self, requested: int) -> int:
        """How many trials of this domain may run at once (see the class docstring)."""
        if not self.process_scoped():
            return 1
        return max(1, min(requested, self.cpus))

    @final
    def validate_genome(self, genome: Mapping[str, Any]) -> Genome:
        """A complete genome of this host's knobs: unknown names and out-of-range values raise
        DomainError; missing knobs take their stock value."""
        self._require_discovered()
        by_name = {k.name: k for k in self.knobs}
        unknown = sorted(set(genome) - set(by_name))
        if unknown:
            raise DomainError(f"{self.name}: unknown knob(s) {unknown}; usable: {sorted(by_name)}")
        full: Genome = {}
        for name, knob in by_name.items():
            full[name] = knob.coerce(genome[name]) if name in genome else self._stock[name]
        return self.normalize_genome(full)

    @final
    def apply(self, genome: Mapping[str, Any]) -> None:
        """Set the genome's system knobs (journaled first); process knobs only shape workloads.

        On any failure every original this domain journaled is restored and DomainError raised.
        """
        full = self.validate_genome(genome)
        system = [k for k in self.knobs if k.scope == "system"]
        current = "journal"
        try:
            # Journal every original before the first write: writing one knob can reset another
            # (an I/O scheduler change resets nr_requests), so originals must be read untouched.
            for knob in system:
                current = knob.name
                if knob.path is None:
                    self.journal_external(knob)
                else:
                    journal_original(knob, self.sysfs_root, self.journal, self.name)
            for knob in system:
                current = knob.name
                if knob.path is None:
                    self.apply_external(knob, full[knob.name])
                else:
                    write_value(knob, full[knob.name], self.sysfs_root)
        except (OSError, UnicodeDecodeError, subprocess.SubprocessError, KlorosError) as exc:
            problems = self.restore()
            extra = f"; restore problems: {problems}" if problems else ""
            raise DomainError(f"{self.name}: applying {current} failed: {exc}{extra}") from exc

    @final
    def drift(self, genome: Mapping[str, Any]) -> list[str]:
        """Every file of a file-backed system knob that no longer holds what :meth:`apply` wrote for
        ``genome``, as ``"<path>, expected <text>, found <live text>"``; compared by value (a bracket
        file by its active value, ``"60\\n"`` equals 60, floats to a relative 1e-9). An unreadable file
        is a drift too. File-less and process knobs are not checked."""
        full = self.validate_genome(genome)
        out: list[str] = []
        for knob in self.knobs:
            if knob.scope != "system" or knob.path is None:
                continue
            want = full[knob.name]
            for path in knob.resolve_paths(self.sysfs_root):
                try:
                    live = read_knob(path, self.sysfs_root)
                except (OSError, UnicodeDecodeError, KlorosError) as exc:
                    out.append(f"{path}, expected {knob.encode(want)}, found unreadable: {exc}")
                    continue
                if not same_value(knob.type, knob.fmt, live, knob.encode(want)):
                    out.append(f"{path}, expected {knob.encode(want)}, found {live.strip()}")
        return out

    @final
    def restore(self) -> list[str]:
        """Write back every original this domain journaled; return problems (failed entries kept,
        entries that are not this domain's declared knobs moved aside)."""
        return self.journal.restore(domain=self.name)

    @final
    def restore_targets(self, knobs: Sequence[Knob] | None = None) -> list[RestoreTarget]:
        """Where journaled originals of this domain's system knobs (default :meth:`restore_knobs`)
        may be put back: each file resolved under ``sysfs_root`` now, or the external keys with
        :meth:`restore_external`. The journal acts on nothing else."""
        out: list[RestoreTarget] = []
        for knob in self.restore_knobs() if knobs is None else knobs:
            if knob.scope != "system":
                continue
            if knob.path is not None:
                out.append(file_target(self.name, knob, self.sysfs_root))
                continue
            keys = frozenset(self.external_keys(knob))
            if keys:
                put = functools.partial(_put_external, self, knob)
                out.append(RestoreTarget(self.name, knob.name, keys, put))
        return out

    @final
    def build_workload(
        self, regime_name: str, genome: Mapping[str, Any], *, duration_s: float | None = None
    ) -> WorkloadSpec:
        """The WorkloadSpec of ``regime_name`` for ``genome`` (``duration_s`` overrides the regime's)."""
        regime = self.regimes.get(regime_name)
        if regime is None:
            raise DomainError(f"{self.name}: no regime {regime_name!r} (have {sorted(self.regimes)})")
        spec = self.workload(regime_name, regime, self.validate_genome(genome))
        if spec.stressors:
            # stress-ng creates its files under --temp-path; it must exist before the trial starts.
            self.scratch_dir.mkdir(parents=True, exist_ok=True)
        if duration_s is not None:  # never below what the regime's stressors need to measure anything
            spec = msgspec.structs.replace(spec, duration_s=max(float(duration_s), regime.min_seconds or 0.0))
        return spec

    @final
    def spawn(
        self,
        genome: Mapping[str, Any],
        *,
        parent: str | None = None,
        generation: int = 0,
        mutations: Sequence[str] = (),
    ) -> SpicaInstance:
        """A SPICA instance of ``genome`` with identity and lineage."""
        full = self.validate_genome(genome)
        digest = hashlib.sha1(f"{canonical_json(full)}|{generation}".encode()).hexdigest()[:10]
        return SpicaInstance(
            spica_id=f"spica-{self.name}-{digest}",
            domain_name=self.name,
            genome=full,
            lineage=Lineage(parent=parent, generation=int(generation), mutations=tuple(mutations)),
            code_hash=code_hash(),
            config_hash=self.config_hash,
            domain=self,
        )

    @final
    def telemetry(self, event: str, **fields: Any) -> dict[str, Any]:
        """An event record for events.jsonl: ``{"ts", "event", "domain", ...fields}``."""
        return {"ts": time.time(), "event": event, "domain": self.name, **fields}


def _put_external(domain: SpicaDomain, knob: Knob, key: str, original: str) -> None:
    domain.restore_external(knob, original)


def _resolve_instances(spec: StressorSpec, auto: int, domain: str) -> StressorSpec:
    if isinstance(spec.instances, int):
        return spec
    if spec.instances == "auto":
        return msgspec.structs.replace(spec, instances=auto)
    raise DomainError(f"{domain}: stressor {spec.name}: instances must be a count or 'auto'")
