"""The fleet work runner (runtime/fleet_work.py) against a real PostgreSQL, with fake evaluators:
runners in one process share a generation, each unit measured exactly once; a runner that dies
mid-unit leaves a lease another re-claims once it expires; a stopped runner gives its claim back."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))  # the runtime tests' fakes

from fakes import TUNE, FakeRunner, dream_config, open_tune_domain

from kloros_orchestrator.model import Genome, TrialResult
from kloros_orchestrator.runtime.dream import DreamSettings
from kloros_orchestrator.runtime.fleet_work import FleetDreamLoop, FleetSettings, fleet_status
from kloros_orchestrator.runtime.ports import DreamGate, EventLog
from kloros_orchestrator.runtime.records import Progress
from kloros_orchestrator.spica.base import SpicaDomain
from kloros_orchestrator.status_text import format_status
from kloros_orchestrator.store import StatePaths

REGIMES = ("normal", "stress")
POPULATION, ROUNDS = 3, 2
UNITS = POPULATION * ROUNDS
MANIFEST = {"cpus": 4, "kernel": "6.1.0", "stress_ng_version": "0.15.06", "cpu_model": "m", "memory_gib": 8}


class Barrier:
    """Every runner's first trial waits here until all of them reached theirs: each then holds a
    unit of its own, so the work is shared by construction, whatever the machine's load."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived: set[int] = set()
        self.all_in = anyio.Event()

    async def wait(self, who: int) -> None:
        self.arrived.add(who)
        if len(self.arrived) >= self.parties:
            self.all_in.set()
        await self.all_in.wait()


class SlowRunner(FakeRunner):
    """The fake runner, taking a little real time per trial so that runners really interleave; with
    ``hang`` set, its first trial never returns (a host that stops answering mid-unit); with
    ``barrier`` set, its first trial waits for every runner's first trial."""

    hang: bool = False
    barrier: Barrier | None = None

    async def run_trial(self, domain: SpicaDomain, genome: Genome, regime: str, **kw: Any) -> TrialResult:
        if self.hang:
            await anyio.sleep_forever()
        if self.barrier is not None:
            await self.barrier.wait(id(self))
        await anyio.sleep(0.01)
        return await super().run_trial(domain, genome, regime, **kw)


def make_runner(
    tmp_path: Path,
    dsn: str,
    host: str,
    *,
    lease_s: float = 30.0,
    hang: bool = False,
    barrier: Barrier | None = None,
    population: int = POPULATION,
    rounds: int = ROUNDS,
) -> FleetDreamLoop:
    root = tmp_path / host
    root.mkdir()
    dom = open_tune_domain(root)
    runner = SlowRunner(seed=len(host))
    runner.hang, runner.barrier = hang, barrier
    paths = StatePaths(root / "state")
    gate = DreamGate()
    gate.open()
    loop = FleetDreamLoop(
        DreamSettings(
            dream=dream_config(population=population, trials=rounds), seed=11, n_boot=50,
            regimes={TUNE: REGIMES},
        ),
        fleet=FleetSettings(
            dsn=dsn, name="web", host_id=host, manifest=MANIFEST, lease_s=lease_s, heartbeat_s=0.2,
            poll_s=0.05,
        ),
        domains={TUNE: dom}, evaluator=runner, paths=paths, events=EventLog(paths.events, runner.clock),
        gate=gate, progress=Progress(), report=lambda _e: None, checkpoint=lambda: None,
        time_to_window=lambda: None, clock=runner.clock, run_id=f"run-{host}", stress_ng_version="0.15.06",
    )  # fmt: skip
    loop.restore({})
    return loop


