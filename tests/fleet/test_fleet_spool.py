"""The local spool on its own: durable whole lines, flushed in order, kept when the database is gone."""

from __future__ import annotations

from pathlib import Path

import pytest

from kloros_orchestrator.fleet.records import Outcome, TrialRow, UnitResult
from kloros_orchestrator.fleet.spool import FlushReport, TrialSpool, spool_path


class Unreachable(Exception):
    pass


def unit(i: int) -> UnitResult:
    rows = (TrialRow(regime="idle", arm="candidate", ok=True, kpis={"throughput": float(i)}),)
    return UnitResult(
        study_id=1, generation=0, cand_id=f"c{i}", round=0, host="a", trials=rows, finished_at=1.5
    )


@pytest.fixture
def spool(tmp_path: Path) -> TrialSpool:
    return TrialSpool(spool_path(tmp_path))


def test_appended_units_read_back_in_order(spool: TrialSpool, tmp_path: Path) -> None:
    for i in range(3):
        spool.append(unit(i))
    assert spool.path == tmp_path / "fleet" / "spool.jsonl"
    assert spool.pending() == [unit(0), unit(1), unit(2)]
    assert len(spool.path.read_bytes().splitlines()) == 3


def test_a_torn_last_line_is_skipped(spool: TrialSpool) -> None:
    spool.append(unit(0))
    with spool.path.open("ab") as f:
        f.write(b'{"study_id": 1, "generation"')  # a crash inside an append that was never acknowledged
    assert spool.pending() == [unit(0)]


def test_a_flush_writes_everything_and_removes_the_file(spool: TrialSpool) -> None:
    written: list[UnitResult] = []
    outcomes = iter([Outcome.WRITTEN, Outcome.ALREADY, Outcome.SUPERSEDED])

    def write(u: UnitResult) -> Outcome:
        written.append(u)
        return next(outcomes)

    for i in range(3):
        spool.append(unit(i))
    report = spool.flush(write, (Unreachable,))
    assert written == [unit(0), unit(1), unit(2)]
    assert (report.written, report.already, report.superseded, report.left) == (1, 1, 1, 0)
    assert not spool.path.exists()
    assert spool.flush(write, (Unreachable,)).left == 0  # nothing to do, nothing written


def test_a_database_gone_again_mid_flush_keeps_the_rest_in_order(spool: TrialSpool) -> None:
    calls = 0

    def write(u: UnitResult) -> Outcome:
        nonlocal calls
        calls += 1
        if calls > 2:
            raise Unreachable("connection refused")
        return Outcome.WRITTEN

    for i in range(5):
        spool.append(unit(i))
    report = spool.flush(write, (Unreachable,))
    assert (report.written, report.left) == (2, 3)
    assert spool.pending() == [unit(2), unit(3), unit(4)]


def test_another_error_propagates_and_keeps_what_was_not_written(spool: TrialSpool) -> None:
    def write(u: UnitResult) -> Outcome:
        if u.cand_id == "c1":
            raise RuntimeError("a bug")
        return Outcome.WRITTEN

    for i in range(3):
        spool.append(unit(i))
    with pytest.raises(RuntimeError):
        spool.flush(write, (Unreachable,))
    assert spool.pending() == [unit(1), unit(2)]


def test_a_line_that_is_no_unit_is_dropped_and_counted(spool: TrialSpool) -> None:
    spool.append(unit(0))
    with spool.path.open("ab") as f:
        f.write(b'{"schema": "something else"}\n')
    report = spool.flush(lambda u: Outcome.WRITTEN, (Unreachable,))
    assert (report.written, report.unreadable) == (1, 1)
    assert not spool.path.exists()


def test_an_append_after_a_torn_last_line_starts_a_line_of_its_own(spool: TrialSpool) -> None:
    spool.append(unit(0))
    with spool.path.open("ab") as f:
        f.write(b'{"study_id": 1, "generation": 0, "cand_')  # a power cut in the middle of an append
    spool.append(unit(2))  # acknowledged (fsynced) after the restart
    assert spool.pending() == [unit(0), unit(2)]


def test_units_appended_during_a_flush_stay_and_a_second_flush_waits_its_turn(spool: TrialSpool) -> None:
    for i in range(2):
        spool.append(unit(i))
    inner: list[FlushReport] = []

    def write(u: UnitResult) -> Outcome:
        if u == unit(0):
            spool.append(unit(5))  # finished while the flush talks to the database
            inner.append(spool.flush(lambda _u: Outcome.WRITTEN, (Unreachable,)))
        return Outcome.WRITTEN

    report = spool.flush(write, (Unreachable,))
    assert (report.written, report.left, report.interrupted) == (2, 1, None)
    assert inner[0].busy and inner[0].written == 0, "one flush at a time, the other returns at once"
    assert spool.pending() == [unit(5)]


def test_a_flush_cut_short_says_why_and_takes_a_predicate(spool: TrialSpool) -> None:
    spool.append(unit(0))

    def write(u: UnitResult) -> Outcome:
        raise ValueError("connection refused")

    report = spool.flush(write, lambda e: isinstance(e, ValueError))
    assert (report.written, report.left, report.interrupted) == (0, 1, "connection refused")
    assert spool.pending() == [unit(0)]


def test_a_refused_line_is_dropped_and_counted(spool: TrialSpool) -> None:
    spool.append(unit(0))
    report = spool.flush(lambda u: Outcome.MISMATCHED, (Unreachable,))
    assert (report.mismatched, report.left) == (1, 0)
    assert not spool.path.exists()
