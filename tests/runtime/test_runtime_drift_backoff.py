"""D-REAM's back-off from knob drift: a tournament stopped by DRIFT_LIMIT knob-drift failures puts its
domain aside for DRIFT_BACKOFF_S, doubling with every further one (capped at DRIFT_BACKOFF_MAX_S) and
reset by a tournament without drift; ``run()`` skips a backed-off domain until the fake clock passes
the end, sleeps until the earliest end when every domain is backed off, and ``status`` shows it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from fakes import (
    START,
    TUNE,
    DreamRig,
    TrialCall,
    dream_config,
    open_cpu_domain,
    open_dream_rig,
    open_tune_domain,
    settle,
)

from kloros_orchestrator.cli import _when, format_status
from kloros_orchestrator.config import PacingConfig
from kloros_orchestrator.runtime.dream import DRIFT_BACKOFF_MAX_S, DRIFT_BACKOFF_S
from kloros_orchestrator.runtime.evaluate import DRIFT_PREFIX
from kloros_orchestrator.runtime.records import Progress, iso
from kloros_orchestrator.runtime.tournament import DRIFT_LIMIT
from kloros_orchestrator.store import read_jsonl

DRIFTED = "/fake/proc/sys/vm/swappiness"
ALL_BACKED_OFF = "every domain is backed off (knob drift or a busy host)"


def drift_text(call: TrialCall) -> str:
    return f"{DRIFT_PREFIX}{DRIFTED}, expected {call.genome.get('swappiness', '?')}, found 60 (#{call.index})"


class Drift:
    """A ``fail`` hook: trials of the domains in ``domains`` fail as knob drift, except the first
    trial of each tournament (so a tournament never fails as a whole and never sits out
    FAILURE_BACKOFF_S: what stops it is drift alone)."""

    def __init__(self, progress: Progress, *domains: str) -> None:
        self.progress = progress
        self.domains = set(domains)
        self.texts: list[str] = []

    def __call__(self, call: TrialCall) -> str | None:
        if call.domain not in self.domains or self.progress.tournament_done == 0:
            return None
        text = drift_text(call)
        self.texts.append(text)
        return text


def tune_rig(tmp_path: Path, **config: object) -> tuple[DreamRig, Drift]:
    rig = open_dream_rig(
        tmp_path / "state", {TUNE: open_tune_domain(tmp_path)}, config=dream_config(**config)
    )
    rig.loop.restore({})
    drift = Drift(rig.progress, TUNE)
    rig.runner.fail = drift
    rig.gate.open()
    return rig, drift


def two_domain_rig(tmp_path: Path, **config: object) -> tuple[DreamRig, Drift]:
    """TUNE (system knobs) and cpu (process knobs only), in that order; only TUNE drifts."""
    domains = {TUNE: open_tune_domain(tmp_path), "cpu": open_cpu_domain(tmp_path)}
    rig = open_dream_rig(tmp_path / "state", domains, config=dream_config(domains=[TUNE, "cpu"], **config))
    rig.loop.restore({})
    drift = Drift(rig.progress, TUNE)
    rig.runner.fail = drift
    rig.gate.open()
    return rig, drift


def ran(rig: DreamRig) -> list[str]:
    """The domain of every tournament started so far, in order."""
    return [domain for name, domain, _ in rig.reports.summary() if name == "tournament_started"]


async def test_a_tournament_stopped_by_drift_backs_its_domain_off_and_records_why(tmp_path: Path) -> None:
    rig, drift = tune_rig(tmp_path)
    with anyio.fail_after(10):
        await rig.loop.tournament(TUNE)

    assert len(rig.runner.calls) == 1 + DRIFT_LIMIT  # one good trial, then drift until the limit
    assert len(drift.texts) == DRIFT_LIMIT
    entry = rig.progress.backoff[TUNE]
    now = rig.clock()
    assert now > START  # the trials took fake time; the back-off counts from the end of the tournament
    assert entry["until_ts"] == now + DRIFT_BACKOFF_S
    assert entry["until"] == iso(now + DRIFT_BACKOFF_S)
    reason = str(entry["reason"])
    assert DRIFTED in reason and drift.texts[-1].removeprefix(DRIFT_PREFIX) in reason
    assert f"{DRIFT_LIMIT} trials failed as knob drift" in reason
    assert f"backing off for {DRIFT_BACKOFF_S:.0f} s" in reason
    assert DRIFT_PREFIX not in reason  # the prefix is stripped from the quoted failure

    [event] = rig.events.named("domain_backoff")
    assert event == {
        "event": "domain_backoff",
        "domain": TUNE,
        "seconds": DRIFT_BACKOFF_S,
        "reason": reason,
        "drift": drift.texts[-3:],
    }
    [logged] = [e for e in read_jsonl(rig.paths.events) if e["event"] == "domain_backoff"]
    assert logged["domain"] == TUNE and logged["seconds"] == DRIFT_BACKOFF_S and logged["ts"] == now
    # The tournament itself still concluded: reported done, checkpointed, next generation.
    assert rig.reports.summary() == [("tournament_started", TUNE, 0), ("tournament_done", TUNE, 0)]
    assert rig.checkpoints == [now] and rig.loop.searches[TUNE].generation == 1
    assert rig.events.named("tournament_all_failed") == []


async def test_each_further_drift_stopped_tournament_doubles_the_back_off_up_to_the_cap(
    tmp_path: Path,
) -> None:
    rig, _ = tune_rig(tmp_path)
    seconds: list[float] = []
    with anyio.fail_after(30):
        for _ in range(8):
            await rig.loop.tournament(TUNE)
            seconds.append(rig.progress.backoff[TUNE]["until_ts"] - rig.clock())
    assert DRIFT_BACKOFF_MAX_S == 6 * 3600.0
    expected = [600.0, 1200.0, 2400.0, 4800.0, 9600.0, 19200.0, DRIFT_BACKOFF_MAX_S, DRIFT_BACKOFF_MAX_S]
    assert [DRIFT_BACKOFF_S * f for f in (1, 2, 4, 8, 16, 32)] == expected[:6]
    assert seconds == expected
    assert [e["seconds"] for e in rig.events.named("domain_backoff")] == expected
    assert "backing off for 21600 s" in rig.progress.backoff[TUNE]["reason"]


async def test_a_tournament_without_drift_resets_the_streak(tmp_path: Path) -> None:
    rig, drift = tune_rig(tmp_path)
    with anyio.fail_after(30):
        await rig.loop.tournament(TUNE)
        await rig.loop.tournament(TUNE)
        assert [e["seconds"] for e in rig.events.named("domain_backoff")] == [600.0, 1200.0]

        drift.domains.clear()  # the other tool stopped
        await rig.loop.tournament(TUNE)
        assert len(rig.events.named("domain_backoff")) == 2  # a clean tournament backs nothing off

        drift.domains.add(TUNE)  # ... and came back: the streak starts over
        await rig.loop.tournament(TUNE)
    assert [e["seconds"] for e in rig.events.named("domain_backoff")] == [600.0, 1200.0, 600.0]
    assert rig.progress.backoff[TUNE]["until_ts"] == rig.clock() + DRIFT_BACKOFF_S


async def test_a_tournament_where_every_trial_drifts_is_backed_off_as_well_as_paused(tmp_path: Path) -> None:
    rig, _ = tune_rig(tmp_path)
    rig.runner.fail = drift_text  # no good trial at all: the tournament also failed as a whole
    finished = anyio.Event()

    async def one() -> None:
        await rig.loop.tournament(TUNE)
        finished.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            failed = await rig.events.wait_for("tournament_all_failed")
            assert failed["domain"] == TUNE and all(r.startswith(DRIFT_PREFIX) for r in failed["reasons"])
            assert len(rig.runner.calls) == DRIFT_LIMIT
            [backoff] = rig.events.named("domain_backoff")
            assert backoff["seconds"] == DRIFT_BACKOFF_S
            assert rig.progress.backoff[TUNE]["until_ts"] == rig.clock() + DRIFT_BACKOFF_S
            await settle()
            assert not finished.is_set()  # the all-failed pause (FAILURE_BACKOFF_S) until a resume
            rig.gate.open()
            await finished.wait()
    with anyio.fail_after(10):
        await rig.loop.run(once=True)
    assert len(rig.runner.calls) == DRIFT_LIMIT  # and afterwards the domain sits out


async def test_drift_below_the_limit_backs_nothing_off(tmp_path: Path) -> None:
    rig, drift = tune_rig(tmp_path)
    limit = DRIFT_LIMIT - 1
    rig.runner.fail = lambda call: drift(call) if len(drift.texts) < limit else None
    with anyio.fail_after(10):
        await rig.loop.tournament(TUNE)
    assert len(drift.texts) == limit and len(rig.runner.calls) > DRIFT_LIMIT + 1  # it went on
    assert rig.progress.backoff == {} and rig.events.named("domain_backoff") == []


async def test_a_backed_off_domain_sits_out_until_the_clock_passes_its_end(tmp_path: Path) -> None:
    rig, drift = two_domain_rig(tmp_path, epochs_per_cycle=2)
    with anyio.fail_after(30):
        await rig.loop.run(once=True)
        # TUNE's first tournament was stopped by drift: its second epoch of the cycle did not start.
        assert ran(rig) == [TUNE, "cpu", "cpu"]
        until = float(rig.progress.backoff[TUNE]["until_ts"])
        tune_done = next(e.now for e in rig.reports.events if e.name == "tournament_done")
        assert until == tune_done + DRIFT_BACKOFF_S > rig.clock()  # counted from TUNE's end, not the cycle's

        drift.domains.clear()
        await rig.loop.run(once=True)  # still backed off: cpu only
        assert ran(rig)[3:] == ["cpu", "cpu"]
        assert TUNE in rig.progress.backoff

        rig.clock.now = until - 0.001  # not yet
        await rig.loop.run(once=True)
        assert ran(rig)[5:] == ["cpu", "cpu"]
        assert rig.progress.backoff[TUNE]["until_ts"] == until

        rig.clock.now = until  # the back-off is over: TUNE runs again and its entry is gone
        await rig.loop.run(once=True)
    assert ran(rig)[7:] == [TUNE, TUNE, "cpu", "cpu"]
    assert rig.progress.backoff == {}
    assert len(rig.events.named("domain_backoff")) == 1
    assert [g for name, d, g in rig.reports.summary() if name == "tournament_started" and d == TUNE] == [
        0, 1, 2
    ]  # fmt: skip


async def test_a_single_backed_off_domain_starts_no_tournament(tmp_path: Path) -> None:
    rig, drift = tune_rig(tmp_path, epochs_per_cycle=3)
    with anyio.fail_after(10):
        await rig.loop.run(once=True)
        assert ran(rig) == [TUNE]  # the second and third epochs of the cycle were skipped
        drift.domains.clear()
        calls = len(rig.runner.calls)
        await rig.loop.run(once=True)
    assert ran(rig) == [TUNE] and len(rig.runner.calls) == calls and len(rig.checkpoints) == 1


async def test_with_every_domain_backed_off_the_loop_sleeps_until_the_earliest_end(tmp_path: Path) -> None:
    rig, drift = two_domain_rig(tmp_path, pacing=PacingConfig(min_sleep_s=1.0, max_sleep_s=5000.0))
    drift.domains.add("cpu")  # both domains drift: both are backed off after one cycle
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: rig.loop.run(once=False))
            paced = await rig.events.wait_for("pacing")
            tune_end = float(rig.progress.backoff[TUNE]["until_ts"])
            cpu_end = float(rig.progress.backoff["cpu"]["until_ts"])
            assert ran(rig) == [TUNE, "cpu"] and tune_end < cpu_end  # TUNE drifted first
            assert paced["reason"] == ALL_BACKED_OFF
            assert paced["sleep_s"] == pytest.approx(tune_end - rig.clock())
            assert DRIFT_BACKOFF_S - 200 < paced["sleep_s"] < DRIFT_BACKOFF_S  # cpu's trials took time
            assert paced["inputs"] == {} and paced["defer_to_window"] is False
            assert rig.progress.pacing["reason"] == ALL_BACKED_OFF
            await settle()
            assert ran(rig) == [TUNE, "cpu"]  # asleep, not spinning through empty cycles

            # Woken early (a resume) with nothing over yet: straight back to sleep, nothing run.
            rig.gate.open()
            again = await rig.events.wait_for("pacing", 2)
            assert again["reason"] == ALL_BACKED_OFF and ran(rig) == [TUNE, "cpu"]

            # TUNE's back-off ends first: it runs again; cpu's turn comes after its own end (TUNE's
            # clean tournament took longer than the gap), then pacing is ordinary again.
            drift.domains.clear()
            rig.clock.now = tune_end
            rig.gate.open()
            third = await rig.events.wait_for("pacing", 3)
            assert ran(rig) == [TUNE, "cpu", TUNE, "cpu"]
            starts = [e.now for e in rig.reports.events if e.name == "tournament_started"]
            assert starts[2] == tune_end and starts[3] >= cpu_end
            assert third["reason"] != ALL_BACKED_OFF and rig.progress.backoff == {}
            tg.cancel_scope.cancel()


def status_with(backoff: dict[str, dict[str, str]], host: dict[str, Any] | None = None) -> dict[str, object]:
    return {
        "state": "dream", "pid": 1, "uptime_s": 5, "version": "x", "domain": TUNE, "generation": 3,
        "tournament": {"done": 0, "total": 0}, "next_window": {}, "last_phase": None, "pacing": {},
        "domains": {TUNE: "ok"}, "counters": {}, "backoff": backoff, "host": host or {},
    }  # fmt: skip


def test_status_shows_a_backed_off_domain_with_its_end_and_reason() -> None:
    until = iso(START + DRIFT_BACKOFF_S)
    assert until is not None
    reason = f"another tool keeps rewriting its knobs (3 trials failed as knob drift; last: {DRIFTED})"
    lines = format_status(status_with({TUNE: {"until": until, "reason": reason}})).splitlines()
    [line] = [x for x in lines if x.startswith("backed off")]
    assert line == f"backed off  {TUNE} until {_when(until)}: {reason}"
    assert _when(until) != "-" and "2026" in line

    host = {"promotion": "manual", "domains": {"memory": {"config": "factory"}}}
    with_host = format_status(status_with({TUNE: {"until": until, "reason": reason}}, host)).splitlines()
    assert with_host[-2:] == ["host        promotion manual; memory=factory", line]

    plain = format_status(status_with({}))
    assert "backed off" not in plain and "host " not in plain
