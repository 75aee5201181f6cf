"""The fleet database as the daemon's event loop sees it: calls in worker threads, each bounded, and
whether the database answers (the ``fleet.database`` status field and its events).

Theory of operation. The store (``fleet.pgstore``) is opened and migrated once, on the first call,
under a lock (two threads calling at start-up open one pool). :meth:`FleetDatabase.call` runs
``fn(store)`` in a worker thread and raises :class:`DatabaseDown` when the database cannot do it now
(``pgstore.is_unreachable``) or has not answered within ``bound`` seconds: a server process that
stopped answering over a Unix socket honours no timeout of the session's (``fleet.session``), so
this bound is the last word. A cancelled (stopped) or timed-out call *abandons* its thread: the event
loop goes on, the thread finishes or fails on its own later. That is safe for every call made
through here, because each is a read or an idempotent write whose outcome the daemon does not need:

* reads (the newest generation, the trial rows, a verdict, hosts alive): asked again next time;
* heartbeat, join, renew, release, create or conclude a generation: repeating them changes nothing,
  and a leader that never learns whether its conclusion won writes no artifact of it;
* a claim: at worst the unit stays leased to us, unmeasured, and is re-claimed when its lease ends;
* a finished unit's write (``complete_unit``): the daemon spools the unit when the call gives no
  answer; if the abandoned write landed after all, the spool's line is written again as a no-op
  (``Outcome.ALREADY``), so nothing is lost or counted twice.

Reachability: the database is *unreachable* from the first failed or unanswered call until one
succeeds (a ``fleet_database_unreachable`` event, then ``fleet_database_back``), and the status also
says unreachable while a call has been waiting longer than ``stall_s``.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from loguru import logger

from kloros_orchestrator.fleet.dsn import redact
from kloros_orchestrator.runtime.ports import EventLog
from kloros_orchestrator.runtime.records import iso

if TYPE_CHECKING:
    from kloros_orchestrator.fleet.pgstore import FleetStore

T = TypeVar("T")
CALL_BOUND_S = 30.0  # a call unanswered this long counts as the database being unreachable
STALL_S = 5.0  # status says unreachable while a call has waited longer than this


class DatabaseDown(Exception):
    """The fleet database cannot be reached now (the caller waits and tries again)."""


class FleetDatabase:
    """The store for the event loop (module docstring)."""

    def __init__(
        self,
        dsn: str,
        *,
        events: EventLog,
        clock: Callable[[], float],
        pool_size: int = 4,
        pool_timeout_s: float = 5.0,
        stall_s: float = STALL_S,
    ) -> None:
        self._dsn = dsn
        self.events = events
        self.clock = clock
        self.pool_size = pool_size
        self.pool_timeout_s = pool_timeout_s
        self.stall_s = stall_s
        self.store: FleetStore | None = None
        self._migrated = False
        self._opening = threading.Lock()
        self.unreachable_since: float | None = None
        self._waiting: dict[int, tuple[float, float]] = {}  # call -> (monotonic, clock) at its start
        self._calls = itertools.count()

    def open(self) -> FleetStore:
        """The store, opened and migrated on first use (thread-safe; blocking)."""
        with self._opening:
            if self.store is None:
                from kloros_orchestrator.fleet.pgstore import open_fleet_store

                self.store = open_fleet_store(
                    self._dsn, max_size=self.pool_size, timeout_s=self.pool_timeout_s
                )
            if not self._migrated:
                applied = self.store.migrate()
                self._migrated = True
                if applied:
                    logger.info("fleet store {}: schema version(s) {} applied", redact(self._dsn), applied)
            return self.store

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    async def call(self, fn: Callable[[FleetStore], T], *, bound: float = CALL_BOUND_S) -> T:
        """``fn(store)`` in a worker thread; the database is reachable again when it returns."""
        out = await self.attempt(fn, bound=bound)
        self.mark_up()
        return out

    async def attempt(self, fn: Callable[[FleetStore], T], *, bound: float = CALL_BOUND_S) -> T:
        """As :meth:`call`, but an answer does not mark the database reachable (the caller decides:
        a spool flush can return having met the database gone again)."""
        from kloros_orchestrator.fleet.pgstore import is_unreachable

        key = next(self._calls)
        self._waiting[key] = (time.monotonic(), self.clock())
        try:
            with anyio.move_on_after(bound):
                return await anyio.to_thread.run_sync(lambda: fn(self.open()), abandon_on_cancel=True)
        except Exception as e:
            if not is_unreachable(e):
                raise
            self.mark_down(str(e) or type(e).__name__)
            raise DatabaseDown(redact(str(e))) from None
        finally:
            self._waiting.pop(key, None)
        self.mark_down(f"no answer within {bound:g} s")
        raise DatabaseDown(f"no answer within {bound:g} s")

    def mark_down(self, error: str) -> None:
        if self.unreachable_since is None:
            self.unreachable_since = self.clock()
            text = redact(error)[:300]
            logger.warning("fleet database unreachable: {}", text)
            self.events.record("fleet_database_unreachable", error=text)

    def mark_up(self) -> None:
        if self.unreachable_since is not None:
            down = self.clock() - self.unreachable_since
            logger.info("fleet database reachable again after {:.0f} s", down)
            self.events.record("fleet_database_back", down_s=round(down, 1))
            self.unreachable_since = None

    def status(self) -> dict[str, Any]:
        """``reachable`` and ``unreachable_since``: down, or a call waiting longer than ``stall_s``."""
        since = self.unreachable_since
        now = time.monotonic()
        stalled = [at for started, at in list(self._waiting.values()) if now - started > self.stall_s]
        if since is None and stalled:
            since = min(stalled)
        return {"reachable": since is None, "unreachable_since": iso(since) if since is not None else None}


__all__ = ["CALL_BOUND_S", "STALL_S", "DatabaseDown", "FleetDatabase"]
