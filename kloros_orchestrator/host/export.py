"""A domain's configuration as files another tool applies at boot, without the daemon.

Three formats (README, "From verdict to host"):

* ``tuned``: a TuneD profile directory ``kloros-<domain>/tuned.conf``. A knob goes to the plugin
  that owns it in TuneD 2.20 when that plugin writes exactly the same file: ``[sysctl]`` for
  ``/proc/sys``, ``[vm]`` for transparent huge pages, one ``[disk-<dev>]`` unit per block device for
  its I/O scheduler and read-ahead, ``[cpu]`` for the cpufreq governor; every other file goes to
  ``[sysfs]`` by its absolute path. The profile can be layered on a stock one
  (``tuned-adm profile balanced kloros-<domain>``): units of the same name merge, our options win.
* ``sysctl``: ``sysctl.d/90-kloros-<domain>.conf`` for ``/proc/sys`` files and
  ``tmpfiles.d/kloros-<domain>.conf`` (``w`` lines) for ``/sys`` files; only the files needed.
* ``systemd``: a drop-in ``<unit>.d/90-kloros-<domain>.conf`` for the service whose workload the
  process knobs shape (``Nice=``, ``CPUSchedulingPolicy=``, ``CPUAffinity=``, ``Environment=``).

:func:`render` is pure (relative path -> text); :func:`export` writes its files atomically. Every
file starts with a ``#`` header: tool and version, domain, label, provenance and the command line.
Anything that cannot be expressed faithfully raises :class:`ExportError` (one line) rather than
writing a file that means something else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from kloros_orchestrator.errors import KlorosError
from kloros_orchestrator.host.records import KnobSetting, Provenance
from kloros_orchestrator.safefs import DIR_MODE, make_dirs
from kloros_orchestrator.store import atomic_write_bytes

__all__ = ["EXPORT_FORMATS", "ExportError", "ExportFormat", "ExportSubject", "export", "render", "unit_name"]

ExportFormat = Literal["tuned", "sysctl", "systemd"]
EXPORT_FORMATS: Final = ("tuned", "sysctl", "systemd")

FACTORY_TEXT: Final = "factory configuration (values found before the daemon first changed them)"
SYSCTL_PREFIX: Final = "proc/sys/"
SYSFS_PREFIX: Final = "sys/"

# TuneD 2.20 (plugin_vm.py): both options write the bare value to these files.
_THP: Final = "sys/kernel/mm/transparent_hugepage/"
_VM_OPTIONS: Final = {
    _THP + "enabled": "transparent_hugepages",
    _THP + "defrag": "transparent_hugepage.defrag",
}
_THP_ENABLED: Final = ("always", "madvise", "never")  # the only values plugin_vm accepts
# TuneD 2.20 (plugin_disk.py): "elevator" writes queue/scheduler; "readahead" writes queue/read_ahead_kb
# and takes KiB unless the value carries an " s" (sectors) suffix.
_DISK_RE = re.compile(r"^sys/block/([^/]+)/queue/(scheduler|read_ahead_kb)$")
_DISK_OPTIONS: Final = {"scheduler": "elevator", "read_ahead_kb": "readahead"}
# A device's unit is assigned its device before a stock [disk] unit (default_instance_priority 0).
_DISK_PRIORITY: Final = -10
# TuneD 2.20 (plugin_cpu.py): "governor" writes cpuN/cpufreq/scaling_governor on every CPU.
_GOVERNOR_RE = re.compile(r"^sys/devices/system/cpu/cpu(\d+)/cpufreq/scaling_governor$")

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # a file name and a TuneD profile name (Loader.safe_name)
_LABEL_RE = re.compile(r"^[A-Za-z0-9_.:+-]{1,64}$")
_KNOB_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_PATH_RE = re.compile(r"^[A-Za-z0-9_.:+@!,/-]+$")  # no glob, '=', '%', quote, space or backslash
_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.@\\-]+$")
_UNIT_TYPES: Final = ("service", "socket", "device", "mount", "automount", "swap", "target", "path",
                      "timer", "slice", "scope")  # fmt: skip
_SCHED_POLICIES: Final = ("other", "batch", "idle", "fifo", "rr")
_NICE_RANGE: Final = (-20, 19)


class ExportError(KlorosError):
    """The configuration cannot be exported in the requested form; one line saying what to do."""


@dataclass(frozen=True)
class ExportSubject:
    """What is exported: one domain's settings under a label, with where they come from."""

    domain: str
    label: str  # "adopted", "factory" or a variant id such as "g3c1"
    settings: Sequence[KnobSetting]
    provenance: Provenance | None
    command: str  # the command line that produced the export (goes into the header)
    version: str  # kloros_orchestrator.__version__


