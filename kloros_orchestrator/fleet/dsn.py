"""The fleet store's address and this daemon's name in it, without psycopg.

* :func:`redact` hides the password of a ``postgresql://`` URI (``user:***@host``, and a
  ``password=`` query parameter): every log line, status field and config problem shows the
  redacted form, never the secret.
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

_USERINFO_PASSWORD: Final = re.compile(
    r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/?#]*):[^@/?#]*@"
)
_QUERY_PASSWORD: Final = re.compile(r"(?P<key>[?&]password=)[^&#]*", re.IGNORECASE)


def is_postgres_uri(text: str) -> bool:
    return text.startswith(SCHEMES)


def redact(uri: str) -> str:
    """``uri`` with any password replaced by ``***`` (the rest kept: user, host, database)."""
    out = _USERINFO_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{HIDDEN}@", uri, count=1)
    return _QUERY_PASSWORD.sub(lambda m: f"{m['key']}{HIDDEN}", out)


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
