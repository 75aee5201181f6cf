"""Leader election per study: one holder at a time; the lock moves when the leader's session ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest

from kloros_orchestrator.fleet.leader import LeaderLock
from kloros_orchestrator.fleet.schema import LEADER_LOCK_CLASS

STUDY = 7


@pytest.fixture
def locks(fleet_dsn: str) -> Iterator[tuple[LeaderLock, LeaderLock]]:
    a, b = LeaderLock(fleet_dsn, STUDY), LeaderLock(fleet_dsn, STUDY)
    yield a, b
    a.release()
    b.release()


def _holder_pid(dsn: str) -> int | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::int::oid"
            " AND objid = %s::int::oid AND granted",
            (LEADER_LOCK_CLASS, STUDY),
        ).fetchone()
    return None if row is None else int(row[0])


def _wait_until_free(dsn: str) -> None:
    """Block (in the server, no polling) until nobody holds the lock, then let it go again."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '30s'")
        conn.execute("SELECT pg_advisory_lock(%s, %s)", (LEADER_LOCK_CLASS, STUDY))
        conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LEADER_LOCK_CLASS, STUDY))


def test_one_leader_at_a_time_and_the_lock_moves_on_release(locks: tuple[LeaderLock, LeaderLock]) -> None:
    a, b = locks
    assert a.try_acquire()
    assert a.try_acquire()  # still ours: no second session
    assert not b.try_acquire()
    assert a.held() and not b.held()
    a.release()
    assert not a.held()
    assert b.try_acquire()
    assert not a.try_acquire()


def test_other_studies_have_leaders_of_their_own(
    fleet_dsn: str, locks: tuple[LeaderLock, LeaderLock]
) -> None:
    a, _ = locks
    other = LeaderLock(fleet_dsn, STUDY + 1)
    try:
        assert a.try_acquire() and other.try_acquire()
    finally:
        other.release()


def test_the_lock_moves_when_the_leaders_session_is_ended(
    fleet_dsn: str, locks: tuple[LeaderLock, LeaderLock]
) -> None:
    a, b = locks
    assert a.try_acquire()
    pid = _holder_pid(fleet_dsn)
    assert pid is not None
    with psycopg.connect(fleet_dsn, autocommit=True) as conn:  # waits up to 10 s for the backend to exit
        assert conn.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,)).fetchone() == (True,)
    assert b.try_acquire()
    assert not a.held()  # a learns it lost its session, and with it the lock
    assert not a.try_acquire()


def test_the_lock_moves_when_the_leader_process_is_killed(
    fleet_dsn: str, locks: tuple[LeaderLock, LeaderLock]
) -> None:
    _, b = locks
    code = (
        "import sys\n"
        "from kloros_orchestrator.fleet.leader import LeaderLock\n"
        f"lock = LeaderLock({fleet_dsn!r}, {STUDY})\n"
        "print('leader' if lock.try_acquire() else 'not leader', flush=True)\n"
        "sys.stdin.read()\n"
    )
    leader = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert leader.stdout is not None
        assert leader.stdout.readline().strip() == "leader"
        assert not b.try_acquire()
        os.kill(leader.pid, signal.SIGKILL)  # no release, no goodbye: its socket just closes
        assert leader.wait(timeout=30) == -signal.SIGKILL
    finally:
        if leader.poll() is None:
            leader.kill()
            leader.wait(timeout=30)
    _wait_until_free(fleet_dsn)
    assert b.try_acquire()
