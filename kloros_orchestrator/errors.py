"""One exception root with specific children, each carrying what a user needs to act on it."""

from __future__ import annotations


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


class DomainError(KlorosError):
    """A domain cannot be registered or used (for example: not a SPICA derivative)."""