@dataclass
class _Split:
    """The settings by where they live: (setting, path) pairs for files, whole settings otherwise."""

    sysctl: list[tuple[KnobSetting, str]] = field(default_factory=list)
    sysfs: list[tuple[KnobSetting, str]] = field(default_factory=list)
    process: list[KnobSetting] = field(default_factory=list)
    tool: list[KnobSetting] = field(default_factory=list)  # system knobs a domain sets with a tool


# --- public API ------------------------------------------------------------------------------------
def render(subject: ExportSubject, fmt: ExportFormat, *, unit: str | None = None) -> dict[str, str]:
    """The files of ``subject`` in format ``fmt``: relative path -> content. Pure (no I/O)."""
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r} (one of {', '.join(EXPORT_FORMATS)})")
    _check_subject(subject)
    split = _split(subject.settings)
    if fmt == "systemd":
        return _render_systemd(subject, split, unit)
    if not split.sysctl and not split.sysfs:
        hint = "use --format systemd" if split.process else "it has no file-backed knob"
        raise ExportError(
            f"domain {subject.domain}: nothing to export as --format {fmt}: its knobs shape a workload "
            f"or are set with a tool, not through a host file ({hint})"
        )
    if fmt == "tuned":
        return _render_tuned(subject, split)
    return _render_sysctl(subject, split)


def export(
    subject: ExportSubject, fmt: ExportFormat, out_dir: Path, *, unit: str | None = None
) -> list[Path]:
    """:func:`render`, then write each file atomically under ``out_dir`` (creating directories)."""
    files = render(subject, fmt, unit=unit)
    written: list[Path] = []
    for rel, text in files.items():
        path = Path(out_dir) / rel
        try:
            make_dirs(path.parent, DIR_MODE)
            atomic_write_bytes(path, text.encode(), mode=0o644)
        except OSError as exc:
            raise ExportError(f"{path}: cannot write the export ({exc.strerror or exc})") from None
        written.append(path)
    return written


def unit_name(unit: str) -> str:
    """``unit`` as a systemd service name (``.service`` appended when it has no unit type suffix)."""
    if not unit or len(unit) > 250 or not _UNIT_RE.match(unit) or unit.startswith("."):
        raise ExportError(f"{unit!r} is not a valid systemd unit name (letters, digits and ':_.@\\-' only)")
    stem, dot, suffix = unit.rpartition(".")
    if not dot or suffix not in _UNIT_TYPES:
        return f"{unit}.service"
    if suffix != "service" or not stem:
        raise ExportError(
            f"{unit!r}: Nice=, CPUSchedulingPolicy= and CPUAffinity= are [Service] settings: "
            "name a .service unit"
        )
    return unit


# --- validation and split --------------------------------------------------------------------------
def _check_subject(subject: ExportSubject) -> None:
    if not _NAME_RE.match(subject.domain):
        raise ExportError(f"domain {subject.domain!r}: not exportable (letters, digits and '_.-' only)")
    if not _LABEL_RE.match(subject.label):
        raise ExportError(f"label {subject.label!r}: letters, digits and '_.:+-' only")
    if not subject.settings:
        raise ExportError(f"domain {subject.domain}: no knob settings to export")


