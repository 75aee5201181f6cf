"""Hosts as blocks: per-host scores against each host's own stock arm, the fleet test across hosts,
the harm guard, the Bonferroni level, and per-host adoption. No database: trial rows are simulated.

The simulation: each host measures a candidate in units (one round, two regimes), the candidate and
stock trial of a unit share the round's drift (pairing cancels it); every trial has its own
multiplicative noise. ``mixed`` carries two stressors of very different rates (per-stressor scoring).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping

import msgspec
import numpy as np
import pytest
from scipy import stats

from kloros_orchestrator.fleet.verdict import (
    FleetTrial,
    FleetVerdict,
    choose_test,
    fleet_test,
    fleet_verdicts,
    host_adopts,
    mean_ci,
)

N_BOOT = 400


def simulate(
    effects: Mapping[str, float],
    *,
    seed: int,
    cand_id: str = "c0",
    rounds: int = 6,
    noise: float = 0.02,
    offsets: Mapping[str, float] | None = None,
) -> list[FleetTrial]:
    """Trials of ``cand_id`` on each host: candidate throughput ×(1 + effect) of the host's stock."""
    rng = np.random.default_rng(seed)
    out: list[FleetTrial] = []
    for host, effect in effects.items():
        scale = (offsets or {}).get(host, 1.0)
        for r in range(rounds):
            drift = float(np.exp(rng.normal(0.0, 0.05)))
            for regime, stressors in (("stress", {"cpu": 2.0e6}), ("mixed", {"cpu": 1.5e6, "vm": 3.0e3})):
                for arm, gain in (("stock", 1.0), ("candidate", 1.0 + effect)):
                    rates = {
                        s: base * scale * gain * drift * float(np.exp(rng.normal(0.0, noise)))
                        for s, base in stressors.items()
                    }
                    p95 = 5.0e4 * float(np.exp(rng.normal(0.0, noise)))
                    out.append(
                        FleetTrial(
                            host=host,
                            cand_id=cand_id,
                            round=r,
                            regime=regime,
                            arm=arm,  # type: ignore[arg-type]
                            ok=True,
                            kpis={"throughput_ops": sum(rates.values()), "p95_latency_ns": p95},
                            stressor_ops=rates,
                        )
                    )
    return out


def verdict_of(trials: list[FleetTrial], cand_id: str = "c0", seed: int = 1) -> FleetVerdict:
    return fleet_verdicts(trials, seed=seed, n_boot=N_BOOT)[cand_id]


@pytest.mark.parametrize("seed", range(5))
def test_three_hosts_each_five_per_cent_better_is_promoted(seed: int) -> None:
    v = verdict_of(simulate({"a": 0.05, "b": 0.05, "c": 0.05}, seed=seed))
    assert v.promoted, v.reason
    assert v.test == "t" and v.p_value is not None and v.p_value <= v.alpha == pytest.approx(0.05)
    assert v.effect == pytest.approx(0.05, abs=0.015)
    assert v.ci is not None and v.ci[0] > 0.0
    assert [h.host for h in v.hosts] == ["a", "b", "c"]
    assert all(h.pairs == 12 and h.rounds == 6 and h.ci is not None for h in v.hosts)
    assert all(h.score == pytest.approx(0.05, abs=0.025) for h in v.scored_hosts)
    assert "positive across hosts: one-sided t-test" in v.reason
    for host in ("a", "b", "c", "d-never-measured-it"):
        assert host_adopts(v, host).adopt


def test_one_host_much_better_and_two_slightly_worse_is_not_promoted() -> None:
    v = verdict_of(simulate({"a": 0.15, "b": -0.03, "c": -0.03}, seed=3))
    assert v.effect is not None and v.effect > 0.02  # the mean of the hosts says "better"
    assert not v.promoted
    assert v.p_value is not None and v.p_value > v.alpha
    assert v.reason.split("not promoted: ")[1].startswith("not positive across hosts")
    assert not any(host_adopts(v, h).adopt for h in ("a", "b", "c", "d"))


