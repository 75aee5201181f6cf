"""A throwaway PostgreSQL cluster: the fleet store's tests and the fleet scaling benchmark start one.

``initdb`` creates it in a fresh temporary directory and ``pg_ctl start -w`` starts it (pg_ctl waits
for the server to accept connections itself). The server listens on a Unix socket in that directory
only (``listen_addresses=''``: no TCP). It refuses to run as root, so as root both run as ``nobody``
(through ``runuser``, or ``setpriv`` where runuser is missing) in a directory that user owns;
otherwise as the current user. On leaving :func:`throwaway_cluster`: ``pg_ctl stop -m fast``, then
the directory is removed. When pg_ctl fails to stop it, the postmaster named in ``postmaster.pid``
is stopped directly (immediate shutdown, then SIGKILL); a directory whose server is still running
is never removed (it is left, and said so on stderr).

The binaries are found on PATH, else through ``pg_config --bindir``, else in Debian's layout
(``/usr/lib/postgresql/<version>/bin``, the newest version). Without them, or as root without a way
to become another user, :func:`find_server` raises :class:`PostgresUnavailable` saying what is
missing (the tests turn it into a skip). psycopg is imported only by the methods that connect.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final, NamedTuple

SUPERUSER: Final = "fleet"
PORT: Final = 5432  # only names the socket file (.s.PGSQL.5432) in our private directory
NO_SERVER: Final = "PostgreSQL is not installed (Debian package `postgresql`; `make test` installs it)"
NO_OTHER_USER: Final = "running as root without runuser or setpriv: cannot start PostgreSQL as another user"


class PostgresUnavailable(RuntimeError):
    """No throwaway cluster can be started here; the message says why."""


class Server(NamedTuple):
    """Where the server's binaries are, and how to run them: the argv prefix that switches to the
    server's user and that user's uid/gid to own the cluster's directory (None: ourselves)."""

    bindir: Path
    prefix: list[str]
    uid: int | None
    gid: int | None


def _has_server(bindir: Path) -> bool:
    return all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres"))


def _version_of(path: Path) -> tuple[int, ...]:
    digits = path.parent.name.split(".")
    return tuple(int(d) for d in digits) if all(d.isdigit() for d in digits) else (-1,)


def pg_bindir() -> Path | None:
    """Where initdb, pg_ctl and postgres are (see the module docstring), or None."""
    on_path = shutil.which("initdb")
    if on_path and _has_server(Path(on_path).resolve().parent):
        return Path(on_path).resolve().parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if done.returncode == 0 and _has_server(Path(done.stdout.strip())):
            return Path(done.stdout.strip())
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_of, reverse=True)
    return next((d for d in debian if _has_server(d)), None)


def _as_server_user() -> tuple[list[str], int | None, int | None]:
    if os.geteuid() != 0:
        return [], None, None
    nobody = pwd.getpwnam("nobody")
    if shutil.which("runuser"):
        return ["runuser", "-u", "nobody", "--"], nobody.pw_uid, nobody.pw_gid
    if shutil.which("setpriv"):
        prefix = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
        return prefix, nobody.pw_uid, nobody.pw_gid
    raise PostgresUnavailable(NO_OTHER_USER)


def find_server() -> Server:
    """The server to start clusters with; raises :class:`PostgresUnavailable` when there is none."""
    bindir = pg_bindir()
    if bindir is None:
        raise PostgresUnavailable(NO_SERVER)
    return Server(bindir, *_as_server_user())


class Cluster:
    """One initdb'd cluster in ``root`` (data in ``root/data``, socket and log in ``root``).

    ``settings`` are extra server settings (``name=value``) given to every start, for instance a
    benchmark's ``shared_preload_libraries``.
    """

    def __init__(self, bindir: Path, root: Path, prefix: list[str], settings: tuple[str, ...] = ()) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.prefix = prefix
        self.settings = settings
        self._names = itertools.count()

    def _run(self, tool: str, *args: str) -> None:
        argv = [*self.prefix, str(self.bindir / tool), *args]
        done = subprocess.run(argv, cwd=self.root, capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {done.stderr.strip()}\n{log}")

    def initdb(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        options = (
            f"-c listen_addresses='' -c unix_socket_directories={shlex.quote(str(self.root))}"
            f" -c port={PORT} -c max_connections=60"
        )
        options += "".join(f" -c {shlex.quote(s)}" for s in self.settings)
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start"
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def kill(self, wait_s: float = 10.0) -> bool:
        """Stop the postmaster of ``postmaster.pid`` without pg_ctl: SIGQUIT (immediate shutdown,
        its backends too), then SIGKILL. True when no server of this cluster is running any more."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except FileNotFoundError:
            return True
        except (OSError, ValueError):
            return False
        for sig in (signal.SIGQUIT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
            end = time.monotonic() + wait_s
            while time.monotonic() < end:
                if not _alive(pid):
                    return True
                time.sleep(0.05)
        return not _alive(pid)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.root} port={PORT} user={SUPERUSER} dbname={dbname} connect_timeout=5"

    def new_database(self) -> str:
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def throwaway_cluster(server: Server, settings: tuple[str, ...] = ()) -> Iterator[Cluster]:
    """A started cluster in a new temporary directory; stopped and removed on leaving."""
    root = Path(tempfile.mkdtemp(prefix="kloros-pg-"))
    if server.uid is not None and server.gid is not None:
        os.chown(root, server.uid, server.gid)
    cluster = Cluster(server.bindir, root, server.prefix, settings)
    try:
        cluster.initdb()
        cluster.start()
        yield cluster
    finally:
        stopped = not cluster.running()
        if not stopped:
            try:
                cluster.stop()
                stopped = True
            except (RuntimeError, subprocess.TimeoutExpired):
                stopped = cluster.kill()
        if stopped:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"throwaway PostgreSQL in {root} could not be stopped: left in place", file=sys.stderr)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = [
    "NO_OTHER_USER",
    "NO_SERVER",
    "PORT",
    "SUPERUSER",
    "Cluster",
    "PostgresUnavailable",
    "Server",
    "find_server",
    "pg_bindir",
    "throwaway_cluster",
]
