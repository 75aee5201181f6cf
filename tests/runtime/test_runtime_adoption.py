"""Adoption in the running daemon (in-process, fake trial runner, real socket, temporary sysfs_root):
``apply``/``rollback``/``verify`` over the socket, the host lock (never mid-trial), the stock arm
following the current configuration, a crash mid-tournament after an adoption, ``promotion: auto``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import msgspec
import pytest
import yaml
from test_runtime_driver import (
    DOMAIN,
    STOCK_LEVEL,
    T0,
    WAIT_S,
    Rig,
    new_rig,
    results_for,
    running,
)

from kloros_orchestrator.config import load_config
from kloros_orchestrator.core.coordinator import StopRequested
from kloros_orchestrator.phase.results import PromotedVariant, VariantSummary, write_results
from kloros_orchestrator.runtime.control import query
from kloros_orchestrator.runtime.driver import Daemon

PROMOTED = 90


@pytest.fixture(name="rig")
def _rig() -> Iterator[Rig]:
    yield from new_rig()


async def request(d: Daemon, **req: Any) -> dict[str, Any]:
    with anyio.fail_after(WAIT_S):
        return await anyio.to_thread.run_sync(query, d.loaded.socket_path, req)


def promote(rig: Rig, level: int = PROMOTED, run_id: str = "phase-adopt-1") -> None:
    """PHASE results on disk: ``g0c1`` (level=``level``) promoted, ``g0c0`` measured but not promoted."""
    base = results_for(run_id)
    m = base.metrics[DOMAIN]
    metrics = msgspec.structs.replace(m, variants={
        "g0c1": VariantSummary(0.08, (0.05, 0.11), True, 8, 0, [0.07, 0.09]),
        "g0c0": VariantSummary(0.01, (-0.02, 0.04), True, 8, 0, [0.02, -0.01]),
    })  # fmt: skip
    promoted = PromotedVariant(DOMAIN, "g0c1", "spica-x", {"level": level}, 0.08, (0.05, 0.11), "8% better")
    results = msgspec.structs.replace(base, metrics={DOMAIN: metrics}, promoted_variants=[promoted])
    write_results(rig.state_dir / "phase", results, now=T0 - 60)


def level(rig: Rig) -> int:
    return int(rig.knob_file.read_text())


async def test_apply_rollback_and_verify_over_the_socket(rig: Rig) -> None:
    promote(rig)
    d = rig.daemon()
    async with running(d) as log:
        await log.wait_for("pacing")  # D-REAM resting between tournaments: the change is made now
        refused = await request(d, cmd="apply", domain=DOMAIN, variant="g0c0")
        assert refused["ok"] is False and "did not promote g0c0" in refused["error"]
        assert "CI [-0.0200, +0.0400]" in refused["error"] and "--force" in refused["error"]
        reply = await request(d, cmd="apply", domain=DOMAIN, variant=None)
        assert reply["ok"] is True and "adopted g0c1" in reply["message"], reply
        await log.wait_for("host_config_applied")
        assert level(rig) == PROMOTED
        assert d.dream.searches[DOMAIN].stock == {"level": PROMOTED}  # the stock arm is now "current"
        host = (await request(d, cmd="status"))["status"]["host"]
        entry = host["domains"][DOMAIN]
        assert host["promotion"] == "manual" and entry["config"] == "adopted"
        assert entry["adopted"]["cand_id"] == "g0c1" and entry["adopted"]["by"] == "operator"
        assert "pending_promotions" not in entry  # the promoted variant is what runs
        checks = (await request(d, cmd="verify", domain=DOMAIN))["checks"]
        assert checks == [{"domain": DOMAIN, "config": "adopted", "files": 1, "drift": [], "in_trial": []}]
        rig.knob_file.write_text("33\n")  # another tool
        drift = (await request(d, cmd="verify"))["checks"][0]["drift"]
        assert [(x["expected"], x["found"]) for x in drift] == [(str(PROMOTED), "33")]
        back = await request(d, cmd="rollback", domain=DOMAIN)
        assert back["ok"] is True and back["domains"] == [DOMAIN]
        await log.wait_for("host_config_applied", 2)
        assert rig.knob_file.read_text() == f"{STOCK_LEVEL}\n"  # the factory text, byte for byte
        assert d.dream.searches[DOMAIN].stock == {"level": STOCK_LEVEL}
    names = rig.names()
    assert names.index("adopted") < names.index("rolled_back")
    assert rig.knob_file.read_text() == f"{STOCK_LEVEL}\n"


async def test_pending_promotion_is_listed_in_manual_mode_and_forced_apply_is_marked(rig: Rig) -> None:
    promote(rig)
    d = rig.daemon()
    async with running(d) as log:
        await log.wait_for("pacing")
        entry = (await request(d, cmd="status"))["status"]["host"]["domains"][DOMAIN]
        assert entry["config"] == "factory"
        assert [p["cand_id"] for p in entry["pending_promotions"]] == ["g0c1"]
        assert entry["pending_promotions"][0]["apply"] == f"apply --domain {DOMAIN} --variant g0c1"
        assert level(rig) == STOCK_LEVEL  # manual: nothing adopted by itself


async def test_apply_while_a_trial_runs_waits_for_the_tournament_boundary(rig: Rig) -> None:
    promote(rig)
    rig.runner.hold_candidates = True  # the first candidate trial parks with its knob applied
    d = rig.daemon()
    await d.startup()
    async with anyio.create_task_group() as tg:
        tg.start_soon(d.main)
        with anyio.fail_after(WAIT_S):
            await rig.runner.holding.wait()
        candidate = level(rig)
        reply = await request(d, cmd="apply", domain=DOMAIN, variant="g0c1")
        assert reply["ok"] is True and "next tournament boundary" in reply["message"]
        assert d.keeper.pending == {DOMAIN} and level(rig) == candidate  # never rewritten mid-trial
        check = (await request(d, cmd="verify"))["checks"][0]
        assert check["drift"] == [] and [x["found"] for x in check["in_trial"]] == [str(candidate)]
        d.dispatch(StopRequested(reason="test over", now=rig.clock()))
    with anyio.fail_after(WAIT_S):
        await d.shutdown()
    # The stop restored the trial's original (the pre-adoption value); the next start applies it.
    assert level(rig) == STOCK_LEVEL
    rig.release(d)
    again = rig.daemon()
    await again.startup()
    assert level(rig) == PROMOTED and again.dream.searches[DOMAIN].stock == {"level": PROMOTED}
    with anyio.fail_after(WAIT_S):
        await again.shutdown()


async def test_a_crash_mid_tournament_after_an_adoption_restores_the_adopted_value(rig: Rig) -> None:
    promote(rig)
    first = rig.daemon()
    async with running(first) as log:
        await log.wait_for("pacing")
        assert (await request(first, cmd="apply", domain=DOMAIN, variant="g0c1"))["ok"]
        await log.wait_for("host_config_applied")
    rig.release(first)
    rig.runner.hold_candidates = True
    rig.runner.holding = anyio.Event()
    crashed = rig.daemon()
    await crashed.startup()
    journal = rig.state_dir / "journal"
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(crashed.main)
            with anyio.fail_after(WAIT_S):
                await rig.runner.holding.wait()
            candidate = level(rig)
            assert candidate not in (PROMOTED, STOCK_LEVEL)  # a candidate under trial
            # What a kill -9 now leaves on disk: the candidate's value and the journal.
            left = {p.name: p.read_bytes() for p in journal.glob("*.json")}
            scope.cancel()
    rig.release(crashed)
    assert left and level(rig) == PROMOTED  # (the cancelled tournament restored it; a kill would not)
    for name, data in left.items():
        (journal / name).write_bytes(data)
    rig.knob_file.write_text(f"{candidate}\n")
    rig.runner.hold_candidates = False
    restarted = rig.daemon()
    await restarted.startup()
    assert level(rig) == PROMOTED
    checks = (await restarted.handle_request({"cmd": "verify"}))["checks"]
    assert checks[0]["config"] == "adopted" and checks[0]["drift"] == []
    with anyio.fail_after(WAIT_S):
        await restarted.shutdown()
    assert level(rig) == PROMOTED  # and a clean stop leaves the adopted value too


def auto_mode(rig: Rig) -> None:
    cfg_path = rig.root / "dream.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["promotion"] = {"mode": "auto"}
    cfg["phase"]["qtime"] = {"epochs": 2, "slices": 2, "replicas": 2}  # enough for an interval per epoch
    cfg_path.write_text(yaml.safe_dump(cfg))
    rig.loaded = load_config(cfg_path)


async def test_auto_mode_leaves_a_promotion_of_an_earlier_run_pending(rig: Rig) -> None:
    auto_mode(rig)
    promote(rig)  # results on disk, collapsed at start-up: PHASE's stock arm is not known to be current
    d = rig.daemon()
    await d.startup()
    entry = d.keeper.status()["domains"][DOMAIN]
    assert entry["config"] == "factory" and [p["cand_id"] for p in entry["pending_promotions"]] == ["g0c1"]
    assert "adopted" not in rig.names() and level(rig) == STOCK_LEVEL
    with anyio.fail_after(WAIT_S):
        await d.shutdown()


async def test_auto_mode_adopts_what_phase_promotes(rig: Rig) -> None:
    auto_mode(rig)
    d = rig.daemon()
    async with running(d) as log:
        await log.wait_for("pacing")
        assert (await request(d, cmd="phase-now"))["ok"] is True
        await log.wait_for("results_collapsed")
        await log.wait_for("host_config_applied")
        adopted = next(e for e in rig.events() if e["event"] == "adopted")
        host = (await request(d, cmd="status"))["status"]["host"]
    prov = adopted["provenance"]
    assert prov["by"] == "auto" and prov["score_ci95"][0] > 0 and prov["phase_run_id"].startswith("phase-")
    value = adopted["genome"]["level"]
    assert value > STOCK_LEVEL  # the fake runner rewards a higher level
    assert host["promotion"] == "auto" and host["domains"][DOMAIN]["config"] == "adopted"
    assert level(rig) == value  # stop restored the journal's originals: the adopted value


async def test_requests_with_bad_fields_are_refused(rig: Rig) -> None:
    d = rig.daemon()
    await d.startup()
    assert (await d.handle_request({"cmd": "apply", "domain": 3}))["ok"] is False
    no_domain = await d.handle_request({"cmd": "apply"})
    assert no_domain["ok"] is False and "needs a domain" in no_domain["error"]
    none_yet = await d.handle_request({"cmd": "apply", "domain": DOMAIN})
    assert none_yet["ok"] is False and "no PHASE has completed" in none_yet["error"]
    other = await d.handle_request({"cmd": "rollback", "domain": DOMAIN, "peer_uid": 4242})
    assert other["ok"] is False and "run it as root" in other["error"]  # the socket group reads only
    unknown = await d.handle_request({"cmd": "rollback", "domain": "nosuch"})
    assert unknown["ok"] is False and "no configuration is recorded" in unknown["error"]
    nothing = await d.handle_request({"cmd": "rollback"})
    assert nothing["ok"] is True and nothing["domains"] == []
    with anyio.fail_after(WAIT_S):
        await d.shutdown()


async def test_without_an_adoption_the_stock_arm_is_the_live_value_and_no_factory_is_recorded(
    rig: Rig,
) -> None:
    rig.knob_file.write_text("7\n")  # the operator's own setting (a sysctl.d file, say)
    d = rig.daemon()
    await d.startup()
    assert d.dream.searches[DOMAIN].stock == {"level": 7}
    assert not (rig.state_dir / "host" / "factory.json").exists()
    with anyio.fail_after(WAIT_S):
        await d.shutdown()
    rig.release(d)
    promote(rig)
    again = rig.daemon()
    async with running(again) as log:
        await log.wait_for("pacing")
        assert (await request(again, cmd="apply", domain=DOMAIN, variant="g0c1"))["ok"]
        await log.wait_for("host_config_applied")
    factory = (rig.state_dir / "host" / "factory.json").read_text()
    assert '"7\\n"' in factory  # the value before the first adopted write, as it was
