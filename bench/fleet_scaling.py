"""Fleet scaling: generation wall time for 1, 2, 4, 8 and 16 agents sharing one PostgreSQL study.

A throwaway PostgreSQL cluster (``kloros_orchestrator.testing.postgres``, as the fleet tests start
it: Unix socket only, as ``nobody`` when root) holds one study per agent count. Each agent is a
thread with its own connection pool over the real ``fleet.pgstore.FleetStore`` (configured as
``open_fleet_store`` configures it: autocommit, the pool's connection check on every borrow) and
runs the loop a daemon will: claim one work unit (``SELECT … FOR UPDATE SKIP LOCKED`` under a
lease), measure it (its own stock trial and the candidate's, in a random interleaved order), then
``complete_unit`` (both trial rows and the unit's completion in one transaction), until nothing is
left to claim. The evaluator is fake: a trial is a fixed sleep (``--trial-ms``, 50 ms by default),
standing in for stress-ng; the sleep is the simulated work, so agents overlap as hosts would.

One agent is the leader: all agents race for the study's advisory lock (``fleet.leader``) before
the first generation; the winner checks it still holds the lock and creates each generation
(candidates × rounds work units) and the others start claiming once it exists. A generation's wall
time runs from the moment all agents are released to the last ``complete_unit`` returning; it
includes creating the generation. Speed-up at N agents is the median 1-agent time over the median
N-agent time (goal from the issue: ≥ 0.8·N up to 8 agents).

**Statements per trial** are counted two ways:

* *client*: every statement the agents' pools send, counted in psycopg (``fleet_counting``): a cursor counts
  ``execute`` calls, and each row of an ``executemany`` (one server-side execution each, sent in
  one pipeline); a connection subclass counts the ``BEGIN`` and ``COMMIT``/``ROLLBACK`` of
  ``transaction()``; the pool's empty check query on each borrow counts as one. The leader's lock
  connection is outside the pools and not in this figure.
* *server*: ``pg_stat_statements`` calls in the benchmark's database, when the server has the
  module (Debian's package does; the benchmark's cluster preloads it): every top-level statement
  of every session, the leader's lock check included; empty queries are not statements there.

After every generation the store is checked: every unit done exactly once (one claim each), two
trial rows per unit. Faults (expired leases, takeovers, outages) are the fleet tests' business,
not this benchmark's. The agents sleep, so they overlap even on a small machine, but the database,
the agents' Python and anything else running share its CPUs: figures from a busy host are noisy.

Run: ``.venv/bin/python bench/fleet_scaling.py [--quick]``; writes ``bench/results/fleet_scaling.json``
(the full mode also ``fleet_scaling_full.json``).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import psycopg
from benchlib import (
    GoalResult,
    command_line,
    goal_rows_markdown,
    goals_payload,
    machine_info,
    machine_line,
    write_json,
)
from fleet_counting import CountingConnection, StatementCounter, counting_pool
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

from kloros_orchestrator.fleet.key import StudyKey
from kloros_orchestrator.fleet.leader import LeaderLock
from kloros_orchestrator.fleet.pgstore import FleetStore
from kloros_orchestrator.fleet.records import Outcome, TrialRow, UnitResult
from kloros_orchestrator.testing.postgres import Cluster, PostgresUnavailable, find_server, throwaway_cluster

GOAL_EFFICIENCY = 0.8  # speed-up ≥ 0.8·N ...
GOAL_UP_TO = 8  # ... for N up to 8 agents
LEASE_S = 300.0  # longer than any generation here: no claim expires, no renewal is due
WAIT_S = 600.0  # bound on every wait for another thread
KEY = StudyKey(
    domain="bench",
    knob_space_hash="0" * 64,
    cpu_model="fake",
    cpu_count=2,
    memory_gib=1,
    kernel="bench",
    stress_ng_version="none",
)


# --- agents ------------------------------------------------------------------------------------------


@dataclass
class Agent:
    """One simulated host: its pool, store, lock session and statement counter."""

    name: str
    dsn: str
    study_id: int
    rng: np.random.Generator
    counter: StatementCounter = field(default_factory=StatementCounter)
    pool: ConnectionPool[CountingConnection] | None = None
    lock: LeaderLock | None = None

    def open(self) -> None:
        self.pool = counting_pool(self.dsn, self.counter, self.name)
        self.lock = LeaderLock(self.dsn, self.study_id)

    @property
    def store(self) -> FleetStore:
        assert self.pool is not None
        return FleetStore(self.pool)  # type: ignore[arg-type]  # a pool of a Connection subclass

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
        if self.pool is not None:
            self.pool.close()


@dataclass
class AgentRun:
    units: int = 0
    end: float | None = None  # time.monotonic() when its last complete_unit returned
    error: str | None = None


def measure(agent: Agent, cand_id: str, trial_s: float) -> tuple[TrialRow, ...]:
    """The fake evaluator: the unit's two trials, stock and candidate in a random order."""
    rows = []
    for arm in agent.rng.permutation(["stock", "candidate"]):
        time.sleep(trial_s)  # the simulated trial (stress-ng's run), not a wait for anything
        value = float(agent.rng.normal(100.0, 3.0))
        rows.append(TrialRow(regime="bench", arm=str(arm), ok=True, kpis={"throughput_ops": value}))  # type: ignore[arg-type]
    return tuple(rows)


