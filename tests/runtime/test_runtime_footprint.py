"""The daemon process never loads scipy (~65 MB resident): PHASE's analysis runs in a worker process
and D-REAM's statistics use ``measure.distributions``. Checked in a fresh interpreter, since this
test process has long imported scipy through other tests."""

from __future__ import annotations

import subprocess
import sys

DAEMON_MODULES = (
    "kloros_orchestrator.cli",
    "kloros_orchestrator.runtime.driver",
    "kloros_orchestrator.runtime.dream",
    "kloros_orchestrator.runtime.phase_runner",
    "kloros_orchestrator.phase.worker",  # the request type; the analysis is imported only when run
)


def _loaded_after(modules: tuple[str, ...], package: str) -> list[str]:
    code = (
        "import importlib, sys\n"
        f"for m in {list(modules)!r}: importlib.import_module(m)\n"
        f"print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] == {package!r})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.split()


def test_the_daemon_does_not_import_scipy() -> None:
    assert _loaded_after(DAEMON_MODULES, "scipy") == []
    # The check sees what a daemon module does load (so the empty answer above is not vacuous).
    assert "numpy" in _loaded_after(DAEMON_MODULES, "numpy")
