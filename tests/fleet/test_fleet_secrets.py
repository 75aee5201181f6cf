"""The store's password never reaches a log line: redacted addresses (whatever the password holds), no
variable values in the daemon's tracebacks, no address in the fleet settings' repr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kloros_orchestrator.fleet.dsn import redact

SECRET = "s3cr"

# A bug on a line naming the fleet settings, logged as D-REAM logs a failed tournament.
_CHILD = r"""
from loguru import logger
from kloros_orchestrator.logs import setup_logging
from kloros_orchestrator.runtime.fleet_work import FleetSettings

setup_logging("info", log_file=None)
fleet = FleetSettings(dsn="postgresql://fleet:TOPSECRET@db/x", name="n", host_id="h", manifest={},
                      lease_s=30, heartbeat_s=10)
dsn = fleet.dsn
try:
    [][0] if fleet.host_id else None
except IndexError:
    logger.exception("tournament {} failed", "cpu")
"""


def test_a_traceback_in_the_daemons_log_shows_no_variable_values(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path
    )
    assert "IndexError" in done.stderr and "tournament cpu failed" in done.stderr, done.stderr
    assert "TOPSECRET" not in done.stderr


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (f"postgresql://u:{SECRET}/et@db/x", "postgresql://u:***@db/x"),
        (f"postgresql://u:{SECRET}#et@db/x", "postgresql://u:***@db/x"),
        (f"postgresql://u:{SECRET}?et@db/x", "postgresql://u:***@db/x"),
        (f"postgresql://u:{SECRET}@et@db/x", "postgresql://u:***@db/x"),
        (f"postgresql://u:{SECRET}%zz@db:5432/x", "postgresql://u:***@db:5432/x"),
        (f"postgresql://db/x?user=u&password={SECRET}", "postgresql://db/x?user=u&password=***"),
        (
            f"postgresql://db/x?sslpassword={SECRET}&sslmode=on",
            "postgresql://db/x?sslpassword=***&sslmode=on",
        ),
        (f"postgresql://db/x?passfile=/p&password=a&{SECRET}", "postgresql://db/x?passfile=/p&password=***"),
        (f"host=/run/pg password={SECRET} dbname=x", "host=/run/pg password=*** dbname=x"),
        (f"host=/run/pg password='{SECRET} x' dbname=x", "host=/run/pg password=*** dbname=x"),
        ("postgresql://fleet@/db?host=/run/pg&port=5432", "postgresql://fleet@/db?host=/run/pg&port=5432"),
        ("postgresql://[::1]:5432/db?user=a", "postgresql://[::1]:5432/db?user=a"),
    ],
)
def test_redact_hides_any_password_and_keeps_the_rest(uri: str, shown: str) -> None:
    assert redact(uri) == shown
    assert SECRET not in redact(uri)
