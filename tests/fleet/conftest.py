"""A throwaway PostgreSQL cluster for the fleet store's tests, one per test session.

The cluster itself is ``kloros_orchestrator.testing.postgres`` (the fleet scaling benchmark starts
one the same way): created by ``initdb`` in a fresh temporary directory, started with
``pg_ctl start -w``, listening on a Unix socket in that directory only, run as ``nobody`` when we
are root; at the end of the session ``pg_ctl stop -m fast``, then the directory is removed. Each
test gets a database of its own (``fleet_dsn``).

Without the server's binaries (or as root without runuser/setpriv) the tests skip, saying which
package to install (``make test`` installs it when run as root).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kloros_orchestrator.testing.postgres import Cluster, PostgresUnavailable, find_server, throwaway_cluster

__all__ = ["Cluster"]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    pytest.importorskip("psycopg", reason="psycopg is missing: install the 'test' extra")
    try:
        server = find_server()
    except PostgresUnavailable as e:
        pytest.skip(str(e))
    with throwaway_cluster(server) as cluster:
        yield cluster


@pytest.fixture
def fleet_dsn(pg_cluster: Cluster) -> Iterator[str]:
    """A fresh, empty database of the session's cluster; dropped after the test."""
    name = pg_cluster.new_database()
    yield pg_cluster.dsn(name)
    pg_cluster.drop_database(name)