def test_one_harmed_host_blocks_a_promotion_the_test_alone_would_grant() -> None:
    effects = {f"h{i}": 0.08 for i in range(6)} | {"h6": -0.05}
    v = verdict_of(simulate(effects, seed=4, noise=0.01))
    assert v.test == "wilcoxon"  # 7 hosts, one candidate: 2^-7 <= 0.05
    assert v.p_value == pytest.approx(2 / 128)  # W+ = 27 of 28: only the harmed host's rank is missing
    assert v.p_value is not None and v.p_value <= v.alpha
    assert not v.promoted
    assert "significantly worse on h6" in v.reason
    harmed = {h.host for h in v.hosts if h.significantly_worse}
    assert harmed == {"h6"}


def test_host_offsets_do_not_matter_because_effects_are_relative() -> None:
    effects = {"a": 0.05, "b": 0.04, "c": 0.06}
    same = verdict_of(simulate(effects, seed=5))
    shifted = verdict_of(simulate(effects, seed=5, offsets={"a": 0.7, "b": 1.0, "c": 1.3}))
    assert shifted.promoted and same.promoted
    assert shifted.effect == pytest.approx(same.effect, rel=1e-9)
    assert shifted.p_value == pytest.approx(same.p_value, rel=1e-9)
    for h, g in zip(shifted.hosts, same.hosts, strict=True):
        assert h.score == pytest.approx(g.score, rel=1e-9)
        assert h.ci == pytest.approx(g.ci, rel=1e-9)
    # Comparing a host's candidate with another host's stock would have seen ±30 %, not +5 %.
    assert all(abs((h.score or 0.0) - 0.05) < 0.03 for h in shifted.hosts)


def test_the_test_is_chosen_by_hosts_and_the_corrected_level() -> None:
    assert choose_test(5, 0.05) == "t"
    assert choose_test(6, 0.05) == "wilcoxon"
    assert choose_test(6, 0.05 / 4) == "t"  # 1/64 > 0.0125: the signed-rank test could never pass
    assert choose_test(7, 0.05 / 4) == "wilcoxon"
    assert fleet_test([0.05], 0.05) == ("t", None)
    assert fleet_test([0.05, 0.05, 0.05], 0.05) == ("t", None)  # no spread: undefined, not "certain"
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 6):
        d = rng.normal(0.02, 0.03, n)
        test, p = fleet_test(d, 0.05 / 4)  # 6 hosts and 4 candidates: still the t-test
        ref = stats.ttest_1samp(d, 0.0, alternative="greater")
        assert test == "t" and p == pytest.approx(float(ref.pvalue), rel=1e-9)
        lo, hi = stats.t.interval(0.95, n - 1, loc=float(np.mean(d)), scale=float(stats.sem(d)))
        assert mean_ci(d, 0.95) == pytest.approx((lo, hi), rel=1e-9)


def test_bonferroni_counts_the_candidates_tested() -> None:
    hosts = {"a": 0.05, "b": 0.05, "c": 0.05}
    trials = simulate(hosts, seed=6, cand_id="c0") + simulate(hosts, seed=7, cand_id="c1")
    trials += simulate({"a": 0.05}, seed=8, cand_id="lonely")  # one host: no test, not counted
    verdicts = fleet_verdicts(trials, seed=1, n_boot=N_BOOT)
    assert [v.tested for v in verdicts.values()] == [2, 2, 2]
    assert verdicts["c0"].alpha == pytest.approx(0.025)
    lonely = verdicts["lonely"]
    assert lonely.test is None and lonely.p_value is None and not lonely.promoted
    assert "a fleet verdict needs at least 2" in lonely.reason


