"""PHASE across a fleet (runtime/fleet_phase.py) against a real PostgreSQL: each host's run shared,
the verdict waiting for every host alive (or the window), hosts as blocks, adoption per host by the
HostKeeper in ``promotion: auto``, and nothing lost when the database is away or the daemon stops."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import msgspec
import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))  # the runtime tests' fakes

from fakes import TUNE, TUNE_OPTIONS, TUNE_STOCK, TUNE_TREE, open_tune_domain
from test_fleet_store import KEY

from kloros_orchestrator.cli import main
from kloros_orchestrator.fleet.pgstore import open_fleet_store
from kloros_orchestrator.host.store import HostStore
from kloros_orchestrator.model import STOCK_ARM, Genome
from kloros_orchestrator.phase.records import DomainData, PhaseData, TrialRecord, VariantInfo
from kloros_orchestrator.runtime.fleet_db import FleetDatabase
from kloros_orchestrator.runtime.fleet_phase import FleetDecision, FleetPhase
from kloros_orchestrator.runtime.host_keeper import HostKeeper
from kloros_orchestrator.runtime.ports import EventLog
from kloros_orchestrator.status_text import format_status
from kloros_orchestrator.store import StatePaths
from kloros_orchestrator.testing import write_tree

REPO = Path(__file__).resolve().parents[2]
WINDOW_S = 3600.0
BETTER: Genome = {**TUNE_STOCK, "swappiness": 10}
NEUTRAL: Genome = {**TUNE_STOCK, "swappiness": 30}
VARIANTS = {
    "g3c1": VariantInfo(genome=BETTER, spica_id="spica-b", cand_id="g3c1"),
    "g3c2": VariantInfo(genome=NEUTRAL, spica_id="spica-n", cand_id="g3c2"),
}


def phase_data(effects: dict[str, float], *, seed: int, stock: Genome = TUNE_STOCK) -> PhaseData:
    """A PHASE run of ``TUNE``: 2 epochs × 4 replicas × 2 regimes; each variant's throughput is
    ×(1 + effect) of the stock trial beside it (drift shared within a replica, 2 % noise)."""
    rng = np.random.default_rng(seed)
    trials: list[TrialRecord] = []
    for epoch in range(2):
        for replica in range(4):
            drift = float(np.exp(rng.normal(0.0, 0.05)))
            for regime in ("stress", "mixed"):
                for vid, gain in ((STOCK_ARM, 0.0), *effects.items()):
                    rate = 1.0e6 * drift * (1.0 + gain) * float(np.exp(rng.normal(0.0, 0.02)))
                    trials.append(TrialRecord(
                        epoch=epoch, regime=regime, variant_id=vid, ok=True, replica=replica,
                        kpis={"throughput_ops": rate, "p95_latency_ns": 5.0e4}, stressor_ops={"cpu": rate},
                    ))  # fmt: skip
    variants = {vid: VARIANTS[vid] for vid in effects}
    return PhaseData(domains={TUNE: DomainData(stock=dict(stock), variants=variants, trials=trials)})


class Fleet:
    """Hosts' FleetPhase objects on one study, a shared fake clock, the hosts alive as the study says."""

    def __init__(self, tmp_path: Path, dsn: str, alive: set[str]) -> None:
        self.tmp_path, self.dsn, self.alive, self.now = tmp_path, dsn, alive, 1.0e9
        store = open_fleet_store(dsn)
        try:
            store.migrate()
            self.study_id = store.join_study("web", KEY).study_id
        finally:
            store.close()
        self.phases: list[FleetPhase] = []
        self.decided: dict[str, list[FleetDecision]] = {}
        self.acts: dict[str, list[bool]] = {}

    def host(self, name: str, dsn: str | None = None) -> FleetPhase:
        root = self.tmp_path / name
        events = EventLog(root / "events.jsonl", self.clock)
        db = FleetDatabase(dsn or self.dsn, events=events, clock=self.clock)

        async def study_of(_domain: str) -> tuple[int, set[str]]:
            return self.study_id, set(self.alive)

        p = FleetPhase(db=db, host=name, root=root / "fleet" / "phase", events=events, seed=3, n_boot=200,
                       window_s=WINDOW_S, study_of=study_of, clock=self.clock)  # fmt: skip
        decided, acts = self.decided.setdefault(name, []), self.acts.setdefault(name, [])

        def on_decision(decision: FleetDecision, act: bool) -> None:
            decided.append(decision)
            acts.append(act)

        p.on_decision = on_decision
        self.phases.append(p)
        return p

    def clock(self) -> float:
        return self.now

    def close(self) -> None:
        for p in self.phases:
            p.db.close()


