"""What a person sees of a tournament: the first look, the verdict in words, progress per round, ETA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from fakes import TUNE, DreamRig, dream_config, open_dream_rig, open_tune_domain
from loguru import logger

from kloros_orchestrator.config import RacingConfig
from kloros_orchestrator.measure.packs import CandidatePack, PackAggregate
from kloros_orchestrator.runtime.conclude import verdict_of
from kloros_orchestrator.runtime.records import Progress, format_duration

OPEN_RACE = RacingConfig(indifference=1e-9)  # far below the fake's gaps: the race never closes early


def rig_with(tmp_path: Path, **cfg: Any) -> DreamRig:
    r = open_dream_rig(tmp_path / "state", {TUNE: open_tune_domain(tmp_path)}, config=dream_config(**cfg))
    r.loop.restore({})
    return r


async def test_the_first_tournament_is_a_short_first_look_then_the_search_deepens(tmp_path: Path) -> None:
    # A δ far below the fake's gaps keeps the race open, so the second tournament runs all its rounds.
    rig = rig_with(
        tmp_path, first_look_seconds=2.0, trials=4, min_trials=2, trial_seconds=None, racing=OPEN_RACE
    )
    with anyio.fail_after(10):
        await rig.loop.tournament(TUNE)
        first = list(rig.runner.calls)
        await rig.loop.tournament(TUNE)
    second = rig.runner.calls[len(first) :]
    assert {c.duration_s for c in first} == {2.0}
    assert {c.duration_s for c in second} == {None}  # the regimes' own durations
    per_arm_regime = max(
        sum(1 for c in first if (c.cand_id, c.regime) == k) for k in {(c.cand_id, c.regime) for c in first}
    )
    assert per_arm_regime == 2  # max(2, min_trials) trials, not dream.trials
    assert (
        max(sum(1 for c in second if c.cand_id == "stock" and c.regime == r) for r in ("normal", "stress"))
        == 4
    )


async def test_no_first_look_when_it_is_off(tmp_path: Path) -> None:
    rig = rig_with(tmp_path, first_look_seconds=None, trials=3)
    with anyio.fail_after(10):
        await rig.loop.tournament(TUNE)
    assert {c.duration_s for c in rig.runner.calls} == {5.0}


async def test_progress_per_round_leader_eta_and_the_verdict_line(tmp_path: Path) -> None:
    rig = rig_with(tmp_path, trials=3, racing=OPEN_RACE)  # open to the cap: three rounds
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    try:
        with anyio.fail_after(10):
            await rig.loop.tournament(TUNE)
    finally:
        logger.remove(sink)
    rounds = [line for line in lines if " round " in line and "trials" in line]
    assert [r.split(" round ")[1].split(":")[0] for r in rounds] == ["1/3", "2/3", "3/3"]
    assert "leader g0c" in rounds[-1] and "vs the stock arm" in rounds[-1]
    assert "left" in rounds[0] and "left" not in rounds[-1]  # an ETA until the last round
    pr = rig.progress
    assert pr.round == pr.rounds == 3 and pr.arm is None and pr.regime is None
    assert pr.leader is not None and pr.trial_wall_s is not None and pr.trial_wall_s > 0
    best = pr.best[TUNE]
    done = next(line for line in lines if line.startswith(f"tournament {TUNE} gen 0 done in "))
    assert best["text"] in done and best["generation"] == 0
    assert best["beat_current"] is True and "beat the current configuration" in done and "95% CI" in done


def _real_pack(agg: PackAggregate, safe: bool, genome: dict[str, Any]) -> CandidatePack:
    return CandidatePack(
        run_id="r", domain=TUNE, cand_id="g0c1", generation=0, spica_id="s", genome=genome, regimes=[],
        aggregate=agg, safe=safe, unsafe_reasons=[] if safe else ["stress: temp_c 99 > 90"],
        missing_kpis=[], missing_reasons={}, code_hash="c",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("score", "ci", "improves", "safe", "genome", "expect", "beat"),
    [
        (
            0.041,
            (0.012, 0.07),
            True,
            True,
            None,
            "g0c1 beat the current configuration: +4.1% (95% CI +1.2% to +7.0%)",
            True,
        ),
        (-0.05, (-0.08, -0.02), False, True, None, "is worse: -5.0% (95% CI -8.0% to -2.0%)", False),
        (0.01, (-0.02, 0.04), False, True, None, "is within noise: +1.0% (95% CI -2.0% to +4.0%)", False),
        (0.2, (0.1, 0.3), True, False, None, "breached a cap", False),
        (0.0, (-0.01, 0.01), False, True, {"x": 1}, "is the current configuration itself", False),
        (None, None, False, True, None, "no candidate could be scored (normal: 1 successful", False),
    ],
)
def test_the_verdict_in_words(score: float | None, ci: tuple[float, float] | None, improves: bool, safe: bool,
                              genome: dict[str, Any] | None, expect: str, beat: bool) -> None:  # fmt: skip
    why = None if score is not None else "normal: 1 successful trial(s) < minimum 2"
    agg = PackAggregate(means={}, score_v2=score, score_ci95=ci, improves_over_baseline=improves,
                        scored=score is not None, not_scored_reason=why)  # fmt: skip
    said = verdict_of(_real_pack(agg, safe, genome or {"x": 2}), {"x": 1})
    assert expect in said["text"] and said["beat_current"] is beat
    assert verdict_of(None, {"x": 1})["text"] == "no candidate was measured"


def test_eta_and_durations_for_people() -> None:
    pr = Progress(tournament_done=10, tournament_total=40)
    assert pr.eta_s() is None
    pr.trial_wall_s = 2.5
    assert pr.eta_s() == 75.0
    assert [format_duration(s) for s in (4.2, 95, 3725)] == ["4s", "1m35s", "1h02m"]


async def test_a_candidate_equal_to_the_current_configuration_is_told_zero_not_raced(tmp_path: Path) -> None:
    from kloros_orchestrator.engine import Candidate

    rig = rig_with(tmp_path, trials=2)
    s = rig.loop.searches[TUNE]
    asked = s.engine.ask()
    twin = Candidate(asked[0].cand_id, dict(s.stock), 0)
    s.engine._pending = [twin, *asked[1:]]  # the engine proposed the current configuration
    told: list[Any] = []
    real_tell = s.engine.tell
    s.engine.tell = lambda results: (told.extend(results), real_tell(results))[1]  # type: ignore[method-assign]
    with anyio.fail_after(10):
        await rig.loop.tournament(TUNE)
    assert twin.cand_id not in {c.cand_id for c in rig.runner.calls}
    assert (twin, 0.0) in told and len(told) == len(asked)


def test_a_configuration_change_clears_hall_of_fame_scores_and_drops_the_new_current(tmp_path: Path) -> None:
    from fakes import hof_entry

    rig = rig_with(tmp_path)
    s = rig.loop.searches[TUNE]
    a = hof_entry("g1c0", {**s.stock, "swappiness": 10}, 0.3)
    b = hof_entry("g1c1", {**s.stock, "swappiness": 30}, 0.1)
    s.hall_of_fame = [a, b]
    rig.loop.set_current(TUNE, dict(a.genome))  # a is adopted: it is the stock arm from now on
    assert s.stock == a.genome
    assert [(h.cand_id, h.score, h.score_ci95) for h in s.hall_of_fame] == [("g1c1", None, None)]
    rig.loop.set_current(TUNE, dict(a.genome))  # the same configuration again changes nothing
    assert len(s.hall_of_fame) == 1


async def test_packs_carry_the_configuration_they_were_measured_against(tmp_path: Path) -> None:
    from kloros_orchestrator.measure.packs import load_pack

    rig = rig_with(tmp_path, trials=2)
    with anyio.fail_after(10):
        await rig.loop.tournament(TUNE)
    pack = load_pack(rig.paths.candidates(TUNE) / "gen0_best.json")
    assert pack.current_genome == rig.loop.searches[TUNE].stock and pack.same_as_current is False
