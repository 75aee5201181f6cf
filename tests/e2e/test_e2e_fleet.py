"""A fleet end to end: three real daemons (own state_dir and temporary sysfs_root each, a generic
domain with 1 s stress-ng trials) pointed at one throwaway PostgreSQL complete generations together;
one is SIGKILLed mid-unit and the generation still completes with every unit measured exactly once
(its lease expires and another host re-claims the unit); PostgreSQL is stopped and started again
mid-generation and no trial row is lost or duplicated (a unit finished meanwhile is spooled: the
database comes back only once a host's status shows it in the spool)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_helpers import Notify, query, start_daemon

from kloros_orchestrator.testing.postgres import Cluster, PostgresUnavailable, find_server, throwaway_cluster

pytestmark = pytest.mark.e2e

DOMAIN = "fleetdom"
KNOB = "proc/sys/kernel/klr_fleet_load"
REGIMES = ("idle", "normal", "stress", "mixed")
HOSTS = ("e2e-a", "e2e-b", "e2e-c")
ROWS_PER_UNIT = 2 * len(REGIMES)  # candidate and stock arm, every regime
LEASE_S = 30  # the smallest lease the configuration allows


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    pytest.importorskip("psycopg", reason="psycopg is missing: install the 'fleet' extra")
    try:
        server = find_server()
    except PostgresUnavailable as e:
        pytest.skip(str(e))
    with throwaway_cluster(server) as c:
        yield c


def _config(workdir: Path, host: str, uri: str) -> Path:
    d = workdir / host
    (d / "root" / KNOB).parent.mkdir(parents=True)
    (d / "root" / KNOB).write_text("20\n")
    regimes = d / "regimes"
    regimes.mkdir()
    cpu = "{duration: 1, stressors: [{name: cpu, instances: 1, options: {cpu-load: 20}}]}"
    (regimes / f"{DOMAIN}.yaml").write_text("".join(f"{r}: {cpu}\n" for r in REGIMES))
    cfg = {
        "state_dir": str(d / "state"),
        "socket": str(d / "k.sock"),
        "sysfs_root": str(d / "root"),
        "regimes_dir": str(regimes),
        "seed": 7,
        "dream": {
            "domains": [DOMAIN],
            "population": 2,
            "trials": 2,
            "min_trials": 2,
            "trial_seconds": 1,
            "first_look_seconds": None,
            "pacing": {"min_sleep_s": 0, "max_sleep_s": 1},
            "contamination": {"outside_cpu": 1.0},  # other work on the machine: see e2e_helpers
        },
        "phase": {"window": {"start": "now+3600", "duration": 600}},
        "study": {
            "store": uri,
            "name": "e2e",
            "host_id": host,
            "lease_seconds": LEASE_S,
            "heartbeat_seconds": 2,
        },
        "domain_options": {
            DOMAIN: {
                "kind": "generic",
                "knobs": {"load": {"type": "int", "low": 10, "high": 90, "path": KNOB}},
            }
        },
    }
    path = d / "dream.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _rows(cluster: Cluster, db: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(cluster.dsn(db)) as conn:
        return list(conn.execute(sql).fetchall())


def _until(what: str, timeout: float, probe: Callable[[], Any]) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = probe()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:g} s: {what}")


def _fleet(workdir: Path, host: str) -> dict[str, Any]:
    fleet: dict[str, Any] = query(str(workdir / host / "k.sock"), {"cmd": "status"})["status"]["fleet"]
    return fleet


def _generations(cluster: Cluster, db: str) -> list[tuple[Any, ...]]:
    try:
        return _rows(cluster, db, "SELECT generation, concluded_by FROM generations ORDER BY generation")
    except Exception:  # the schema may not exist yet
        return []


def test_three_daemons_share_generations_through_a_kill_and_a_database_restart(
    workdir: Path, cluster: Cluster
) -> None:
    db = cluster.new_database()
    uri = f"postgresql://fleet@/{db}?host={cluster.root}&port=5432"
    cfgs = {h: _config(workdir, h, uri) for h in HOSTS}
    notes = {h: Notify() for h in HOSTS}
    procs = {h: start_daemon(cfgs[h], notes[h]) for h in HOSTS}
    try:
        for h in HOSTS:
            notes[h].wait_for(lambda m: "READY=1" in m, 30, f"READY=1 from {h}")
        # Generation 0, together: concluded once every unit is in, by whoever leads.
        _until("generation 0 concluded", 60, lambda: len(_generations(cluster, db)) >= 2)
        st = _fleet(workdir, HOSTS[0])
        assert st["studies"][DOMAIN]["hosts_alive"] == 3 and st["name"] == "e2e", st
        assert "fleet@" in st["store"]
        # Generation 1: SIGKILL a host in the middle of a unit.
        claimed = (
            "SELECT claimed_by, cand_id, round FROM work_units WHERE generation = 1 AND state = 'claimed'"
        )
        victim = _until("a unit of generation 1 claimed", 30, lambda: _rows(cluster, db, claimed))[0]
        os.killpg(procs[victim[0]].pid, signal.SIGKILL)
        procs[victim[0]].wait()
        # The database goes away while another host measures, and comes back once that host has
        # spooled the unit it finished meanwhile.
        alive = [h for h in HOSTS if h != victim[0]]
        _until("another host measuring a unit", 60, lambda: any(
            _fleet(workdir, h)["units"]["in_hand"] is not None for h in alive))  # fmt: skip
        cluster.stop()
        _until("a daemon saying the database is unreachable", 30, lambda: any(
            not _fleet(workdir, h)["database"]["reachable"] for h in alive))  # fmt: skip
        _until("a finished unit spooled", 90, lambda: any(_fleet(workdir, h)["spool"] >= 1 for h in alive))
        cluster.start()
        _until("generation 1 concluded", LEASE_S + 60, lambda: len(_generations(cluster, db)) >= 3)
        for h in alive:
            procs[h].send_signal(signal.SIGTERM)
            assert procs[h].wait(timeout=20) == 0, h
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for n in notes.values():
            n.close()
    units = _rows(cluster, db, "SELECT generation, cand_id, round, state, done_by, claims FROM work_units"
                  " WHERE generation <= 1 ORDER BY 1, 2, 3")  # fmt: skip
    assert units and all(u[3] == "done" for u in units), units
    assert len({u[4] for u in units if u[0] == 0}) >= 2, "generation 0 was shared"
    lost = next(u for u in units if (u[0], u[1], u[2]) == (1, victim[1], victim[2]))
    assert lost[4] != victim[0] and lost[5] >= 2, f"the killed host's unit re-claimed elsewhere: {lost}"
    per_unit = _rows(cluster, db, "SELECT generation, cand_id, round, count(*), count(DISTINCT host)"
                     " FROM trials WHERE generation <= 1 GROUP BY 1, 2, 3")  # fmt: skip
    assert len(per_unit) == len(units), "every unit has its trial rows"
    assert all(n == ROWS_PER_UNIT and hosts == 1 for *_, n, hosts in per_unit), per_unit
    for h in HOSTS:
        spool = workdir / h / "state" / "fleet" / "spool.jsonl"
        assert h == victim[0] or not spool.exists(), f"{h} left spooled units: {spool.read_text()}"
    cluster.drop_database(db)
