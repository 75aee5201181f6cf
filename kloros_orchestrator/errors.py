"""One exception root with specific children, each carrying what a user needs to act on it."""

from __future__ import annotations

import errno


class KlorosError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(KlorosError):
    """One or more configuration problems, each as ``file: key: problem``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class ToolMissing(KlorosError):
    """A required external tool (stress-ng) is not installed; the message says how to install it."""


class InvalidTransition(KlorosError):
    """The coordinator received an event its current state does not accept."""

    def __init__(self, state: str, event: str) -> None:
        self.state = state
        self.event = event
        super().__init__(f"event {event!r} is not accepted in state {state!r}")


class WorkloadFailed(KlorosError):
    """A stress-ng trial did not produce trustworthy numbers."""

    reason = "failed"

    def __init__(self, message: str, *, returncode: int | None = None, stderr_tail: str = "") -> None:
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        detail = f" (exit {returncode})" if returncode is not None else ""
        tail = f": {stderr_tail.strip()[-400:]}" if stderr_tail.strip() else ""
        super().__init__(f"{message}{detail}{tail}")


class SchemaError(KlorosError):
    """A JSON artifact on disk does not match its schema; names the file and field."""

    def __init__(self, path: str, field: str, problem: str) -> None:
        self.path = path
        self.field = field
        self.problem = problem
        super().__init__(f"{path}: {field}: {problem}")


class StateDirError(KlorosError):
    """The state directory cannot be used; one line ``path: reason`` (the daemon exits 2 on it)."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        # One line whatever the path holds: the message is what ``run`` prints before exiting.
        super().__init__(f"{self.path}: {reason}".replace("\n", "\\n"))


class StateDirUnavailable(KlorosError):
    """The state directory cannot be used *for now* (disk full, I/O error, quota): one line, exit 1,
    so a supervisor (systemd's Restart=) tries again once the disk is back."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason} (retrying later may succeed)".replace("\n", "\\n"))


TRANSIENT_ERRNOS: frozenset[int] = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENOMEM})


def state_dir_error(exc: OSError, fallback: object) -> KlorosError:
    """An OSError met on the state directory as one line: transient ones (full, I/O, quota) exit 1
    and are retried by a supervisor; the rest (read-only, permission, not a directory) exit 2."""
    path = exc.filename or fallback
    reason = exc.strerror or str(exc)
    if exc.errno in TRANSIENT_ERRNOS:
        return StateDirUnavailable(path, reason)
    return StateDirError(path, reason)


class UnsafeStateDir(StateDirError):
    """Another user could steer the daemon through its state directory (ssh's StrictModes): an
    entry, or a directory above it, owned by another user or writable by group or others; or
    ``state_dir`` / the socket's directory a symbolic link or not a directory. The operator acts."""


class DomainError(KlorosError):
    """A domain cannot be registered or used (for example: not a SPICA derivative)."""


# --- Workload failures (runtime.workloads): one class per way a trial can fail -----------------------
# ``reason`` is a short stable string for logs, fitness history and failure counters.


class WorkloadBadOptions(WorkloadFailed):
    """stress-ng exit 1: it rejected its options (or a harness error)."""

    reason = "bad_options"


class StressorFailed(WorkloadFailed):
    """stress-ng exit 2: a stressor failed; the numbers cannot be trusted."""

    reason = "stressor_failed"


class NotEnoughResources(WorkloadFailed):
    """stress-ng exit 3: ENOMEM/ENOSPC or a missing system call."""

    reason = "not_enough_resources"


class StressorNotImplemented(WorkloadFailed):
    """stress-ng exit 4: a stressor is not implemented on this host."""

    reason = "not_implemented"


class KilledBySignal(WorkloadFailed):
    """stress-ng exit 5, or the process died from a signal (negative return code)."""

    reason = "killed_by_signal"


class UnexpectedExit(WorkloadFailed):
    """stress-ng exit 6 (or an exit code stress-ng does not document)."""

    reason = "unexpected_exit"


class UntrustworthyMetrics(WorkloadFailed):
    """stress-ng exit 7: bogo-ops untrustworthy (for example after an OOM kill)."""

    reason = "untrustworthy_metrics"


class WorkloadTimeout(WorkloadFailed):
    """The run overran our own deadline and its process group was killed."""

    reason = "timeout"


class ShortRun(WorkloadFailed):
    """Exit 0 but it ran shorter than requested (a signalled stress-ng exits 0 with short metrics)."""

    reason = "short_run"


class MissingMetrics(WorkloadFailed):
    """Exit 0 but no YAML, an empty metrics section, or a requested stressor missing from it."""

    reason = "missing_metrics"


class TooShort(WorkloadFailed):
    """A workload stressor completed no bogo-op: the trial was too short for it, and a throughput of 0
    would be no measurement. ``reason`` names the stressor: ``too short for memrate``."""

    reason = "too short"

    def __init__(self, stressor: str, wall_s: float) -> None:
        super().__init__(
            f"it completed no bogo-op in {wall_s:.2f} s: give its regime a longer duration or min_seconds"
        )
        self.reason = f"too short for {stressor}"
        self.stressor = stressor


class CommandFailed(WorkloadFailed):
    """A command-domain workload could not start or exited non-zero."""

    reason = "command_failed"


class KnobDrift(WorkloadFailed):
    """A knob of the candidate under test no longer held the value written for it, read back before or
    after the workload: another tool (TuneD, ``sysctl --system``, an operator) rewrote it, so the
    numbers would measure someone else's settings. ``drift``: one ``path, expected X, found Y`` each.

    Its ``reason`` is the prefix of the trial's failure text (``knob drift: ...``), not an identifier.
    """

    reason = "knob drift"

    def __init__(self, drift: list[str]) -> None:
        self.drift = list(drift)
        super().__init__("; ".join(self.drift))


class WorkloadAborted(WorkloadFailed):
    """The run was stopped by ``kill_all_running`` (daemon shutdown), not by its own outcome."""

    reason = "aborted"


# --- Control socket (runtime.control) -------------------------------------------------------------


class ControlError(KlorosError):
    """The status socket could not be served or queried (timeout, bad response, permissions)."""


class DaemonNotRunning(ControlError):
    """Nothing listens on the status socket."""


class DaemonAlreadyRunning(ControlError):
    """Another daemon already accepts connections on the status socket."""