def test_a_p_value_between_the_corrected_and_plain_level_promotes_only_alone() -> None:
    hosts = {"a": 0.04, "b": 0.02, "c": 0.05}
    alone = verdict_of(simulate(hosts, seed=9, noise=0.005))
    assert alone.p_value is not None and 0.05 / 4 < alone.p_value <= 0.05, alone.p_value
    assert alone.promoted
    crowd = simulate(hosts, seed=9, noise=0.005)
    for i in range(3):
        crowd += simulate({"a": 0.0, "b": 0.0, "c": 0.0}, seed=20 + i, cand_id=f"other{i}")
    v = verdict_of(crowd)
    assert v.tested == 4 and v.p_value == pytest.approx(alone.p_value)
    assert not v.promoted and "> 0.0125" in v.reason


def test_under_no_effect_the_fleet_rarely_promotes() -> None:
    promoted = sum(
        verdict_of(simulate({h: 0.0 for h in "abcd"}, seed=100 + i, rounds=4), seed=i).promoted
        for i in range(200)
    )
    assert promoted <= 18, promoted  # one-sided 5 %: 10 expected of 200; 18 is > 2.5 sd above


def test_contaminated_trials_never_count() -> None:
    clean = simulate({"a": 0.05, "b": 0.05, "c": 0.05}, seed=10)
    polluted = clean + [
        msgspec.structs.replace(
            t, round=99, contaminated=True, kpis={**t.kpis, "throughput_ops": t.kpis["throughput_ops"] * 3}
        )
        for t in clean
        if t.host == "b" and t.round == 0
    ]
    a, b = verdict_of(clean), verdict_of(polluted)
    assert [h.score for h in a.hosts] == [h.score for h in b.hosts]
    assert a.p_value == b.p_value and a.promoted == b.promoted


def test_a_cap_breach_on_one_host_blocks_promotion_and_its_adoption() -> None:
    trials = simulate({"a": 0.05, "b": 0.05, "c": 0.05}, seed=11)
    first = next(i for i, t in enumerate(trials) if t.host == "c" and t.arm == "candidate")
    trials[first] = msgspec.structs.replace(trials[first], ok=False, cap_breach="temp 95 C > 90 C")
    v = verdict_of(trials)
    assert not v.promoted
    assert "unsafe on c: 1 trial(s) breached a cap" in v.reason
    c = next(h for h in v.hosts if h.host == "c")
    assert c.trials == 12 and c.failed == 1 and c.pairs == 11


def test_adoption_guards_the_host_even_on_a_promoted_verdict() -> None:
    v = verdict_of(simulate({"a": 0.05, "b": 0.05, "c": 0.05}, seed=12))
    assert v.promoted
    worse = msgspec.structs.replace(v.hosts[1], score=-0.04, ci=(-0.06, -0.02))
    forged = msgspec.structs.replace(v, hosts=(v.hosts[0], worse, v.hosts[2]))
    assert host_adopts(forged, "a").adopt
    got = host_adopts(forged, "b")
    assert not got.adopt and "significantly worse on this host" in got.reason


def test_rows_from_the_store_and_duplicates() -> None:
    row = {
        "cand_id": "c0",
        "round": 2,
        "host": "a",
        "regime": "stress",
        "arm": "stock",
        "ok": True,
        "kpis": {"throughput_ops": 10.0},
        "result": {"stressor_ops": {"cpu": 10.0}, "contaminated": False, "cap_breach": None},
    }
    t = FleetTrial.from_row(row)
    assert (t.host, t.cand_id, t.round, t.arm, t.stressor_ops) == ("a", "c0", 2, "stock", {"cpu": 10.0})
    assert FleetTrial.from_row({**row, "result": {}}).stressor_ops == {}
    with pytest.raises(ValueError, match="unknown arm"):
        FleetTrial.from_row({**row, "arm": "bogus"})
    with pytest.raises(ValueError, match="two trial rows"):
        fleet_verdicts([t, t], seed=0)


def test_the_verdict_module_loads_no_scipy_and_no_psycopg() -> None:
    """In a fresh interpreter: this test process has long imported scipy through other tests."""
    code = (
        "import sys\n"
        "import kloros_orchestrator.fleet.verdict\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(done.stdout.split())
    assert "numpy" in loaded  # the check sees what the module does load
    assert "scipy" not in loaded
    assert "psycopg" not in loaded
