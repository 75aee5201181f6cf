"""``explain <cand_id>`` on the files a real (fake-runner) tournament and PHASE results leave behind."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from fakes import TUNE, dream_config, open_dream_rig, open_tune_domain

from kloros_orchestrator.cli import main
from kloros_orchestrator.errors import KlorosError
from kloros_orchestrator.explain import explain
from kloros_orchestrator.phase.results import (
    DomainMetrics,
    FlaggedVariant,
    PhaseResults,
    PromotedVariant,
    Qtime,
    VariantSummary,
    write_results,
)
from kloros_orchestrator.store import read_jsonl


async def test_explain_says_why_each_candidate_ended_where_it_did(tmp_path: Path) -> None:
    tune = open_tune_domain(tmp_path)
    rig = open_dream_rig(tmp_path / "state", {TUNE: tune}, config=dream_config(trials=3))
    rig.loop.restore({})
    with anyio.fail_after(10):
        await rig.loop.tournament(TUNE)
    lines = read_jsonl(rig.paths.fitness_history)
    eliminated = next(x for x in lines if x.get("eliminated"))
    scored = next(x for x in lines if x.get("score") is not None and not x.get("eliminated"))
    text = "\n".join(explain(rig.paths, eliminated["cand_id"]))
    assert f"{eliminated['cand_id']} ({TUNE}, generation 0" in text
    assert "race        eliminated after" in text and "behind" in text and "allowance" in text
    text = "\n".join(explain(rig.paths, scored["cand_id"], TUNE))
    assert "score       +" in text and "95% CI" in text and "the current configuration" in text

    m = DomainMetrics(fitness=0.05, ci95=(0.01, 0.09), baseline={}, insights=["ok"], variants={
        "g0c9": VariantSummary(0.01, (-0.02, 0.04), True, 8, 1, [0.03, -0.01])})  # fmt: skip
    results = PhaseResults(
        timestamp="2027-01-15T03:00:00+00:00", run_id="phase-x", qtime=Qtime(2, 2, 2), domains_tested=[TUNE],
        metrics={TUNE: m},
        promoted_variants=[
            PromotedVariant(TUNE, scored["cand_id"], "s", {}, 0.05, (0.01, 0.09), "5% better")
        ],
        flagged_variants=[FlaggedVariant(TUNE, eliminated["cand_id"], {}, ["3 of 8 trials failed"])],
        search_space_recommendations={}, complete=True,
    )  # fmt: skip
    write_results(rig.paths.phase, results, now=1_800_000_000.0)
    assert "PHASE       phase-x: promoted: 5% better" in explain(rig.paths, scored["cand_id"])[-1]
    assert "flagged: 3 of 8 trials failed" in explain(rig.paths, eliminated["cand_id"])[-1]
    with pytest.raises(KlorosError, match="no candidate g9c9"):
        explain(rig.paths, "g9c9")


def test_explain_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "dream.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\n")
    assert main(["explain", "g0c0", "--config", str(cfg)]) == 1
    assert "no candidate g0c0" in capsys.readouterr().err
