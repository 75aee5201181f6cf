"""The fleet store's address and this daemon's name in it, without psycopg.

* :func:`redact` hides the password of a ``postgresql://`` URI (``user:***@host``), a
  ``password=``, ``sslpassword=`` (any ``…password``) query parameter, and a ``password=`` of a
  ``key=value`` connection string: every log line, status field and config problem shows the
  redacted form, never the secret. It errs on the side of hiding: a password with unencoded
  ``/``, ``#``, ``?``, ``@`` or ``&`` (which libpq itself would misread) is hidden whole, up to the
  last ``@`` of the address, or up to the next ``&key=`` of the query.
* :func:`default_host_id` names this daemon in a study when ``study.host_id`` is not set: the node
  name plus a short hash of the absolute ``state_dir``, so several daemons on one machine (each
  with its own state directory) are several hosts, and one daemon keeps its name across restarts.
"""

from __future__ import annotations

import hashlib
import platform
import re
from pathlib import Path
from typing import Final

SCHEMES: Final = ("postgresql://", "postgres://")
HIDDEN: Final = "***"

_QUERY_PASSWORD: Final = re.compile(
    r"(?P<key>[?&][a-z_]*password=).*?(?=&[a-z_][a-z0-9_]*=|$)", re.IGNORECASE | re.DOTALL
)
_KV_PASSWORD: Final = re.compile(
    r"(?P<key>(?:^|\s)[a-z_]*password\s*=\s*)(?:'(?:[^'\\]|\\.)*'?|\S*)", re.IGNORECASE
)
_NOT_A_USER: Final = frozenset("/?[#")


def is_postgres_uri(text: str) -> bool:
    return text.startswith(SCHEMES)


def redact(uri: str) -> str:
    """``uri`` with any password replaced by ``***`` (the rest kept: user, host, database); see the
    module docstring. Also fit for a ``key=value`` connection string and for an error's text."""
    out = _redact_userinfo(uri)
    out = _QUERY_PASSWORD.sub(lambda m: f"{m['key']}{HIDDEN}", out)
    return _KV_PASSWORD.sub(lambda m: f"{m['key']}{HIDDEN}", out)


def _redact_userinfo(uri: str) -> str:
    """``scheme://user:***@…``: the password runs from the user's ``:`` to the *last* ``@`` of the
    string, so a password holding unencoded ``@``, ``/``, ``?`` or ``#`` is hidden whole."""
    head, sep, rest = uri.partition("://")
    at = rest.rfind("@")
    if not sep or not head.replace("+", "").replace(".", "").replace("-", "").isalnum() or at < 0:
        return uri
    user, colon, _ = rest[:at].partition(":")
    if not colon or _NOT_A_USER & set(user):  # no password, or the ':' is a port's or the query's
        return uri
    return f"{head}://{user}:{HIDDEN}{rest[at:]}"


def scheme_of(text: str) -> str:
    """What a reader may be shown of a store value that is no PostgreSQL URI: its scheme at most."""
    head, sep, _ = text.partition("://")
    return f"{head}://…" if sep and head.isalnum() and len(head) <= 20 else "a value"


def default_host_id(state_dir: Path, node: str | None = None) -> str:
    """``<node name>-<8 hex of sha256(absolute state_dir)>`` (see the module docstring)."""
    name = (node if node is not None else platform.node()) or "host"
    digest = hashlib.sha256(str(Path(state_dir).absolute()).encode()).hexdigest()[:8]
    return f"{name}-{digest}"


__all__ = ["HIDDEN", "SCHEMES", "default_host_id", "is_postgres_uri", "redact", "scheme_of"]
