"""safefs: the bounded reader, the nesting guard, moving bad files aside, appends and the log sink.

Every file here is a real one in a temporary directory: real symbolic links, FIFOs and /dev/zero.
A call that could hang (a FIFO) runs in a worker thread under ``fail_after``.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from loguru import logger

from kloros_orchestrator.errors import SchemaError
from kloros_orchestrator.safefs import (
    MAX_JSON_DEPTH,
    LogFile,
    RefusedFile,
    is_rejected,
    make_dirs,
    move_aside_for,
    nesting_exceeds,
    open_append,
    quarantine,
    read_bounded,
    reject,
)


async def promptly(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a worker thread; fails the test instead of hanging it."""
    with anyio.fail_after(5):
        return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file a planted link points at: it must never be read, truncated or appended to."""
    path = tmp_path / "victim"
    path.write_text("precious\n")
    return path


# --- read_bounded -----------------------------------------------------------------------------------


def test_read_bounded_reads_a_regular_file_up_to_its_bound(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_bytes(b"x" * 100)
    assert read_bounded(path, max_bytes=100) == b"x" * 100
    with pytest.raises(RefusedFile) as exc:
        read_bounded(path, max_bytes=99)
    assert exc.value.errno == errno.EFBIG and exc.value.strerror == "is larger than 99 bytes"
    with pytest.raises(FileNotFoundError):
        read_bounded(tmp_path / "missing", max_bytes=10)


def test_read_bounded_never_follows_a_link_not_even_to_dev_zero(tmp_path: Path, victim: Path) -> None:
    for target in (victim, Path("/dev/zero")):
        link = tmp_path / f"link-{target.name}"
        link.symlink_to(target)
        with pytest.raises(RefusedFile) as exc:
            read_bounded(link, max_bytes=1 << 30)
        assert exc.value.errno == errno.ELOOP and "symbolic link" in str(exc.value.strerror)


async def test_read_bounded_refuses_a_fifo_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "state.json"
    os.mkfifo(fifo)
    with pytest.raises(RefusedFile, match="is a FIFO, not a regular file"):
        await promptly(lambda: read_bounded(fifo, max_bytes=10))


def test_read_bounded_refuses_a_directory_and_a_device(tmp_path: Path) -> None:
    with pytest.raises(RefusedFile, match="is a directory"):
        read_bounded(tmp_path, max_bytes=10)
    with pytest.raises(RefusedFile, match="is a character device"):
        read_bounded(Path("/dev/zero"), max_bytes=10)


# --- nesting ------------------------------------------------------------------------------------------


def test_nesting_guard_counts_arrays_and_objects_but_not_strings() -> None:
    assert nesting_exceeds(deep(20_000))
    assert not nesting_exceeds(deep(MAX_JSON_DEPTH)) and nesting_exceeds(deep(MAX_JSON_DEPTH + 1))
    objects = b'{"a":' * 100 + b"1" + b"}" * 100
    assert nesting_exceeds(objects)
    in_strings = json.dumps({"k": "[" * 10_000, "e": '\\"[[[[' * 100, "l": [[1], [2]]}).encode()
    assert not nesting_exceeds(in_strings)
    unterminated = b'["open string ' + b"[" * 5_000  # inside the string: the decoder never recurses
    assert not nesting_exceeds(unterminated)
    with pytest.raises(json.JSONDecodeError):
        json.loads(unterminated)
    assert not nesting_exceeds(b"[]" * 1_000_000)  # wide is fine


# --- moving aside ---------------------------------------------------------------------------------------


def test_quarantine_moves_the_link_itself_and_never_overwrites(tmp_path: Path, victim: Path) -> None:
    link = tmp_path / "state.json"
    link.symlink_to(victim)
    first = quarantine(link, "a link")
    assert re.fullmatch(r"state\.json\.rejected-\d+", first.name)
    assert first.is_symlink() and not os.path.lexists(link)
    assert victim.read_text() == "precious\n"
    link.write_text("{}")
    second = quarantine(link, "again, within the same second")
    assert second != first and second.read_text() == "{}" and first.is_symlink()
    assert is_rejected(first.name) and is_rejected(second.name)
    assert not is_rejected("state.json") and not is_rejected("state.json.rejected-")


def test_reject_moves_whatever_is_there_and_reports_what_it_did(tmp_path: Path) -> None:
    bad = tmp_path / "baselines.json"
    bad.write_text("[[[")
    rejected = reject(bad, "not JSON")
    assert rejected.moved_to is not None and rejected.moved_to.read_text() == "[[["
    assert rejected.fields() == {"path": str(bad), "reason": "not JSON", "moved_to": str(rejected.moved_to)}
    assert str(rejected) == f"not JSON (moved aside to {rejected.moved_to.name})"
    bad.mkdir()  # a write onto it would fail forever
    moved = reject(bad, "a directory").moved_to
    assert moved is not None and moved.is_dir() and not bad.exists()
    gone = reject(tmp_path / "gone", "vanished")  # logged, never raised
    assert gone.moved_to is None and str(gone) == "vanished (left in place)"


def test_move_aside_for_says_where_the_file_went(tmp_path: Path) -> None:
    bad = tmp_path / "gen0_best.json"
    bad.write_text("{")
    e = move_aside_for(SchemaError(str(bad), "<document>", "not valid JSON"))
    assert e.field == "<document>" and e.path == str(bad)
    assert re.fullmatch(r"not valid JSON \(moved aside to gen0_best\.json\.rejected-\d+\)", e.problem)
    assert not bad.exists()


# --- appends and the log sink ---------------------------------------------------------------------------


async def test_open_append_refuses_links_fifos_and_directories(tmp_path: Path, victim: Path) -> None:
    link = tmp_path / "events.jsonl"
    link.symlink_to(victim)
    with pytest.raises(RefusedFile, match="symbolic link"):
        open_append(link)
    fifo = tmp_path / "trials.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(RefusedFile, match="FIFO"):
        await promptly(open_append, fifo)
    with pytest.raises(RefusedFile, match="directory"):
        open_append(tmp_path)
    assert victim.read_text() == "precious\n"
    fd = open_append(tmp_path / "new.jsonl")
    try:
        assert os.get_blocking(fd)
    finally:
        os.close(fd)
    assert (tmp_path / "new.jsonl").stat().st_mode & 0o777 == 0o644


def test_log_file_rotates_and_survives_braces_in_its_path(tmp_path: Path) -> None:
    logs = tmp_path / "{weird}"
    make_dirs(logs)
    sink = LogFile(logs / "daemon.log", max_bytes=100, keep=2)
    handler = logger.add(sink, format="{message}")
    try:
        for i in range(12):
            logger.info("line {:02d} {}", i, "x" * 20)
    finally:
        logger.remove(handler)
    names = sorted(p.name for p in logs.iterdir())
    assert names == ["daemon.log", "daemon.log.1", "daemon.log.2"]
    assert all(p.stat().st_size <= 100 for p in logs.iterdir())
    assert (logs / "daemon.log").read_text().splitlines()[-1].startswith("line 11 ")
    sink.write("after stop\n")  # loguru stopped it: nothing written, nothing raised


def test_log_file_refuses_a_planted_link(tmp_path: Path, victim: Path) -> None:
    (tmp_path / "daemon.log").symlink_to(victim)
    with pytest.raises(RefusedFile):
        LogFile(tmp_path / "daemon.log")
    assert victim.read_text() == "precious\n"


def test_make_dirs_gives_every_created_directory_the_mode(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        make_dirs(tmp_path / "a" / "b" / "c")
    finally:
        os.umask(old)
    for p in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert p.stat().st_mode & 0o777 == 0o755
    make_dirs(tmp_path / "a")  # exists: nothing to do