def work(agent: Agent, generation: int, trial_s: float, run: AgentRun) -> None:
    """Claim → measure → complete until nothing is claimable."""
    store = agent.store
    while units := store.claim(agent.study_id, agent.name, lease_s=LEASE_S, limit=1):
        unit = units[0]
        result = UnitResult(
            study_id=unit.study_id,
            generation=unit.generation,
            cand_id=unit.cand_id,
            round=unit.round,
            host=agent.name,
            trials=measure(agent, unit.cand_id, trial_s),
            finished_at=time.time(),
        )
        outcome = store.complete_unit(result)
        if outcome is not Outcome.WRITTEN:
            raise RuntimeError(f"unit {unit.cand_id}/{unit.round} of generation {generation}: {outcome}")
        run.units += 1
        run.end = time.monotonic()


def agent_generation(
    agent: Agent, leader: bool, generation: int, plan: Plan, start: threading.Barrier,
    created: threading.Event, run: AgentRun,
) -> None:  # fmt: skip
    """One agent's part of one generation (a thread): the leader creates it, everyone works."""
    try:
        start.wait(timeout=WAIT_S)
        if leader:
            assert agent.lock is not None
            if not agent.lock.held():
                raise RuntimeError(f"{agent.name} lost the leader lock")
            made = agent.store.create_generation(
                agent.study_id,
                generation,
                plan.candidate_genomes(),
                rounds=plan.rounds,
                created_by=agent.name,
            )
            if not made:
                raise RuntimeError(f"generation {generation} existed already")
            created.set()
        elif not created.wait(timeout=WAIT_S):
            raise RuntimeError("the leader created no generation")
        work(agent, generation, plan.trial_s, run)
    except Exception as e:  # reported by the main thread, which fails the benchmark
        run.error = f"{agent.name}: {type(e).__name__}: {e}"
        created.set()  # no agent waits for a leader that failed
        start.abort()


# --- one generation, one agent count, the whole run ---------------------------------------------------


@dataclass(frozen=True)
class Plan:
    agents: tuple[int, ...]
    candidates: int
    rounds: int
    repeats: int  # generations per agent count
    trial_s: float
    seed: int

    @property
    def units(self) -> int:
        return self.candidates * self.rounds

    @property
    def trials(self) -> int:
        return 2 * self.units  # each unit: the host's stock trial and the candidate's

    def candidate_genomes(self) -> dict[str, dict[str, Any]]:
        return {f"c{i}": {"bench.knob": i} for i in range(self.candidates)}


@dataclass
class GenerationRun:
    agents: int
    generation: int
    wall_s: float
    units_per_agent: list[int]
    client: dict[str, int]  # statements by kind, all agents' pools
    server: int | None  # pg_stat_statements calls in the database; None without the module


def server_statements(observer: psycopg.Connection[TupleRow] | None) -> int | None:
    if observer is None:
        return None
    row = observer.execute(
        "SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
        " WHERE d.datname = current_database() AND s.query NOT LIKE '%pg_stat_statements%'"
    ).fetchone()
    return None if row is None else int(row[0])


