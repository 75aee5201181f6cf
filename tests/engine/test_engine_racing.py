from __future__ import annotations

import json

import numpy as np
import pytest

from kloros_orchestrator.engine import Race
from kloros_orchestrator.engine.racing import kn_h2


def run_round(race: Race, values: dict[str, float]) -> list[str]:
    for cid in race.pending():
        race.record(cid, values[cid])
    return race.end_round()


def test_round_protocol_and_errors() -> None:
    race = Race(["a", "b", "c"], incumbent="a", max_rounds=3)
    assert race.pending() == ["a", "b", "c"] and not race.finished
    race.record("b", 1.0)
    assert race.pending() == ["a", "c"]
    with pytest.raises(ValueError, match="already has its sample"):
        race.record("b", 2.0)
    with pytest.raises(ValueError, match="unknown candidate"):
        race.record("zz", 2.0)
    with pytest.raises(ValueError, match="not complete: a, c pending"):
        race.end_round()
    race.record("a", 1.0)
    race.record("c", 1.0)
    assert race.end_round() == [] and race.round == 1
    assert race.trials_used == 3
    with pytest.raises(ValueError, match="incumbent"):
        Race(["a"], incumbent="b", max_rounds=2)
    with pytest.raises(ValueError, match="duplicate"):
        Race(["a", "a"], incumbent=None, max_rounds=2)
    with pytest.raises(ValueError, match="min_rounds"):
        Race(["a", "b"], incumbent=None, max_rounds=2, min_rounds=1)


def test_clear_loser_is_eliminated_after_min_rounds_with_numbers_in_the_reason() -> None:
    race = Race(["a", "b", "c", "d"], incumbent=None, max_rounds=10, min_rounds=3)
    rows = [
        {"a": 10.0, "b": 10.2, "c": 9.9, "d": 2.0},
        {"a": 10.3, "b": 9.8, "c": 10.1, "d": 2.2},
        {"a": 9.9, "b": 10.1, "c": 10.0, "d": 1.9},
    ]
    assert run_round(race, rows[0]) == []
    assert run_round(race, rows[1]) == []  # min_rounds not reached: nobody goes, however far behind
    assert run_round(race, rows[2]) == ["d"]
    assert race.survivors() == ["a", "b", "c"]
    reason = race.eliminated["d"]
    assert "behind" in reason and "p=" in reason and "after 3 rounds" in reason
    assert race.pending() == ["a", "b", "c"]  # the loser takes no more trials
    assert race.trials_used == 12


def test_incumbent_is_kept_and_the_race_ends_once_it_is_beaten() -> None:
    race = Race(["inc", "x", "y"], incumbent="inc", max_rounds=10)
    for r in range(3):
        run_round(race, {"inc": 1.0 + 0.01 * r, "x": 5.0 - 0.01 * r, "y": 0.9 + 0.02 * r})
        if race.finished:
            break
    assert "inc" in race.survivors() and "y" in race.eliminated
    assert race.finished and race.race_winner() == "x"
    assert race.pending() == []
    with pytest.raises(ValueError, match="finished"):
        race.record("x", 1.0)


def test_failed_sample_eliminates_even_the_incumbent() -> None:
    race = Race(["inc", "x"], incumbent="inc", max_rounds=5)
    race.record("inc", None)
    race.record("x", float("nan"))
    assert race.eliminated == {
        "inc": "failed in round 1: no usable sample",
        "x": "failed in round 1: no usable sample",
    }
    assert race.finished and race.race_winner() is None and race.trials_used == 2


def test_ties_and_noise_free_samples() -> None:
    race = Race(["a", "b", "c"], incumbent="c", max_rounds=4)
    for _ in range(4):
        run_round(race, {"a": 1.0, "b": 1.0, "c": 1.0})
    assert race.finished and race.survivors() == ["a", "b", "c"]
    assert race.race_winner() == "c"  # a tie goes to the incumbent
    race = Race(["a", "b"], incumbent=None, max_rounds=4)
    run_round(race, {"a": 1.0, "b": 2.0})
    assert run_round(race, {"a": 1.0, "b": 2.0}) == ["a"]  # zero noise: any gap is certain
    assert race.finished and race.race_winner() == "b"


def test_round_effects_cancel_out() -> None:
    """Samples are paired by round: a machine-wide drift between rounds changes nothing."""

    def outcome(drift: float) -> tuple[list[str], dict[str, str]]:
        rng = np.random.default_rng(11)
        race = Race(["a", "b", "c", "d"], incumbent=None, max_rounds=6)
        true = {"a": 0.0, "b": -0.4, "c": -1.0, "d": -1.5}
        while not race.finished:
            shift = drift * race.round
            for cid in race.pending():
                race.record(cid, true[cid] + shift + float(rng.normal()))
            race.end_round()
        return race.survivors(), {k: v.split(" (t=")[0] for k, v in race.eliminated.items()}

    survivors, eliminated = outcome(0.0)
    drifted_survivors, drifted = outcome(25.0)
    assert survivors == drifted_survivors and eliminated.keys() == drifted.keys()


