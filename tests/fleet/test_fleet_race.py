"""Racing across a fleet (runtime/fleet_race.py): the race replayed from a generation's rows, each sample
against its own host's stock trials, rounds fed only when complete, and the units it no longer wants
dropped in the real store — never claimed, not counted, a claim in progress losing its lease."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import anyio
import msgspec
import psycopg
import pytest
from test_fleet_runner import TUNE, _query, make_runner
from test_fleet_store import CANDIDATES, KEY, LONG

from kloros_orchestrator.config import RacingConfig
from kloros_orchestrator.fleet.pgstore import FleetStore, open_fleet_store
from kloros_orchestrator.model import TrialResult
from kloros_orchestrator.runtime.fleet_race import drops_for, race_record, replay_race
from kloros_orchestrator.runtime.fleet_work import FleetDreamLoop

REGIMES = ("normal", "stress")
RACING = RacingConfig(indifference=0.02, confidence=0.95)


def rows_for(
    gains: Mapping[str, float], rounds: int, *, host_speed: Mapping[int, float] | None = None
) -> list[dict[str, Any]]:
    """A generation's rows: candidate ``c`` throughput ×(1 + gains[c]) of the stock trial in its unit;
    round ``r`` measured on a host ``host_speed[r]`` times as fast (both arms: its own stock)."""
    out: list[dict[str, Any]] = []
    for r in range(rounds):
        speed = (host_speed or {}).get(r, 1.0)
        for i, (c, gain) in enumerate(gains.items()):
            wobble = 1.0 + 0.01 * ((r + i) % 3 - 1)  # noise, deterministic
            for regime in REGIMES:
                for arm, g in (("stock", 0.0), ("candidate", gain)):
                    tp = 1.0e6 * speed * (1.0 + g) * (wobble if arm == "candidate" else 1.0)
                    kpis = {"throughput_ops": tp, "p95_latency_us": 50.0}
                    who = c if arm == "candidate" else "stock"
                    tr = TrialResult(domain=TUNE, cand_id=who, regime=regime, ok=True, kpis=kpis)
                    out.append({"cand_id": c, "round": r, "host": f"h{r}", "regime": regime, "arm": arm,
                                "ok": True, "kpis": tr.kpis, "result": msgspec.to_builtins(tr)})  # fmt: skip
    return out


def test_a_clearly_worse_candidate_is_eliminated_after_two_rounds_and_its_units_dropped() -> None:
    gains = {"g0c0": 0.10, "g0c1": 0.095, "g0c2": -0.10}
    race = replay_race(rows_for(gains, 2), list(gains), REGIMES, rounds=5, racing=RACING)
    assert race.round == 2 and set(race.eliminated) == {"g0c2"}, race.eliminated
    assert drops_for(race, rounds=5, min_trials=2) == {"g0c2": 0}
    record = race_record(race)
    assert record["rounds"] == 2 and "g0c2" in record["eliminated"] and not record["finished"]


def test_a_round_is_fed_only_once_every_survivor_has_written_it() -> None:
    gains = {"g0c0": 0.10, "g0c1": 0.095, "g0c2": -0.10}
    rows = [r for r in rows_for(gains, 2) if not (r["cand_id"] == "g0c1" and r["round"] == 1)]
    race = replay_race(rows, list(gains), REGIMES, rounds=5, racing=RACING)
    assert race.round == 1 and not race.eliminated  # round 2 is still in a host's hands
    assert drops_for(race, rounds=5, min_trials=2) == {}


def test_samples_are_against_each_units_own_host_so_a_fast_host_does_not_favour_its_candidate() -> None:
    gains = {"g0c0": 0.05, "g0c1": 0.05}
    fast = replay_race(
        rows_for(gains, 3, host_speed={0: 1.3, 1: 0.8, 2: 1.1}), list(gains), REGIMES, rounds=3, racing=RACING
    )
    same = replay_race(rows_for(gains, 3), list(gains), REGIMES, rounds=3, racing=RACING)
    assert fast.means() == pytest.approx(same.means()) and fast.eliminated == same.eliminated


def test_a_race_decided_early_keeps_min_trials_rounds_of_every_candidate() -> None:
    gains = {"g0c0": 0.20, "g0c1": -0.10}
    race = replay_race(rows_for(gains, 2), list(gains), REGIMES, rounds=6, racing=RACING)
    assert race.finished and race.survivors() == ["g0c0"]
    assert drops_for(race, rounds=6, min_trials=3) == {"g0c1": 0, "g0c0": 3}


def test_a_unit_that_breached_a_cap_fails_its_candidate() -> None:
    gains = {"g0c0": 0.10, "g0c1": 0.10, "g0c2": 0.10}
    rows = rows_for(gains, 1)
    for r in rows:
        if r["cand_id"] == "g0c1" and r["arm"] == "candidate" and r["regime"] == "stress":
            r["result"]["cap_breach"] = "temp_c 95 > 90"
    race = replay_race(rows, list(gains), REGIMES, rounds=3, racing=RACING)
    assert race.eliminated["g0c1"].startswith("unsafe: stress: temp_c")


@pytest.fixture
def store(fleet_dsn: str) -> Iterator[FleetStore]:
    s = open_fleet_store(fleet_dsn)
    s.migrate()
    yield s
    s.close()


def test_dropped_units_are_never_claimed_nor_counted_and_a_claim_in_progress_loses_its_lease(
    store: FleetStore,
) -> None:
    from kloros_orchestrator.fleet.generations import create_generation, latest

    study = store.join_study("web", KEY)
    assert create_generation(store, study.study_id, 0, CANDIDATES, rounds=3, created_by="a", engine={})
    [held] = store.claim(study.study_id, "a", lease_s=LONG)  # c0 round 0
    assert store.drop_units(study.study_id, 0, {held.cand_id: 0, "c1": 1}) == 3 + 2
    assert store.drop_units(study.study_id, 0, {held.cand_id: 0, "c1": 1}) == 0, "idempotent"
    assert store.renew([held.unit_id], "a", lease_s=LONG) == set(), "the claim's lease is gone"
    claimed = []
    while units := store.claim(study.study_id, "b", lease_s=LONG):
        claimed.extend((u.cand_id, u.round) for u in units)
    assert (held.cand_id, 0) not in claimed and ("c1", 1) not in claimed and ("c1", 0) in claimed
    info = latest(store, study.study_id)
    assert info is not None and info.counts.dropped == 5 and info.counts.total == 3 * len(CANDIDATES) - 5


async def test_two_runners_race_a_generation_and_drop_what_the_race_no_longer_wants(
    tmp_path: Any, fleet_dsn: str
) -> None:
    loops: list[FleetDreamLoop] = [
        make_runner(tmp_path, fleet_dsn, h, population=6, rounds=5) for h in ("a", "b")
    ]
    try:
        with anyio.fail_after(120):
            while True:
                async with anyio.create_task_group() as tg:
                    for loop in loops:
                        tg.start_soon(loop.tournament, TUNE)
                if _query(fleet_dsn, "SELECT 1 FROM generations WHERE concluded_at IS NOT NULL"):
                    break
    finally:
        for loop in loops:
            loop._close()
    states = dict(_query(fleet_dsn, "SELECT state, count(*) FROM work_units WHERE generation = 0 GROUP BY 1"))
    assert states.get("dropped", 0) > 0 and states.get("open", 0) == states.get("claimed", 0) == 0, states
    [(verdict,)] = _query(fleet_dsn, "SELECT verdict FROM generations WHERE generation = 0")
    race = verdict["race"]
    assert race["eliminated"] or race["finished"], race
    rows = _query(fleet_dsn, "SELECT cand_id, round, count(DISTINCT host) FROM trials GROUP BY 1, 2")
    assert all(hosts == 1 for *_, hosts in rows), "every unit counted once"
    assert len(rows) == states["done"]
    with psycopg.connect(fleet_dsn) as conn:
        dropped = "SELECT cand_id, min(round) FROM work_units WHERE state = 'dropped' GROUP BY 1"
        for cand_id, first in conn.execute(dropped).fetchall():
            assert cand_id in race["eliminated"] or first >= 2, (cand_id, first)