def _split(settings: Iterable[KnobSetting]) -> _Split:
    out = _Split()
    for s in settings:
        if not _KNOB_RE.match(s.knob):
            raise ExportError(f"knob {s.knob!r}: not a knob name ([a-z][a-z0-9_]*)")
        if not s.text or not s.text.isprintable() or s.text != s.text.strip():
            raise ExportError(f"knob {s.knob}: value {s.text!r} cannot be exported (empty or not one line)")
        if s.scope == "process":
            out.process.append(s)
        elif not s.paths:
            out.tool.append(s)
        for path in s.paths if s.scope == "system" else ():
            if not _PATH_RE.match(path) or any(part in ("", ".", "..") for part in path.split("/")):
                raise ExportError(f"knob {s.knob}: path {path!r} cannot be exported")
            if path.startswith(SYSCTL_PREFIX) and len(path) > len(SYSCTL_PREFIX):
                out.sysctl.append((s, path))
            elif path.startswith(SYSFS_PREFIX) and len(path) > len(SYSFS_PREFIX):
                out.sysfs.append((s, path))
            else:
                where = f"under neither {SYSCTL_PREFIX} nor {SYSFS_PREFIX}"
                raise ExportError(f"knob {s.knob}: path {path!r} is {where}")
    return out


# --- shared text -----------------------------------------------------------------------------------
def _one_line(text: str) -> str:
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def _header(subject: ExportSubject, what: str) -> list[str]:
    lines = [
        f"kloros-orchestrator {subject.version}: {what}",
        f"domain: {subject.domain}",
        f"label: {subject.label}",
        *_provenance_lines(subject),
        f"produced by: {subject.command}",
    ]
    return ["# " + _one_line(line) for line in lines] + [""]


def _provenance_lines(subject: ExportSubject) -> list[str]:
    p = subject.provenance
    if p is None:
        if subject.label == "factory":
            return [f"provenance: {FACTORY_TEXT}"]
        return [f"provenance: none recorded ({subject.label} was not adopted)"]
    lines = [f"provenance: adopted by {p.by} at {p.at}" + (" (forced)" if p.forced else "")]
    lines += [f"{name}: {value}" for name, value in
              (("phase_run_id", p.phase_run_id), ("cand_id", p.cand_id), ("spica_id", p.spica_id))
              if value is not None]  # fmt: skip
    if p.score_v2 is not None:
        ci = f" (95% CI {p.score_ci95[0]:.6g} .. {p.score_ci95[1]:.6g})" if p.score_ci95 is not None else ""
        lines.append(f"score_v2: {p.score_v2:.6g}{ci}")
    if p.evidence:
        lines.append(f"evidence: {p.evidence}")
    return lines


def _describe(s: KnobSetting) -> list[str]:
    return [f"# {s.knob}: {_one_line(s.description)}"] if s.description.strip() else []


def _process_value(s: KnobSetting) -> str:
    if s.knob == "affinity" and s.cpus:
        return f"{s.knob}={s.text} (CPUs {' '.join(map(str, s.cpus))})"
    return f"{s.knob}={s.text}"


def _trailer(split: _Split, *, process_hint: str | None) -> list[str]:
    """Comments for the knobs this file does not set: process knobs, tool-set knobs."""
    out: list[str] = []
    if split.process and process_hint is not None:
        out += ["", f"# process knobs ({process_hint}): " + " ".join(map(_process_value, split.process))]
    if split.tool:
        out += ["", "# set by the domain with a tool, not exportable: "
                + " ".join(f"{s.knob}={s.text}" for s in split.tool)]  # fmt: skip
    return out


def _file(lines: list[str]) -> str:
    return "\n".join(lines).rstrip("\n") + "\n"


def _sysctl_key(path: str, *, slashes_allowed: bool) -> str:
    """``proc/sys/vm/swappiness`` -> ``vm.swappiness``; a component with a dot keeps '/' separators
    (sysctl.d(5)) where allowed, since a dot would be read as a separator."""
    rel = path[len(SYSCTL_PREFIX) :]
    if "." not in rel:
        return rel.replace("/", ".")
    if slashes_allowed:
        return rel
    raise ExportError(f"{path}: TuneD's [sysctl] reads every '.' as '/'; use --format sysctl for this knob")


# --- tuned -----------------------------------------------------------------------------------------
@dataclass
class _Unit:
    fixed: list[str]  # type=, devices=, ... and their comments
    options: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # option -> (value, comments)

    def put(self, s: KnobSetting, option: str, value: str, comments: list[str]) -> None:
        old = self.options.get(option)
        if old is not None and old[0] != value:
            raise ExportError(f"knob {s.knob}: {option} would be both {old[0]!r} and {value!r}")
        if old is None:
            self.options[option] = (value, comments)