def test_state_round_trip_resumes_mid_round() -> None:
    race = Race(["a", "b", "c"], incumbent="a", max_rounds=5)
    run_round(race, {"a": 1.0, "b": 2.0, "c": 0.5})
    race.record("b", 2.1)
    restored = Race.from_state(json.loads(json.dumps(race.state())))
    assert restored.pending() == ["a", "c"]
    for r in (race, restored):
        r.record("a", 1.1)
        r.record("c", 0.4)
        r.end_round()
    assert restored.state() == race.state()
    with pytest.raises(ValueError, match="schema"):
        Race.from_state({"schema": "race.v0"})


# --- without an indifference zone (the old rule, as optimize() races): the selection benchmark, in small


def simulate(lo: float, hi: float, k: int, races: int, seed: int) -> tuple[float, float]:
    """Correct-selection rate and trials as a share of fixed-N=10, one best, others lo–hi σ behind."""
    rng = np.random.default_rng(seed)
    correct = trials = 0
    for _ in range(races):
        true = np.concatenate([[0.0], -rng.uniform(lo, hi, k - 1)])
        ids = [f"c{i}" for i in rng.permutation(k)]  # the best is anywhere in the list
        race = Race(ids, incumbent=None, max_rounds=10)
        while not race.finished:
            for cid in race.pending():
                race.record(cid, float(true[int(cid[1:])] + rng.normal()))
            race.end_round()
        correct += race.race_winner() == "c0"
        trials += race.trials_used
    return correct / races, trials / (races * k * 10)


