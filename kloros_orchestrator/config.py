"""Configuration: ``dream.yaml`` + ``regimes/<domain>.yaml`` + ``caps/<domain>.yaml``.

Everything is loaded into frozen msgspec Structs. Validation collects *every* problem as
``file: key: problem`` (unknown keys, wrong types, negative counts, bad times, caps on unknown KPIs)
before failing, so an operator fixes a file in one pass instead of one error per run.

Without ``--config`` the embedded default (``kloros_orchestrator/defaults/dream.yaml``) is used, with
regimes and caps from the embedded defaults directory and state under ``./var``.
"""

from __future__ import annotations

import hashlib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import msgspec
import yaml

from kloros_orchestrator.errors import ConfigError
from kloros_orchestrator.model import REGIMES, STANDARD_KPIS, RegimeSpec

# --------------------------------------------------------------------------------------------------
# Structs (contract keys: README, "Configuration")


class WindowConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    start: str = "03:00"  # "HH:MM" local, or "now+SECONDS"
    duration: int | float | str = "4h"  # seconds, or "4h" / "30m" / "90s" / "1h30m"


class QtimeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    epochs: int = 2
    slices: int = 4
    replicas: int = 3
    min_replicas: int = 1  # shrinking to fit a window never goes below this


class PhaseConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    window: WindowConfig = msgspec.field(default_factory=WindowConfig)
    qtime: QtimeConfig = msgspec.field(default_factory=QtimeConfig)
    trial_seconds: float | None = None  # overrides every regime's duration inside PHASE
    max_variants: int = 3  # promoted variants per domain evaluated against the baseline


class PacingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    min_sleep_s: float = 2.0
    max_sleep_s: float = 900.0


class DreamConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    domains: list[str] = msgspec.field(default_factory=lambda: ["cpu", "memory", "storage", "os_scheduler"])
    population: int = 6
    epochs_per_cycle: int = 1
    max_parallel: int = 1
    trials: int = 3  # trials per regime for a candidate that survives the race
    trial_seconds: float | None = None  # overrides every regime's duration inside D-REAM
    min_trials: int = 2  # successful trials per regime below which a candidate is not scored (≤ trials)
    elite: int = 1
    pacing: PacingConfig = msgspec.field(default_factory=PacingConfig)


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    state_dir: str = "./var"
    socket: str | None = None  # default: <state_dir>/kloros.sock
    seed: int = 0
    sysfs_root: str = "/"
    timezone: str | None = None  # IANA name for "HH:MM" windows; default: the host's local time
    log_level: str = "INFO"
    regimes_dir: str | None = None  # default: <config dir>/regimes if present, else the embedded set
    caps_dir: str | None = None
    bootstrap_samples: int = 2000
    dream: DreamConfig = msgspec.field(default_factory=DreamConfig)
    phase: PhaseConfig = msgspec.field(default_factory=PhaseConfig)
    # Per-domain options (command domains' command/knobs/kpis, storage device, generic domains).
    domain_options: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)


class LoadedConfig(msgspec.Struct, frozen=True):
    """A validated configuration with everything it refers to, resolved."""

    config: Config
    path: Path | None  # None = embedded default
    regimes: dict[str, dict[str, RegimeSpec]]  # domain -> regime name -> spec
    caps: dict[str, dict[str, Any]]  # domain -> KPI -> CapLimit
    config_hash: str
    window_duration_s: float

    @property
    def state_dir(self) -> Path:
        # Absolute: workloads run with their own working directory, so a relative "./var" would
        # point somewhere else inside a trial (stress-ng --temp-path).
        return Path(self.config.state_dir).absolute()

    @property
    def socket_path(self) -> Path:
        if self.config.socket:
            return Path(self.config.socket).absolute()
        return self.state_dir / "kloros.sock"

    @property
    def sysfs_root(self) -> Path:
        return Path(self.config.sysfs_root).absolute()


# --------------------------------------------------------------------------------------------------
# Locations of the embedded defaults


def package_dir() -> Path:
    return Path(__file__).resolve().parent


def defaults_dir() -> Path:
    """Directory holding ``regimes/`` and ``caps/``: inside the package (wheel), else the checkout."""
    inside = package_dir() / "defaults"
    if (inside / "regimes").is_dir():
        return inside
    return package_dir().parent


