"""statedir.check_state_dir and the state-directory lock: ssh's StrictModes for a daemon run as root.

What another user could steer is refused with one UnsafeStateDir naming the path, on one line; our
own entries of the wrong kind (links among them) are moved aside and reported, so the next check
is clean. Nothing a planted link points at is ever touched. The ownership cases chown entries of a
temporary directory to uid 65534 (nobody), which needs root, as the daemon itself does.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from kloros_orchestrator.errors import (
    KlorosError,
    StateDirError,
    StateDirUnavailable,
    UnsafeStateDir,
    state_dir_error,
)
from kloros_orchestrator.runtime.startup import lock_state_dir
from kloros_orchestrator.safefs import Rejected, make_dirs
from kloros_orchestrator.statedir import check_state_dir
from kloros_orchestrator.store import StatePaths

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def moved_aside(root: Path, culprit: Path) -> Rejected:
    """The one entry check_state_dir moves aside under ``root``; a second check finds nothing."""
    [rejected] = check_state_dir(root, socket_dir=None)
    assert rejected.path == culprit and rejected.moved_to is not None
    assert rejected.moved_to.name.startswith(f"{culprit.name}.rejected-")
    assert not culprit.is_symlink()  # gone, or made again as the directory it should be
    assert check_state_dir(root, socket_dir=None) == []
    return rejected


def refused(root: Path, culprit: Path, *, socket_dir: Path | None = None) -> str:
    """The one-line message check_state_dir refuses ``root`` with; it must name ``culprit``."""
    with pytest.raises(UnsafeStateDir) as exc:
        check_state_dir(root, socket_dir=socket_dir)
    message = str(exc.value)
    assert "\n" not in message
    assert exc.value.path == str(culprit) and message.startswith(f"{culprit}: ")
    return exc.value.reason


@pytest.fixture
def state(tmp_path: Path) -> StatePaths:
    """A state_dir as a run leaves it: every directory, the logs, a state file, a PHASE result."""
    paths = StatePaths(tmp_path / "state")
    check_state_dir(paths.root, socket_dir=None)
    for f in (paths.lock, paths.runtime_state, paths.events, paths.trials, paths.daemon_log, paths.baselines):
        f.write_text("{}\n")
    pack = paths.candidates("cpu") / "gen0_best.json"
    pack.parent.mkdir(parents=True)
    pack.write_text("{}")
    (paths.phase / "run1").mkdir()
    (paths.phase / "run1" / "phase_results.json").write_text("{}")
    (paths.phase / "latest").symlink_to("run1")
    return paths


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.write_text("precious\n")
    return path


def test_a_missing_state_dir_is_created_with_private_modes(tmp_path: Path) -> None:
    root = tmp_path / "a" / "state"
    check_state_dir(root, socket_dir=tmp_path / "run" / "kloros")
    paths = StatePaths(root)
    for d in (root, paths.artifacts, paths.manifests, paths.phase, paths.logs, paths.scratch, paths.tmp):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755, d
    assert stat.S_IMODE(paths.journal.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "run" / "kloros").stat().st_mode) == 0o755
    check_state_dir(root, socket_dir=root)  # a second start finds what the first one made


def test_a_used_state_dir_passes_with_its_latest_link_and_socket(state: StatePaths) -> None:
    sock = state.root / "kloros.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))
        os.chmod(sock, 0o660)  # group-writable on purpose: the status socket
        assert check_state_dir(state.root, socket_dir=state.root) == []


@pytest.mark.parametrize(
    "where",
    [
        lambda p: p.lock,
        lambda p: p.events,
        lambda p: p.daemon_log,
        lambda p: p.runtime_state,
        lambda p: p.candidates("cpu") / "gen0_best.json",
        lambda p: p.phase / "run1" / "phase_results.json",
        lambda p: p.journal / "0123.json",
    ],
    ids=["lock", "events", "daemon_log", "state", "pack", "results", "journal_entry"],
)
def test_a_link_where_a_file_belongs_is_moved_aside_never_followed(
    state: StatePaths, victim: Path, where: Callable[[StatePaths], Path]
) -> None:
    path = where(state)
    path.unlink(missing_ok=True)
    path.symlink_to(victim)
    rejected = moved_aside(state.root, path)
    assert rejected.reason == f"a symbolic link (to {victim}) where the daemon keeps its own files"
    assert rejected.moved_to is not None and os.readlink(rejected.moved_to) == str(victim)
    assert victim.read_text() == "precious\n"


def test_a_linked_directory_is_moved_aside_and_made_again(state: StatePaths, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(state.logs)
    state.logs.symlink_to(elsewhere)
    moved_aside(state.root, state.logs)
    assert state.logs.is_dir() and not state.logs.is_symlink() and list(elsewhere.iterdir()) == []
    (state.artifacts / "candidates" / "memory").symlink_to(elsewhere)
    moved_aside(state.root, state.artifacts / "candidates" / "memory")


def test_a_linked_state_dir_is_refused(state: StatePaths, tmp_path: Path) -> None:
    link = tmp_path / "link-to-state"
    link.symlink_to(state.root)
    assert "state_dir is a symbolic link" in refused(link, link)


@pytest.mark.parametrize("target", ["/etc", "../run1", "..", "latest", "gen0"])
def test_latest_must_name_a_run_directory_beside_it(state: StatePaths, target: str) -> None:
    latest = state.phase / "latest"
    latest.unlink()
    latest.symlink_to(target)
    if target == "gen0":
        (state.phase / "gen0").write_text("")  # exists, but not a directory
    moved_aside(state.root, latest)  # PHASE writes it again


def test_a_dangling_latest_is_no_danger(state: StatePaths) -> None:
    (state.phase / "latest").unlink()
    (state.phase / "latest").symlink_to("run-not-yet-written")
    assert check_state_dir(state.root, socket_dir=None) == []


@as_root
@pytest.mark.parametrize(
    "where",
    [
        lambda p: p.root,
        lambda p: p.logs,
        lambda p: p.events,
        lambda p: p.runtime_state,
        lambda p: p.phase / "run1" / "phase_results.json",
        lambda p: p.phase / "latest",
    ],
    ids=["state_dir", "logs", "events", "state", "results", "latest"],
)
def test_an_entry_of_another_user_is_refused(state: StatePaths, where: Callable[[StatePaths], Path]) -> None:
    path = where(state)
    os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
    assert refused(state.root, path).startswith(f"owned by uid {NOBODY}, not by the daemon's uid 0")


@pytest.mark.parametrize(("mode", "who"), [(0o775, "group"), (0o757, "others"), (0o777, "group and others")])
def test_an_entry_writable_by_others_is_refused_naming_the_chmod(
    state: StatePaths, mode: int, who: str
) -> None:
    os.chmod(state.tmp, mode)
    assert refused(state.root, state.tmp) == f"writable by {who}: run chmod go-w {state.tmp}"
    os.chmod(state.tmp, 0o755)
    os.chmod(state.runtime_state, 0o666)
    assert "writable by group and others" in refused(state.root, state.runtime_state)


def test_a_parent_writable_by_others_is_refused_unless_sticky(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    root = shared / "state"
    assert "who could replace" in refused(root, shared)
    assert not root.exists()  # refused before anything was created
    os.chmod(shared, 0o1777)  # /tmp's mode: nobody else can rename our entry
    check_state_dir(root, socket_dir=None)


@as_root
def test_a_parent_of_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    assert refused(theirs / "state", theirs) == f"owned by uid {NOBODY}, who could replace {theirs / 'state'}"


FILE_EXPECTED = "where a regular file belongs"
DIR_EXPECTED = "a regular file where a directory belongs"


@pytest.mark.parametrize(
    ("where", "make", "expected"),
    [
        (lambda p: p.lock, Path.mkdir, f"a directory {FILE_EXPECTED}"),
        (lambda p: p.runtime_state, Path.mkdir, f"a directory {FILE_EXPECTED}"),
        (lambda p: p.events, Path.mkdir, f"a directory {FILE_EXPECTED}"),
        (lambda p: p.daemon_log, Path.mkdir, f"a directory {FILE_EXPECTED}"),
        (lambda p: p.lock, os.mkfifo, f"a FIFO {FILE_EXPECTED}"),
        (lambda p: p.runtime_state, os.mkfifo, f"a FIFO {FILE_EXPECTED}"),
        (lambda p: p.journal, Path.touch, DIR_EXPECTED),
        (lambda p: p.tmp, Path.touch, DIR_EXPECTED),
        (lambda p: p.artifacts, Path.touch, DIR_EXPECTED),
    ],
    ids=[
        "lock_dir",
        "state_dir",
        "events_dir",
        "daemon_log_dir",
        "lock_fifo",
        "state_fifo",
        "journal_file",
        "tmp_file",
        "artifacts_file",
    ],
)
def test_our_entry_of_the_wrong_kind_is_moved_aside(
    tmp_path: Path, where: Callable[[StatePaths], Path], make: Callable[[Path], None], expected: str
) -> None:
    paths = StatePaths(tmp_path / "state")
    make_dirs(paths.logs)
    path = where(paths)
    make(path)
    assert moved_aside(paths.root, path).reason == expected
    assert paths.journal.is_dir() and paths.tmp.is_dir() and paths.artifacts.is_dir()


def test_a_state_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "state"
    root.write_text("")
    assert refused(root, root) == "state_dir is a regular file, not a directory"


def test_the_socket_directory_is_held_to_the_same_rules(tmp_path: Path) -> None:
    root = tmp_path / "state"
    open_dir = tmp_path / "sockets"
    open_dir.mkdir()
    os.chmod(open_dir, 0o1777)  # sticky or not, anyone could plant a socket there
    assert refused(root, open_dir, socket_dir=open_dir).startswith("writable by group and others")
    linked = tmp_path / "linked"
    linked.symlink_to(tmp_path)
    assert "socket directory is a symbolic link" in refused(root, linked, socket_dir=linked)


# --- the lock ---------------------------------------------------------------------------------------------


def test_the_lock_is_never_opened_through_a_link(tmp_path: Path, victim: Path) -> None:
    (tmp_path / "lock").symlink_to(victim)
    with pytest.raises(UnsafeStateDir, match="is a symbolic link"):
        lock_state_dir(tmp_path)
    assert victim.read_text() == "precious\n"
    (tmp_path / "lock").unlink()
    (tmp_path / "lock").mkdir()
    with pytest.raises(UnsafeStateDir, match="is a directory, not a regular file"):
        lock_state_dir(tmp_path)


async def test_a_fifo_in_place_of_the_lock_is_refused_at_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "lock")
    with anyio.fail_after(5), pytest.raises(UnsafeStateDir, match="is a FIFO"):
        await anyio.to_thread.run_sync(lock_state_dir, tmp_path, abandon_on_cancel=True)


def test_the_lock_holds_our_pid_and_refuses_a_second_daemon(tmp_path: Path) -> None:
    fd = lock_state_dir(tmp_path)
    try:
        assert (tmp_path / "lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(KlorosError, match=f"pid {os.getpid()}"):
            lock_state_dir(tmp_path)
    finally:
        os.close(fd)


@as_root
def test_a_lock_of_another_user_is_refused(tmp_path: Path) -> None:
    (tmp_path / "lock").write_text("")
    os.chown(tmp_path / "lock", NOBODY, NOBODY)
    with pytest.raises(UnsafeStateDir, match=f"owned by uid {NOBODY}"):
        lock_state_dir(tmp_path)


@pytest.mark.parametrize(
    ("code", "transient"),
    [
        (errno.ENOSPC, True),
        (errno.EIO, True),
        (errno.EDQUOT, True),
        (errno.EROFS, False),
        (errno.EACCES, False),
    ],
)
def test_a_disk_error_is_one_line_and_only_a_passing_one_is_retried(code: int, transient: bool) -> None:
    # systemd's unit does not restart on exit 2: a full disk must exit 1 so the daemon comes back.
    err = state_dir_error(OSError(code, os.strerror(code), "/srv/state/state.json"), "/srv/state")
    assert isinstance(err, StateDirUnavailable) is transient
    assert isinstance(err, StateDirError) is not transient
    assert "\n" not in str(err) and str(err).startswith("/srv/state/state.json: ")