def fixed_n(lo: float, hi: float, k: int, n: int, races: int, seed: int) -> float:
    """Correct-selection rate of sampling every candidate ``n`` times and taking the best mean."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(races):
        true = np.concatenate([[0.0], -rng.uniform(lo, hi, k - 1)])
        hits += int(np.argmax(true + rng.normal(size=(n, k)).mean(axis=0)) == 0)
    return hits / races


def test_racing_finds_a_clear_best_with_well_under_half_the_fixed_n_trials() -> None:
    """Others 1–2σ behind: ≥95 % correct at about 40 % of fixed-N=10 trials.

    (At ~1000 races: 97.8 % correct, 40.5 % of the trials. Sampling everyone 4 times for the
    same cost is correct only 88 % of the time.)
    """
    pcs, share = simulate(1.0, 2.0, k=8, races=200, seed=0)
    assert pcs >= 0.95
    assert share <= 0.43
    assert pcs > fixed_n(1.0, 2.0, k=8, n=4, races=2000, seed=0) + 0.05


def test_racing_matches_fixed_n_on_close_candidates_with_fewer_trials() -> None:
    """Others 0.25–1σ behind: nothing reaches 95 % here — a 0.25σ gap needs ~90 samples per
    candidate to be seen at 95 % — so the bar is fixed-N=10's own rate (~61 %), at ~62 % of its
    trials, and beating fixed-N=6, which costs the same."""
    pcs, share = simulate(0.25, 1.0, k=8, races=200, seed=1)
    assert share <= 0.66
    assert pcs >= fixed_n(0.25, 1.0, k=8, n=10, races=2000, seed=1) - 0.06
    assert pcs > fixed_n(0.25, 1.0, k=8, n=6, races=2000, seed=1)


def test_a_lone_survivor_still_gets_its_sample() -> None:
    race = Race(["a", "b", "c"], incumbent=None, max_rounds=5)
    race.record("a", None)
    race.fail("b", "unsafe: temp cap")
    assert not race.finished and race.pending() == ["c"]
    race.record("c", 3.0)
    assert not race.finished and race.pending() == []
    race.end_round()
    assert race.finished and race.race_winner() == "c"
    assert race.eliminated["b"] == "unsafe: temp cap" and race.trials_used == 2


def test_a_failure_mid_round_does_not_end_the_race_before_the_survivor_is_sampled() -> None:
    race = Race(["a", "b"], incumbent=None, max_rounds=5)
    run_round(race, {"a": 1.0, "b": 1.1})
    pending = race.pending()
    assert pending == ["a", "b"]
    race.record("a", None)  # as the daemon does: iterate a snapshot of pending()
    assert not race.finished
    race.record("b", 1.2)
    race.end_round()
    assert race.finished and race.samples("b") == [1.1, 1.2]


# --- with an indifference zone: Kim & Nelson's procedure ------------------------------------------


def test_kn_h2_matches_kim_and_nelson_and_shrinks_with_the_df() -> None:
    # KN (2001): h² = 2η(n0−1), η = ½((2α/(k−1))^(−2/(n0−1)) − 1); n0 = 11 (10 df), k = 6, α = 0.05
    eta = 0.5 * ((2 * 0.05 / 5) ** (-2 / 10) - 1)
    assert kn_h2(10, 6, 0.95) == pytest.approx(2 * eta * 10)
    assert kn_h2(5, 6, 0.95) == pytest.approx(18.91, abs=0.01)  # 6 candidates after 2 rounds, pooled
    assert kn_h2(10_000, 6, 0.95) == pytest.approx(-2 * np.log(0.1 / 5), rel=1e-3)  # σ known: 7.82
    assert kn_h2(5, 6, 0.99) > kn_h2(5, 6, 0.95)


def test_kn_clear_loser_goes_early_with_the_allowance_in_the_reason() -> None:
    race = Race(["a", "b", "c", "d"], incumbent=None, max_rounds=10, indifference=0.5)
    rows = [
        {"a": 10.0, "b": 10.2, "c": 9.9, "d": 2.0},
        {"a": 10.3, "b": 9.8, "c": 10.1, "d": 2.2},
    ]
    assert run_round(race, rows[0]) == []  # min_rounds = 2
    assert run_round(race, rows[1]) == ["d"]
    allowance = race.allowance()
    assert allowance is not None and 0 < allowance[0] < 2.0 and allowance[2] == 3  # (4−1)(2−1) df
    reason = race.eliminated["d"]
    assert reason.startswith("behind a after 2 rounds by 8.05 (more than the allowance")
    assert "δ=0.5" in reason
    assert race.survivors() == ["a", "b", "c"] and not race.finished


def test_kn_never_eliminates_near_ties_at_the_cap_where_the_old_rule_does() -> None:
    """Four candidates within 0.5δ of each other, σ = δ, 4 rounds: in the last round the old
    t-test drops some of them on noise alone; KN never does there — they reach the cap, a tie
    broken by mean. (Before the cap KN may drop a near-tie when the variance estimate is low by
    chance — its promise is a pick within δ, which that keeps — far less often than the old rule.)"""
    rng = np.random.default_rng(5)
    ids = ["a", "b", "c", "d"]
    kn_at_cap = old_at_cap = kn_out = old_out = ties = 0
    for _ in range(300):
        kn = Race(ids, incumbent=None, max_rounds=4, indifference=1.0)
        old = Race(ids, incumbent=None, max_rounds=4)
        for _ in range(4):
            values = {c: (0.0 if c == "a" else -0.5) + float(rng.normal()) for c in ids}
            for race in (kn, old):
                if not race.finished:
                    run_round(race, values)
        kn_at_cap += sum("after 4 rounds" in why for why in kn.eliminated.values())
        old_at_cap += sum("after 4 rounds" in why for why in old.eliminated.values())
        kn_out, old_out = kn_out + len(kn.eliminated), old_out + len(old.eliminated)
        if kn.round == 4 and len(kn.survivors()) > 1:
            tied = kn.tied()
            winner = kn.race_winner()
            assert winner is not None and winner not in tied
            assert all(kn.means()[winner] - kn.means()[c] <= 1.0 for c in tied)
            assert ("a tie, broken by mean" in kn.verdict()) == bool(tied)
            ties += bool(tied)
    assert kn_at_cap == 0
    assert old_at_cap >= 30
    assert kn_out < old_out / 2
    assert ties >= 200


def test_kn_noise_free_samples_close_the_race() -> None:
    race = Race(["a", "b", "c"], incumbent=None, max_rounds=10, indifference=0.1)
    run_round(race, {"a": 1.0, "b": 1.05, "c": 1.05})
    assert run_round(race, {"a": 1.0, "b": 1.05, "c": 1.05}) == ["a"]  # no noise: W = 0, the means decide
    assert race.finished and race.round == 2 and race.race_winner() == "b" and race.tied() == ["c"]


def test_kn_incumbent_is_kept_and_the_race_ends_once_it_is_beaten() -> None:
    race = Race(["inc", "x", "y"], incumbent="inc", max_rounds=10, indifference=0.5)
    rng = np.random.default_rng(3)
    while not race.finished:
        run_round(race, {"inc": 1.0 + 0.1 * rng.normal(), "x": 5.0 + 0.1 * rng.normal(), "y": 0.9})
    assert race.survivors() == ["inc", "x"] and "y" in race.eliminated
    assert race.race_winner() == "x" and race.round < 10


def test_kn_round_effects_cancel_out() -> None:
    def outcome(drift: float) -> tuple[list[str], list[str]]:
        rng = np.random.default_rng(11)
        race = Race(["a", "b", "c", "d"], incumbent=None, max_rounds=8, indifference=0.5)
        true = {"a": 0.0, "b": -0.4, "c": -2.0, "d": -3.0}
        while not race.finished:
            shift = drift * race.round
            for cid in race.pending():
                race.record(cid, true[cid] + shift + 0.3 * float(rng.normal()))
            race.end_round()
        return race.survivors(), sorted(race.eliminated)

    survivors, eliminated = outcome(0.0)
    assert outcome(25.0) == (survivors, eliminated)
    assert "a" in survivors and {"c", "d"} <= set(eliminated)


def test_kn_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="indifference"):
        Race(["a", "b"], incumbent=None, max_rounds=3, indifference=0.0)
    with pytest.raises(ValueError, match="confidence"):
        Race(["a", "b"], incumbent=None, max_rounds=3, indifference=0.02, confidence=1.0)


def kn_simulate(gaps: str, delta: float, races: int, seed: int) -> tuple[float, float, float]:
    """PCS, P(within δ) and trials as a share of fixed N=10 of the KN race, 6 candidates, σ = 1."""
    rng = np.random.default_rng(seed)
    correct = within = trials = 0
    for _ in range(races):
        behind = np.full(5, delta) if gaps == "slippage" else rng.uniform(0.0, 2 * delta, 5)
        true = np.concatenate([[0.0], -behind])
        ids = [f"c{i}" for i in rng.permutation(6)]
        race = Race(ids, incumbent=None, max_rounds=10, indifference=delta, confidence=0.95)
        while not race.finished:
            for cid in race.pending():
                race.record(cid, float(true[int(cid[1:])] + rng.normal()))
            race.end_round()
        pick = race.race_winner()
        assert pick is not None
        correct += pick == "c0"
        within += -true[int(pick[1:])] < delta
        trials += race.trials_used
    return correct / races, within / races, trials / (races * 60)


def test_kn_meets_the_targets_where_the_cap_lets_it() -> None:
    """δ = 1.5σ, 10 rounds (the triangle closes before the cap): every other candidate exactly δ
    behind — the least favourable case — is still picked right ≥ 95 % of the time (bench, 10000
    races: ~97.5 %) at well under half the fixed-N trials; with gaps spread over 0–2δ the pick is
    within δ of the best ≥ 95 % of the time."""
    pcs, _, share = kn_simulate("slippage", 1.5, races=400, seed=0)
    assert pcs >= 0.95
    assert share <= 0.45
    _, within, share = kn_simulate("all_gaps", 1.5, races=300, seed=1)
    assert within >= 0.95
    assert share <= 0.5


def test_kn_state_round_trip_resumes_mid_round() -> None:
    race = Race(["a", "b", "c"], incumbent="a", max_rounds=5, indifference=0.05, confidence=0.9)
    run_round(race, {"a": 1.0, "b": 2.0, "c": 0.5})
    race.record("b", 2.1)
    state = json.loads(json.dumps(race.state()))
    assert state["schema"] == "race.v2" and state["indifference"] == 0.05 and state["confidence"] == 0.9
    restored = Race.from_state(state)
    assert restored.pending() == ["a", "c"]
    for r in (race, restored):
        r.record("a", 1.1)
        r.record("c", 0.45)
        r.end_round()
    assert restored.state() == race.state() and restored.eliminated == race.eliminated


def test_a_race_v1_state_loads_and_resumes_under_the_old_rule() -> None:
    """As the previous version wrote it (an interrupted tournament's state can hold one)."""
    v1 = {
        "schema": "race.v1",
        "ids": ["a", "b", "c"],
        "incumbent": None,
        "max_rounds": 5,
        "min_rounds": 2,
        "alpha": 0.05,
        "samples": {"a": [1.0], "b": [2.0], "c": [0.5]},
        "alive": ["a", "b", "c"],
        "eliminated": {},
        "trials_used": 3,
        "round": 1,
        "round_open": False,
        "incumbent_beaten": False,
    }
    race = Race.from_state(v1)
    assert race.indifference is None and race.alpha == pytest.approx(0.05)
    assert race.pending() == ["a", "b", "c"]
    assert run_round(race, {"a": 1.01, "b": 2.02, "c": 0.49}) == ["a", "c"]
    assert "p=" in race.eliminated["c"]  # the t-test's reason
    assert race.state()["schema"] == "race.v2" and Race.from_state(race.state()).state() == race.state()
