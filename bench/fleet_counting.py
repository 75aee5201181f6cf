"""Counting the statements a fleet agent sends to PostgreSQL, in psycopg (the fleet scaling benchmark).

Every statement of a pool's connections is counted by kind: a cursor subclass counts ``execute``
calls and each row of an ``executemany`` (one server-side execution per row, sent in one
pipeline); a connection subclass counts the ``BEGIN`` and ``COMMIT``/``ROLLBACK`` its
``transaction()`` sends; the pool's empty check query on each borrow counts as a statement too.
Connections made outside such a pool (the leader lock's own session) are not counted here.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool


class StatementCounter:
    """Statements by kind (see ``kind_of``); one per agent, read and reset between generations."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self._counts[kind] += n

    def take(self) -> Counter[str]:
        with self._lock:
            out, self._counts = self._counts, Counter()
        return out


_KINDS = (
    ("WITH picked", "claim"),
    ("SELECT state, done_by", "complete: lock the unit"),
    ("INSERT INTO trials", "complete: trial rows"),
    ("UPDATE work_units SET state = 'done'", "complete: mark done"),
    ("INSERT INTO generations", "create: generation"),
    ("INSERT INTO work_units", "create: work units"),
)


def kind_of(query: object) -> str:
    text = " ".join(str(query).split())
    if not text:
        return "pool check (empty query)"
    return next((kind for prefix, kind in _KINDS if text.startswith(prefix)), "other: " + text[:40])


class CountingConnection(psycopg.Connection[TupleRow]):
    """A connection that counts its transactions' BEGIN and COMMIT/ROLLBACK (its cursors count the
    rest); ``counter`` is set by the pool's ``configure`` callback."""

    counter: StatementCounter | None = None

    @contextmanager
    def transaction(
        self, savepoint_name: str | None = None, force_rollback: bool = False
    ) -> Iterator[psycopg.Transaction]:
        if self.counter is not None:
            self.counter.add("transaction: BEGIN/COMMIT", 2)  # the end is one statement either way
        with super().transaction(savepoint_name, force_rollback) as tx:
            yield tx


class CountingCursor(psycopg.Cursor[TupleRow]):
    def _count(self, query: object, n: int) -> None:
        counter = getattr(self.connection, "counter", None)
        if counter is not None:
            counter.add(kind_of(query), n)

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> CountingCursor:
        self._count(query, 1)
        super().execute(query, params, **kwargs)
        return self

    def executemany(self, query: Any, params_seq: Iterable[Any], **kwargs: Any) -> None:
        rows = list(params_seq)
        self._count(query, len(rows))
        super().executemany(query, rows, **kwargs)


def counting_pool(dsn: str, counter: StatementCounter, name: str) -> ConnectionPool[CountingConnection]:
    """A pool configured as ``open_fleet_store``'s, over counting connections, opened and filled."""

    def configure(conn: CountingConnection) -> None:
        conn.counter = counter
        conn.cursor_factory = CountingCursor

    pool = ConnectionPool(
        dsn,
        connection_class=CountingConnection,
        min_size=1,
        max_size=2,
        open=False,
        timeout=30.0,
        check=ConnectionPool.check_connection,
        configure=configure,
        kwargs={"autocommit": True},
        name=name,
    )
    pool.open(wait=True, timeout=60.0)
    return pool
