"""Sanity checks on a parsed configuration: ranges, finite numbers, window times and paths.

Numbers are finite and within documented bounds (:data:`COUNT_BOUNDS`, :data:`SECONDS_BOUNDS`): far
above any useful setting, low enough that nobody waits forever (``dream.trials: 10**30``) or runs
out of memory (``bootstrap_samples: 10**30``) because of a typo. Durations are at most a day.

Paths never hold NUL or other control characters. ``state_dir`` must also survive every place it
is used: stress-ng receives ``<state_dir>/scratch/<domain>`` as ``--temp-path`` and the argv checker
refuses whitespace, and the daemon's log file ``<state_dir>/logs/daemon.log`` is a loguru path, in
which ``{...}`` is a format field. Both are refused here, on the absolute path (a relative state_dir
takes the working directory's name with it).

Free-form parts (``domain_options``, caps documents) are scanned by :func:`scan_values` for what no
consumer can use: NUL characters, non-finite numbers, integers beyond 64 bits, YAML-only types.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from kloros_orchestrator.config_yaml import SHOWN_CHARS, shown
from kloros_orchestrator.model import REGIMES

if TYPE_CHECKING:
    from kloros_orchestrator.config import Config

DAY_S: Final = 86400.0
MAX_INT64: Final = 2**63 - 1
# key -> (lowest, highest) allowed count.
COUNT_BOUNDS: Final[dict[str, tuple[int, int]]] = {
    "seed": (0, MAX_INT64),  # numpy seed sequences refuse negative entropy
    "bootstrap_samples": (1, 1_000_000),
    "dream.population": (1, 1000),
    "dream.epochs_per_cycle": (1, 1000),
    "dream.max_parallel": (1, 1024),
    "dream.trials": (1, 1000),
    "dream.min_trials": (1, 1000),
    "dream.elite": (0, 1000),
    "phase.qtime.epochs": (1, 1000),
    "phase.qtime.slices": (1, len(REGIMES)),
    "phase.qtime.replicas": (1, 1000),
    "phase.qtime.min_replicas": (1, 1000),
    "phase.max_variants": (0, 1000),
    "dream.contamination.max_reruns": (0, 1000),
}
# key -> (lowest, highest, highest included): a share or a probability, exclusive at the bottom.
FRACTION_BOUNDS: Final[dict[str, tuple[float, float, bool]]] = {
    "dream.racing.indifference": (0.0, 10.0, True),  # score units: 10 = +1000 %
    "dream.racing.confidence": (0.5, 1.0, False),
    "dream.contamination.outside_cpu": (0.0, 1.0, True),
}
# key -> (zero allowed, highest) in seconds; None (unset) is allowed where the field is optional.
SECONDS_BOUNDS: Final[dict[str, tuple[bool, float]]] = {
    "dream.trial_seconds": (False, DAY_S),
    "dream.first_look_seconds": (False, DAY_S),
    "phase.trial_seconds": (False, DAY_S),
    "dream.pacing.min_sleep_s": (True, DAY_S),
    "dream.pacing.max_sleep_s": (False, DAY_S),
}
MAX_RELATIVE_START_S: Final = 7 * DAY_S
MAX_PATH_BYTES: Final = 4095  # PATH_MAX minus the terminating NUL
MAX_NAME_BYTES: Final = 255  # NAME_MAX: one path component
MAX_SOCKET_BYTES: Final = 107  # sun_path holds 108 bytes including the terminating NUL (as runtime.control)
LOG_LEVELS: Final = frozenset({"TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"})

Report = Callable[[str, str], None]  # (key, problem)

_DURATION_RE: Final = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$"
)
_MAX_DURATION_TEXT: Final = 40  # longer text is no duration; the regex need not backtrack through it


def parse_duration(value: int | float | str) -> float:
    """Seconds from a number or "4h" / "30m" / "90s" / "1h30m"; ValueError on anything else."""
    if isinstance(value, bool):
        raise ValueError("expected seconds or a duration like '4h'")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError(f"number out of range, got {shown(value)}") from None
    else:
        m = _DURATION_RE.match(value) if len(value) <= _MAX_DURATION_TEXT else None
        if not value.strip() or not m or not any(m.groups()):
            hint = "use seconds or e.g. '4h', '30m', '1h30m'"
            raise ValueError(f"cannot parse duration {shown(value)} ({hint})")
        h, mi, s = (float(g) if g else 0.0 for g in m.groups())
        seconds = h * 3600 + mi * 60 + s
    if not math.isfinite(seconds):
        raise ValueError(f"must be a finite number of seconds, got {seconds}")
    if seconds <= 0:
        raise ValueError("duration must be positive")
    return seconds


def check_window_duration(value: int | float | str, report: Report) -> float:
    """Seconds of ``phase.window.duration`` (0.0 when it has a problem)."""
    try:
        duration = parse_duration(value)
    except ValueError as e:
        report("phase.window.duration", str(e))
        return 0.0
    if duration > DAY_S:
        report("phase.window.duration", f"at most 24h (windows repeat daily), got {duration:g} s")
    return duration


def value_at(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _count(value: int, low: int, high: int) -> str | None:
    if value < low:
        return f"must be {'≥ 0' if low == 0 else '> 0'}, got {shown(value)}"
    if value > high:
        return f"at most {high}, got {shown(value)}"
    return None


def _seconds(value: float, zero: bool, high: float) -> str | None:
    if not math.isfinite(value):
        return f"must be a finite number of seconds, got {value}"
    if value < 0 or (value == 0 and not zero):
        return f"must be {'≥ 0' if zero else '> 0'}, got {value:g}"
    if value > high:
        return f"at most {high:g} s (one day), got {value:g}"
    return None


def check_numbers(cfg: Config, report: Report, bad: set[str]) -> None:
    """Counts and durations against :data:`COUNT_BOUNDS` / :data:`SECONDS_BOUNDS`; failures go to ``bad``."""
    for key, (low, high) in COUNT_BOUNDS.items():
        if key in bad:
            continue
        count = value_at(cfg, key)
        problem = _count(count, low, high)
        if key == "phase.qtime.slices" and count > high:
            problem = f"at most {high} (one per regime), got {shown(count)}"
        if problem is not None:
            report(key, problem)
            bad.add(key)
    for key, (zero, top) in SECONDS_BOUNDS.items():
        value = value_at(cfg, key)
        if key in bad or value is None:
            continue
        problem = _seconds(float(value), zero, top)
        if problem is not None:
            report(key, problem)
            bad.add(key)
    for key, (lowest, highest, high_ok) in FRACTION_BOUNDS.items():
        problem = _fraction(float(value_at(cfg, key)), lowest, highest, high_ok)
        if key not in bad and problem is not None:
            report(key, problem)
            bad.add(key)


def _fraction(value: float, low: float, high: float, high_ok: bool) -> str | None:
    if not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if value <= low or value > high or (value == high and not high_ok):
        return f"must be in ({low:g}, {high:g}{']' if high_ok else ')'}, got {value:g}"
    return None


def check_relations(cfg: Config, report: Report, bad: set[str]) -> None:
    """Checks between two keys, made only when neither key already has a problem of its own."""
    d, q = cfg.dream, cfg.phase.qtime

    def both_fine(*keys: str) -> bool:
        return not bad.intersection(keys)

    if both_fine("dream.pacing.min_sleep_s", "dream.pacing.max_sleep_s") and (
        d.pacing.min_sleep_s > d.pacing.max_sleep_s
    ):
        report("dream.pacing.min_sleep_s", "larger than dream.pacing.max_sleep_s")
    if both_fine("dream.elite", "dream.population") and d.elite >= d.population:
        report("dream.elite", "must be smaller than dream.population")
    if both_fine("phase.qtime.min_replicas", "phase.qtime.replicas") and q.min_replicas > q.replicas:
        report("phase.qtime.min_replicas", "exceeds phase.qtime.replicas")
    if "dream.domains" not in bad:
        if not d.domains:
            report("dream.domains", "at least one domain is required")
        if len(set(d.domains)) != len(d.domains):
            report("dream.domains", "a domain is listed twice")


def check_window_start(text: str, report: Report) -> None:
    from kloros_orchestrator.core.schedule import RelativeStart, parse_window_start

    if len(text) > SHOWN_CHARS:
        report("phase.window.start", f"expected 'HH:MM' or 'now+SECONDS', got {len(text)} characters")
        return
    try:
        start = parse_window_start(text)
    except ValueError as e:
        report("phase.window.start", str(e))
        return
    if isinstance(start, RelativeStart) and start.offset_s > MAX_RELATIVE_START_S:
        report("phase.window.start", f"at most now+{MAX_RELATIVE_START_S:g} (7 days), got {shown(text)}")


def check_names(cfg: Config, report: Report) -> None:
    """Time zone and log level."""
    if cfg.timezone is not None:
        import zoneinfo

        try:
            if len(cfg.timezone) > SHOWN_CHARS or "\0" in cfg.timezone:
                raise ValueError(cfg.timezone)
            zoneinfo.ZoneInfo(cfg.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            report("timezone", f"unknown time zone {shown(cfg.timezone)}")
    if cfg.log_level.upper() not in LOG_LEVELS:
        report("log_level", f"unknown level {shown(cfg.log_level)}")


def _control_char(text: str) -> str | None:
    for i, ch in enumerate(text):
        if unicodedata.category(ch) == "Cc":
            name = "NUL" if ch == "\0" else f"U+{ord(ch):04X}"
            return f"contains a control character ({name} at position {i})"
    return None


def path_problem(text: str) -> str | None:
    """Why ``text`` cannot be a path, or None: empty, control characters, beyond PATH_MAX or NAME_MAX."""
    if not text:
        return "must not be empty"
    problem = _control_char(text)
    if problem is not None:
        return problem
    try:
        size = len(os.fsencode(text))
    except UnicodeError:  # lone surrogates from YAML "\udcxx" escapes
        return "is not encodable as a file name"
    if size > MAX_PATH_BYTES:
        return f"longer than {MAX_PATH_BYTES} bytes"
    if any(len(os.fsencode(part)) > MAX_NAME_BYTES for part in text.split("/")):
        return f"has a component longer than {MAX_NAME_BYTES} bytes"
    return None


def _state_dir_problem(text: str) -> str | None:
    absolute = os.path.abspath(text)
    via = "" if absolute == text else f" (it resolves to {shown(absolute)})"
    if any(ch.isspace() for ch in absolute):
        return (
            f"contains whitespace{via}: stress-ng gets a directory under it as --temp-path, "
            "and workload arguments may not contain whitespace"
        )
    if "{" in absolute or "}" in absolute:
        return f"contains '{{' or '}}'{via}: the log file path under it would be read as a format template"
    return None


def check_paths(cfg: Config, report: Report) -> set[str]:
    """Path keys; returns the keys that cannot be used at all (their files must not be opened)."""
    unusable: set[str] = set()
    for key in ("state_dir", "socket", "sysfs_root", "regimes_dir", "caps_dir"):
        value = getattr(cfg, key)
        if value is None:
            continue
        problem = path_problem(value)
        if problem is None and key == "state_dir":
            problem = _state_dir_problem(value)
        if problem is not None:
            report(key, problem)
            unusable.add(key)
    if not unusable.intersection({"state_dir", "socket"}):
        if cfg.socket is not None:
            socket, whose = os.path.abspath(cfg.socket), "path"
        else:
            socket, whose = os.path.join(os.path.abspath(cfg.state_dir), "kloros.sock"), "default path"
        size = len(os.fsencode(socket))
        if size > MAX_SOCKET_BYTES:
            hint = "" if cfg.socket is not None else " (<state_dir>/kloros.sock): set a shorter socket"
            report("socket", f"{whose} is {size} bytes, Unix sockets allow at most {MAX_SOCKET_BYTES}{hint}")
    return unusable


MIN_LEASE_S: Final = 30.0
MAX_STUDY_TEXT: Final = 200


def _label_problem(text: str) -> str | None:
    if not text.strip():
        return "must not be empty"
    if len(text) > MAX_STUDY_TEXT:
        return f"at most {MAX_STUDY_TEXT} characters, got {len(text)}"
    if not text.isprintable():
        return "must be printable text"
    return None


def check_study(cfg: Config, report: Report, bad: set[str]) -> None:
    """``study``: ``local`` or a PostgreSQL URI (never echoed: it may hold a password), a name when
    shared, a printable host id, a lease of at least :data:`MIN_LEASE_S` and a heartbeat within it."""
    from kloros_orchestrator.fleet.dsn import is_postgres_uri, scheme_of

    st = cfg.study
    if "study.store" not in bad and st.store != "local":
        if not is_postgres_uri(st.store):
            report(
                "study.store",
                "must be 'local' or a URI starting with postgresql:// or postgres://, "
                f"got {scheme_of(st.store)}",
            )
        elif _control_char(st.store) is not None or any(ch.isspace() for ch in st.store):
            report("study.store", "the URI contains whitespace or a control character")
        if "study.name" not in bad and st.name is None:
            report("study.name", "required when study.store is a database (the fleet's label)")
    for key, value in (("study.name", st.name), ("study.host_id", st.host_id)):
        problem = _label_problem(value) if value is not None and key not in bad else None
        if problem is not None:
            report(key, problem)
    if "study.lease_seconds" not in bad and st.lease_seconds is not None:
        problem = _seconds(float(st.lease_seconds), False, DAY_S)
        if problem is None and st.lease_seconds < MIN_LEASE_S:
            problem = f"at least {MIN_LEASE_S:g} s, got {st.lease_seconds:g}"
        if problem is not None:
            report("study.lease_seconds", problem)
            bad.add("study.lease_seconds")
    if "study.heartbeat_seconds" not in bad:
        problem = _seconds(float(st.heartbeat_seconds), False, 3600.0)
        lease = st.lease_seconds if "study.lease_seconds" not in bad else None
        if problem is None and lease is not None and st.heartbeat_seconds * 2 > lease:
            problem = f"at most half of study.lease_seconds ({lease:g} s), got {st.heartbeat_seconds:g}"
        if problem is not None:
            report("study.heartbeat_seconds", problem.replace("(one day)", "(one hour)"))


def check_config(cfg: Config, file: str, problems: list[str], bad: set[str]) -> tuple[float, set[str]]:
    """Every check above on ``cfg``; ``bad`` holds keys already refused (their defaults are in ``cfg``).

    Returns the window duration in seconds and the path keys that cannot be used.
    """

    def report(key: str, problem: str) -> None:
        problems.append(f"{file}: {key}: {problem}")

    check_numbers(cfg, report, bad)
    check_relations(cfg, report, bad)
    if "phase.window.start" not in bad:
        check_window_start(cfg.phase.window.start, report)
    duration = 0.0
    if "phase.window.duration" not in bad:
        duration = check_window_duration(cfg.phase.window.duration, report)
    check_names(cfg, report)
    check_study(cfg, report, bad)
    return duration, check_paths(cfg, report)


# --------------------------------------------------------------------------------------------------
# Free-form values

_PLAIN = (str, int, float, bool, type(None), list, dict)


def key_text(key: object) -> str:
    """A mapping key as it appears in ``file: key: problem``: as is when short and printable."""
    if isinstance(key, str) and key and len(key) <= SHOWN_CHARS and key.isprintable():
        return key
    return shown(key)


def _leaf_problem(value: object, strict_text: bool) -> str | None:
    if isinstance(value, str):
        if "\0" in value:
            return f"contains a NUL character at position {value.index(chr(0))}"
        return _control_char(value) if strict_text else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not -MAX_INT64 - 1 <= value <= MAX_INT64:
        return f"integer out of range (64 bits), got {shown(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if not isinstance(value, _PLAIN):
        return f"unsupported value of type {type(value).__name__} (use text, numbers, lists or mappings)"
    return None


def scan_values(value: object, where: str, report: Report, *, strict_keys: frozenset[str]) -> bool:
    """Report NUL characters, non-finite numbers, integers beyond 64 bits and non-YAML-core types.

    Keys named in ``strict_keys`` (for example ``path``) refuse every control character; other text
    only NUL. Returns True when nothing was found.
    """
    clean = True
    stack: list[tuple[object, str, bool]] = [(value, where, False)]
    while stack:
        node, at, strict = stack.pop()
        if isinstance(node, dict):
            children: list[tuple[object, str, bool]] = []
            for k, v in node.items():
                sub = f"{at}.{key_text(k)}" if at else key_text(k)
                problem = _leaf_problem(k, isinstance(k, str))
                if problem is not None:
                    report(sub, f"key {problem}")
                    clean = False
                    continue
                children.append((v, sub, isinstance(k, str) and k in strict_keys))
            stack.extend(reversed(children))  # reported in file order
        elif isinstance(node, list):
            stack.extend(reversed([(v, f"{at}[{i}]", strict) for i, v in enumerate(node)]))
        else:
            problem = _leaf_problem(node, strict)
            if problem is not None:
                report(at, problem)
                clean = False
    return clean


__all__ = [
    "COUNT_BOUNDS",
    "FRACTION_BOUNDS",
    "SECONDS_BOUNDS",
    "check_config",
    "key_text",
    "parse_duration",
    "path_problem",
    "scan_values",
]
