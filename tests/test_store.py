"""store: atomic writes and JSONL appends never go through a planted link; reads are bounded."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kloros_orchestrator.runtime.ports import EventLog
from kloros_orchestrator.safefs import RefusedFile
from kloros_orchestrator.statedir import check_state_dir
from kloros_orchestrator.store import (
    StatePaths,
    append_jsonl,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
    read_jsonl,
)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.write_text("precious\n")
    return path


def test_an_atomic_write_replaces_a_planted_link_instead_of_writing_through_it(
    tmp_path: Path, victim: Path
) -> None:
    target = tmp_path / "state.json"
    target.symlink_to(victim)
    atomic_write_bytes(target, b"{}\n", mode=0o600)
    assert not target.is_symlink() and target.read_bytes() == b"{}\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "victim"]  # no temp file left


def test_an_atomic_write_onto_a_directory_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "baselines.json").mkdir()
    with pytest.raises(OSError):
        atomic_write_json(tmp_path / "baselines.json", {"schema": "baselines.v2"})
    assert [p.name for p in tmp_path.iterdir()] == ["baselines.json"]


def test_appends_refuse_a_link_or_a_directory_with_an_oserror(tmp_path: Path, victim: Path) -> None:
    events = tmp_path / "logs" / "events.jsonl"
    events.parent.mkdir()
    events.symlink_to(victim)
    with pytest.raises(RefusedFile, match="symbolic link"):
        append_jsonl(events, {"event": "x"})
    assert victim.read_text() == "precious\n"
    events.unlink()
    events.mkdir()
    with pytest.raises(OSError, match="directory"):
        EventLog(events, lambda: 1.0).record("started")


def test_appends_create_private_enough_files_and_parents(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "trials.jsonl"
    append_jsonl(path, {"n": 1})
    append_jsonl(path, {"n": 2})
    assert read_jsonl(path) == [{"n": 1}, {"n": 2}]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755


def test_reading_back_is_bounded_and_never_recurses(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"n": 1}\n' + b"[" * 50_000 + b"]" * 50_000 + b'\n{"torn": \n\xff\xfe\n{"n": 2}\n')
    assert read_jsonl(path) == [{"n": 1}, {"n": 2}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []
    (tmp_path / "deep.json").write_bytes(b"[" * 50_000 + b"]" * 50_000)
    with pytest.raises(ValueError, match="nested too deeply"):
        read_json(tmp_path / "deep.json")
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    with pytest.raises(RefusedFile):
        read_json(tmp_path / "zero.json")


def test_the_state_layout_is_created_with_a_private_journal(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "state")
    check_state_dir(paths.root, socket_dir=None)  # the one place that creates the layout
    assert stat.S_IMODE(paths.journal.stat().st_mode) == 0o700
    assert stat.S_IMODE(paths.logs.stat().st_mode) == 0o755
    assert paths.lock == paths.root / "lock" and paths.daemon_log == paths.logs / "daemon.log"
    assert os.path.isdir(paths.manifests)
