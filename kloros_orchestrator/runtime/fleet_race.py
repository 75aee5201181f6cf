"""Racing across a fleet: a generation's race replayed from its rows; the units it no longer wants dropped.

Theory of operation. On one host a tournament feeds its race one round at a time (every surviving
candidate's round score against the stock trials of that round) and stops giving trials to the
candidates the race eliminates (``engine.racing``, README "Racing"). In a fleet the rounds of a
generation are work units measured by different hosts, so the race is a pure function of the rows
written so far (:func:`replay_race`):

* a candidate's sample for round ``r`` is its unit's round score — the candidate's trials against
  the stock trials *of the same unit*, i.e. of the host that measured it, over the regimes whose
  stock trial succeeded: each sample is relative to its own host's current configuration, so a
  faster host does not make a candidate look better (hosts as blocks);
* round ``r`` is fed once every survivor's round-``r`` unit is written (units are claimed round by
  round, so rounds fill in order); a unit whose candidate breached a cap fails it, as on one host.

Replaying from the rows, not keeping state, means a new leader (the old one killed) reaches the same
race. The leader replays it whenever units were written since its last look and drops what the race
no longer wants (:func:`drops_for`, ``FleetStore.drop_units``; schema v4's ``dropped`` state, never
claimed and not counted): every unit not yet done of an eliminated candidate, and, once the race is
decided before the generation's last round, every candidate's units from round ``max(2,
dream.min_trials)`` on — the winner keeps enough rounds to be scored, as a tournament's does. A unit
dropped while a host measures it loses its lease (the host stops at once); one finished anyway is not
counted. The conclusion reads the same replay (``fleet_unit.conclude_rows``), and the verdict records
it (``race``: rounds, eliminations, how it was decided).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from kloros_orchestrator.config import RacingConfig
from kloros_orchestrator.engine.racing import Race
from kloros_orchestrator.measure.arms import round_score
from kloros_orchestrator.model import TrialResult

Unit = dict[str, dict[str, TrialResult]]  # "c" / "s" -> regime -> trial


def _units(rows: Sequence[Mapping[str, Any]], regimes: Sequence[str]) -> dict[tuple[str, int], Unit]:
    units: dict[tuple[str, int], Unit] = defaultdict(lambda: {"c": {}, "s": {}})
    for row in rows:
        regime = str(row["regime"])
        if regime not in regimes:
            continue
        side = "c" if row["arm"] == "candidate" else "s"
        units[(str(row["cand_id"]), int(row["round"]))][side][regime] = msgspec.convert(
            row["result"], TrialResult
        )
    return units


def _sample(unit: Unit, regimes: Sequence[str]) -> float | None:
    """The unit's round score over the regimes its stock arm measured (as ``Tournament._race_round``)."""
    cand, stock = unit["c"], unit["s"]
    judged = [r for r in regimes if r in stock and stock[r].ok] or list(regimes)
    if any(r not in cand or r not in stock for r in judged):
        return None
    return round_score({r: cand[r] for r in judged}, {r: stock[r] for r in judged})


def replay_race(
    rows: Sequence[Mapping[str, Any]],
    cand_ids: Sequence[str],
    regimes: Sequence[str],
    *,
    rounds: int,
    racing: RacingConfig,
) -> Race:
    """The generation's race over the rows written so far (module docstring); pure."""
    race = Race(
        list(cand_ids), incumbent=None, max_rounds=rounds,
        indifference=racing.indifference, confidence=racing.confidence,
    )  # fmt: skip
    units = _units(rows, regimes)
    while not race.finished:
        r = race.round
        pending = race.pending()
        if any((c, r) not in units for c in pending):
            break  # round r is not all written yet
        for c in pending:
            unit = units[(c, r)]
            breach = [f"{g}: {t.cap_breach}" for g, t in unit["c"].items() if t.cap_breach]
            if breach:
                race.fail(c, "unsafe: " + "; ".join(breach))
            else:
                race.record(c, _sample(unit, regimes))
        if not race.finished:
            race.end_round()
    return race


def drops_for(race: Race, *, rounds: int, min_trials: int) -> dict[str, int]:
    """Per candidate, the first round the race no longer wants (absent: it wants them all)."""
    drops = dict.fromkeys(race.eliminated, 0)
    if race.finished and race.round < rounds:
        keep = max(2, min_trials)
        for c in race.ids:
            drops.setdefault(c, keep)
    return drops


def race_record(race: Race) -> dict[str, Any]:
    """What the generation's verdict keeps of its race (JSON)."""
    return {
        "rounds": race.round,
        "finished": race.finished,
        "eliminated": dict(race.eliminated),
        "verdict": race.verdict(),
        "trials_used": race.trials_used,
    }


__all__ = ["drops_for", "race_record", "replay_race"]