@pytest.fixture
def fleet(tmp_path: Path, fleet_dsn: str) -> Iterator[Fleet]:
    f = Fleet(tmp_path, fleet_dsn, alive={"a", "b", "c"})
    yield f
    f.close()


def events_of(p: FleetPhase) -> list[dict[str, object]]:
    path = p.root.parents[1] / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_the_verdict_waits_for_every_host_then_promotes_what_helps_across_hosts(fleet: Fleet) -> None:
    hosts = {h: fleet.host(h) for h in ("a", "b", "c")}
    for i, (name, p) in enumerate(hosts.items()):
        data = phase_data({"g3c1": 0.06, "g3c2": 0.0}, seed=i)
        p.finished(data, run_id=f"phase-{name}", finished_at=fleet.now)
        await p.sync()
        if name != "c":  # a and b have shared; c has not yet: nobody decides
            why = p.status()[TUNE]["why"]
            assert p.status()[TUNE]["state"] == "waiting" and "of 3 host(s)" in why
            assert why.endswith("not yet: b, c)" if name == "a" else "not yet: c)"), why
            text = format_status({"state": "evolving", "fleet": {"name": "web", "phase": p.status()}})
            assert f"fleet PHASE {TUNE}: waiting for the fleet" in text
            assert not fleet.decided[name]
    for p in hosts.values():
        await p.sync()
    for name, p in hosts.items():
        [decision] = fleet.decided[name]
        assert decision.hosts == 3 and decision.pick is not None and decision.pick.cand_id == "g3c1"
        assert decision.verdict is not None and decision.verdict.promoted, decision.verdict
        assert decision.verdict.effect == pytest.approx(0.06, abs=0.02)
        assert decision.adoption is not None and decision.adoption.adopt and decision.adoption.host == name
        neutral = next(v for d, v in decision.verdicts.items() if d != decision.verdict.cand_id)
        assert not neutral.promoted and neutral.tested == 2, "Bonferroni over the two variants tested"
        assert p.status()[TUNE]["decision"]["promoted"] == "g3c1"
        text = format_status({"state": "evolving", "fleet": {"name": "web", "phase": p.status()}})
        assert f"fleet PHASE {TUNE}: phase-{name} over 3 host(s): promoted g3c1, promoted fleet-wide" in text
        assert len(list(p.root.glob("*.json"))) == 1, "the decision is kept with its run"
        verdicts = [e for e in events_of(p) if e["event"] == "fleet_phase_verdict"]
        assert len(verdicts) == 1 and verdicts[0]["promoted"] == "g3c1"
        await p.sync()  # decided once: nothing more happens
        assert len(fleet.decided[name]) == 1


async def test_a_variant_that_helps_one_host_and_hurts_another_is_not_promoted(fleet: Fleet) -> None:
    fleet.alive = {"a", "b"}
    effects = {"a": 0.10, "b": -0.04}
    hosts = {h: fleet.host(h) for h in effects}
    for i, (name, p) in enumerate(hosts.items()):
        data = phase_data({"g3c1": effects[name]}, seed=10 + i)
        p.finished(data, run_id=f"phase-{name}", finished_at=fleet.now)
        await p.sync()
    await hosts["a"].sync()
    for name in effects:
        [decision] = fleet.decided[name]
        assert decision.pick is None and decision.adoption is None and decision.hosts == 2
        assert "no variant promoted fleet-wide" in decision.summary()["reason"]


async def test_a_lone_host_decides_once_the_window_has_passed_and_alone_promotes_nothing(
    fleet: Fleet,
) -> None:
    p = fleet.host("a")
    p.finished(phase_data({"g3c1": 0.06}, seed=1), run_id="phase-a", finished_at=fleet.now)
    await p.sync()
    assert not fleet.decided["a"] and p.status()[TUNE]["state"] == "waiting"
    fleet.now += WINDOW_S
    await p.sync()
    [decision] = fleet.decided["a"]
    assert decision.hosts == 1 and decision.pick is None  # one host is no fleet evidence (MIN_HOSTS)


