"""A fleet end to end: three real daemons (own state_dir and temporary sysfs_root each, a generic
domain with 1 s stress-ng trials) pointed at one throwaway PostgreSQL complete generations together;
one is SIGKILLed mid-unit and the generation still completes with every unit measured exactly once
(its lease expires and another host re-claims the unit); PostgreSQL is stopped and started again
mid-generation and no trial row is lost or duplicated (a unit finished meanwhile is spooled: the
database comes back only once a host's status shows it in the spool).

PHASE across the fleet: once every host holds the study's newest hall of fame, ``phase-now`` on all
three; each host shares its run, then records exactly one verdict over the three hosts, the same on
every host, on exactly the hall of fame's variants, and adopts (``promotion: auto``) iff it says so.

A leader SIGKILLed as soon as its generation's last unit is done (before, during or right after its
conclusion): the generation is concluded once, the next created once with it, and the two hosts
left conclude that next one; meanwhile a second domain has its own study, generations and leader.

Each host names itself in its connection string (``application_name``), so the test can ask the
server which host holds a study's leader lock."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_helpers import Notify, query, start_daemon

from kloros_orchestrator.fleet.records import genome_digest
from kloros_orchestrator.testing.postgres import Cluster, PostgresUnavailable, find_server, throwaway_cluster

pytestmark = pytest.mark.e2e

DOMAIN = "fleetdom"
KNOB = "proc/sys/kernel/klr_fleet_load"
OTHER = "fleetdom2"  # a second domain with a knob of its own: a study of its own
KNOBS = {DOMAIN: ("load", KNOB), OTHER: ("level", "proc/sys/kernel/klr_fleet_level")}
STOCK = 20  # every knob's factory value: the stock arm
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


def _config(
    workdir: Path,
    host: str,
    uri: str,
    *,
    domains: Sequence[str] = (DOMAIN,),
    phase: bool = False,
    rounds: int = 2,
) -> Path:
    """A host's configuration; ``phase``: ``promotion: auto`` and a small PHASE plan of 1 s trials;
    ``rounds``: of each candidate in a generation (its work units)."""
    d = workdir / host
    regimes = d / "regimes"
    regimes.mkdir(parents=True)
    cpu = "{duration: 1, stressors: [{name: cpu, instances: 1, options: {cpu-load: 20}}]}"
    options: dict[str, Any] = {}
    for dom in domains:
        knob, path = KNOBS[dom]
        (d / "root" / path).parent.mkdir(parents=True, exist_ok=True)
        (d / "root" / path).write_text(f"{STOCK}\n")
        (regimes / f"{dom}.yaml").write_text("".join(f"{r}: {cpu}\n" for r in REGIMES))
        options[dom] = {
            "kind": "generic",
            "knobs": {knob: {"type": "int", "low": 10, "high": 90, "path": path}},
        }
    cfg: dict[str, Any] = {
        "state_dir": str(d / "state"),
        "socket": str(d / "k.sock"),
        "sysfs_root": str(d / "root"),
        "regimes_dir": str(regimes),
        "seed": 7,
        "dream": {
            "domains": list(domains),
            "population": 2,
            "trials": rounds,
            "min_trials": rounds,
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
        "domain_options": options,
    }
    if phase:
        cfg["promotion"] = {"mode": "auto"}
        cfg["phase"].update(qtime={"epochs": 1, "slices": 2, "replicas": 2}, trial_seconds=1)
    path = d / "dream.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _uri(cluster: Cluster, db: str, host: str | None = None) -> str:
    named = "" if host is None else f"&application_name={host}"  # pg_stat_activity names the host
    return f"postgresql://fleet@/{db}?host={cluster.root}&port=5432{named}"


def _rows(cluster: Cluster, db: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(cluster.dsn(db)) as conn:
        return list(conn.execute(sql, params).fetchall())


def _until(what: str, timeout: float, probe: Callable[[], Any]) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = probe()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:g} s: {what}")


def _status(workdir: Path, host: str) -> dict[str, Any]:
    status: dict[str, Any] = query(str(workdir / host / "k.sock"), {"cmd": "status"})["status"]
    return status


def _fleet(workdir: Path, host: str) -> dict[str, Any]:
    fleet: dict[str, Any] = _status(workdir, host)["fleet"]
    return fleet


def _events(workdir: Path, host: str) -> list[dict[str, Any]]:
    """The host's events so far (a line still being written is left for the next read)."""
    path = workdir / host / "state" / "logs" / "events.jsonl"
    try:
        lines = path.read_text().split("\n")[:-1]
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def _named(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == name]


