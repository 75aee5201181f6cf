"""The throwaway cluster (kloros_orchestrator/testing/postgres.py) never removes a directory under a
running server: when ``pg_ctl stop`` fails, the postmaster of ``postmaster.pid`` is stopped first."""

from __future__ import annotations

import os

import pytest

from kloros_orchestrator.testing.postgres import PostgresUnavailable, find_server, throwaway_cluster


def test_a_cluster_pg_ctl_cannot_stop_is_killed_before_its_directory_is_removed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    try:
        server = find_server()
    except PostgresUnavailable as e:
        pytest.skip(str(e))

    def failing_stop() -> None:
        raise RuntimeError("pg_ctl stop failed")

    with throwaway_cluster(server) as cluster:
        pid = int((cluster.data / "postmaster.pid").read_text().split("\n", 1)[0])
        root = cluster.root
        monkeypatch.setattr(cluster, "stop", failing_stop)
    assert not root.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