async def test_a_run_finished_while_the_database_is_away_is_shared_after_a_restart(
    fleet: Fleet, tmp_path: Path
) -> None:
    away = fleet.host("a", dsn=f"host={tmp_path}/nosock port=5432 dbname=x connect_timeout=1")
    away.finished(phase_data({"g3c1": 0.06}, seed=1), run_id="phase-a", finished_at=fleet.now)
    await away.step()  # unreachable: kept, no error escapes
    assert len(list(away.root.glob("*.json"))) == 1 and not fleet.decided["a"]
    away.db.close()
    fleet.alive = {"a", "b"}
    again = fleet.host("a")  # the daemon restarted (same state_dir) with the database back
    other = fleet.host("b")
    other.finished(phase_data({"g3c1": 0.06}, seed=2), run_id="phase-b", finished_at=fleet.now)
    await again.sync()
    await other.sync()
    await again.sync()
    [decision] = fleet.decided["a"][-1:]
    assert decision.run_id == "phase-a" and decision.hosts == 2 and decision.verdict is not None
    shared = [e for e in events_of(again) if e["event"] == "fleet_phase_shared"]
    assert [e["run_id"] for e in shared] == ["phase-a"]


async def test_a_kept_decision_reaches_the_keeper_after_a_restart_with_the_database_away(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Status and ``apply`` know the decision again at the first heartbeat, even when a newer run
    cannot be shared (the database is down) and the heartbeat's pass ends early."""
    await decision_for(fleet)
    fleet.phases[0].finished(phase_data({"g3c1": 0.06}, seed=5), run_id="phase-a2", finished_at=fleet.now + 1)
    again = fleet.host("a", dsn=f"host={tmp_path}/nosock port=5432 dbname=x connect_timeout=1")
    await again.step()  # unreachable: phase-a2 stays on disk, unshared
    assert [d.run_id for d in fleet.decided["a"]] == ["phase-a", "phase-a"]
    assert fleet.acts["a"] == [True, False]  # known again, not acted on twice
    assert again.pending[TUNE].run.run_id == "phase-a2" and not again.pending[TUNE].uploaded


def keeper_for(tmp_path: Path, mode: str) -> HostKeeper:
    dom = open_tune_domain(tmp_path)
    paths = StatePaths(tmp_path / "state")
    current: dict[str, Genome] = {}
    keeper = HostKeeper(
        store=HostStore(paths), sysfs_root=dom.sysfs_root, mode=mode,  # type: ignore[arg-type]
        events=EventLog(paths.events, time.time), lock=anyio.Lock(), set_current=current.__setitem__,
    )  # fmt: skip
    keeper.fleet = True
    keeper.current = keeper.startup({TUNE: dom})
    return keeper


async def decision_for(fleet: Fleet, stock: Genome = TUNE_STOCK) -> FleetDecision:
    fleet.alive = {"a", "b"}
    for i, name in enumerate(("a", "b")):
        p = fleet.host(name)
        data = phase_data({"g3c1": 0.06}, seed=i, stock=stock)
        p.finished(data, run_id=f"phase-{name}", finished_at=fleet.now)
        await p.sync()
    await fleet.phases[0].sync()
    return fleet.decided["a"][0]


async def test_auto_mode_adopts_the_fleets_pick_with_the_fleets_evidence(
    fleet: Fleet, tmp_path: Path
) -> None:
    decision = await decision_for(fleet)
    keeper = keeper_for(tmp_path, "auto")
    keeper.fleet_decided(decision)
    config = keeper.store.adopted_config(TUNE)
    assert config is not None and config.genome == BETTER and TUNE in keeper.pending
    prov = config.provenance
    assert prov.by == "auto" and prov.phase_run_id == "phase-a" and prov.cand_id == "g3c1"
    assert prov.evidence.startswith("fleet PHASE verdict over 2 host(s)") and "this host:" in prov.evidence
    assert prov.score_ci95 is not None and prov.score_v2 == decision.verdict.effect  # type: ignore[union-attr]


async def test_auto_mode_does_not_adopt_when_the_configuration_changed_since_phase(
    fleet: Fleet, tmp_path: Path
) -> None:
    decision = await decision_for(fleet, stock=NEUTRAL)  # PHASE measured against another configuration
    keeper = keeper_for(tmp_path, "auto")
    keeper.fleet_decided(decision)
    assert keeper.store.adopted_config(TUNE) is None and not keeper.pending


async def test_manual_mode_lists_the_fleets_pick_and_apply_takes_it(fleet: Fleet, tmp_path: Path) -> None:
    decision = await decision_for(fleet)
    keeper = keeper_for(tmp_path, "manual")
    keeper.fleet_decided(decision)
    assert keeper.store.adopted_config(TUNE) is None
    [promo] = keeper.status()["domains"][TUNE]["pending_promotions"]
    assert promo["cand_id"] == "g3c1" and promo["fleet"]["hosts"] == 2 and promo["fleet"]["adopt"] is True
    assert promo["apply"] == f"apply --domain {TUNE} --variant g3c1"
    reply = await keeper.request({"cmd": "apply", "domain": TUNE, "variant": "g3c1"})
    assert reply["ok"] is True, reply
    config = keeper.store.adopted_config(TUNE)
    assert config is not None and config.genome == BETTER and config.provenance.by == "operator"
    assert not config.provenance.forced


async def test_a_host_that_died_after_sharing_does_not_stand_in_for_a_live_one(fleet: Fleet) -> None:
    gone = fleet.host("d")  # shared this window's run, then died: its evidence counts, not its place
    gone.finished(phase_data({"g3c1": 0.06}, seed=9), run_id="phase-d", finished_at=fleet.now)
    await gone.sync()
    hosts = {h: fleet.host(h) for h in ("a", "b")}
    for i, (name, p) in enumerate(hosts.items()):
        p.finished(phase_data({"g3c1": 0.06}, seed=i), run_id=f"phase-{name}", finished_at=fleet.now)
        await p.sync()
    await hosts["a"].sync()
    assert not fleet.decided["a"] and hosts["a"].status()[TUNE]["why"].endswith("not yet: c)")
    fleet.alive = {"a", "b"}  # c is gone too: the verdict is taken, d's run among the evidence
    await hosts["a"].sync()
    [decision] = fleet.decided["a"]
    assert decision.hosts == 3


async def test_a_decision_survives_a_restart_and_is_acted_on_once(fleet: Fleet) -> None:
    fleet.alive = {"a", "b"}
    for i, name in enumerate(("a", "b")):
        p = fleet.host(name)
        p.on_decision = None if name == "a" else p.on_decision  # a stops before its keeper hears
        p.finished(phase_data({"g3c1": 0.06}, seed=i), run_id=f"phase-{name}", finished_at=fleet.now)
        await p.sync()
    await fleet.phases[0].sync()
    assert fleet.phases[0].status()[TUNE]["decision"]["promoted"] == "g3c1" and not fleet.decided["a"]
    for _ in range(2):  # restarted twice: the first restart acts on it, the second only knows it
        again = fleet.host("a")
        await again.sync()
    assert fleet.acts["a"] == [True, False]
    assert [d.run_id for d in fleet.decided["a"]] == ["phase-a", "phase-a"]
    assert fleet.acts["b"] == [True]


async def test_apply_refuses_the_fleets_pick_where_this_host_refused_it_unless_forced(
    fleet: Fleet, tmp_path: Path
) -> None:
    from kloros_orchestrator.fleet.verdict import Adoption

    decision = await decision_for(fleet)
    no = Adoption(host="a", cand_id="g3c1", adopt=False, reason="unsafe on this host: 1 cap breach(es)")
    keeper = keeper_for(tmp_path, "auto")
    keeper.fleet_decided(msgspec.structs.replace(decision, adoption=no))
    assert keeper.store.adopted_config(TUNE) is None, "auto mode follows this host's refusal"
    refused = await keeper.request({"cmd": "apply", "domain": TUNE})
    assert (
        refused["ok"] is False
        and "not for this host: unsafe" in refused["error"]
        and "--force" in refused["error"]
    )
    forced = await keeper.request({"cmd": "apply", "domain": TUNE, "force": True})
    config = keeper.store.adopted_config(TUNE)
    assert forced["ok"] is True and config is not None and config.provenance.forced


async def test_auto_mode_leaves_an_operators_pending_change_alone(fleet: Fleet, tmp_path: Path) -> None:
    decision = await decision_for(fleet)
    keeper = keeper_for(tmp_path, "auto")
    keeper.pending.add(TUNE)  # an operator's apply or rollback waits for the boundary
    keeper.fleet_decided(decision)
    assert keeper.store.adopted_config(TUNE) is None


async def test_the_fleets_verdict_goes_back_into_the_studys_hall_of_fame(fleet: Fleet) -> None:
    """As a collapse: fleet effects replace the quick estimates, a variant the fleet found worse
    leaves (not measured again), one no host measured stays as it was."""
    from kloros_orchestrator.runtime.fleet_phase import fold_into
    from kloros_orchestrator.runtime.records import HallOfFameEntry

    fleet.alive = {"a", "b"}
    worse: Genome = {**TUNE_STOCK, "swappiness": 90}
    VARIANTS["g3c3"] = VariantInfo(genome=worse, spica_id="spica-w", cand_id="g3c3")
    try:
        for i, name in enumerate(("a", "b")):
            p = fleet.host(name)
            data = phase_data({"g3c1": 0.06, "g3c3": -0.08}, seed=i)
            p.finished(data, run_id=f"phase-{name}", finished_at=fleet.now)
            await p.sync()
        await fleet.phases[0].sync()
    finally:
        del VARIANTS["g3c3"]
    decision = fleet.decided["a"][0]
    unmeasured: Genome = {**TUNE_STOCK, "dirty_ratio": 30}
    hof = [
        HallOfFameEntry(cand_id="g3c3", spica_id="spica-w", genome=worse, generation=3, score=0.2),
        HallOfFameEntry(cand_id="g3c1", spica_id="spica-b", genome=BETTER, generation=3, score=0.01),
        HallOfFameEntry(cand_id="g2c0", spica_id="spica-u", genome=unmeasured, generation=2, score=0.03),
    ]
    folded = fold_into(hof, decision)
    assert [h.cand_id for h in folded] == ["g3c1", "g2c0"], "worse fleet-wide: out; sorted by score"
    better = folded[0]
    assert better.score == pytest.approx(0.06, abs=0.02) and better.phase_run_id == "phase-a"
    from kloros_orchestrator.fleet.records import genome_digest

    assert better.score_ci95 == decision.verdicts[genome_digest(BETTER)].ci  # over 2 hosts: wide
    assert decision.verdicts[genome_digest(worse)].ci[1] < 0  # type: ignore[index]
    assert folded[1] == hof[2] and fold_into(hof, None) == hof


@contextlib.contextmanager
def offline_apply(state_dir: Path, store: str) -> Iterator[tuple[list[str], Path]]:
    """``apply`` argv for the CLI on ``state_dir`` with ``study.store: store`` and no daemon (nothing
    listens on its socket), and its fake sysfs tree."""
    short = Path(tempfile.mkdtemp(prefix="ko"))  # the socket path must fit a Unix socket address
    try:
        write_tree(short / "sysfs", dict(TUNE_TREE))
        (short / "regimes").mkdir()
        shutil.copy(REPO / "regimes" / "cpu.yaml", short / "regimes" / f"{TUNE}.yaml")
        cfg = {
            "state_dir": str(state_dir),
            "socket": str(short / "k.sock"),
            "sysfs_root": str(short / "sysfs"),
            "regimes_dir": str(short / "regimes"),
            "study": {"store": store, "name": "web"},
            "dream": {"domains": [TUNE]},
            "domain_options": {TUNE: {"kind": "generic", **TUNE_OPTIONS}},
        }
        (short / "dream.yaml").write_text(yaml.safe_dump(cfg))
        yield ["apply", "--config", str(short / "dream.yaml"), "--domain", TUNE], short / "sysfs"
    finally:
        shutil.rmtree(short, ignore_errors=True)


NOT_CONTACTED = "postgresql://db.invalid/fleet"  # the offline apply reads files, never the database


async def test_apply_without_a_daemon_takes_the_fleets_decision_kept_on_disk(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The offline ``apply`` follows the fleet's verdict as the daemon's does: the decision kept with
    host a's latest run (under its state_dir), not host a's own PHASE results (it has none here)."""
    await decision_for(fleet)  # host a's decision, kept under tmp_path/a/fleet/phase
    with offline_apply(tmp_path / "a", "local") as (apply, _):  # one host: its own PHASE results only
        assert main([*apply, "--phase", "latest"]) == 1
        assert "no PHASE has completed yet" in capsys.readouterr().err
    with offline_apply(tmp_path / "a", NOT_CONTACTED) as (apply, sysfs):
        # Another variant by name is looked for in this host's own PHASE results, as the daemon does.
        assert main([*apply, "--variant", "g9c9"]) == 1
        assert "no PHASE has completed yet" in capsys.readouterr().err
        code = main([*apply, "--variant", "g3c1"])  # the fleet's pick by name, as --phase latest
        out, err = capsys.readouterr()
        assert code == 0, err
        assert out.startswith(f"{TUNE}: adopted g3c1 (fleet PHASE verdict over 2 host(s)"), out
        assert "no daemon" in out
        assert (sysfs / "proc/sys/vm/swappiness").read_text().strip() == str(BETTER["swappiness"])
    config = HostStore(StatePaths(tmp_path / "a")).adopted_config(TUNE)
    assert config is not None and config.genome == BETTER and config.provenance.by == "operator"
    assert config.provenance.phase_run_id == "phase-a" and not config.provenance.forced


async def test_apply_without_a_daemon_refuses_where_this_host_refused_unless_forced(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kloros_orchestrator.fleet.verdict import Adoption
    from kloros_orchestrator.runtime.fleet_phase import load_runs

    await decision_for(fleet)
    root = tmp_path / "a" / "fleet" / "phase"
    [kept] = [p for p in load_runs(root) if p.decision is not None]
    no = Adoption(host="a", cand_id="g3c1", adopt=False, reason="unsafe on this host: 1 cap breach(es)")
    kept.decision = msgspec.structs.replace(kept.decision, adoption=no)  # type: ignore[arg-type]
    (root / f"{kept.run.run_id}.{TUNE}.json").write_bytes(msgspec.json.encode(kept))
    with offline_apply(tmp_path / "a", NOT_CONTACTED) as (apply, sysfs):
        assert main([*apply, "--phase", "latest"]) == 1
        err = capsys.readouterr().err
        assert "not for this host: unsafe" in err and "--force" in err
        assert (sysfs / "proc/sys/vm/swappiness").read_text() == TUNE_TREE["proc/sys/vm/swappiness"]
        assert main([*apply, "--phase", "latest", "--force"]) == 0
    config = HostStore(StatePaths(tmp_path / "a")).adopted_config(TUNE)
    assert config is not None and config.genome == BETTER and config.provenance.forced


def test_the_latest_decision_of_a_domain_is_the_newest_decided_run_of_it(tmp_path: Path) -> None:
    from kloros_orchestrator.fleet.phase_rows import PhaseRun
    from kloros_orchestrator.runtime.fleet_phase import PendingRun, latest_decision

    def kept(run_id: str, domain: str, finished_at: float, decided: bool) -> None:
        run = PhaseRun(run_id=run_id, host="a", domain=domain, stock_digest="s", finished_at=finished_at,
                       variants={}, trials=())  # fmt: skip
        decision = FleetDecision(domain=domain, run_id=run_id, stock=TUNE_STOCK, hosts=2, verdicts={},
                                 pick=None, verdict=None, adoption=None)  # fmt: skip
        p = PendingRun(run=run, stock=TUNE_STOCK, variants={}, decision=decision if decided else None)
        (tmp_path / f"{run_id}.{domain}.json").write_bytes(msgspec.json.encode(p))

    assert latest_decision(tmp_path / "none", TUNE) is None
    kept("phase-2", TUNE, 2000.0, True)
    kept("phase-1", TUNE, 1000.0, True)  # an older one a crash left beside it
    kept("phase-3", TUNE, 3000.0, False)  # newer, not decided yet: the decision stands meanwhile
    kept("phase-4", "other", 4000.0, True)
    (tmp_path / f"phase-5.{TUNE}.json").write_text("{not json")  # skipped, left where it is
    decision = latest_decision(tmp_path, TUNE)
    assert decision is not None and decision.run_id == "phase-2"
    assert (tmp_path / f"phase-5.{TUNE}.json").exists()
    assert latest_decision(tmp_path, "missing") is None
