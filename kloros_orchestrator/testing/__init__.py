"""Test suites shipped with the package, for domains written outside it (as ``optuna.testing`` is).

``kloros_orchestrator.testing.spica`` holds :class:`SpicaDomainContract`, the pytest suite every
SPICA domain passes; see that module for how a third-party domain subclasses it. Needs pytest;
the daemon never imports this package.
"""

from __future__ import annotations

import pytest

# Plain asserts in the suite get pytest's detailed failure messages, as in a test module.
pytest.register_assert_rewrite("kloros_orchestrator.testing.spica")

from kloros_orchestrator.testing.spica import (  # noqa: E402  (after the rewrite registration)
    ENGINE_KEYS,
    LogLines,
    SpicaDomainContract,
    comparable,
    different_value,
    invalid_value,
    load_regimes,
    snapshot_files,
    write_tree,
)

__all__ = [
    "ENGINE_KEYS",
    "LogLines",
    "SpicaDomainContract",
    "comparable",
    "different_value",
    "invalid_value",
    "load_regimes",
    "snapshot_files",
    "write_tree",
]