@contextlib.contextmanager
def _daemons(cfgs: dict[str, Path]) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """The hosts' daemons, each READY; whichever still runs at the end is SIGKILLed."""
    notes = {h: Notify() for h in cfgs}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for h, cfg in cfgs.items():
            procs[h] = start_daemon(cfg, notes[h])
        for h in cfgs:
            notes[h].wait_for(lambda m: "READY=1" in m, 30, f"READY=1 from {h}")
        yield procs
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for n in notes.values():
            n.close()


def _stop(procs: dict[str, subprocess.Popen[bytes]], hosts: Sequence[str]) -> None:
    for h in hosts:
        procs[h].send_signal(signal.SIGTERM)
    for h in hosts:
        assert procs[h].wait(timeout=20) == 0, h


def _generations(cluster: Cluster, db: str) -> list[tuple[Any, ...]]:
    try:
        return _rows(cluster, db, "SELECT generation, concluded_by FROM generations ORDER BY generation")
    except Exception:  # the schema may not exist yet
        return []


def test_three_daemons_share_generations_through_a_kill_and_a_database_restart(
    workdir: Path, cluster: Cluster
) -> None:
    db = cluster.new_database()
    uri = _uri(cluster, db)
    cfgs = {h: _config(workdir, h, uri) for h in HOSTS}
    with _daemons(cfgs) as procs:
        # Generation 0, together: concluded once every unit is in, by whoever leads.
        _until("generation 0 concluded", 120, lambda: len(_generations(cluster, db)) >= 2)
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
        _stop(procs, alive)
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


# --- PHASE across the fleet ----------------------------------------------------------------------

STOCK_GENOME = {KNOBS[DOMAIN][0]: STOCK}
NEWEST_CONCLUDED = (
    "SELECT g.generation, g.verdict -> 'hall_of_fame', (SELECT count(*) FROM work_units u"
    " WHERE u.study_id = g.study_id AND u.generation = g.generation + 1 AND u.state = 'done')"
    " FROM generations g WHERE g.concluded_at IS NOT NULL ORDER BY g.generation DESC LIMIT 1"
)


def _hall_of_fame_everywhere(cluster: Cluster, db: str, workdir: Path) -> list[dict[str, Any]] | None:
    """The newest concluded generation's hall of fame once every host has taken its verdict, while no
    unit of the next generation is done yet (so none can be concluded before every window opens: a
    window drains the units in hand and nothing is concluded while it is open); None until then, and
    while it holds no variant PHASE would measure (PHASE leaves out a genome equal to the stock)."""
    import psycopg

    try:
        rows = _rows(cluster, db, NEWEST_CONCLUDED)
    except psycopg.errors.UndefinedTable:  # no schema yet
        return None
    if not rows or rows[0][2] or not any(e["genome"] != STOCK_GENOME for e in rows[0][1] or ()):
        return None
    generation, hof, _ = rows[0]
    taken = [_status(workdir, h)["best"].get(DOMAIN, {}).get("generation") for h in HOSTS]
    return list(hof) if taken == [generation] * len(HOSTS) else None


def test_phase_across_the_fleet_one_verdict_over_three_hosts_adopted_per_host(
    workdir: Path, cluster: Cluster
) -> None:
    db = cluster.new_database()
    cfgs = {h: _config(workdir, h, _uri(cluster, db, h), phase=True) for h in HOSTS}
    with _daemons(cfgs) as procs:
        hof = _until("every host holding the study's hall of fame", 240,
                     lambda: _hall_of_fame_everywhere(cluster, db, workdir))  # fmt: skip
        for h in HOSTS:
            assert query(str(workdir / h / "k.sock"), {"cmd": "phase-now"})["ok"] is True
        try:
            for h in HOSTS:
                _until(f"{h}'s fleet PHASE verdict", 300,
                       lambda h=h: _named(_events(workdir, h), "fleet_phase_verdict"))  # fmt: skip
        except AssertionError as e:  # say what each host is waiting for
            raise AssertionError(f"{e}; { ({h: _fleet(workdir, h)['phase'] for h in HOSTS}) }") from None
        phase = {h: _fleet(workdir, h)["phase"][DOMAIN] for h in HOSTS}
        _stop(procs, HOSTS)
    # PHASE measures the hall of fame's best variants (phase.max_variants, 3 by default) but the stock.
    subjects = [genome_digest(e["genome"]) for e in hof if e["genome"] != STOCK_GENOME][:3]
    verdicts = {h: _check_fleet_phase(workdir, h, sorted(subjects), phase[h]) for h in HOSTS}
    first = verdicts[HOSTS[0]]
    for h, v in verdicts.items():  # one verdict, computed by each host from the same rows
        assert v["promoted"] == first["promoted"], (h, v["promoted"], first["promoted"])
        assert v["verdicts"] == first["verdicts"], f"{h} and {HOSTS[0]} disagree on the variants' verdicts"
        assert (v["effect"], v["ci"], v["test"], v["p_value"]) == (
            first["effect"], first["ci"], first["test"], first["p_value"])  # fmt: skip
    cluster.drop_database(db)


