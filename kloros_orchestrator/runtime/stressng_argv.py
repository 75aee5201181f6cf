"""What to execute: locating stress-ng and building the argv of every workload process.

Every argv is a list whose items go to ``execve`` one by one, never through a shell. Names and
values taken from a spec are checked here: a name must be a plain stress-ng name, a value must not
start with ``-`` or contain whitespace/NUL, and options the runner sets itself (or that would silently
change what a run means: ``-q`` empties the metrics, ``--job``/``--dry-run`` replace the run) are
refused.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from kloros_orchestrator.errors import ToolMissing
from kloros_orchestrator.measure.stressng_output import PROBE_STRESSOR, read_stress_ng_version
from kloros_orchestrator.model import StressorSpec, WorkloadSpec

INSTALL_HINT: Final = (
    "stress-ng is not installed: run `apt-get update && apt-get install -y stress-ng` as root"
)

_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
# Options this module sets itself, or that would silently change what a run means
# (-q empties the metrics, --job/--dry-run replace the run): never accepted from a spec.
_RESERVED: Final = frozenset(
    {
        "timeout", "t", "yaml", "Y", "metrics", "metrics-brief", "M", "quiet", "q", "taskset",
        "sched", "sched-prio", "job", "j", "log-file", "dry-run", "n",
    }
)  # fmt: skip


# --- tools --------------------------------------------------------------------------------------------

_VERSIONS: dict[str, str] = {}


def find_stress_ng() -> str:
    path = shutil.which("stress-ng")
    if path is None:
        raise ToolMissing(INSTALL_HINT)
    return path


def cached_stress_ng_version(path: str) -> str | None:
    """The version ``stress_ng_version`` already read for ``path``; None when it has not run yet."""
    return _VERSIONS.get(path)


def stress_ng_version(path: str) -> str:
    """The version stress-ng reports (``"0.15.06"``); cached per executable."""
    cached = _VERSIONS.get(path)
    if cached is not None:
        return cached
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolMissing(f"cannot run {path} --version ({exc}); {INSTALL_HINT}") from exc
    version = read_stress_ng_version(done.stdout + done.stderr)
    if version is None:
        raise ToolMissing(f"{path} --version printed no version: {done.stdout.strip()!r}")
    _VERSIONS[path] = version
    return version


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolMissing(f"{name} is not installed (needed to start workloads)")
    return path


# --- argv -------------------------------------------------------------------------------------------


def timeout_seconds(duration_s: float) -> int:
    """stress-ng's --timeout takes whole seconds, and a fraction like ``0.5s`` means *no* timeout."""
    if not math.isfinite(duration_s) or duration_s <= 0:
        raise ValueError(f"duration must be a positive number of seconds, got {duration_s!r}")
    return max(1, math.ceil(duration_s - 1e-9))


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"{what} {name!r} is not a plain stress-ng name (letters, digits, '-', '_', '.')")
    if name in _RESERVED:
        raise ValueError(f"{what} {name!r} is set by the runner itself and cannot be given")
    return name


def _check_token(value: str, what: str) -> str:
    if not value:
        raise ValueError(f"{what} is empty")
    if value.startswith("-"):
        raise ValueError(f"{what} {value!r} must not start with '-'")
    if any(ch.isspace() or ch == "\0" for ch in value):
        raise ValueError(f"{what} {value!r} must not contain whitespace or NUL")
    return value


def _format_value(value: str | int | float, what: str) -> str:
    # bool is handled by the caller (bare flag); numbers may be negative (e.g. --cpu-load-slice -10),
    # which cannot be mistaken for an option since they are formatted by us.
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{what} must be finite, got {value!r}")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return _check_token(value, what)
    raise ValueError(f"{what} has unsupported type {type(value).__name__}")


def _instances(stressor: StressorSpec) -> str:
    n = stressor.instances
    if isinstance(n, str):
        if not n.isdigit():
            raise ValueError(f"stressor {stressor.name!r}: instances {n!r} must be resolved to a number")
        n = int(n)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"stressor {stressor.name!r}: instances must be an integer >= 0, got {n!r}")
    return str(n)


def _check_extra_args(args: Sequence[str]) -> list[str]:
    out: list[str] = []
    for arg in args:
        if not isinstance(arg, str) or not arg or any(ch.isspace() or ch == "\0" for ch in arg):
            raise ValueError(f"extra argument {arg!r} is empty or contains whitespace/NUL")
        if arg.startswith("-"):
            if not arg.startswith("--"):
                raise ValueError(f"extra argument {arg!r}: only long options (--name) are accepted")
            name, _, value = arg[2:].partition("=")
            _check_name(name, "extra option")
            if value:
                _check_token(value, f"value of extra option {name!r}")
        out.append(arg)
    return out


