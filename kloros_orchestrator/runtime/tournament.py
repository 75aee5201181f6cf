"""One tournament: a generation's candidates and the stock arm, measured in rounds and raced.

Each round gives every surviving arm one trial per regime, in an order shuffled across arms and
regimes so drift does not favour a side. The stock arm (the configuration found at start-up) runs in
every round: every score is relative to it, measured in the same tournament. After each round the
race (Kim & Nelson's indifference-zone procedure, ``dream.racing``; engine/racing.py) eliminates
candidates that trail the leader by more than its allowance, so clear losers stop consuming stress-ng
time; once the race is decided (one survivor, or the allowance has shrunk to nothing) the tournament
stops, since more rounds would not change the pick. Knobs are restored when the tournament ends,
however it ends.

Trials of process-scoped domains may run ``max_parallel`` at a time, each on its own disjoint CPU
set; system-scoped domains always run one trial at a time (two candidates would share one sysctl).

A trial failing as ``knob drift`` (another tool rewrote a knob under it) is kept in
``TournamentOutcome.drift``; at :data:`DRIFT_LIMIT` of them the tournament starts no further trial
(those in flight finish, the partial round is not raced) rather than fighting the other tool.

A round with a contaminated trial (outside CPU load above ``dream.contamination.outside_cpu`` while it
ran, see ``runtime/outside_load.py``) says nothing reliable about any arm in it: it starts no further
trial, its trials are dropped from the outcome (they stay in ``trials.jsonl``; the outcome lists them
in ``contaminated``), and the round is run again with a fresh order. A round's trials therefore reach
``results`` only once the round has finished clean, so no score, pack, race or claim ever sees them.
After ``max_reruns`` re-runs the next contaminated round stops the tournament ("host too busy"),
like a drift stop; D-REAM then does not conclude it (``TournamentOutcome.busy``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import anyio
import numpy as np
from loguru import logger

from kloros_orchestrator.config import ContaminationConfig, RacingConfig
from kloros_orchestrator.engine import Candidate, Race
from kloros_orchestrator.measure.packs import round_score
from kloros_orchestrator.model import STOCK_ARM, Genome, TrialResult
from kloros_orchestrator.runtime.evaluate import is_drift
from kloros_orchestrator.runtime.ports import TrialRunner
from kloros_orchestrator.runtime.records import Progress, format_duration
from kloros_orchestrator.spica.base import SpicaDomain

ArmResults = dict[str, list[TrialResult]]  # regime -> trials of one arm
DRIFT_LIMIT: Final = 3  # knob-drift failures after which a tournament stops starting trials


@dataclass(frozen=True)
class ContaminatedRound:
    """A round dropped for outside load: which round it was, and every trial it ran (none is used)."""

    round: int  # 1-based, the round it was meant to be
    trials: list[tuple[str, TrialResult]]  # (arm, trial), in the order they finished

    @property
    def worst(self) -> TrialResult:
        """The trial with the most outside load (the one to name in a log line)."""
        return max((t for _, t in self.trials), key=lambda t: t.outside_cpu or 0.0)


def cpu_slices(cpu_ids: tuple[int, ...], k: int) -> list[tuple[int, ...]]:
    """``k`` disjoint, contiguous CPU sets of equal size (a remainder CPU is left idle)."""
    k = max(1, min(k, len(cpu_ids)))
    size = len(cpu_ids) // k  # equal sizes, so arms paired in one round get the same capacity
    return [tuple(cpu_ids[i * size : (i + 1) * size]) for i in range(k)]


@dataclass
class TournamentOutcome:
    """Everything measured in one tournament, for the conclusion (packs, baselines, engine)."""

    candidates: list[Candidate]
    regimes: list[str]
    results: dict[str, ArmResults]  # arm -> regime -> trials; the stock arm is ``STOCK_ARM``
    race: Race
    unsafe: dict[str, list[str]] = field(default_factory=dict)
    duration_s: float = 0.0
    drift: list[str] = field(default_factory=list)  # failure texts of the trials failed as knob drift
    contaminated: list[ContaminatedRound] = field(default_factory=list)  # dropped rounds, in order
    busy: str | None = None  # "host too busy: ..." when contaminated rounds stopped the tournament

    @property
    def drift_stopped(self) -> bool:
        """True when the tournament stopped early on :data:`DRIFT_LIMIT` knob-drift failures."""
        return len(self.drift) >= DRIFT_LIMIT

    @property
    def stock(self) -> ArmResults:
        return self.results[STOCK_ARM]

    def trials_used(self, arm: str) -> int:
        return sum(len(v) for v in self.results[arm].values())

    def all_failed(self) -> list[str] | None:
        """The distinct failure reasons when no trial at all succeeded, else None."""
        every = [t for per_arm in self.results.values() for ts in per_arm.values() for t in ts]
        if every and not any(t.ok for t in every):
            return sorted({(t.failure or "?")[:120] for t in every})[:3]
        return None


@dataclass
class Tournament:
    """Runs the rounds of one tournament; :meth:`run` returns a :class:`TournamentOutcome`."""

    domain: SpicaDomain
    stock: Genome
    candidates: list[Candidate]
    regimes: Sequence[str]
    evaluator: TrialRunner
    progress: Progress
    rng: np.random.Generator  # the order of each round
    trials: int
    max_parallel: int = 1
    trial_seconds: float | None = None
    on_status: Callable[[str], object] | None = None  # one-line status (sd_notify)
    contamination: ContaminationConfig = field(default_factory=ContaminationConfig)
    racing: RacingConfig = field(default_factory=RacingConfig)
    # Rounds every arm gets before a decided race may end the tournament: a pack needs this many
    # successful trials per regime (dream.min_trials), so the winner is always scored.
    min_rounds: int = 2

    def __post_init__(self) -> None:
        self._walls: list[float] = []  # wall times of this tournament's trials (the ETA)
        # The running round's trials, (arm, regime, trial): they reach the results once it ends clean.
        self._pending: list[tuple[str, str, TrialResult]] = []
        self.arms: dict[str, Genome] = {
            STOCK_ARM: self.stock,
            **{c.cand_id: c.genome for c in self.candidates},
        }
        self.outcome = TournamentOutcome(
            candidates=self.candidates,
            regimes=list(self.regimes),
            results={a: {r: [] for r in self.regimes} for a in self.arms},
            race=Race(
                [c.cand_id for c in self.candidates],
                incumbent=None,
                max_rounds=self.trials,
                min_rounds=2,
                indifference=self.racing.indifference,
                confidence=self.racing.confidence,
            ),
        )
        par = self.domain.parallel_limit(self.max_parallel)
        self.slices: list[tuple[int, ...] | None] = (
            list(cpu_slices(self.domain.cpu_ids(), par)) if par > 1 else [None]
        )

    async def run(self) -> TournamentOutcome:
        """Every round, then the knobs restored (off the event loop, even when cancelled)."""
        out, pr = self.outcome, self.progress
        pr.tournament_done, pr.round, pr.rounds = 0, 0, self.trials
        pr.tournament_total = len(self.arms) * len(out.regimes) * self.trials
        pr.leader, pr.trial_wall_s, pr.contaminated_rounds, pr.stopped = None, None, 0, None
        t0 = time.monotonic()
        try:
            rnd = 0
            while rnd < self.trials:
                pr.round = rnd + 1
                await self._round()
                if not self._round_contaminated():
                    self._commit_round()
                elif self._drop_round(rnd + 1):
                    continue  # the same round again
                if out.drift_stopped:
                    self._stop_on_drift()
                    break
                if out.busy is not None:
                    break
                self._race_round()
                rnd += 1
                survivors = bool(out.race.survivors())
                scored = not survivors or rnd >= min(self.min_rounds, self.trials)
                decided = out.race.finished and scored and rnd < self.trials
                self._plan_total(0 if decided else self.trials - rnd)
                self._log_round()
                if decided:  # more rounds would not change the pick
                    logger.info(
                        "tournament {}: race decided after {} rounds: {}",
                        self.domain.name, rnd, out.race.verdict(),
                    )
                    break
        finally:
            pr.arm = pr.regime = None
            with anyio.CancelScope(shield=True):
                for problem in await anyio.to_thread.run_sync(self.domain.restore):
                    logger.error("restore after tournament {}: {}", self.domain.name, problem)
        out.duration_s = time.monotonic() - t0
        return out

    async def _round(self) -> None:
        out = self.outcome
        # The stock arm and every survivor; the race decides who stops early, and when all do.
        active = [STOCK_ARM] + [c for c in out.race.survivors() if c not in out.unsafe]
        order = [(a, r) for r in out.regimes for a in active]
        self.rng.shuffle(order)
        width = len(self.slices)
        for i in range(0, len(order), width):
            if out.drift_stopped or self._round_contaminated():
                return
            batch = list(zip(order[i : i + width], self.slices, strict=False))
            if len(batch) == 1:
                (arm, regime), cpus = batch[0]
                await self._trial(arm, regime, cpus)
                continue
            async with anyio.create_task_group() as tg:
                for (arm, regime), cpus in batch:
                    tg.start_soon(self._trial, arm, regime, cpus)

    async def _trial(self, arm: str, regime: str, cpus: tuple[int, ...] | None) -> None:
        pr = self.progress
        if self.on_status is not None:
            self.on_status(
                f"{self.domain.name} gen {pr.generation} trial "
                f"{pr.tournament_done + 1}/{pr.tournament_total} ({arm}, {regime})"
            )
        pr.arm, pr.regime = arm, regime
        tr = await self.evaluator.run_trial(
            self.domain, self.arms[arm], regime, cand_id=arm, duration_s=self.trial_seconds, cpus=cpus
        )
        self._walls.append(tr.wall_s)
        pr.trial_wall_s = sum(self._walls) / len(self._walls) / len(self.slices)  # parallel trials overlap
        self._pending.append((arm, regime, tr))
        # A breach is a safety fact even under outside load: the arm stays unsafe (conservative).
        if tr.cap_breach:
            self.outcome.unsafe.setdefault(arm, []).append(f"{regime}: {tr.cap_breach}")
        if is_drift(tr):
            self.outcome.drift.append(tr.failure or "")
        pr.tournament_done += 1

    def _round_contaminated(self) -> bool:
        return any(tr.contaminated for _, _, tr in self._pending)

    def _commit_round(self) -> None:
        """A clean round's trials join the results (and through them every score and pack)."""
        for arm, regime, tr in self._pending:
            self.outcome.results[arm][regime].append(tr)
        self._pending = []

    def _plan_total(self, rounds_left: int) -> None:
        """The exact total for status: trials done plus the rounds left for the arms still racing."""
        out = self.outcome
        alive = [c for c in out.race.survivors() if c not in out.unsafe]
        per_round = len(out.regimes) * (1 + len(alive))
        self.progress.tournament_total = self.progress.tournament_done + rounds_left * per_round

    def _drop_round(self, rnd: int) -> bool:
        """Drop the running round's trials; True when it is to be run again, False when the tournament
        stops because the host is too busy (more than ``max_reruns`` contaminated rounds)."""
        out, pr, limit = self.outcome, self.progress, self.contamination
        dropped = ContaminatedRound(round=rnd, trials=[(a, tr) for a, _, tr in self._pending])
        self._pending = []
        out.contaminated.append(dropped)
        pr.contaminated_rounds = len(out.contaminated)
        if out.drift_stopped:
            return False  # the drift stop ends the tournament anyway
        worst = dropped.worst
        why = (
            f"outside CPU {worst.outside_cpu or 0.0:.0%} of the host > {limit.outside_cpu:.0%} during "
            f"{worst.cand_id} in {worst.regime}"
        )
        if len(out.contaminated) <= limit.max_reruns:
            self._plan_total(self.trials - rnd + 1)
            logger.warning(
                "{} gen {} round {}/{} contaminated ({}): its {} trial(s) dropped; re-run {} of at most {}",
                self.domain.name, pr.generation, rnd, self.trials, why, len(dropped.trials),
                len(out.contaminated), limit.max_reruns,
            )  # fmt: skip
            return True
        out.busy = (
            f"host too busy: {len(out.contaminated)} contaminated round(s) in this tournament, "
            f"the last at round {rnd}/{self.trials} ({why})"
        )
        pr.tournament_total, pr.stopped = pr.tournament_done, out.busy
        logger.warning(
            "tournament {} gen {} stopped: {}; it is not concluded", self.domain.name, pr.generation, out.busy
        )
        return False

    def _log_round(self) -> None:
        """One INFO line per finished round: trials, eliminations, the race leader, the time left."""
        pr, race = self.progress, self.outcome.race
        means = {c: sum(v) / len(v) for c in race.survivors() if (v := race.samples(c))}
        leader = max(means, key=lambda c: means[c], default=None)
        pr.leader = (
            {"cand_id": leader, "mean_score": round(means[leader], 6), "rounds": len(race.samples(leader))}
            if leader is not None
            else None
        )
        lead = "no leader yet" if leader is None else f"leader {leader} {means[leader]:+.1%} vs the stock arm"
        eta = pr.eta_s()
        logger.info(
            "{} gen {} round {}/{}: {}/{} trials, {} of {} candidates eliminated, {}{}",
            self.domain.name, pr.generation, pr.round, pr.rounds, pr.tournament_done, pr.tournament_total,
            len(race.eliminated), len(self.candidates), lead,
            "" if eta is None or pr.round == pr.rounds else f"; about {format_duration(eta)} left",
        )  # fmt: skip

    def _stop_on_drift(self) -> None:
        drift = self.outcome.drift
        self.progress.tournament_total = self.progress.tournament_done
        logger.warning(
            "tournament {}: stopped after {} knob-drift failures: another tool keeps rewriting its knobs; "
            "last: {}",
            self.domain.name, len(drift), drift[-1],
        )  # fmt: skip

    def _race_round(self) -> None:
        out, race = self.outcome, self.outcome.race
        if race.finished:
            return
        stock = out.stock
        # A stock trial that failed is no fault of the candidates: this round's samples compare the
        # regimes the stock arm measured (none: every candidate's sample is missing, as before).
        judged = [r for r in out.regimes if stock[r] and stock[r][-1].ok] or list(out.regimes)
        for c in race.pending():
            if c in out.unsafe:
                race.fail(c, "unsafe: " + "; ".join(out.unsafe[c]))
                continue
            arm = out.results[c]
            race.record(c, round_score({r: arm[r][-1] for r in judged}, {r: stock[r][-1] for r in judged}))
        if not race.finished:
            for c in race.end_round():
                logger.info("race: {} eliminated: {}", c, race.eliminated.get(c))


__all__ = ["DRIFT_LIMIT", "ArmResults", "ContaminatedRound", "Tournament", "TournamentOutcome", "cpu_slices"]