def _query(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return list(conn.execute(sql).fetchall())


@pytest.fixture
def close_all() -> Iterator[list[FleetDreamLoop]]:
    loops: list[FleetDreamLoop] = []
    yield loops
    for loop in loops:
        loop._close()


async def test_three_runners_complete_a_generation_each_unit_measured_once(
    tmp_path: Path, fleet_dsn: str, close_all: list[FleetDreamLoop]
) -> None:
    barrier = Barrier(3)
    loops = [make_runner(tmp_path, fleet_dsn, h, barrier=barrier) for h in ("a", "b", "c")]
    close_all.extend(loops)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for loop in loops:
                tg.start_soon(loop.tournament, TUNE)
    units = _query(
        fleet_dsn, "SELECT cand_id, round, state, done_by, claims FROM work_units WHERE generation = 0"
    )
    assert len(units) == UNITS and all(u[2] == "done" and u[4] == 1 for u in units), units
    assert {u[3] for u in units} == {"a", "b", "c"}, "the work was shared"
    per_unit = _query(
        fleet_dsn, "SELECT cand_id, round, count(*), count(DISTINCT host) FROM trials GROUP BY 1, 2"
    )
    assert len(per_unit) == UNITS and all(n == 2 * len(REGIMES) and hosts == 1 for *_, n, hosts in per_unit)
    assert sum(loop.units_done for loop in loops) == UNITS
    gens = _query(fleet_dsn, "SELECT generation, concluded_by, verdict FROM generations ORDER BY generation")
    assert [g[0] for g in gens] == [0, 1], "the leader concluded generation 0 and created the next"
    leader = next(loop for loop in loops if loop.fleet.host_id == gens[0][1])
    verdict = gens[0][2]
    assert verdict["method"].startswith("fleet/verdict.py") and set(verdict["verdicts"]) == set(
        verdict["told"]
    )
    assert set(verdict["told"]) == {c for c, *_ in units} and set(verdict["hosts"]) == {u[3] for u in units}
    assert leader.progress.best[TUNE]["generation"] == 0
    assert (leader.paths.candidates(TUNE) / "gen0_best.json").exists()
    assert not (leader.paths.root / "fleet" / "staging").exists(), "the artifacts were moved into place"
    others = [loop for loop in loops if loop is not leader]
    assert not any((o.paths.candidates(TUNE) / "gen0_best.json").exists() for o in others)
    status = fleet_status(leader)["fleet"]
    study = status["studies"][TUNE]
    assert study["leader"] is True and study["name"] == "web" and len(study["key_digest"]) == 64
    assert status["database"] == {"reachable": True, "unreachable_since": None} and status["spool"] == 0
    text = format_status({"state": "evolving", "fleet": status})
    assert "database reachable" in text and f"{study['hosts_alive']} host(s) alive, leader, gen 1" in text
    # The study's hall of fame goes with the verdict: every host's PHASE measures the same variants.
    assert verdict["hall_of_fame"] and verdict["hall_of_fame"][0]["generation"] == 0
    for other in others:
        await other._catch_up()  # a heartbeat's part: the newest verdict taken, turn or not
        mine = [(h.cand_id, h.genome) for h in other.searches[TUNE].hall_of_fame]
        assert mine == [(h.cand_id, h.genome) for h in leader.searches[TUNE].hall_of_fame] and mine
        assert other.progress.best[TUNE]["generation"] == 0
        assert other.phase_subjects(4)[TUNE][2].keys() == leader.phase_subjects(4)[TUNE][2].keys()


async def test_a_runner_gone_mid_unit_leaves_a_lease_another_reclaims_after_it_expires(
    tmp_path: Path, fleet_dsn: str, close_all: list[FleetDreamLoop]
) -> None:
    dead = make_runner(tmp_path, fleet_dsn, "dead", lease_s=1.0, hang=True)
    live = make_runner(tmp_path, fleet_dsn, "live", lease_s=30.0)
    close_all.extend([dead, live])

    async def vanish(_unit: Any) -> None:  # a SIGKILLed host tells the database nothing
        return None

    async def never_renew(_unit: Any) -> None:  # nor renews its lease (returning would mean "lost")
        await anyio.sleep_forever()

    dead._release = vanish  # type: ignore[method-assign]
    dead._renew = never_renew  # type: ignore[method-assign]
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(dead.tournament, TUNE)
            while dead.in_hand is None:
                await anyio.sleep(0.01)
            lost = dead.in_hand
            tg.cancel_scope.cancel()
    dead._close()  # its sessions end, like a killed process's: the leader lock moves
    with anyio.fail_after(60):
        await live.tournament(TUNE)
    rows = _query(
        fleet_dsn,
        "SELECT state, done_by, claims FROM work_units"
        f" WHERE generation = 0 AND cand_id = '{lost.cand_id}' AND round = {lost.round}",
    )
    assert rows == [("done", "live", 2)], "re-claimed once the dead host's lease expired"
    units = _query(fleet_dsn, "SELECT state, done_by FROM work_units WHERE generation = 0")
    assert len(units) == UNITS and all(u == ("done", "live") for u in units)
    per_unit = _query(fleet_dsn, "SELECT cand_id, round, count(*) FROM trials GROUP BY 1, 2")
    assert len(per_unit) == UNITS and all(n == 2 * len(REGIMES) for *_, n in per_unit)


async def test_a_stopped_runner_gives_its_claim_back_at_once(
    tmp_path: Path, fleet_dsn: str, close_all: list[FleetDreamLoop]
) -> None:
    loop = make_runner(tmp_path, fleet_dsn, "a", hang=True)
    close_all.append(loop)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(loop.tournament, TUNE)
            while loop.in_hand is None:
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()  # SIGTERM cancels D-REAM like this
    states = _query(fleet_dsn, "SELECT state, claimed_by, claims FROM work_units")
    assert len(states) == UNITS and all(
        s == ("open", None, c) for s, (_, _, c) in zip(states, states, strict=True)
    )
    assert sum(s[2] for s in states) == 1, "one unit was claimed, then released"


async def test_the_fleets_phase_pick_seeds_the_studys_next_generation_once(
    tmp_path: Path, fleet_dsn: str, close_all: list[FleetDreamLoop], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As promoted variants do in a collapse on one host: the leader's next generation is bred with the
    fleet's PHASE pick among its candidates; the verdict records it, so neither this leader nor the
    next one (another host, reading the record from the database) seeds it again."""
    from fakes import TUNE_STOCK

    from kloros_orchestrator.engine import Evolution
    from kloros_orchestrator.fleet.phase_rows import PhaseRun
    from kloros_orchestrator.fleet.records import genome_digest
    from kloros_orchestrator.phase.records import VariantInfo
    from kloros_orchestrator.runtime.fleet_phase import FleetDecision, PendingRun

    injected: list[list[Genome]] = []
    inject = Evolution.inject

    def spy(self: Evolution, genomes: list[Genome]) -> None:
        injected.append([dict(g) for g in genomes])
        inject(self, genomes)

    monkeypatch.setattr(Evolution, "inject", spy)
    a, b = make_runner(tmp_path, fleet_dsn, "a"), make_runner(tmp_path, fleet_dsn, "b")
    close_all.extend([a, b])
    pick: Genome = {**TUNE_STOCK, "swappiness": 7, "dirty_ratio": 33, "qdisc": "fq", "threads": 3}
    variant = VariantInfo(genome=pick, spica_id="spica-p", cand_id="g0c9")
    run = PhaseRun(run_id="phase-a", host="a", domain=TUNE, stock_digest=genome_digest(TUNE_STOCK),
                   finished_at=1.0, variants={}, trials=())  # fmt: skip
    decision = FleetDecision(domain=TUNE, run_id="phase-a", stock=TUNE_STOCK, hosts=2, verdicts={},
                             pick=variant, verdict=None, adoption=None)  # fmt: skip
    with anyio.fail_after(60):
        await a.tournament(TUNE)  # generation 0: nothing decided yet
        for loop in (a, b):  # every host's verdict names the same pick
            loop.phase.decided[TUNE] = PendingRun(run=run, stock=TUNE_STOCK, variants={}, decision=decision)
        await a.tournament(TUNE)  # generation 1 concluded with the decision known
        await a.tournament(TUNE)
        await b.tournament(TUNE)  # b leads now: generation 3
    rows = _query(fleet_dsn, "SELECT generation, verdict, concluded_by FROM generations"
                             " WHERE verdict IS NOT NULL ORDER BY generation")
    verdicts = {g: v for g, v, _ in rows}
    assert [by for *_, by in rows] == ["a", "a", "a", "b"]
    assert verdicts[0]["phase_seeded"] == []
    assert all(verdicts[g]["phase_seeded"] == [genome_digest(pick)] for g in (1, 2, 3)), verdicts
    assert injected == [[pick]], "seeded once, by the first leader that knew the decision"
    genomes = {g: [row[0] for row in _query(fleet_dsn, f"SELECT DISTINCT genome FROM work_units "
                                                       f"WHERE generation = {g} AND round = 0")]
               for g in (1, 2)}  # fmt: skip
    assert pick not in genomes[1] and pick in genomes[2], "seeded into the generation bred after it"


def test_a_pick_that_no_longer_fits_the_space_is_recorded_and_not_tried_again() -> None:
    from kloros_orchestrator.fleet.records import genome_digest
    from kloros_orchestrator.phase.records import VariantInfo
    from kloros_orchestrator.runtime.fleet_phase import FleetDecision, seed_once

    class Engine:  # what seed_once asks of the engine: this one's space has lost a knob
        def __init__(self) -> None:
            self.asked = 0

        def inject(self, genomes: list[Genome]) -> None:
            self.asked += 1
            raise ValueError("knob 'threads' is not in the space")

    pick: Genome = {"swappiness": 7, "threads": 3}
    variant = VariantInfo(genome=pick, spica_id="s", cand_id="g0c9")
    decision = FleetDecision(domain=TUNE, run_id="phase-a", stock={}, hosts=2, verdicts={}, adoption=None,
                             pick=variant, verdict=None)  # fmt: skip
    eng = Engine()
    seeded = seed_once(eng, decision, [])  # type: ignore[arg-type]
    assert seeded == [genome_digest(pick)] and eng.asked == 1
    assert seed_once(eng, decision, seeded) == seeded and eng.asked == 1  # type: ignore[arg-type]
    assert seed_once(eng, None, seeded) == seeded and eng.asked == 1  # type: ignore[arg-type]