def _prefix(spec: WorkloadSpec, nice_exe: str | None) -> list[str]:
    """``nice -n N`` in front of the workload: it execs, so every forked stressor inherits the niceness."""
    if spec.nice is None:
        return []
    if isinstance(spec.nice, bool) or not -20 <= spec.nice <= 19:
        raise ValueError(f"nice must be an integer in -20..19, got {spec.nice!r}")
    return [nice_exe or _require_tool("nice"), "-n", str(spec.nice)]


def _cpu_list(cpus: Sequence[int]) -> str:
    if not cpus or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in cpus):
        raise ValueError(f"cpus must be a non-empty list of CPU numbers >= 0, got {cpus!r}")
    return ",".join(str(c) for c in cpus)


def build_argv(
    spec: WorkloadSpec, *, exe: str, yaml_path: Path, timeout_s: float, nice_exe: str | None = None
) -> list[str]:
    """The stress-ng argv for ``spec``: every element a separate item, nothing for a shell."""
    if spec.command is not None:
        raise ValueError("a command workload is not a stress-ng run; use build_command_argv")
    if not spec.stressors:
        raise ValueError("a stress-ng workload needs at least one stressor")
    argv = [*_prefix(spec, nice_exe), exe]
    names: set[str] = set()
    for stressor in spec.stressors:
        name = _check_name(stressor.name, "stressor name")
        if name in names:
            raise ValueError(f"stressor {name!r} is listed twice")
        names.add(name)
        argv += [f"--{name}", _instances(stressor)]
        for option, value in stressor.options.items():
            opt = _check_name(option, f"option of stressor {name!r}")
            if isinstance(value, bool):
                if value:
                    argv.append(f"--{opt}")
                continue
            argv += [f"--{opt}", _format_value(value, f"value of option {opt!r}")]
    argv += ["--timeout", f"{timeout_seconds(timeout_s)}s", "--metrics-brief", "--yaml", str(yaml_path)]
    if spec.cpus is not None:
        argv += ["--taskset", _cpu_list(spec.cpus)]
    if spec.sched_policy is not None:
        argv += ["--sched", _check_token(spec.sched_policy, "sched_policy")]
        if spec.sched_prio is not None:
            argv += ["--sched-prio", str(int(spec.sched_prio))]
    elif spec.sched_prio is not None:
        raise ValueError("sched_prio needs sched_policy")
    argv += _check_extra_args(spec.extra_args)
    return argv


def build_probe_argv(exe: str, *, timeout_s: float) -> list[str]:
    """The latency probe: one SCHED_RR ``cyclic`` instance in a stress-ng process of its own.

    It runs beside the workload rather than inside it, so the candidate's placement knobs
    (``--taskset``, ``--sched``, ``nice``) shape the workload but never the probe: every arm is
    measured by the same observer (inside the workload, ``--sched idle`` even stops cyclic from
    reporting). SCHED_RR rather than cyclic's default SCHED_DEADLINE, which refuses a second
    deadline task on small hosts. The percentile lines it prints (``cyclic:   95.40%:  57635 ns``)
    are the latency KPIs.
    """
    return [
        exe, f"--{PROBE_STRESSOR}", "1", "--cyclic-method", "clock_ns", "--cyclic-policy", "rr",
        "--timeout", f"{timeout_seconds(timeout_s)}s",
    ]  # fmt: skip


def build_command_argv(
    spec: WorkloadSpec, *, nice_exe: str | None = None, taskset_exe: str | None = None
) -> list[str]:
    """The argv of a command-domain workload, with ``nice``/``taskset`` prefixes for nice and cpus."""
    if not spec.command:
        raise ValueError("not a command workload (spec.command is empty)")
    if any(not isinstance(a, str) or "\0" in a for a in spec.command) or not spec.command[0]:
        raise ValueError(f"command {spec.command!r}: every element must be a string without NUL")
    if spec.sched_policy is not None or spec.sched_prio is not None:
        raise ValueError("sched_policy/sched_prio are only supported for stress-ng workloads")
    argv = _prefix(spec, nice_exe)
    if spec.cpus is not None:
        argv += [taskset_exe or _require_tool("taskset"), "-c", _cpu_list(spec.cpus)]
    return [*argv, *spec.command]


def check_env(env: Mapping[str, str]) -> dict[str, str]:
    """The spec's extra environment, refused when a name or value could not be passed to ``execve``."""
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise ValueError(f"environment variable {key!r} has an invalid name or value")
    return dict(env)