def _check_fleet_phase(
    workdir: Path, host: str, subjects: list[str], phase: dict[str, Any]
) -> dict[str, Any]:
    """The host shared its run, then decided once over the three hosts on exactly ``subjects``, said so
    in status, and adopted (``promotion: auto``) iff its decision says it adopts; its verdict event."""
    events = _events(workdir, host)
    kinds = [e["event"] for e in events]
    assert kinds.count("fleet_phase_shared") == 1 and kinds.count("fleet_phase_verdict") == 1, (host, kinds)
    assert kinds.index("fleet_phase_shared") < kinds.index("fleet_phase_verdict"), (host, kinds)
    v = _named(events, "fleet_phase_verdict")[0]
    assert v["domain"] == DOMAIN and v["hosts"] == len(HOSTS), (host, v)
    assert sorted(v["verdicts"]) == subjects, f"{host} judged {sorted(v['verdicts'])}, not {subjects}"
    for digest, fv in v["verdicts"].items():
        assert sorted(he["host"] for he in fv["hosts"]) == sorted(HOSTS), (host, digest, fv["hosts"])
    assert phase["state"] == "decided", (host, phase)
    assert phase["decision"] == {k: v[k] for k in phase["decision"]}, (host, phase, v)
    adopted = _named(events, "adopted")
    assert len(adopted) == (v["adopt"] is True), (host, v["adopt"], v["reason"], adopted)
    for a in adopted:
        prov = a["provenance"]
        assert prov["evidence"].startswith(f"fleet PHASE verdict over {len(HOSTS)} host(s)"), prov
        assert (prov["cand_id"], prov["phase_run_id"]) == (v["promoted"], v["phase_run_id"]), (prov, v)
    return v


# --- a leader killed at its conclusion; two domains, two studies ---------------------------------

LEADER_AT_COMPLETION = """
SELECT g.generation, a.application_name FROM studies s
JOIN generations g ON g.study_id = s.id AND g.concluded_at IS NULL
JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted
    AND l.classid::bigint = %(lock)s AND l.objid::bigint = s.id
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE s.key ->> 'domain' = %(domain)s
    AND EXISTS (SELECT 1 FROM work_units u WHERE u.study_id = s.id AND u.generation = g.generation)
    AND NOT EXISTS (SELECT 1 FROM work_units u WHERE u.study_id = s.id AND u.generation = g.generation
                    AND u.state NOT IN ('done', 'dropped'))
"""


def _leader_at_completion(cluster: Cluster, db: str, domain: str, timeout: float) -> tuple[int, str]:
    """The first generation of the domain's study found with every unit done but not concluded, and
    the host then holding the study's leader lock: the host about to conclude it, or concluding it."""
    import psycopg

    from kloros_orchestrator.fleet.schema import LEADER_LOCK_CLASS

    end = time.monotonic() + timeout
    args = {"lock": LEADER_LOCK_CLASS, "domain": domain}
    with psycopg.connect(cluster.dsn(db), autocommit=True) as conn:  # a fresh pg_locks each query
        while time.monotonic() < end:
            try:
                row = conn.execute(LEADER_AT_COMPLETION, args).fetchone()
            except psycopg.errors.UndefinedTable:  # no schema yet
                row = None
            if row is not None:
                return int(row[0]), str(row[1])
            time.sleep(0.02)
    raise AssertionError(f"not within {timeout:g} s: a complete generation of {domain} and its leader")


def _study_ids(cluster: Cluster, db: str) -> dict[str, int]:
    return {d: int(i) for i, d in _rows(cluster, db, "SELECT id, key ->> 'domain' FROM studies")}