def verify(conn: psycopg.Connection[TupleRow], study_id: int, generation: int, plan: Plan) -> None:
    """Every unit done exactly once (one claim each), two trial rows per unit."""
    row = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE state = 'done'), min(claims), max(claims),"
        " (SELECT count(*) FROM trials t WHERE t.study_id = %s AND t.generation = %s)"
        " FROM work_units WHERE study_id = %s AND generation = %s",
        (study_id, generation, study_id, generation),
    ).fetchone()
    expected = (plan.units, plan.units, 1, 1, plan.trials)
    if row is None or tuple(row) != expected:
        raise RuntimeError(
            f"generation {generation}: (units, done, claims min/max, trials) {row} != {expected}"
        )


def run_generation(
    agents: Sequence[Agent], leader: int, generation: int, plan: Plan, observer: psycopg.Connection[TupleRow],
    counting: bool,
) -> GenerationRun:  # fmt: skip
    if counting:
        observer.execute("SELECT pg_stat_statements_reset()")
    for agent in agents:
        agent.counter.take()  # nothing from before the generation
    start = threading.Barrier(len(agents) + 1)
    created = threading.Event()
    runs = [AgentRun() for _ in agents]
    threads = [
        threading.Thread(
            target=agent_generation,
            args=(agent, i == leader, generation, plan, start, created, runs[i]),
            name=agent.name,
            daemon=True,
        )
        for i, agent in enumerate(agents)
    ]
    for t in threads:
        t.start()
    start.wait(timeout=WAIT_S)
    t0 = time.monotonic()
    for t in threads:
        t.join(timeout=WAIT_S)
    errors = [r.error for r in runs if r.error] + [f"{t.name} still running" for t in threads if t.is_alive()]
    ends = [r.end for r in runs if r.end is not None]
    if errors or not ends:
        raise RuntimeError("; ".join(errors) or "no unit was completed")
    wall = max(ends) - t0
    client: Counter[str] = Counter()
    for agent in agents:
        client += agent.counter.take()
    server = server_statements(observer if counting else None)
    verify(observer, agents[0].study_id, generation, plan)
    return GenerationRun(len(agents), generation, wall, [r.units for r in runs], dict(client), server)


def elect(agents: Sequence[Agent]) -> int:
    """All agents race for the leader lock at once; exactly one must win. Returns its index."""
    won = [False] * len(agents)

    def attempt(i: int) -> None:
        lock = agents[i].lock
        assert lock is not None
        won[i] = lock.try_acquire()

    threads = [threading.Thread(target=attempt, args=(i,), daemon=True) for i in range(len(agents))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=WAIT_S)
    if sum(won) != 1:
        raise RuntimeError(f"{sum(won)} agents hold the leader lock, not one")
    return won.index(True)


def run_agents(cluster: Cluster, n: int, plan: Plan, counting: bool) -> list[GenerationRun]:
    """``plan.repeats`` generations with ``n`` agents, in a database of their own."""
    name = cluster.new_database()
    dsn = cluster.dsn(name)
    agents: list[Agent] = []
    try:
        with psycopg.connect(dsn, autocommit=True) as observer:
            if counting:
                observer.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            with ConnectionPool(dsn, min_size=1, max_size=1, kwargs={"autocommit": True}) as setup_pool:
                setup = FleetStore(setup_pool)
                setup.migrate()
                study_id = setup.join_study(f"bench-{n}", KEY).study_id
            agents = [
                Agent(f"agent{i:02d}", dsn, study_id, np.random.default_rng([plan.seed, n, i]))
                for i in range(n)
            ]
            for agent in agents:
                agent.open()
            leader = elect(agents)
            return [run_generation(agents, leader, g, plan, observer, counting) for g in range(plan.repeats)]
    finally:
        for agent in agents:
            agent.close()
        cluster.drop_database(name)


# --- figures -----------------------------------------------------------------------------------------