def default_config_path() -> Path:
    return package_dir() / "defaults" / "dream.yaml"


# --------------------------------------------------------------------------------------------------
# Validation helpers

_DURATION_RE = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$")


def parse_duration(value: int | float | str) -> float:
    """Seconds from a number or "4h" / "30m" / "90s" / "1h30m"; ValueError on anything else."""
    if isinstance(value, bool):
        raise ValueError("expected seconds or a duration like '4h'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION_RE.match(value)
        if not value.strip() or not m or not any(m.groups()):
            raise ValueError(f"cannot parse duration {value!r} (use seconds or e.g. '4h', '30m', '1h30m')")
        h, mi, s = (float(g) if g else 0.0 for g in m.groups())
        seconds = h * 3600 + mi * 60 + s
    if seconds <= 0:
        raise ValueError("duration must be positive")
    return seconds


def _check_fields(raw: Any, cls: type[msgspec.Struct], file: str, prefix: str, problems: list[str]) -> None:
    """Walk ``raw`` against ``cls`` and report every unknown key and wrongly typed value."""
    if not isinstance(raw, dict):
        problems.append(f"{file}: {prefix or '(top level)'}: expected a mapping, got {type(raw).__name__}")
        return
    fields = {f.name: f for f in msgspec.structs.fields(cls)}
    for key in raw:
        if key not in fields:
            where = f"{prefix}.{key}" if prefix else str(key)
            problems.append(f"{file}: {where}: unknown key")
    for name, f in fields.items():
        if name not in raw:
            continue
        where = f"{prefix}.{name}" if prefix else name
        value = raw[name]
        sub = _struct_type(f.type)
        if sub is not None and (isinstance(value, dict) or value is not None):
            _check_fields(value, sub, file, where, problems)
            continue
        try:
            msgspec.convert(value, type=f.type, strict=True)
        except msgspec.ValidationError as e:
            problems.append(f"{file}: {where}: {e}")


def _struct_type(tp: Any) -> type[msgspec.Struct] | None:
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        structs = [a for a in typing.get_args(tp) if isinstance(a, type) and issubclass(a, msgspec.Struct)]
        if len(structs) == 1:
            return structs[0]
    return None


def _range_checks(cfg: Config, file: str, problems: list[str]) -> float:
    d = cfg.dream

    def positive(
        key: str, value: float | int | None, *, allow_none: bool = False, zero: bool = False
    ) -> None:
        if value is None:
            if not allow_none:
                problems.append(f"{file}: {key}: must be set")
            return
        if value < 0 or (value == 0 and not zero):
            problems.append(f"{file}: {key}: must be {'≥ 0' if zero else '> 0'}, got {value}")

    positive("dream.population", d.population)
    positive("dream.epochs_per_cycle", d.epochs_per_cycle)
    positive("dream.max_parallel", d.max_parallel)
    positive("dream.trials", d.trials)
    positive("dream.min_trials", d.min_trials)
    positive("dream.elite", d.elite, zero=True)
    positive("dream.trial_seconds", d.trial_seconds, allow_none=True)
    positive("dream.pacing.min_sleep_s", d.pacing.min_sleep_s, zero=True)
    positive("dream.pacing.max_sleep_s", d.pacing.max_sleep_s)
    positive("bootstrap_samples", cfg.bootstrap_samples)
    if d.pacing.min_sleep_s > d.pacing.max_sleep_s:
        problems.append(f"{file}: dream.pacing.min_sleep_s: larger than dream.pacing.max_sleep_s")
    if d.elite >= d.population > 0:
        problems.append(f"{file}: dream.elite: must be smaller than dream.population")
    if not d.domains:
        problems.append(f"{file}: dream.domains: at least one domain is required")
    if len(set(d.domains)) != len(d.domains):
        problems.append(f"{file}: dream.domains: a domain is listed twice")
    q = cfg.phase.qtime
    positive("phase.qtime.epochs", q.epochs)
    positive("phase.qtime.slices", q.slices)
    positive("phase.qtime.replicas", q.replicas)
    positive("phase.qtime.min_replicas", q.min_replicas)
    positive("phase.trial_seconds", cfg.phase.trial_seconds, allow_none=True)
    positive("phase.max_variants", cfg.phase.max_variants, zero=True)
    if q.slices > len(REGIMES):
        problems.append(
            f"{file}: phase.qtime.slices: at most {len(REGIMES)} (one per regime), got {q.slices}"
        )
    if q.min_replicas > q.replicas:
        problems.append(f"{file}: phase.qtime.min_replicas: exceeds phase.qtime.replicas")
    from kloros_orchestrator.core.schedule import parse_window_start

    try:
        parse_window_start(cfg.phase.window.start)
    except ValueError as e:
        problems.append(f"{file}: phase.window.start: {e}")
    duration = 0.0
    try:
        duration = parse_duration(cfg.phase.window.duration)
    except ValueError as e:
        problems.append(f"{file}: phase.window.duration: {e}")
    if duration > 86400:
        problems.append(
            f"{file}: phase.window.duration: at most 24h (windows repeat daily), got {duration:g} s"
        )
    if cfg.timezone is not None:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(cfg.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            problems.append(f"{file}: timezone: unknown time zone {cfg.timezone!r}")
    if cfg.log_level.upper() not in {"TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"}:
        problems.append(f"{file}: log_level: unknown level {cfg.log_level!r}")
    if not cfg.state_dir:
        problems.append(f"{file}: state_dir: must not be empty")
    if cfg.socket is not None and len(os.fsencode(os.path.abspath(cfg.socket))) > 100:
        problems.append(f"{file}: socket: path longer than a Unix socket allows (100 bytes)")
    return duration


def _known_domains() -> set[str]:
    from kloros_orchestrator.spica.registry import available_domains

    return set(available_domains())


def _register_generic_domains(cfg: Config, file: str, problems: list[str]) -> None:
    """``domain_options.<name>: {kind: generic, knobs, workload, kpis}`` defines a domain in YAML."""
    from kloros_orchestrator.errors import DomainError
    from kloros_orchestrator.spica.domains.generic import make_generic_domain

    for name, opts in cfg.domain_options.items():
        if opts.get("kind") != "generic":
            continue
        try:
            make_generic_domain(name, {k: v for k, v in opts.items() if k != "kind"})
        except DomainError as e:
            problems.append(f"{file}: domain_options.{name}: {e}")


def _check_domain_options(cfg: Config, file: str, known: set[str], problems: list[str]) -> None:
    from kloros_orchestrator.spica.registry import get_domain_class

    for name, opts in cfg.domain_options.items():
        if opts.get("kind") == "generic":
            continue
        if name not in known:
            problems.append(f"{file}: domain_options.{name}: unknown domain")
            continue
        allowed = get_domain_class(name).option_keys
        hint = ", ".join(sorted(allowed)) or "none"
        for key in sorted(set(opts) - allowed):
            problems.append(f"{file}: domain_options.{name}.{key}: unknown option (allowed: {hint})")


def _domain_kpis(domain: str, options: dict[str, Any]) -> set[str]:
    extra = options.get("kpis") or []
    return set(STANDARD_KPIS) | {str(k) for k in extra if isinstance(k, str)}


def _load_yaml(path: Path, problems: list[str]) -> Any:
    try:
        text = path.read_text()
    except OSError as e:
        problems.append(f"{path}: (file): cannot read: {e.strerror or e}")
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(file)"
        problems.append(f"{path}: {where}: invalid YAML: {getattr(e, 'problem', None) or e}")
        return None


def _load_regimes(path: Path, problems: list[str]) -> dict[str, RegimeSpec]:
    raw = _load_yaml(path, problems)
    out: dict[str, RegimeSpec] = {}
    if raw is None:
        if path.exists() and not problems:
            problems.append(f"{path}: (file): empty")
        return out
    if not isinstance(raw, dict):
        problems.append(f"{path}: (top level): expected a mapping of regime name to spec")
        return out
    for name in raw:
        if name not in REGIMES:
            problems.append(f"{path}: {name}: unknown regime (expected {', '.join(REGIMES)})")
    for name in REGIMES:
        if name not in raw:
            problems.append(f"{path}: {name}: regime missing")
            continue
        try:
            spec = msgspec.convert(raw[name], type=RegimeSpec, strict=True)
        except msgspec.ValidationError as e:
            problems.append(f"{path}: {name}: {e}")
            continue
        if spec.duration <= 0:
            problems.append(f"{path}: {name}.duration: must be > 0")
        for i, s in enumerate(spec.stressors):
            if isinstance(s.instances, int) and s.instances < 0:
                problems.append(f"{path}: {name}.stressors[{i}].instances: must be ≥ 0")
            if isinstance(s.instances, str) and s.instances != "auto":
                problems.append(f"{path}: {name}.stressors[{i}].instances: a count or 'auto'")
            if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", s.name):
                problems.append(f"{path}: {name}.stressors[{i}].name: not a stress-ng stressor name")
            for opt in s.options:
                if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", opt):
                    problems.append(f"{path}: {name}.stressors[{i}].options.{opt}: not a stress-ng option")
        out[name] = spec
    return out


def _load_caps(path: Path, known: set[str], problems: list[str]) -> dict[str, Any]:
    from kloros_orchestrator.measure.caps import parse_caps

    if not path.exists():
        return {}
    raw = _load_yaml(path, problems)
    if raw is None:
        return {}
    caps, cap_problems = parse_caps(raw, known_kpis=known, file=str(path))
    problems.extend(cap_problems)
    return dict(caps)


def _env_overrides(raw: dict[str, Any], problems: list[str]) -> None:
    trials = os.environ.get("KLR_DREAM_TRIALS")
    if trials is None:
        return
    try:
        n = int(trials)
    except ValueError:
        problems.append(f"environment: KLR_DREAM_TRIALS: not an integer: {trials!r}")
        return
    dream = raw.setdefault("dream", {})
    if isinstance(dream, dict):
        dream["trials"] = n


def load_config(path: Path | None = None, *, overrides: dict[str, Any] | None = None) -> LoadedConfig:
    """Load and validate; raise ConfigError listing every problem found."""
    problems: list[str] = []
    cfg_path = Path(path) if path is not None else default_config_path()
    file = str(cfg_path)
    raw = _load_yaml(cfg_path, problems)
    if problems:
        raise ConfigError(problems)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{file}: (top level): expected a mapping, got {type(raw).__name__}"])
    _env_overrides(raw, problems)
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    _check_fields(raw, Config, file, "", problems)
    if problems:
        raise ConfigError(problems)
    cfg = msgspec.convert(raw, type=Config, strict=True)
    duration = _range_checks(cfg, file, problems)

    _register_generic_domains(cfg, file, problems)
    known = _known_domains()
    base = cfg_path.parent
    regimes_dir = _resolve_dir(cfg.regimes_dir, base, "regimes", path is not None)
    caps_dir = _resolve_dir(cfg.caps_dir, base, "caps", path is not None)
    regimes: dict[str, dict[str, RegimeSpec]] = {}
    caps: dict[str, dict[str, Any]] = {}
    for dom in cfg.dream.domains:
        opts = cfg.domain_options.get(dom, {})
        if dom not in known and opts.get("kind") != "generic":
            problems.append(
                f"{file}: dream.domains: unknown domain {dom!r} (known: {', '.join(sorted(known))})"
            )
            continue
        rpath = regimes_dir / f"{dom}.yaml"
        if not rpath.exists():
            problems.append(f"{rpath}: (file): no regimes file for domain {dom!r}")
        else:
            regimes[dom] = _load_regimes(rpath, problems)
        caps[dom] = _load_caps(caps_dir / f"{dom}.yaml", _domain_kpis(dom, opts), problems)
    _check_domain_options(cfg, file, known, problems)
    if problems:
        raise ConfigError(problems)
    digest = hashlib.sha256(msgspec.json.encode(cfg, order="sorted"))
    for dom in sorted(regimes):
        digest.update(msgspec.json.encode(regimes[dom], order="sorted"))
    return LoadedConfig(
        config=cfg,
        path=Path(path) if path is not None else None,
        regimes=regimes,
        caps=caps,
        config_hash=digest.hexdigest()[:16],
        window_duration_s=duration,
    )


def _resolve_dir(explicit: str | None, base: Path, name: str, user_config: bool) -> Path:
    if explicit:
        p = Path(explicit)
        return p if p.is_absolute() else base / p
    if user_config and (base / name).is_dir():
        return base / name
    return defaults_dir() / name
