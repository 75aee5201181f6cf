"""The saved state (``state.json``) read back: bounded, validated, a bad one moved aside.

Whatever is in place of the file, reading it returns at once with a fresh state and says why; the
bad file is moved aside, so the next start reads a clean state directory (no crash loop).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from kloros_orchestrator.runtime import records
from kloros_orchestrator.runtime.records import (
    DomainProgress,
    HallOfFameEntry,
    LastPhase,
    OpenWindow,
    SavedState,
    load_saved_state,
    read_saved_state,
    save_state,
)

NOW = 1_767_240_000.0
GOOD: dict[str, Any] = {
    "first_seen": NOW - 86400,
    "last_opened_id": "2026-01-01T03:00",
    "last_opened_start": NOW - 3600,
    "open_window": {"window_id": "w", "start": NOW - 60, "end": NOW + 60},
    "domain_index": 1,
    "engines": {
        "cpu": {
            "generation": 3,
            "durations": [12.5],
            "hall_of_fame": [
                {
                    "cand_id": "g2c1",
                    "spica_id": "s",
                    "genome": {"workers": 4},
                    "generation": 2,
                    "score": 0.1,
                    "score_ci95": [0.05, 0.2],
                }
            ],
        }
    },
}


def write(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc))


def changed(**edits: Any) -> Callable[[Path], None]:
    """A writer of GOOD with ``edits`` applied (dotted keys reach into nested objects)."""

    def make(path: Path) -> None:
        doc = json.loads(json.dumps(GOOD))
        for dotted, value in edits.items():
            *parents, last = dotted.split(".")
            at = doc
            for key in parents:
                at = at[key] if not key.isdigit() else at[int(key)]
            at[last] = value
        write(path, doc)

    return make


BAD_FILES: list[tuple[str, Callable[[Path], None], str]] = [
    ("nested_20000_deep", lambda p: p.write_bytes(b"[" * 20_000 + b"]" * 20_000), "nested deeper than 64"),
    ("dev_zero_link", lambda p: p.symlink_to("/dev/zero"), "symbolic link"),
    ("fifo", lambda p: os.mkfifo(p), "is a FIFO"),
    ("not_json", lambda p: p.write_text("{"), "not valid JSON: Input data was truncated"),
    ("empty_open_window", changed(open_window={}), "open_window"),
    ("non_numeric_end", changed(**{"open_window.end": "soon"}), "open_window.end"),
    ("string_generation", changed(**{"engines.cpu.generation": "3"}), "generation"),
    ("string_durations", changed(**{"engines.cpu.durations": ["long"]}), "durations"),
    ("last_opened_start_1e300", changed(last_opened_start=1e300), "last_opened_start: 1e+300 is not a time"),
    ("first_seen_in_year_1000", changed(first_seen=-3e10), "first_seen"),
    ("end_before_start", changed(**{"open_window.end": NOW - 120}), "open_window.end: "),
    ("negative_domain_index", changed(domain_index=-1), "domain_index: -1 is not a count"),
    ("domain_index_10e30", changed(domain_index=10**30), "domain_index: 1000000000000000000000000000000"),
    ("negative_generation", changed(**{"engines.cpu.generation": -2}), "engines.cpu.generation"),
    ("negative_duration", changed(**{"engines.cpu.durations": [-1.0]}), "engines.cpu.durations[0]"),
    ("endless_duration", changed(**{"engines.cpu.durations": [1.0, 1e308]}), "engines.cpu.durations[1]"),
    (
        "inverted_interval",
        changed(**{"engines.cpu.hall_of_fame.0.score_ci95": [0.2, 0.05]}),
        "engines.cpu.hall_of_fame[0].score_ci95",
    ),
    ("out_of_range_number", lambda p: p.write_text('{"first_seen": 1e999}'), "out of range"),
]


@pytest.mark.parametrize(("name", "make", "reason"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
async def test_a_bad_state_file_is_moved_aside_and_the_next_start_is_clean(
    tmp_path: Path, name: str, make: Callable[[Path], None], reason: str
) -> None:
    path = tmp_path / "state.json"
    make(path)
    with anyio.fail_after(5):  # a FIFO must not hang the start
        state, rejected = await anyio.to_thread.run_sync(
            lambda: read_saved_state(path, now=NOW), abandon_on_cancel=True
        )
    assert state == SavedState(first_seen=NOW)
    assert rejected is not None and reason in rejected.reason, rejected
    assert rejected.moved_to is not None
    assert re.fullmatch(r"state\.json\.rejected-\d+", rejected.moved_to.name)
    assert os.path.lexists(rejected.moved_to) and not os.path.lexists(path)
    assert rejected.fields()["path"] == str(path)
    # The second start meets no bad state: the same file never fails two starts in a row.
    assert read_saved_state(path, now=NOW + 1) == (SavedState(first_seen=NOW + 1), None)


def test_a_good_state_loads_whole_and_is_not_rejected(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write(path, GOOD)
    state, rejected = read_saved_state(path, now=NOW)
    assert rejected is None
    assert state.open_window == OpenWindow("w", NOW - 60, NOW + 60)
    assert state.engines["cpu"] == DomainProgress(
        generation=3,
        durations=[12.5],
        hall_of_fame=[HallOfFameEntry("g2c1", "s", {"workers": 4}, 2, 0.1, (0.05, 0.2))],
    )
    assert load_saved_state(path, now=NOW) == state
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_looking_at_a_bad_state_leaves_it_where_it_is(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    changed(last_opened_start=1e300)(path)
    assert load_saved_state(path, now=NOW) == SavedState(first_seen=NOW)
    _, rejected = read_saved_state(path, now=NOW, move_aside=False)
    assert rejected is not None and rejected.moved_to is None and path.exists()


def test_what_is_saved_reads_back_unrejected(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    saved = SavedState(
        first_seen=NOW,
        last_opened_start=NOW,
        last_phase=LastPhase("2026-01-01T04:00:00+00:00", "/r", "w", True, "run"),
    )
    assert save_state(path, saved)
    assert read_saved_state(path, now=NOW + 10) == (saved, None)


def test_missing_is_fresh_and_nothing_is_rejected(tmp_path: Path) -> None:
    assert read_saved_state(tmp_path / "state.json", now=NOW) == (SavedState(first_seen=NOW), None)


def test_a_directory_in_place_of_the_state_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.mkdir()
    state, rejected = read_saved_state(path, now=NOW)
    assert state == SavedState(first_seen=NOW)
    assert rejected is not None and "is a directory" in rejected.reason
    assert rejected.moved_to is not None and rejected.moved_to.is_dir()
    assert save_state(path, state)  # the next save is no longer refused


def test_an_oversized_state_file_is_moved_aside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "MAX_STATE_BYTES", 1000)
    path = tmp_path / "state.json"
    write(path, {**GOOD, "last_opened_id": "x" * 2000})
    state, rejected = read_saved_state(path, now=NOW)
    assert rejected is not None and rejected.reason == "unreadable: is larger than 1000 bytes"
    assert rejected.moved_to is not None and state == SavedState(first_seen=NOW)