def _tuned_units(split: _Split) -> dict[str, _Unit]:
    units: dict[str, _Unit] = {}

    def unit(name: str, fixed: list[str] | None = None) -> _Unit:
        return units.setdefault(name, _Unit(fixed or []))

    for s, path in split.sysctl:
        unit("sysctl").put(s, _sysctl_key(path, slashes_allowed=False), s.text, _describe(s))
    governors = _governor_paths(split)
    for s, path in split.sysfs:
        disk = _DISK_RE.match(path)
        if path in _VM_OPTIONS and (path != _THP + "enabled" or s.text in _THP_ENABLED):
            fixed = ["# ignored by TuneD when the kernel command line sets transparent_hugepage="]
            unit("vm", fixed).put(s, _VM_OPTIONS[path], s.text, _describe(s))
        elif disk and (disk.group(2) != "read_ahead_kb" or s.text.isdigit()):
            dev = disk.group(1)
            unit(f"disk-{dev}", _disk_fixed(dev)).put(s, _DISK_OPTIONS[disk.group(2)], s.text, _describe(s))
        elif path in governors:
            cpus = ", ".join(f"cpu{i}" for i in governors[path])
            note = [f"# every CPU, as exported from {cpus}"]
            unit("cpu").put(s, "governor", s.text, [*_describe(s), *note])
        else:
            unit("sysfs").put(s, "/" + path, s.text, _describe(s))
    return units


def _governor_paths(split: _Split) -> dict[str, list[int]]:
    """Governor files that [cpu] governor= stands for: a setting covering cpu0..cpuN (every CPU)."""
    out: dict[str, list[int]] = {}
    by_setting: dict[int, list[tuple[str, int]]] = {}
    for s, path in split.sysfs:
        m = _GOVERNOR_RE.match(path)
        if m:
            by_setting.setdefault(id(s), []).append((path, int(m.group(1))))
    for found in by_setting.values():
        ids = sorted(i for _, i in found)
        if ids == list(range(len(ids))):
            out.update((path, ids) for path, _ in found)
    return out


def _disk_fixed(dev: str) -> list[str]:
    return [
        f"# {dev} only; this unit takes the device before a stock [disk] unit (priority), whose",
        "# options then no longer apply to it; no dynamic (hdparm power) tuning",
        "type=disk",
        f"devices={dev}",
        f"priority={_DISK_PRIORITY}",
        "dynamic=0",
    ]


def _render_tuned(subject: ExportSubject, split: _Split) -> dict[str, str]:
    profile = f"kloros-{subject.domain}"
    for s, _ in (*split.sysctl, *split.sysfs):
        if "#" in s.text or "$" in s.text:
            what = "as a comment or a variable"
            raise ExportError(f"knob {s.knob}: TuneD would read '#' or '$' in {s.text!r} {what}")
    units = _tuned_units(split)
    n = len({s.knob for s, _ in (*split.sysctl, *split.sysfs)})
    lines = _header(subject, "TuneD profile")
    lines += [
        f"# install as /etc/tuned/{profile}/tuned.conf; alone: tuned-adm profile {profile};",
        f"# on top of a stock profile: tuned-adm profile balanced {profile}",
        "",
        "[main]",
        f"summary=kloros-orchestrator {subject.label} configuration of {subject.domain} ({n} knobs)",
    ]
    for name, u in units.items():
        lines += ["", f"[{name}]", *u.fixed]
        for option, (value, comments) in u.options.items():
            lines += [*comments, f"{option}={value}"]
    lines += _trailer(split, process_hint="shape a workload; see --format systemd")
    return {f"{profile}/tuned.conf": _file(lines)}


# --- sysctl.d and tmpfiles.d -----------------------------------------------------------------------
def _tmpfiles_argument(text: str) -> str:
    """tmpfiles.d expands specifiers ('%') and C escapes ('\\') in a ``w`` line's argument."""
    return text.replace("\\", "\\\\").replace("%", "%%")


