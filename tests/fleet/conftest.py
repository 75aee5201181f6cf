"""A throwaway PostgreSQL cluster for the fleet store's tests, one per test session.

``initdb`` creates it in a fresh temporary directory and ``pg_ctl start -w`` starts it (pg_ctl waits
for the server to accept connections itself). The server listens on a Unix socket in that directory
only (``listen_addresses=''``: no TCP). It refuses to run as root, so as root both run as ``nobody``
(through ``runuser``, or ``setpriv`` where runuser is missing) in a directory that user owns;
otherwise as the current user. At the end of the session: ``pg_ctl stop -m fast``, then the
directory is removed. Each test gets a database of its own (``fleet_dsn``).

The binaries are found on PATH, else through ``pg_config --bindir``, else in Debian's layout
(``/usr/lib/postgresql/<version>/bin``, the newest version). Without them the tests skip, saying
which package to install (``make test`` installs it when run as root).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

SUPERUSER = "fleet"
PORT = 5432  # only names the socket file (.s.PGSQL.5432) in our private directory
NO_SERVER = "PostgreSQL is not installed (Debian package `postgresql`; `make test` installs it)"


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
    """The argv prefix that runs a command as the server's user, and that user's uid/gid to own the
    cluster's directory (None: ourselves)."""
    if os.geteuid() != 0:
        return [], None, None
    nobody = pwd.getpwnam("nobody")
    if shutil.which("runuser"):
        return ["runuser", "-u", "nobody", "--"], nobody.pw_uid, nobody.pw_gid
    if shutil.which("setpriv"):
        prefix = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
        return prefix, nobody.pw_uid, nobody.pw_gid
    pytest.skip("running as root without runuser or setpriv: cannot start PostgreSQL as another user")


class Cluster:
    """One initdb'd cluster in ``root`` (data in ``root/data``, socket and log in ``root``)."""

    def __init__(self, bindir: Path, root: Path, prefix: list[str]) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.prefix = prefix
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
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start"
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

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


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    pytest.importorskip("psycopg", reason="psycopg is missing: install the 'test' extra")
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip(NO_SERVER)
    prefix, uid, gid = _as_server_user()
    root = Path(tempfile.mkdtemp(prefix="kloros-pg-"))
    if uid is not None and gid is not None:
        os.chown(root, uid, gid)
    cluster = Cluster(bindir, root, prefix)
    try:
        cluster.initdb()
        cluster.start()
        yield cluster
    finally:
        if (cluster.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fleet_dsn(pg_cluster: Cluster) -> Iterator[str]:
    """A fresh, empty database of the session's cluster; dropped after the test."""
    name = pg_cluster.new_database()
    yield pg_cluster.dsn(name)
    pg_cluster.drop_database(name)
