"""Knob declarations, discovery probes, and applying a value through the restore journal.

A :class:`Knob` says what a tunable is (type, range or choices, scope) and, for a system knob, which
file under ``sysfs_root`` holds it and how that file is read and written. Discovery
(:func:`discover_knob`) keeps only knobs this host really exposes and can write. Every write goes
through :class:`~kloros_orchestrator.spica.journal.KnobJournal` first (``spica/journal.py``, whose
names this module re-exports): the original is stored durably before anything changes.

Knob files are read and written only through the confined primitives (:func:`read_knob`,
:func:`write_knob`): never through a symlink out of ``sysfs_root``'s kernel trees. A journal restores
a file knob only through its :func:`file_target` (the files resolved when the knob was declared),
writing the journaled original once :func:`checked_original` has found it to be a value of the knob.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from kloros_orchestrator.errors import DomainError
from kloros_orchestrator.model import Scalar
from kloros_orchestrator.spica.journal import (
    ALLOWED_PREFIXES,
    JournalEntry,
    KnobJournal,
    RefusedPath,
    RestoreTarget,
    Runner,
    read_knob,
    read_text,
    run_argv,
    write_knob,
)

__all__ = [
    "ALLOWED_PREFIXES",
    "ENV_PREFIX",
    "FILE_FORMATS",
    "KNOB_TYPES",
    "SCOPES",
    "Discovered",
    "FileFormat",
    "JournalEntry",
    "Knob",
    "KnobJournal",
    "KnobType",
    "RefusedPath",
    "RestoreTarget",
    "Runner",
    "Scope",
    "active_token",
    "apply_system",
    "checked_original",
    "discover_knob",
    "file_target",
    "journal_original",
    "knob_from_declaration",
    "parse_value",
    "probe",
    "read_knob",
    "read_text",
    "restore_file",
    "restore_text_of",
    "run_argv",
    "same_value",
    "write_knob",
    "write_value",
]

KnobType = Literal["int", "float", "choice", "bool"]
Scope = Literal["system", "process"]
FileFormat = Literal["plain", "bracket"]

KNOB_TYPES: Final = ("int", "float", "choice", "bool")
SCOPES: Final = ("system", "process")
FILE_FORMATS: Final = ("plain", "bracket")
ENV_PREFIX: Final = "KLR_KNOB_"

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_ENV_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_BRACKET_RE = re.compile(r"\[([^\]\s]+)\]")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.:+-]{1,64}$")  # a host-listed choice ("mq-deadline", "low-power")
_CPU_DIR_RE = re.compile(r"^cpu(\d+)$")
_TRUE = ("1", "y", "yes", "on", "true")
_FALSE = ("0", "n", "no", "off", "false")


@dataclass(frozen=True)
class Knob:
    """One tunable of a domain.

    ``path`` (system knobs) is relative to ``sysfs_root``; ``{cpu}`` in it stands for every
    ``cpuN`` directory of the host (the knob is applied to all of them). ``fmt="bracket"`` files list
    the available values and mark the active one (``always [madvise] never``); they are written with
    the bare value. Empty ``choices`` on a bracket file (or with ``choices_path``) mean "what this
    host offers". A system knob without ``path`` is applied by its domain (e.g. through nvidia-smi).
    ``default`` is the stock value of a process knob; ``env`` names the environment variable a
    command workload receives the value in.
    """

    name: str
    type: KnobType
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    choices: tuple[Scalar, ...] = ()
    scope: Scope = "system"
    path: str | None = None
    fmt: FileFormat = "plain"
    choices_path: str | None = None
    default: Scalar | None = None
    env: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise DomainError(f"knob {self.name!r}: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        out: list[str] = []
        if not _NAME_RE.match(self.name):
            out.append("name must match [a-z][a-z0-9_]*")
        if self.type not in KNOB_TYPES:
            out.append(f"type must be one of {', '.join(KNOB_TYPES)}")
        if self.scope not in SCOPES:
            out.append(f"scope must be one of {', '.join(SCOPES)}")
        if self.fmt not in FILE_FORMATS:
            out.append(f"fmt must be one of {', '.join(FILE_FORMATS)}")
        if self.type in ("int", "float"):
            if self.low is None or self.high is None:
                out.append("int/float knobs need low and high")
            elif not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
                out.append(f"need finite low < high (got {self.low!r}..{self.high!r})")
            elif self.log and self.low <= 0:
                out.append("log scale needs low > 0")
            elif self.type == "int" and not all(float(b).is_integer() for b in (self.low, self.high)):
                out.append(f"int knobs need whole-number bounds (got {self.low!r}..{self.high!r})")
            if self.choices:
                out.append("int/float knobs take no choices")
        else:
            if self.low is not None or self.high is not None or self.log:
                out.append(f"{self.type} knobs take no low/high/log")
            if self.type == "bool" and self.choices:
                out.append("bool knobs take no choices")
            host_lists_choices = self.fmt == "bracket" or self.choices_path is not None
            if self.type == "choice" and not self.choices and not host_lists_choices:
                out.append("choice knobs need choices")
            if len(set(map(str, self.choices))) != len(self.choices):
                out.append("choices must be distinct")
        if self.scope == "process":
            if self.path is not None:
                out.append("process knobs have no path")
            if self.default is None:
                out.append("process knobs need a default (their stock value)")
        for p in (self.path, self.choices_path):
            if p is not None and not _safe_rel_path(p):
                under = " or ".join(ALLOWED_PREFIXES)
                out.append(f"path {p!r} must be relative, without '..', under {under}")
        if self.env is not None and not _ENV_RE.match(self.env):
            out.append(f"env {self.env!r} must be an upper-case environment variable name")
        if self.default is not None and not out:
            try:
                self.coerce(self.default)
            except DomainError as exc:
                out.append(f"default: {exc}")
        return out

    # --- engine form -------------------------------------------------------------------------
    def space_entry(self) -> dict[str, Any]:
        """The engine declaration ``{"type", "low", "high", "log", "choices"}``.

        Every key is present; a key that does not apply to the type is None (the engine's "absent").
        """
        numeric = self.type in ("int", "float")
        return {
            "type": self.type,
            "low": self.low if numeric else None,
            "high": self.high if numeric else None,
            "log": self.log if numeric else None,
            "choices": list(self.choices) if self.type == "choice" else None,
        }

    def describe(self) -> dict[str, Any]:
        """Engine form plus where the knob lives (for manifests and status)."""
        return {
            **self.space_entry(),
            "scope": self.scope,
            "path": self.path,
            "env": self.env,
            "description": self.description,
        }

    # --- values ------------------------------------------------------------------------------
    def coerce(self, value: Any) -> Scalar:
        """Return ``value`` as this knob's Python type, or raise DomainError when it does not fit."""
        if self.type == "bool":
            if isinstance(value, bool):
                return value
            if _numpy_bool(value) or (isinstance(value, numbers.Integral) and value in (0, 1)):
                return bool(value)
            raise DomainError(f"{self.name}: {value!r} is not a bool")
        if self.type == "choice":
            for c in self.choices:
                if value == c and type(value) is type(c):
                    return c
            for c in self.choices:
                if str(value) == str(c):
                    return c
            raise DomainError(f"{self.name}: {value!r} is not one of {list(self.choices)!r}")
        if isinstance(value, bool) or _numpy_bool(value):
            raise DomainError(f"{self.name}: {value!r} is a bool, not a number")
        if not isinstance(value, numbers.Real):
            raise DomainError(f"{self.name}: {value!r} is not a number")
        num = float(value)
        if not math.isfinite(num):
            raise DomainError(f"{self.name}: {value!r} is not finite")
        out: Scalar
        if self.type == "int":
            if not num.is_integer():
                raise DomainError(f"{self.name}: {value!r} is not an integer")
            out = int(num)
        else:
            out = num
        assert self.low is not None and self.high is not None
        if not self.low <= out <= self.high:
            raise DomainError(f"{self.name}: {value!r} is outside {self.low}..{self.high}")
        return out

    def encode(self, value: Scalar) -> str:
        """The text written to the knob's file (bare value, no newline)."""
        if self.type == "bool":
            return "1" if value else "0"
        if self.type == "int":
            return str(int(value))
        if self.type == "float":
            return repr(float(value))
        return str(value)

    def token(self, text: str) -> str:
        """The active value as text: the bracketed word of a bracket file, else the stripped text."""
        return active_token(self.fmt, text)

    def decode(self, text: str) -> Scalar:
        """Parse a file's content into this knob's value; raises ValueError when it does not parse."""
        tok = self.token(text)
        if self.type == "int":
            return int(tok)
        if self.type == "float":
            return float(tok)
        if self.type == "bool":
            low = tok.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(f"{tok!r} is not a boolean")
        for c in self.choices:
            if str(c) == tok:
                return c
        return tok

    def host_choices(self, text: str) -> tuple[str, ...]:
        """Values a bracket file offers on this host (``none [mq-deadline] kyber`` → all three)."""
        return tuple(w.strip("[]") for w in text.split())

    def restore_text(self, original: str) -> str:
        """What to write to bring the file back to ``original``.

        Plain files get their exact original text back (byte-identical). A bracket file lists
        every value, which the kernel refuses as input: it gets the bare active value.
        """
        return restore_text_of(self.fmt, original)

    def env_name(self) -> str:
        return self.env or f"{ENV_PREFIX}{self.name.upper()}"

    def resolve_paths(self, sysfs_root: Path) -> tuple[Path, ...]:
        """Absolute files of this knob under ``sysfs_root`` (``{cpu}`` expands to every CPU)."""
        if self.path is None:
            return ()
        root = Path(sysfs_root)
        if "{cpu}" not in self.path:
            return ((root / self.path).absolute(),)
        cpu_dir = root / "sys/devices/system/cpu"
        ids: list[int] = []
        with contextlib.suppress(OSError):
            for entry in cpu_dir.iterdir():
                m = _CPU_DIR_RE.match(entry.name)
                if m:
                    ids.append(int(m.group(1)))
        # No CPU directories at all still yields cpu0, so absence is reported for a real path.
        return tuple((root / self.path.format(cpu=i)).absolute() for i in (sorted(ids) or [0]))


def active_token(fmt: str, text: str) -> str:
    """The value a file holds as text: a bracket file's bracketed word, else the stripped text."""
    if fmt == "bracket":
        m = _BRACKET_RE.search(text)
        if m:
            return m.group(1)
    return text.strip()


def restore_text_of(fmt: str, original: str) -> str:
    """What to write to bring a file back to ``original``: the exact text, or a bracket file's active
    value (it lists every value, which the kernel refuses as input)."""
    if fmt == "bracket" and _BRACKET_RE.search(original):
        return active_token(fmt, original)
    return original


def _parse_token(kind: str, token: str) -> Scalar:
    if kind == "int":
        return int(token)
    if kind == "float":
        return float(token)
    if kind == "bool":
        if token.lower() in _TRUE:
            return True
        if token.lower() in _FALSE:
            return False
        raise ValueError(f"{token!r} is not a boolean")
    return token


def parse_value(kind: str, fmt: str, text: str) -> Scalar:
    """A file's value as the knob type's Python value; its text when it does not parse."""
    token = active_token(fmt, text)
    try:
        return _parse_token(kind, token)
    except ValueError:
        return token


def same_value(kind: str, fmt: str, found: str, expected: str) -> bool:
    """Whether a file's text ``found`` holds the value written as ``expected``, by meaning: a bracket
    file by its active value, numbers by value (``"60\\n"`` holds 60; floats to a relative 1e-9), a text
    that does not parse as the knob's type only by equal text."""
    a, b = active_token(fmt, found), active_token(fmt, expected)
    try:
        x, y = _parse_token(kind, a), _parse_token(kind, b)
    except ValueError:
        return a == b
    if isinstance(x, float) and isinstance(y, float):
        return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
    return x == y


def _numpy_bool(value: Any) -> bool:
    return type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")


def _safe_rel_path(p: str) -> bool:
    parts = Path(p).parts
    return (
        not p.startswith("/")
        and ".." not in parts
        and any(p.startswith(prefix) for prefix in ALLOWED_PREFIXES)
    )


# --- discovery ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Discovered:
    """Outcome of probing one knob: the knob as usable here (choices/range fitted) and its stock value,
    or ``knob=None`` with the reason it was dropped."""

    knob: Knob | None
    stock: Scalar | None
    reason: str = ""


def probe(knob: Knob, sysfs_root: Path) -> tuple[bool, str]:
    """``(True, current text)`` when the system knob is usable here, else ``(False, reason)``.

    Usable means: every file exists, reads, parses, and accepts its own current value written back
    (a write that changes nothing, so it needs no journal). Process knobs are always usable.
    """
    found = discover_knob(knob, sysfs_root)
    if found.knob is None:
        return False, found.reason
    if knob.scope == "process":
        return True, ""
    return True, read_knob(knob.resolve_paths(sysfs_root)[0], sysfs_root)


def discover_knob(knob: Knob, sysfs_root: Path) -> Discovered:
    """Probe ``knob`` and fit it to this host (see :func:`probe`). Never logs; the caller does, once."""
    if knob.scope == "process":
        return Discovered(knob, knob.default)
    if knob.path is None:
        return Discovered(None, None, "no file path (the domain must probe it)")
    paths = knob.resolve_paths(sysfs_root)
    texts: list[str] = []
    for p in paths:
        if not p.exists() and not p.is_symlink():
            return Discovered(None, None, f"absent ({p})")
        if not p.is_file():
            return Discovered(None, None, f"not a regular file ({p})")
        try:
            texts.append(read_knob(p, sysfs_root))
        except RefusedPath as exc:
            return Discovered(None, None, str(exc))
        except (OSError, UnicodeDecodeError) as exc:
            return Discovered(None, None, f"unreadable ({p}: {exc})")
        if not os.access(p, os.W_OK):
            return Discovered(None, None, f"read-only ({p})")
    fitted: Knob | None = knob
    try:
        stock = knob.decode(texts[0])
    except ValueError as exc:
        return Discovered(None, None, f"its value \"{texts[0].strip()[:80]}\" does not parse: {exc}")
    if knob.type == "choice":
        fitted, reason = _fit_choices(knob, texts[0], sysfs_root)
        if fitted is None:
            return Discovered(None, None, reason)
        stock = fitted.decode(texts[0])
        if str(stock) not in map(str, fitted.choices):
            offered = ", ".join(map(str, fitted.choices))
            return Discovered(None, None, f"its current value {stock} is not one of {offered}")
        stock = fitted.coerce(stock)
    elif knob.type in ("int", "float"):
        fitted = _widen_to(knob, stock)
    for p, text in zip(paths, texts, strict=True):
        try:
            write_knob(p, knob.restore_text(text), sysfs_root)
        except RefusedPath as exc:
            return Discovered(None, None, str(exc))
        except OSError as exc:
            return Discovered(None, None, f"not writable ({p}: {exc.strerror or exc})")
    return Discovered(fitted, stock)


def _fit_choices(knob: Knob, text: str, sysfs_root: Path) -> tuple[Knob | None, str]:
    """Intersect declared choices with what this host offers (declaration order kept)."""
    offered: tuple[str, ...] | None = None
    if knob.fmt == "bracket" and _BRACKET_RE.search(text):
        offered = knob.host_choices(text)
    elif knob.choices_path is not None:
        try:
            offered = tuple(read_knob(Path(sysfs_root) / knob.choices_path, sysfs_root).split())
        except (OSError, UnicodeDecodeError, RefusedPath):
            offered = None
    if offered is None:
        if not knob.choices:
            return None, "host does not list its choices"
        return knob, ""
    if knob.choices:
        kept = tuple(c for c in knob.choices if str(c) in offered)
    else:
        kept = tuple(dict.fromkeys(offered))
    if len(kept) < 2:
        return None, f"fewer than two usable choices on this host (offers {list(offered)!r})"
    return dataclasses.replace(knob, choices=kept), ""


def _widen_to(knob: Knob, stock: Scalar) -> Knob:
    """The stock value is the baseline and must be a point of the space: widen the range to hold it."""
    assert knob.low is not None and knob.high is not None and not isinstance(stock, str)
    value = float(stock)
    if knob.low <= value <= knob.high:
        return knob
    low: int | float
    high: int | float
    if knob.type == "float":
        low, high = min(float(knob.low), value), max(float(knob.high), value)
    else:
        low, high = min(int(knob.low), int(value)), max(int(knob.high), int(value))
    log = knob.log and low > 0
    return dataclasses.replace(knob, low=low, high=high, log=log)


# --- applying ----------------------------------------------------------------------------------------
def journal_original(knob: Knob, sysfs_root: Path, journal: KnobJournal, domain: str) -> None:
    """Journal the current text of every file of a system ``knob`` (no write)."""
    for p in knob.resolve_paths(sysfs_root):
        text = read_knob(p, sysfs_root)
        journal.record(str(p), text, domain, knob.name, restore=knob.restore_text(text))


def write_value(knob: Knob, value: Scalar, sysfs_root: Path) -> None:
    """Write ``value`` to every file of ``knob``; the caller journaled the originals before."""
    text = knob.encode(knob.coerce(value))
    for p in knob.resolve_paths(sysfs_root):
        write_knob(p, text, sysfs_root)


# --- restoring from a journal ------------------------------------------------------------------------
def checked_original(knob: Knob, original: str) -> str:
    """The text that puts a journaled ``original`` of ``knob`` back; ValueError when it cannot be one
    of this knob's values (the journal supplies a value, never anything else)."""
    if "\0" in original or len(original) > 4096:
        raise ValueError(f"{knob.name}: not a knob value")
    text = knob.restore_text(original)
    value = knob.decode(text)  # ValueError when it does not parse as the knob's type
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{knob.name}: {value!r} is not finite")
    if knob.type == "choice":
        token = knob.token(text)
        if knob.choices and token not in map(str, knob.choices):
            raise ValueError(f"{knob.name}: {token!r} is not one of {list(knob.choices)!r}")
        if not _TOKEN_RE.match(token) or len(text.split()) != 1:
            raise ValueError(f"{knob.name}: {text!r} is not a single choice")
    return text


def restore_file(knob: Knob, sysfs_root: Path, path: str, original: str) -> None:
    """Put ``original`` back into ``path``, one of the knob's declared files (confined write)."""
    write_knob(Path(path), checked_original(knob, original), sysfs_root)


def file_target(domain: str, knob: Knob, sysfs_root: Path) -> RestoreTarget:
    """The restore target of a file-backed system knob: its files as resolved under ``sysfs_root`` now."""
    if knob.scope != "system" or knob.path is None:
        raise DomainError(f"{knob.name}: not a file-backed system knob")
    keys = frozenset(str(p) for p in knob.resolve_paths(sysfs_root))
    return RestoreTarget(domain, knob.name, keys, functools.partial(restore_file, knob, Path(sysfs_root)))


def apply_system(knob: Knob, value: Scalar, sysfs_root: Path, journal: KnobJournal, domain: str) -> None:
    """Journal the current value durably, then write ``value`` (one file-backed system knob)."""
    if knob.scope != "system" or knob.path is None:
        raise DomainError(f"{knob.name}: not a file-backed system knob")
    coerced = knob.coerce(value)
    journal_original(knob, sysfs_root, journal, domain)
    write_value(knob, coerced, sysfs_root)


def knob_from_declaration(
    name: str,
    decl: dict[str, Any],
    *,
    allow_system: bool,
    where: str,
) -> Knob:
    """Build a Knob from a config declaration (engine form plus scope/path/default/env/format).

    Command knobs (scope ``process``, the default without ``path``) reach the command as the
    environment variable ``KLR_KNOB_<NAME>`` (or ``env``).
    """
    allowed = {"type", "low", "high", "log", "choices", "scope", "path", "format", "choices_path",
               "default", "env", "description"}
    if not isinstance(decl, dict):
        raise DomainError(f"{where}: knob {name!r}: declaration must be a mapping")
    unknown = sorted(set(decl) - allowed)
    if unknown:
        raise DomainError(f"{where}: knob {name!r}: unknown keys {unknown} (allowed: {sorted(allowed)})")
    scope = decl.get("scope", "system" if decl.get("path") is not None else "process")
    if scope == "system" and not allow_system:
        raise DomainError(f"{where}: knob {name!r}: only process (environment) knobs are allowed here")
    if scope == "system" and decl.get("path") is None:
        raise DomainError(f"{where}: knob {name!r}: a system knob needs a path relative to sysfs_root")
    choices = decl.get("choices") or ()
    if not isinstance(choices, list | tuple):
        raise DomainError(f"{where}: knob {name!r}: choices must be a list")
    try:
        return Knob(
            name=name,
            type=decl.get("type", "float"),
            low=decl.get("low"),
            high=decl.get("high"),
            log=bool(decl.get("log", False)),
            choices=tuple(choices),
            scope=scope,
            path=decl.get("path"),
            fmt=decl.get("format", "plain"),
            choices_path=decl.get("choices_path"),
            default=decl.get("default"),
            env=(decl.get("env") or f"{ENV_PREFIX}{name.upper()}") if scope == "process" else None,
            description=str(decl.get("description", "")),
        )
    except DomainError as exc:
        raise DomainError(f"{where}: {exc}") from None
    except TypeError as exc:
        raise DomainError(f"{where}: knob {name!r}: {exc}") from None
