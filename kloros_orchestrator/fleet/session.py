"""How every fleet connection talks to the server: each wait is bounded, so no call hangs forever.

Theory of operation. A pooled connection and the leader lock's own session are opened with the same
settings (:func:`session_kwargs`), merged under the operator's connection string (a setting the
string names is kept):

* client-side TCP keepalives and ``tcp_user_timeout``: a server that vanished without closing the
  connection (power cut, partition) is noticed by this host within about half a minute, rather than
  by the kernel's retransmission timeout of a quarter of an hour or more;
* ``statement_timeout`` and ``lock_timeout`` in the session's ``options``: a statement stuck in the
  server (a lock held by a stuck session, an overloaded server) is cancelled by the server;
* ``connect_timeout``: a connection attempt gives up.

An error from any of these is an ``OperationalError`` (``pgstore.is_unreachable``): the daemon spools
and tries again later. None of them applies to a server process that stopped answering over a Unix
socket (no TCP, and a stopped backend enforces no timeout of its own): the daemon's own bound on
every call (``runtime.fleet_work``) covers that case.

The leader's session also asks the *server* for short keepalives (``server=True``): that is how the
server notices a leader that vanished and releases its lock for another host.
"""

from __future__ import annotations

from typing import Any, Final

KEEPALIVE_IDLE_S: Final = 15
KEEPALIVE_INTERVAL_S: Final = 5
KEEPALIVE_COUNT: Final = 3
TCP_USER_TIMEOUT_MS: Final = 20_000
STATEMENT_TIMEOUT_MS: Final = 15_000
LOCK_TIMEOUT_MS: Final = 10_000
CONNECT_TIMEOUT_S: Final = 10

# Server-side settings of the leader's session: the server probes a silent client and drops it.
SERVER_KEEPALIVE: Final = {
    "tcp_keepalives_idle": KEEPALIVE_IDLE_S,
    "tcp_keepalives_interval": KEEPALIVE_INTERVAL_S,
    "tcp_keepalives_count": KEEPALIVE_COUNT,
    "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
}


def session_kwargs(dsn: str, *, server: bool = False) -> dict[str, Any]:
    """Connection keywords for ``dsn`` (see the module docstring); imports psycopg."""
    from psycopg.conninfo import conninfo_to_dict

    given = conninfo_to_dict(dsn)
    ours: dict[str, Any] = {
        "keepalives": 1,
        "keepalives_idle": KEEPALIVE_IDLE_S,
        "keepalives_interval": KEEPALIVE_INTERVAL_S,
        "keepalives_count": KEEPALIVE_COUNT,
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
        "connect_timeout": CONNECT_TIMEOUT_S,
    }
    out = {k: v for k, v in ours.items() if k not in given}
    settings = {"statement_timeout": STATEMENT_TIMEOUT_MS, "lock_timeout": LOCK_TIMEOUT_MS}
    if server:
        settings.update(SERVER_KEEPALIVE)
    # Later -c options win in the server: the operator's own options come last.
    options = [f"-c {name}={value}" for name, value in settings.items()]
    if given.get("options"):
        options.append(str(given["options"]))
    out["options"] = " ".join(options)
    return out


__all__ = [
    "CONNECT_TIMEOUT_S",
    "LOCK_TIMEOUT_MS",
    "SERVER_KEEPALIVE",
    "STATEMENT_TIMEOUT_MS",
    "TCP_USER_TIMEOUT_MS",
    "session_kwargs",
]
