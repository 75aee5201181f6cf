"""A daemon with the local store (the default) never loads psycopg: only the PostgreSQL store's
modules import it. Checked in a fresh interpreter, as the scipy check (runtime/test_runtime_footprint)."""

from __future__ import annotations

import subprocess
import sys

DAEMON_MODULES = (
    "kloros_orchestrator.cli",
    "kloros_orchestrator.runtime.driver",
    "kloros_orchestrator.runtime.dream",
    "kloros_orchestrator.runtime.phase_runner",
    "kloros_orchestrator.fleet",  # the key, records and spool: psycopg-free by design
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


def test_the_daemon_does_not_import_psycopg() -> None:
    assert _loaded_after(DAEMON_MODULES, "psycopg") == []
    assert _loaded_after(DAEMON_MODULES, "psycopg_pool") == []


def test_the_postgresql_store_does() -> None:
    """The check sees psycopg when it is loaded (so the empty answer above is not vacuous)."""
    assert "psycopg" in _loaded_after(("kloros_orchestrator.fleet.pgstore",), "psycopg")