def _concluded(cluster: Cluster, db: str, domain: str, generation: int) -> bool:
    sql = ("SELECT 1 FROM generations g JOIN studies s ON s.id = g.study_id WHERE s.key ->> 'domain' = %s"
           " AND g.generation = %s AND g.concluded_at IS NOT NULL")  # fmt: skip
    return bool(_rows(cluster, db, sql, (domain, generation)))


def test_leader_killed_at_its_conclusion_while_a_second_domain_has_a_study_of_its_own(
    workdir: Path, cluster: Cluster
) -> None:
    db = cluster.new_database()
    # One round per candidate: a generation is two units, so the hosts left soon go on to the next.
    cfgs = {h: _config(workdir, h, _uri(cluster, db, h), domains=(DOMAIN, OTHER), rounds=1) for h in HOSTS}
    with _daemons(cfgs) as procs:
        gen, victim = _leader_at_completion(cluster, db, DOMAIN, 180)
        os.killpg(procs[victim].pid, signal.SIGKILL)
        procs[victim].wait()
        alive = [h for h in HOSTS if h != victim]
        _until(f"generation {gen + 1} of {DOMAIN} concluded by the hosts left", LEASE_S + 180,
               lambda: _concluded(cluster, db, DOMAIN, gen + 1))  # fmt: skip
        _until(f"generation 0 of {OTHER} concluded", 120, lambda: _concluded(cluster, db, OTHER, 0))
        status = _fleet(workdir, alive[0])
        _stop(procs, alive)
    ids = _study_ids(cluster, db)
    _check_one_conclusion(cluster, db, workdir, ids[DOMAIN], gen, victim)
    _check_two_studies(cluster, db, workdir, ids, status)
    cluster.drop_database(db)


def _check_one_conclusion(
    cluster: Cluster, db: str, workdir: Path, study: int, gen: int, victim: str
) -> None:
    """Generation ``gen`` concluded once, the next created in the same transaction (by the same host),
    and the next concluded by a host left; no generation's conclusion recorded twice."""
    rows = _rows(cluster, db, "SELECT generation, created_by, concluded_by FROM generations"
                 " WHERE study_id = %s ORDER BY generation", (study,))  # fmt: skip
    by_gen = {r[0]: r for r in rows}
    print(f"leader {victim} SIGKILLed at generation {gen}: concluded by {by_gen[gen][2]}; {rows}")
    assert by_gen[gen][2] is not None and by_gen[gen + 1][1] == by_gen[gen][2], rows
    alive = set(HOSTS) - {victim}
    assert by_gen[gen + 1][2] in alive, rows
    units = _rows(cluster, db, "SELECT state, done_by, count(*) FROM work_units WHERE study_id = %s"
                  " AND generation = %s GROUP BY 1, 2", (study, gen + 1))  # fmt: skip
    assert units and all(s == "dropped" or (s == "done" and by in alive) for s, by, _ in units), units
    said = [(e["generation"], h) for h in HOSTS for e in _events(workdir, h)
            if e["event"] == "fleet_generation_concluded" and e["domain"] == DOMAIN]  # fmt: skip
    assert len(said) == len({g for g, _ in said}), f"a generation concluded twice: {said}"
    assert all(by_gen[g][2] == h for g, h in said), (said, rows)
    assert (gen + 1, by_gen[gen + 1][2]) in said, said


def _check_two_studies(
    cluster: Cluster, db: str, workdir: Path, ids: dict[str, int], status: dict[str, Any]
) -> None:
    """Each domain its own study (key), generations, work units of its own knob, and leader."""
    assert sorted(ids) == sorted((DOMAIN, OTHER)) and len(set(ids.values())) == 2, ids
    knobs = _rows(cluster, db, "SELECT DISTINCT study_id, jsonb_object_keys(genome) FROM work_units")
    assert sorted(knobs) == sorted((ids[d], KNOBS[d][0]) for d in ids), knobs
    concluded = _rows(cluster, db, "SELECT study_id, count(*) FROM generations"
                      " WHERE concluded_at IS NOT NULL GROUP BY 1")  # fmt: skip
    assert sorted(i for i, _ in concluded) == sorted(ids.values()), concluded
    led = {(e["domain"], e["study_id"]) for h in HOSTS for e in _named(_events(workdir, h), "fleet_leader")
           if e["leader"]}  # fmt: skip
    assert led == set(ids.items()), led
    st = status["studies"]
    assert {d: st[d]["study_id"] for d in st} == ids, st
    assert st[DOMAIN]["key_digest"] != st[OTHER]["key_digest"], st
    assert all(st[d]["generation"] is not None and st[d]["hosts_alive"] >= 1 for d in st), st
