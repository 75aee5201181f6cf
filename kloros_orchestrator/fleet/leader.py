"""Leader election per study: a session-level advisory lock on a connection of its own.

Theory of operation. One host at a time asks the engine for a study's next generation: the one
holding ``pg_try_advisory_lock(LEADER_LOCK_CLASS, study_id)``. A session-level lock lives exactly as
long as the database session that took it, so the lock is held on a dedicated connection, never on
a pooled one (a pool would hand the session, and the lock, to whatever borrows it next). When the
leader's process dies, its connection closes, the server ends the session and releases the lock,
and the next host to try takes it over: no lease to expire, no clock involved. A host that lost
the database (server restart, network cut) lost its session and the lock with it:
:meth:`LeaderLock.held` says so, and the host must try again before acting as leader.

A client that vanishes without closing its socket (power cut, partition) is noticed by the server
only through TCP keepalives: the lock's session asks for short ones (``KEEPALIVE``), so another
host takes over within about a minute rather than the kernel's default two hours. Over a Unix
socket they do not apply (a local peer's death closes the socket at once). The session's other
settings bound this host's waits (``fleet.session``).

The daemon holds the lock only during a domain's turn: it releases it when the turn ends, so the
lock is never kept by a host that paces, measures another domain or waits for a PHASE window.
"""

from __future__ import annotations

import contextlib
from typing import Any, Final

import psycopg

from kloros_orchestrator.fleet.schema import LEADER_LOCK_CLASS
from kloros_orchestrator.fleet.session import SERVER_KEEPALIVE, session_kwargs

KEEPALIVE: Final = SERVER_KEEPALIVE


class LeaderLock:
    """The leader lock of one study, taken with :meth:`try_acquire`, dropped with :meth:`release`."""

    def __init__(self, dsn: str, study_id: int, *, connect_timeout_s: int = 10) -> None:
        self.dsn = dsn
        self.study_id = study_id
        self.connect_timeout_s = connect_timeout_s
        self._conn: psycopg.Connection[Any] | None = None

    def try_acquire(self) -> bool:
        """True when this host is (now, or still) the study's leader; never waits for the lock.

        Raises a ``psycopg.Error`` (``pgstore.is_unreachable``) when the database cannot be reached.
        """
        if self.held():
            return True
        kwargs = session_kwargs(self.dsn, server=True)
        if "connect_timeout" in kwargs:  # not named by the connection string
            kwargs["connect_timeout"] = self.connect_timeout_s
        conn = psycopg.connect(self.dsn, autocommit=True, **kwargs)
        try:
            row = conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (LEADER_LOCK_CLASS, self.study_id)
            ).fetchone()
        except BaseException:
            conn.close()
            raise
        if row is None or not row[0]:
            conn.close()
            return False
        self._conn = conn
        return True

    def held(self) -> bool:
        """Whether our session still holds the lock (asks the server; a broken session is dropped)."""
        conn = self._conn
        if conn is None or conn.closed:
            self._conn = None
            return False
        try:
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
                " AND pid = pg_backend_pid() AND classid = %s AND objid = %s AND granted)",
                (LEADER_LOCK_CLASS, self.study_id),
            ).fetchone()
        except psycopg.Error:
            self._drop()
            return False
        if row is None or not row[0]:
            self._drop()
            return False
        return True

    def release(self) -> None:
        """Stop being the leader: unlock, then close the session (another host may take it at once).

        Unlocking first matters: closing alone returns before the server's backend has exited and
        dropped the lock, so a host trying right after could still find it taken.
        """
        conn = self._conn
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LEADER_LOCK_CLASS, self.study_id))
        self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()


__all__ = ["KEEPALIVE", "LeaderLock"]
