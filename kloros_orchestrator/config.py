"""Configuration: ``dream.yaml`` + ``regimes/<domain>.yaml`` + ``caps/<domain>.yaml``.

Everything is loaded into frozen msgspec Structs. Validation collects *every* problem as
``file: key: problem`` (unknown keys, wrong types, negative counts, bad times, caps on unknown KPIs)
before failing, so an operator fixes a file in one pass instead of one error per run: a key with the
wrong type is reported and its default stands in, so the range checks of the other keys still run.

Files are read by ``config_yaml`` (bounded size, depth and alias expansion, strict UTF-8); values are
checked by ``config_checks`` (finite numbers within documented bounds, usable paths); regimes and caps
by ``config_files``. Whatever a file holds, the outcome is a LoadedConfig or a ConfigError.

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
from typing import Any, Final, Literal

import msgspec

from kloros_orchestrator.config_checks import check_config, key_text, scan_values
from kloros_orchestrator.config_checks import parse_duration as parse_duration  # re-exported
from kloros_orchestrator.config_files import load_caps, load_regimes
from kloros_orchestrator.config_yaml import read_yaml, shown
from kloros_orchestrator.errors import ConfigError
from kloros_orchestrator.model import STANDARD_KPIS, RegimeSpec
from kloros_orchestrator.regime_needs import duration_warnings

MAX_PROBLEM_CHARS: Final = 500
# The keys that decide which domain files are read; when one is refused, those files are not read.
_KEYS_NAMING_FILES: Final = frozenset({"dream", "dream.domains", "domain_options", "regimes_dir", "caps_dir"})

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


class RacingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``dream.racing``: the indifference-zone race of a tournament (README, "Racing").

    ``indifference`` is δ, the smallest score difference worth acting on (score units: 0.02 = 2 % of
    the current configuration's throughput); ``confidence`` the probability of picking a candidate
    within δ of the best."""

    indifference: float = 0.02
    confidence: float = 0.95


class ContaminationConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``dream.contamination``: a round during which CPU time outside the daemon's own process tree
    exceeded ``outside_cpu`` (a share of the host's CPU capacity) is marked contaminated and re-run, at
    most ``max_reruns`` times per tournament (README, "Contaminated rounds")."""

    outside_cpu: float = 0.10
    max_reruns: int = 3


class DreamConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    domains: list[str] = msgspec.field(default_factory=lambda: ["cpu", "memory", "storage", "os_scheduler"])
    population: int = 6
    epochs_per_cycle: int = 1
    max_parallel: int = 1
    trials: int = 3  # trials per regime for a candidate that survives the race
    trial_seconds: float | None = None  # overrides every regime's duration inside D-REAM
    # A domain's first tournament in a fresh state is a short first look (trials of this many seconds,
    # max(2, min_trials) per regime), so the first verdict comes in minutes; null: no first look.
    first_look_seconds: float | None = 2.0
    min_trials: int = 2  # successful trials per regime below which a candidate is not scored (≤ trials)
    elite: int = 1
    pacing: PacingConfig = msgspec.field(default_factory=PacingConfig)
    racing: RacingConfig = msgspec.field(default_factory=RacingConfig)
    contamination: ContaminationConfig = msgspec.field(default_factory=ContaminationConfig)


class PromotionConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What happens to a variant PHASE promoted: ``manual`` lists it as pending (``apply`` adopts
    it); ``auto`` adopts it at the end of the window (README, "From verdict to host")."""

    mode: Literal["manual", "auto"] = "manual"


# domain_options keys about a domain rather than for its class: never handed to the class.
DOMAIN_META_KEYS: Final = frozenset({"kind", "unit"})


def class_options(options: dict[str, Any]) -> dict[str, Any]:
    """A domain's options as its class takes them (without :data:`DOMAIN_META_KEYS`)."""
    return {k: v for k, v in options.items() if k not in DOMAIN_META_KEYS}


class MetricsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``metrics.textfile``: a Prometheus text file (node_exporter's textfile collector) rewritten at
    every event; null: none."""

    textfile: str | None = None


class StudyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``study``: where D-REAM's work is kept (README, "Running a fleet"). ``local`` (the default) is
    one host on its own; a ``postgresql://`` URI shares each domain's study with every daemon pointed
    at the same database, study name and study key."""

    store: str = "local"
    name: str | None = None  # the fleet's label; required with a PostgreSQL store
    host_id: str | None = None  # default: node name + a short hash of state_dir
    lease_seconds: float | None = None  # default: 3 x a work unit's expected length, at least 30
    heartbeat_seconds: float = 10.0

    @property
    def shared(self) -> bool:
        return self.store != "local"


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
    promotion: PromotionConfig = msgspec.field(default_factory=PromotionConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    study: StudyConfig = msgspec.field(default_factory=StudyConfig)
    log_file: str | None = None  # a copy of the log in this file; default: stderr (the journal) only
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
    # Things that load but will not work as meant (e.g. a regime too short for its stressors):
    # ``validate`` prints them, ``run`` logs them; never a reason to refuse the configuration.
    warnings: tuple[str, ...] = ()

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


def _check_fields(
    raw: Any, cls: type[msgspec.Struct], file: str, prefix: str, problems: list[str], dropped: set[str]
) -> dict[str, Any]:
    """Walk ``raw`` against ``cls``: report every unknown key and wrongly typed value.

    Returns ``raw`` without them (so the struct's defaults stand in) and adds each refused key to
    ``dropped``: the range checks that follow then look at the keys that did parse.
    """
    if not isinstance(raw, dict):
        problems.append(f"{file}: {prefix or '(top level)'}: expected a mapping, got {type(raw).__name__}")
        dropped.add(prefix)
        return {}
    fields = {f.name: f for f in msgspec.structs.fields(cls)}
    for key in raw:
        if key not in fields:
            where = f"{prefix}.{key_text(key)}" if prefix else key_text(key)
            problems.append(f"{file}: {where}: unknown key")
    clean: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        where = f"{prefix}.{name}" if prefix else name
        value = raw[name]
        sub = _struct_type(f.type)
        if sub is not None and value is not None:
            clean[name] = _check_fields(value, sub, file, where, problems, dropped)
            continue
        try:
            msgspec.convert(value, type=f.type, strict=True)
        except msgspec.ValidationError as e:
            problems.append(f"{file}: {where}: {e}")
            dropped.add(where)
            continue
        clean[name] = value
    return clean


def _struct_type(tp: Any) -> type[msgspec.Struct] | None:
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        structs = [a for a in typing.get_args(tp) if isinstance(a, type) and issubclass(a, msgspec.Struct)]
        if len(structs) == 1:
            return structs[0]
    return None


def _known_domains() -> set[str]:
    from kloros_orchestrator.spica.registry import available_domains

    return set(available_domains())


_STRICT_OPTION_KEYS: Final = frozenset({"path", "choices_path", "device"})  # every control character refused


def _scan_domain_options(cfg: Config, file: str, problems: list[str]) -> set[str]:
    """Domains whose options hold what no consumer can use (NUL, .inf, 10**30, ...): left out after this."""

    def report(key: str, problem: str) -> None:
        problems.append(f"{file}: {key}: {problem}")

    broken: set[str] = set()
    for name, opts in cfg.domain_options.items():
        where = f"domain_options.{key_text(name)}"
        if not scan_values({name: opts}, "domain_options", report, strict_keys=_STRICT_OPTION_KEYS):
            broken.add(name)
        elif not isinstance(name, str) or not name.isprintable():
            report(where, "domain names are printable text")
            broken.add(name)
    return broken


def _register_generic_domains(cfg: Config, file: str, problems: list[str], broken: set[str]) -> None:
    """``domain_options.<name>: {kind: generic, knobs, workload, kpis}`` defines a domain in YAML."""
    from kloros_orchestrator.errors import DomainError
    from kloros_orchestrator.spica.domains.generic import make_generic_domain

    for name, opts in cfg.domain_options.items():
        if name in broken or opts.get("kind") != "generic":
            continue
        try:
            make_generic_domain(name, class_options(opts))
        except DomainError as e:
            problems.append(f"{file}: domain_options.{key_text(name)}: {e}")
        except (TypeError, ValueError) as e:
            # A value of a shape the option parser did not expect (a list where a word belongs).
            problems.append(f"{file}: domain_options.{key_text(name)}: options of an unexpected shape ({e})")


_UNIT_RE: Final = re.compile(r"^[A-Za-z0-9:_.@\\-]{1,250}$")


def _check_domain_options(
    cfg: Config, file: str, known: set[str], problems: list[str], broken: set[str]
) -> None:
    from kloros_orchestrator.spica.registry import get_domain_class

    for name, opts in cfg.domain_options.items():
        unit = opts.get("unit") if name not in broken else None
        if unit is not None and not (isinstance(unit, str) and _UNIT_RE.match(unit)):
            problems.append(
                f"{file}: domain_options.{key_text(name)}.unit: {shown(unit)} is not a systemd unit name"
            )
        if name in broken or opts.get("kind") == "generic":
            continue
        if name not in known:
            problems.append(f"{file}: domain_options.{key_text(name)}: unknown domain")
            continue
        allowed = get_domain_class(name).option_keys | {"unit"}
        hint = ", ".join(sorted(allowed)) or "none"
        for key in sorted(set(opts) - allowed, key=str):
            where = f"domain_options.{name}.{key_text(key)}"
            problems.append(f"{file}: {where}: unknown option (allowed: {hint})")


def _domain_kpis(options: dict[str, Any]) -> set[str]:
    extra = options.get("kpis") or []
    names = extra if isinstance(extra, list | dict) else []
    return set(STANDARD_KPIS) | {k for k in names if isinstance(k, str)}


def _env_overrides(raw: dict[str, Any], problems: list[str]) -> None:
    trials = os.environ.get("KLR_DREAM_TRIALS")
    if trials is None:
        return
    try:
        n = int(trials)
    except ValueError:
        problems.append(f"environment: KLR_DREAM_TRIALS: not an integer: {shown(trials)}")
        return
    dream = raw.setdefault("dream", {})
    if isinstance(dream, dict):
        dream["trials"] = n


def _systemd_directories(raw: dict[str, Any]) -> None:
    """Under systemd, ``StateDirectory=``/``RuntimeDirectory=`` give ``$STATE_DIRECTORY`` and
    ``$RUNTIME_DIRECTORY``: they stand in for ``state_dir`` and the socket's directory when the file
    does not name them (the first path when several are listed)."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state and "state_dir" not in raw:
        raw["state_dir"] = state
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime and "socket" not in raw:
        raw["socket"] = os.path.join(runtime, "kloros.sock")


def _apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Command-line values replace the file's; under a key that is no mapping the type check reports it."""
    for dotted, value in overrides.items():
        node: Any = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {}) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node[leaf] = value


def _clipped(problems: list[str]) -> list[str]:
    """Problem lines as printed: each once, and a value rendered elsewhere never makes a line huge."""
    once = dict.fromkeys(problems)  # [x, x, x, ...] under dream.domains says the same thing each time
    return [p if len(p) <= MAX_PROBLEM_CHARS else p[: MAX_PROBLEM_CHARS - 3] + "..." for p in once]


def _parse_main_file(
    cfg_path: Path, overrides: dict[str, Any], problems: list[str]
) -> tuple[Config, float, set[str]]:
    """dream.yaml: the config, window seconds, and the keys that cannot be used (refused or bad paths)."""
    file = str(cfg_path)
    raw = read_yaml(cfg_path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{file}: (top level): expected a mapping, got {type(raw).__name__}"])
    _env_overrides(raw, problems)
    _systemd_directories(raw)
    _apply_overrides(raw, overrides)
    dropped: set[str] = set()
    clean = _check_fields(raw, Config, file, "", problems, dropped)
    try:
        cfg = msgspec.convert(clean, type=Config, strict=True)
    except msgspec.ValidationError as e:  # pragma: no cover - every field was converted above
        raise ConfigError([*problems, f"{file}: (top level): {e}"]) from None
    duration, unusable = check_config(cfg, file, problems, set(dropped))
    return cfg, duration, unusable | dropped


def _load_domain_files(
    cfg: Config, cfg_path: Path, user_config: bool, problems: list[str]
) -> tuple[dict[str, dict[str, RegimeSpec]], dict[str, dict[str, Any]]]:
    """Register generic domains, then read every listed domain's regimes and caps."""
    file = str(cfg_path)
    broken = _scan_domain_options(cfg, file, problems)
    _register_generic_domains(cfg, file, problems, broken)
    known = _known_domains()
    regimes_dir = _resolve_dir(cfg.regimes_dir, cfg_path.parent, "regimes", user_config)
    caps_dir = _resolve_dir(cfg.caps_dir, cfg_path.parent, "caps", user_config)
    regimes: dict[str, dict[str, RegimeSpec]] = {}
    caps: dict[str, dict[str, Any]] = {}
    for dom in cfg.dream.domains:
        opts = cfg.domain_options.get(dom, {})
        if dom not in known:
            # A generic domain that could not be registered has its problem reported already.
            if dom not in broken and opts.get("kind") != "generic":
                names = ", ".join(sorted(known))
                problems.append(f"{file}: dream.domains: unknown domain {shown(dom)} (known: {names})")
            continue
        rpath = regimes_dir / f"{dom}.yaml"
        if not rpath.exists():
            problems.append(f"{rpath}: (file): no regimes file for domain {dom!r}")
        else:
            regimes[dom] = load_regimes(rpath, problems)
        caps[dom] = load_caps(caps_dir / f"{dom}.yaml", _domain_kpis(opts), problems)
    _check_domain_options(cfg, file, known, problems, broken)
    return regimes, caps


def load_config(path: Path | None = None, *, overrides: dict[str, Any] | None = None) -> LoadedConfig:
    """Load and validate; raise ConfigError listing every problem found."""
    problems: list[str] = []
    cfg_path = Path(path) if path is not None else default_config_path()
    try:
        cfg, duration, unusable = _parse_main_file(cfg_path, overrides or {}, problems)
        # A refused key's default stands in for it: the domain files it leads to would be the wrong ones.
        if unusable & _KEYS_NAMING_FILES:
            raise ConfigError(problems)
        regimes, caps = _load_domain_files(cfg, cfg_path, path is not None, problems)
        if problems:
            raise ConfigError(problems)
    except ConfigError as e:
        raise ConfigError(_clipped(e.problems)) from None
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
        warnings=tuple(_regime_warnings(cfg, regimes, cfg_path, path is not None)),
    )


def _regime_warnings(
    cfg: Config, regimes: dict[str, dict[str, RegimeSpec]], cfg_path: Path, user_config: bool
) -> list[str]:
    """Regimes whose shortest trial is too short for a stressor (:mod:`regime_needs`)."""
    regimes_dir = _resolve_dir(cfg.regimes_dir, cfg_path.parent, "regimes", user_config)
    overrides = {
        "dream.trial_seconds": cfg.dream.trial_seconds,
        "dream.first_look_seconds": cfg.dream.first_look_seconds,
        "phase.trial_seconds": cfg.phase.trial_seconds,
    }
    out: list[str] = []
    for dom in sorted(regimes):
        out.extend(duration_warnings(str(regimes_dir / f"{dom}.yaml"), regimes[dom], overrides))
    return out


def _resolve_dir(explicit: str | None, base: Path, name: str, user_config: bool) -> Path:
    if explicit:
        p = Path(explicit)
        return p if p.is_absolute() else base / p
    if user_config and (base / name).is_dir():
        return base / name
    return defaults_dir() / name