def _render_sysctl(subject: ExportSubject, split: _Split) -> dict[str, str]:
    files: dict[str, str] = {}
    trailer = _trailer(split, process_hint="shape a workload; see --format systemd")
    if split.sysctl:
        name = f"90-kloros-{subject.domain}.conf"
        lines = _header(subject, "sysctl.d file (applied at boot by systemd-sysctl; now: sysctl -p FILE)")
        lines += [f"# install as /etc/sysctl.d/{name}", ""]
        for s, path in split.sysctl:
            lines += [*_describe(s), f"{_sysctl_key(path, slashes_allowed=True)} = {s.text}"]
        files[f"sysctl.d/{name}"] = _file(lines + trailer)
        trailer = []
    if split.sysfs:
        name = f"kloros-{subject.domain}.conf"
        lines = _header(subject, "tmpfiles.d file (written at boot by systemd-tmpfiles --create)")
        lines += [f"# install as /etc/tmpfiles.d/{name}; a file that does not exist yet at boot (a device",
                  "# that appears later) is skipped", ""]  # fmt: skip
        for s, path in split.sysfs:
            lines += [*_describe(s), f"w /{path} - - - - {_tmpfiles_argument(s.text)}"]
        files[f"tmpfiles.d/{name}"] = _file(lines + trailer)
    return files


# --- systemd ---------------------------------------------------------------------------------------
def _environment(name: str, value: str) -> str:
    quoted = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'Environment="{name}={quoted}"'


def _service_lines(s: KnobSetting) -> list[str]:
    """The [Service] lines of one process knob (with its description as a comment)."""
    head = _describe(s)
    if s.knob == "nice":
        try:
            nice = int(s.text)
        except ValueError:
            nice = _NICE_RANGE[1] + 1
        if not _NICE_RANGE[0] <= nice <= _NICE_RANGE[1]:
            low, high = _NICE_RANGE
            raise ExportError(f"knob nice: {s.text!r} is not a niceness in {low}..{high}")
        return [*head, f"Nice={nice}"]
    if s.knob == "sched_policy":
        if s.text not in _SCHED_POLICIES:
            raise ExportError(f"knob sched_policy: {s.text!r} is not one of {', '.join(_SCHED_POLICIES)}")
        return [*head, f"CPUSchedulingPolicy={s.text}"]
    if s.knob == "affinity":
        if not s.cpus:
            return [*head, f"# affinity={s.text}: its CPU list on this host is unknown, not exported"]
        return [*head, f"# affinity layout {s.text}", f"CPUAffinity={' '.join(map(str, s.cpus))}"]
    if s.knob == "workers":
        note = "# systemd has no directive for a worker count: the service reads it from its environment"
        return [*head, note, _environment("KLR_WORKERS", s.text)]
    note = "# as a command workload receives it (KLR_KNOB_<NAME>, unless the knob declares its own env)"
    return [*head, note, _environment(f"KLR_KNOB_{s.knob.upper()}", s.text)]


def _render_systemd(subject: ExportSubject, split: _Split, unit: str | None) -> dict[str, str]:
    if unit is None:
        raise ExportError(
            "export --format systemd needs the unit whose workload these knobs shape: "
            f"set domain_options.{subject.domain}.unit"
        )
    service = unit_name(unit)
    if not split.process:
        fits = "use --format tuned or --format sysctl" if split.sysctl or split.sysfs else "no format fits"
        raise ExportError(
            f"domain {subject.domain} has no process knobs, nothing for --format systemd to set: {fits}"
        )
    lines = _header(subject, f"systemd drop-in for {service}")
    lines += [f"# install as /etc/systemd/system/{service}.d/90-kloros-{subject.domain}.conf, then:",
              "# systemctl daemon-reload && systemctl restart " + service, "", "[Service]"]  # fmt: skip
    for s in split.process:
        lines += _service_lines(s)
    host = [f"{s.knob}={s.text}" for s, _ in (*split.sysctl, *split.sysfs)]
    if host:
        hint = "# host knobs (see --format tuned or --format sysctl): "
        lines += ["", hint + " ".join(dict.fromkeys(host))]
    lines += _trailer(split, process_hint=None)
    return {f"{service}.d/90-kloros-{subject.domain}.conf": _file(lines)}