@dataclass
class Scaling:
    """One agent count's figures over its generations."""

    agents: int
    walls_s: list[float]
    median_wall_s: float
    ideal_wall_s: float  # the trials' sleep alone, split evenly: trials × trial_s / N
    speedup: float  # median 1-agent wall / median N-agent wall
    efficiency: float  # speed-up / N
    overhead_ms_per_unit: float  # median wall × N / units − 2 trials' sleep
    client_per_trial: float
    client_per_trial_by_kind: dict[str, float]
    server_per_trial: float | None
    units_per_agent_min: int
    units_per_agent_max: int


def summarise(runs: Sequence[GenerationRun], plan: Plan, one_agent_wall: float) -> Scaling:
    n = runs[0].agents
    walls = [r.wall_s for r in runs]
    median = statistics.median(walls)
    trials = plan.trials * len(runs)
    client: Counter[str] = Counter()
    for r in runs:
        client.update(r.client)
    servers = [r.server for r in runs]
    server = None if any(s is None for s in servers) else sum(s or 0 for s in servers) / trials
    speedup = one_agent_wall / median
    return Scaling(
        agents=n,
        walls_s=walls,
        median_wall_s=median,
        ideal_wall_s=plan.trials * plan.trial_s / n,
        speedup=speedup,
        efficiency=speedup / n,
        overhead_ms_per_unit=1000 * (median * n / plan.units - 2 * plan.trial_s),
        client_per_trial=sum(client.values()) / trials,
        client_per_trial_by_kind={k: v / trials for k, v in sorted(client.items())},
        server_per_trial=server,
        units_per_agent_min=min(min(r.units_per_agent) for r in runs),
        units_per_agent_max=max(max(r.units_per_agent) for r in runs),
    )


def markdown(rows: Sequence[Scaling], plan: Plan) -> str:
    lines = [
        f"{plan.candidates} candidates × {plan.rounds} rounds = {plan.units} units ({plan.trials} trials of "
        f"{1000 * plan.trial_s:.0f} ms) per generation, {plan.repeats} generations per agent count",
        "",
        "| agents | generation wall, median [min, max] | ideal | speed-up | per agent | overhead/unit "
        "| statements/trial (client) | (server) | units per agent |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in rows:
        server = "absent" if s.server_per_trial is None else f"{s.server_per_trial:.2f}"
        lines.append(
            f"| {s.agents} | {s.median_wall_s:.2f} s [{min(s.walls_s):.2f}, {max(s.walls_s):.2f}] "
            f"| {s.ideal_wall_s:.2f} s | {s.speedup:.2f}× | {s.efficiency:.2f} "
            f"| {s.overhead_ms_per_unit:.1f} ms "
            f"| {s.client_per_trial:.2f} | {server} | {s.units_per_agent_min}–{s.units_per_agent_max} |"
        )
    kinds = rows[0].client_per_trial_by_kind
    lines += [
        "",
        "Client statements per trial by kind (1 agent): "
        + ", ".join(f"{k} {v:.2f}" for k, v in kinds.items()),
    ]
    return "\n".join(lines)


def goals(rows: Sequence[Scaling], plan: Plan, quick: bool, cmd: str) -> list[GoalResult]:
    judged = [s for s in rows if 1 < s.agents <= GOAL_UP_TO]
    worst = min(judged, key=lambda s: s.efficiency - GOAL_EFFICIENCY) if judged else None
    scope = f"quick: {', '.join(str(s.agents) for s in rows)} agents" if quick else f"N ≤ {GOAL_UP_TO} judged"
    out = [
        GoalResult(
            "fleet scaling",
            f"speed-up of a generation's wall time at N agents ({scope}; {plan.units} units of "
            f"2 × {1000 * plan.trial_s:.0f} ms)",
            ", ".join(f"N={s.agents}: {s.speedup:.2f}× ({s.efficiency:.2f}·N)" for s in rows if s.agents > 1),
            f"≥ {GOAL_EFFICIENCY}·N up to {GOAL_UP_TO} agents",
            None if worst is None else all(s.efficiency >= GOAL_EFFICIENCY for s in judged),
            "" if worst is None else f"worst N={worst.agents}: {worst.efficiency - GOAL_EFFICIENCY:+.2f}·N",
            cmd,
        )
    ]
    server = rows[-1].server_per_trial
    out.append(
        GoalResult(
            "fleet scaling",
            f"database statements per trial (N={rows[-1].agents}; client: counted in psycopg, "
            "server: pg_stat_statements)",
            f"client {rows[-1].client_per_trial:.2f}, server "
            + ("absent" if server is None else f"{server:.2f}"),
            "reported (no goal)",
            None,
            "",
            cmd,
        )
    )
    return out


def absent(reason: str, quick: bool, machine: dict[str, Any]) -> int:
    print(f"fleet scaling: not measured: {reason}")
    cmd = command_line()
    rows = [
        GoalResult("fleet scaling", figure, f"absent: {reason}", goal, None, "", cmd)
        for figure, goal in (
            (
                "speed-up of a generation's wall time at N agents",
                f"≥ {GOAL_EFFICIENCY}·N up to {GOAL_UP_TO} agents",
            ),
            ("database statements per trial", "reported (no goal)"),
        )
    ]
    payload = {
        "schema": "bench.fleet_scaling.v1",
        "mode": "quick" if quick else "full",
        "command": cmd,
        "machine": machine,
        "absent": reason,
        "goals": goals_payload(rows),
    }
    print(f"wrote {write_json('fleet_scaling', payload)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="fleet generation wall time for 1..16 agents on one PostgreSQL")
    ap.add_argument("--quick", action="store_true", help="1, 2 and 4 agents, a small generation (seconds)")
    ap.add_argument("--trial-ms", type=float, default=50.0, help="the fake trial's duration (default 50)")
    ap.add_argument("--seed", type=int, default=20260514)
    args = ap.parse_args(argv)
    plan = Plan(
        agents=(1, 2, 4) if args.quick else (1, 2, 4, 8, 16),
        candidates=8 if args.quick else 16,
        rounds=4 if args.quick else 10,
        repeats=2 if args.quick else 3,
        trial_s=args.trial_ms / 1000.0,
        seed=args.seed,
    )
    machine = machine_info()
    print(machine_line(machine), flush=True)
    try:
        server = find_server()
    except PostgresUnavailable as e:  # nothing measured: the figures are absent, and say why
        return absent(str(e), args.quick, machine)
    counting = (server.bindir.parent / "lib" / "pg_stat_statements.so").exists()
    settings = ("shared_preload_libraries=pg_stat_statements",) if counting else ()
    t0 = time.monotonic()
    runs: dict[int, list[GenerationRun]] = {}
    with throwaway_cluster(server, settings) as cluster:
        for n in plan.agents:
            runs[n] = run_agents(cluster, n, plan, counting)
            print(f"  fleet scaling: {n} agents, walls {[round(r.wall_s, 2) for r in runs[n]]} s", flush=True)
    elapsed = time.monotonic() - t0
    one = statistics.median(r.wall_s for r in runs[1])
    rows = [summarise(runs[n], plan, one) for n in plan.agents]
    cmd = command_line()
    print(markdown(rows, plan))
    goal_rows = goals(rows, plan, args.quick, cmd)
    print()
    print(goal_rows_markdown(goal_rows))
    print(f"\nfleet scaling: {elapsed:.0f} s wall")
    payload = {
        "schema": "bench.fleet_scaling.v1",
        "mode": "quick" if args.quick else "full",
        "command": cmd,
        "machine": machine,
        "plan": asdict(plan),
        "statement_counts": {
            "client": "psycopg cursor/connection subclasses in every agent's pool (executemany: one per row; "
            "BEGIN and COMMIT; the pool's empty check query on each borrow); the leader lock's own "
            "session not included",
            "server": "pg_stat_statements calls in the benchmark's database (top-level statements of every "
            "session, the leader's lock check included; empty queries excluded)"
            if counting
            else None,
        },
        "elapsed_s": elapsed,
        "scaling": [asdict(s) for s in rows],
        "generations": [asdict(r) for n in plan.agents for r in runs[n]],
        "goals": goals_payload(goal_rows),
    }
    print(f"wrote {write_json('fleet_scaling', payload)}")
    if not args.quick:
        print(f"wrote {write_json('fleet_scaling_full', payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
