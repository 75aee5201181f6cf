"""D-REAM: the continuous evolutionary loop over the enabled SPICA domains.

A *tournament* evaluates one generation: the engine's candidates plus the **stock arm** (the
configuration found at start-up, i.e. the baseline), in rounds. Each round gives every surviving
arm one trial per regime, in an order shuffled across arms and regimes so drift does not favour a
side. After each round the race eliminates candidates statistically behind the leader, so clear
losers stop consuming stress-ng time. Scores are always relative to the stock arm measured in the
same tournament, which is also what ``baselines.json`` is refreshed from.
"""

from __future__ import annotations

import os
import platform
import re
import time
import zlib
from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import numpy as np
import psutil
from loguru import logger

from kloros_orchestrator.core.coordinator import TournamentDone, TournamentStarted
from kloros_orchestrator.core.pacing import PacingInputs, decide, estimate_tournament_s, should_start
from kloros_orchestrator.engine import Candidate, Evolution, Race, SearchSpace
from kloros_orchestrator.errors import DomainError, SchemaError
from kloros_orchestrator.measure.packs import baseline_entry, build_pack, load_pack, round_score
from kloros_orchestrator.model import REGIMES, Genome, TrialResult
from kloros_orchestrator.phase.results import PhaseResults, latest_results, load_results
from kloros_orchestrator.spica.base import SpicaDomain, code_hash
from kloros_orchestrator.spica.registry import available_domains, get_domain_class
from kloros_orchestrator.store import append_jsonl, atomic_write_json, read_json

if TYPE_CHECKING:
    from kloros_orchestrator.runtime.driver import Daemon

STOCK = "stock"
HOF_SIZE = 8
ROLLING = 5
FAILURE_BACKOFF_S = 30.0


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def cpu_slices(cpu_ids: tuple[int, ...], k: int) -> list[tuple[int, ...]]:
    """``k`` disjoint, contiguous CPU sets of equal size (a remainder CPU is left idle)."""
    k = max(1, min(k, len(cpu_ids)))
    size = len(cpu_ids) // k  # equal sizes, so arms paired in one round get the same capacity
    return [tuple(cpu_ids[i * size : (i + 1) * size]) for i in range(k)]


def _declared(space: SearchSpace) -> dict[str, Any]:
    """The declared (original) form of a space, ignoring adaptation: what the host offers."""
    return {n: space.original(n).to_dict() for n in space.names}


def _seed(*parts: object) -> list[int]:
    return [zlib.crc32(str(p).encode()) for p in parts]


class DreamLoop:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self.cfg = daemon.cfg.dream
        self.run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{os.getpid()}"
        self.domains: dict[str, SpicaDomain] = {}
        self.support: dict[str, str] = {}
        self.support_reason: dict[str, str] = {}
        self.engines: dict[str, Evolution] = {}
        self.committed: dict[str, dict[str, Any]] = {}  # engine snapshot before the running tournament
        self.generation: dict[str, int] = {}
        self.hall_of_fame: dict[str, list[dict[str, Any]]] = {}
        self.stock: dict[str, Genome] = {}
        self.durations: dict[str, deque[float]] = {}
        self.best_history: deque[float] = deque(maxlen=ROLLING)
        self.cycle_best: float | None = None
        self._cpu_mark: tuple[float, float, float] | None = None
        self.n_boot = daemon.cfg.bootstrap_samples

    # --- set-up and persistence ------------------------------------------------------------------

    def setup(self) -> None:
        loaded = self.d.loaded
        for name in self.cfg.domains:
            cls = get_domain_class(name)
            dom = cls(
                sysfs_root=loaded.sysfs_root,
                journal=self.d.journal,
                regimes=loaded.regimes.get(name, {}),
                scratch_dir=self.d.paths.scratch / name,
                options={k: v for k, v in self.d.cfg.domain_options.get(name, {}).items() if k != "kind"},
                config_hash=loaded.config_hash,
            )
            dom.discover()
            self.domains[name] = dom
            self.support[name] = dom.support
            self.support_reason[name] = dom.support_reason
            if dom.support != "ok":
                logger.warning("domain {} is {}: {}", name, dom.support, dom.support_reason)
                continue
            self.stock[name] = dom.stock_genome()
            saved = self.d.state.engines.get(name)
            self.engines[name] = self._make_engine(name, dom, saved)
            self.committed[name] = self.engines[name].state()
            self.generation[name] = (
                int(saved.get("generation", 0)) if saved else self._next_generation_on_disk(name)
            )
            self.hall_of_fame[name] = (
                list(saved.get("hall_of_fame", [])) if saved else self._hall_of_fame_from_packs(name)
            )
            self.durations[name] = deque(saved.get("durations", []) if saved else [], maxlen=ROLLING)
            logger.info(
                "domain {}: {} knob(s) {}; dropped {}",
                name,
                len(dom.search_space()),
                sorted(dom.search_space()),
                dom.dropped,
            )

    def _next_generation_on_disk(self, name: str) -> int:
        """Without a saved state, continue numbering after the packs on disk (never overwrite them)."""
        gens = [
            int(m.group(1))
            for p in self.d.paths.candidates(name).glob("gen*_best.json")
            if (m := re.fullmatch(r"gen(\d+)_best\.json", p.name))
        ]
        return max(gens) + 1 if gens else 0

    def _hall_of_fame_from_packs(self, name: str) -> list[dict[str, Any]]:
        """Without a saved state (new or lost state.json), rebuild the hall of fame from the packs
        on disk. A corrupted or schema-violating pack is reported (file and field) and skipped."""
        hof: list[dict[str, Any]] = []
        for path in sorted(self.d.paths.candidates(name).glob("gen*_best.json")):
            try:
                pack = load_pack(path)
            except SchemaError as e:
                logger.error("candidate pack rejected: {}", e)
                self.d.record("pack_rejected", path=str(path), field=e.field, problem=e.problem)
                continue
            agg = pack.aggregate
            if pack.safe and agg.score_v2 is not None and pack.domain == name:
                hof.append(
                    {
                        "cand_id": pack.cand_id,
                        "spica_id": pack.spica_id,
                        "genome": dict(pack.genome),
                        "generation": pack.generation,
                        "score": agg.score_v2,
                        "score_ci95": list(agg.score_ci95) if agg.score_ci95 else None,
                    }
                )
        hof.sort(key=lambda h: h["score"], reverse=True)
        if hof:
            logger.info("domain {}: hall of fame rebuilt from {} pack(s) on disk", name, len(hof))
        return hof[:HOF_SIZE]

    def _make_engine(self, name: str, dom: SpicaDomain, saved: dict[str, Any] | None) -> Evolution:
        space = SearchSpace.from_dict(dom.search_space())
        if saved and saved.get("engine"):
            try:
                restored = Evolution.from_state(saved["engine"])
            except (KeyError, ValueError, TypeError) as e:
                logger.error("saved engine state for {} unusable ({}); starting a new search", name, e)
            else:
                # The host (CPU count, cpufreq, ...) or the code may have changed since: a search
                # over knobs or ranges this host no longer has would ask for genomes it rejects.
                if _declared(restored.space) == _declared(space):
                    return restored
                logger.warning(
                    "search space of {} changed since the saved state; starting a new search", name
                )
                self.d.record("search_restarted", domain=name, reason="search space changed")
        seed = int(np.random.SeedSequence(_seed(self.d.cfg.seed, name)).generate_state(1)[0])
        # The stock genome is not a candidate: the stock arm is measured in every tournament anyway.
        return Evolution(space, population=self.cfg.population, seed=seed, elite=self.cfg.elite)

    def engine_states(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "engine": self.committed.get(name),
                "generation": self.generation.get(name, 0),
                "hall_of_fame": self.hall_of_fame.get(name, []),
                "durations": list(self.durations.get(name, [])),
            }
            for name in self.engines
        }

    def domain_status(self) -> dict[str, str]:
        out = dict.fromkeys(available_domains(), "disabled")
        out.update(self.support)
        return out

    def runnable(self) -> list[str]:
        return [n for n in self.cfg.domains if self.support.get(n) == "ok"]

    # --- the loop ---------------------------------------------------------------------------------

    async def run(self, *, once: bool) -> None:
        names = self.runnable()
        if not names:
            logger.error("no enabled domain is supported on this host: D-REAM has nothing to do")
            if once:
                return
            await anyio.sleep_forever()
        while True:
            start_idx = self.d.state.domain_index % len(names)
            for i in range(start_idx, len(names)):
                name = names[i]
                self.d.state.domain_index = i
                for _ in range(self.cfg.epochs_per_cycle):
                    await self._gate(name, once=once)
                    await self.tournament(name)
            self.d.state.domain_index = 0
            if once:
                return
            await self._pace_after_cycle()

    async def _gate(self, name: str, *, once: bool) -> None:
        """Wait until a tournament may start: D-REAM resumed, and it fits before the next window."""
        while True:
            await self.d.wait_dream_allowed()
            if once:
                return
            est = estimate_tournament_s(tuple(self.durations[name]))
            ttw = self.d.time_to_window()
            if should_start(est, ttw):
                return
            reason = (
                f"next {name} tournament (~{est:.0f} s) would not finish before the window in {ttw:.0f} s"
            )
            self._record_pacing(ttw or 0.0, reason, {"estimate_s": est, "time_to_window_s": ttw}, defer=True)
            await self.d.pace(float("inf"))  # ends when D-REAM is resumed after that window's PHASE

    def _host_busy(self) -> float | None:
        """Host utilisation outside our own workloads since the last call (0..1), or None."""
        cpu = psutil.cpu_times()
        busy = sum(cpu) - cpu.idle - getattr(cpu, "iowait", 0.0)
        ours = sum(os.times()[:4])  # self + reaped children (every stress-ng run we waited for)
        wall = time.monotonic()
        mark, self._cpu_mark = self._cpu_mark, (busy, ours, wall)
        if mark is None or wall - mark[2] <= 0:
            return None
        ncpu = psutil.cpu_count() or 1
        other = (busy - mark[0]) - (ours - mark[1])
        return float(min(1.0, max(0.0, other / ((wall - mark[2]) * ncpu))))

    async def _pace_after_cycle(self) -> None:
        rate = None
        if len(self.best_history) >= 2:
            first, last = self.best_history[0], self.best_history[-1]
            rate = (last - first) / (len(self.best_history) - 1)
        durations = tuple(x for q in self.durations.values() for x in q)
        inputs = PacingInputs(
            recent_durations_s=durations[-ROLLING:],
            improvement_rate=rate,
            host_busy=self._host_busy(),
            time_to_window_s=self.d.time_to_window(),
            min_sleep_s=self.cfg.pacing.min_sleep_s,
            max_sleep_s=self.cfg.pacing.max_sleep_s,
        )
        decision = decide(inputs)
        self._record_pacing(
            decision.sleep_s, decision.reason, decision.inputs, defer=decision.defer_to_window
        )
        await self.d.pace(decision.sleep_s)

    def _record_pacing(self, sleep_s: float, reason: str, inputs: dict[str, Any], *, defer: bool) -> None:
        self.d.status_view.pacing = {
            "last_sleep_s": round(sleep_s, 3),
            "reason": reason,
            "defer_to_window": defer,
        }
        self.d.record("pacing", sleep_s=sleep_s, reason=reason, inputs=inputs, defer_to_window=defer)
        logger.info("pacing: sleep {:.1f} s: {}", sleep_s, reason)

    # --- one tournament ---------------------------------------------------------------------------

    async def tournament(self, name: str) -> None:
        """One tournament; a failure in it is logged and never wedges the coordinator."""
        gen = self.generation[name]
        try:
            await self._run_tournament(name)
        except Exception as e:
            # A bug or an unexpected host error: the knobs are already restored (finally below).
            # Report the tournament done so a window waiting in DRAINING proceeds, and back off.
            logger.exception("tournament {} gen {} failed", name, gen)
            self.d.record("tournament_failed", domain=name, generation=gen, error=repr(e)[:500])
            self.d.dispatch(TournamentDone(now=self.d.clock(), domain=name, generation=gen))
            await self.d.pace(FAILURE_BACKOFF_S)

    async def _run_tournament(self, name: str) -> None:
        d = self.d
        dom = self.domains[name]
        eng = self.engines[name]
        gen = self.generation[name]
        trials_max = self.cfg.trials
        min_trials = min(self.cfg.min_trials, trials_max)
        regimes = [r for r in REGIMES if r in d.loaded.regimes.get(name, {})]
        cands: list[Candidate] = eng.ask()
        arms: dict[str, Genome] = {STOCK: self.stock[name], **{c.cand_id: c.genome for c in cands}}
        results: dict[str, dict[str, list[TrialResult]]] = {a: {r: [] for r in regimes} for a in arms}
        unsafe: dict[str, list[str]] = {}
        race = Race([c.cand_id for c in cands], incumbent=None, max_rounds=trials_max, min_rounds=2)
        rng = np.random.default_rng(_seed(d.cfg.seed, name, gen, "order"))
        sv = d.status_view
        sv.domain, sv.generation = name, gen
        sv.tournament_done, sv.tournament_total = 0, len(arms) * len(regimes) * trials_max
        # max_parallel: only process-scoped domains, each concurrent trial on its own CPU set.
        par = dom.parallel_limit(self.cfg.max_parallel)
        slices: list[tuple[int, ...] | None] = list(cpu_slices(dom.cpu_ids(), par)) if par > 1 else [None]

        async def run_one(arm: str, regime: str, cpus: tuple[int, ...] | None) -> None:
            d.notifier.status(
                f"{d.coord.state}: {name} gen {gen} trial "
                f"{sv.tournament_done + 1}/{sv.tournament_total} ({arm}, {regime})"
            )
            tr = await d.evaluator.run_trial(
                dom, arms[arm], regime, cand_id=arm, duration_s=self.cfg.trial_seconds, cpus=cpus
            )
            results[arm][regime].append(tr)
            if tr.cap_breach:
                unsafe.setdefault(arm, []).append(f"{regime}: {tr.cap_breach}")
            sv.tournament_done += 1

        t0 = time.monotonic()
        d.dispatch(TournamentStarted(now=d.clock(), domain=name, generation=gen))
        d.notifier.status(f"{d.coord.state}: tournament {name} gen {gen} started")
        logger.info(
            "tournament {} gen {}: {} candidates + stock, {} regimes, up to {} trials each",
            name,
            gen,
            len(cands),
            len(regimes),
            trials_max,
        )
        try:
            for rnd in range(trials_max):
                # Survivors get the full trial count; the race only decides who stops early.
                active = [STOCK] + [c for c in race.survivors() if c not in unsafe]
                order = [(a, r) for r in regimes for a in active]
                rng.shuffle(order)
                for i in range(0, len(order), len(slices)):
                    batch = list(zip(order[i : i + len(slices)], slices, strict=False))
                    if len(batch) == 1:
                        (arm, regime), cpus = batch[0]
                        await run_one(arm, regime, cpus)
                        continue
                    async with anyio.create_task_group() as tg:
                        for (arm, regime), cpus in batch:
                            tg.start_soon(run_one, arm, regime, cpus)
                if not race.finished:
                    for c in race.pending():
                        if c in unsafe:
                            race.fail(c, "unsafe: " + "; ".join(unsafe[c]))
                            continue
                        race.record(
                            c,
                            round_score(
                                {r: results[c][r][-1] for r in regimes},
                                {r: results[STOCK][r][-1] for r in regimes},
                            ),
                        )
                    if not race.finished:
                        for c in race.end_round():
                            logger.info("race: {} eliminated: {}", c, race.eliminated.get(c))
                left = trials_max - rnd - 1
                alive = [c for c in race.survivors() if c not in unsafe]
                sv.tournament_total = sv.tournament_done + left * len(regimes) * (1 + len(alive))
        finally:
            for problem in dom.restore():
                logger.error("restore after tournament {}: {}", name, problem)
        duration = time.monotonic() - t0
        self._conclude(name, dom, eng, gen, cands, arms, results, unsafe, race, min_trials, duration)
        d.dispatch(TournamentDone(now=d.clock(), domain=name, generation=gen))
        every = [t for per_arm in results.values() for ts in per_arm.values() for t in ts]
        if every and not any(t.ok for t in every):
            # Nothing measurable (stress-ng gone, scratch dir unwritable, ...): do not spin.
            reasons = sorted({(t.failure or "?")[:120] for t in every})[:3]
            logger.error("every trial of {} gen {} failed: {}", name, gen, reasons)
            d.record("tournament_all_failed", domain=name, generation=gen, reasons=reasons)
            await d.pace(FAILURE_BACKOFF_S)

    def _conclude(
        self,
        name: str,
        dom: SpicaDomain,
        eng: Evolution,
        gen: int,
        cands: list[Candidate],
        arms: dict[str, Genome],
        results: dict[str, dict[str, list[TrialResult]]],
        unsafe: dict[str, list[str]],
        race: Race,
        min_trials: int,
        duration: float,
    ) -> None:
        d = self.d
        rng = np.random.default_rng(_seed(d.cfg.seed, name, gen, "bootstrap"))
        stock_trials = results[STOCK]
        baseline_ids = {r: f"{name}_{r}_{self.run_id}_g{gen}" for r in stock_trials}
        self._write_baselines(name, stock_trials, baseline_ids, rng)
        packs: dict[str, dict[str, Any]] = {}
        told: list[tuple[Candidate, float | None]] = []
        for c in cands:
            try:
                inst = dom.spawn(
                    c.genome,
                    parent=c.parents[0] if c.parents else None,
                    generation=gen,
                    mutations=c.mutations,
                )
            except DomainError as e:
                logger.error("candidate {} of {} rejected by the domain: {}", c.cand_id, name, e)
                told.append((c, None))
                continue
            pack = build_pack(
                run_id=self.run_id,
                domain=name,
                cand_id=c.cand_id,
                generation=gen,
                spica_id=inst.spica_id,
                genome=c.genome,
                arm=results[c.cand_id],
                stock=stock_trials,
                baseline_ids=baseline_ids,
                expected_kpis=dom.kpi_names(),
                missing_reasons=d.evaluator.missing_reasons(),
                unsafe_reasons=unsafe.get(c.cand_id, []),
                min_trials=min_trials,
                code_hash=code_hash(),
                rng=rng,
                n_boot=self.n_boot,
                extra={
                    "lineage": inst.lineage,
                    "eliminated": race.eliminated.get(c.cand_id),
                    "stress_ng_version": d.stress_ng_version,
                },
            )
            packs[c.cand_id] = pack
            agg = pack["aggregate"]
            fitness = agg["score_v2"] if pack["safe"] else None
            told.append((c, fitness))
            append_jsonl(
                d.paths.fitness_history,
                {
                    "ts": d.clock(),
                    "kind": "candidate",
                    "run_id": self.run_id,
                    "domain": name,
                    "generation": gen,
                    "cand_id": c.cand_id,
                    "spica_id": inst.spica_id,
                    "genome": c.genome,
                    "score": agg["score_v2"],
                    "score_ci95": agg["score_ci95"],
                    "trials_used": sum(len(v) for v in results[c.cand_id].values()),
                    "eliminated": c.cand_id in race.eliminated,
                    "elimination": race.eliminated.get(c.cand_id),
                    "safe": pack["safe"],
                    "not_scored_reason": agg["not_scored_reason"],
                },
            )
        eng.tell(told)
        for note in eng.adapt():
            d.record("search_space_adapted", domain=name, generation=gen, change=note)
        scored = [(f, c) for c, f in told if f is not None]
        best_id = (
            max(scored, key=lambda x: x[0])[1].cand_id if scored else (cands[0].cand_id if cands else None)
        )
        if best_id is not None:
            pack = packs[best_id]
            atomic_write_json(d.paths.candidates(name) / f"gen{gen}_best.json", pack)
            if pack["aggregate"]["score_v2"] is not None and pack["safe"]:
                self._promote(name, pack)
                self.best_history.append(float(pack["aggregate"]["score_v2"]))
        self.durations[name].append(duration)
        self.generation[name] = gen + 1
        self.committed[name] = eng.state()
        d.status_view.tournaments += 1
        d.save_state()
        logger.info(
            "tournament {} gen {} done in {:.1f} s; best {} score {}",
            name,
            gen,
            duration,
            best_id,
            packs[best_id]["aggregate"]["score_v2"] if best_id else None,
        )

    def _promote(self, name: str, pack: dict[str, Any]) -> None:
        hof = [h for h in self.hall_of_fame.setdefault(name, []) if h["genome"] != pack["genome"]]
        hof.append(
            {
                "cand_id": pack["cand_id"],
                "spica_id": pack["spica_id"],
                "genome": pack["genome"],
                "generation": pack["generation"],
                "score": pack["aggregate"]["score_v2"],
                "score_ci95": pack["aggregate"]["score_ci95"],
            }
        )
        hof.sort(key=lambda h: h["score"], reverse=True)
        self.hall_of_fame[name] = hof[:HOF_SIZE]

    def _write_baselines(
        self, name: str, stock: dict[str, list[TrialResult]], ids: dict[str, str], rng: np.random.Generator
    ) -> None:
        path = self.d.paths.baselines
        data: dict[str, Any] = {"schema": "baselines.v2"}
        if path.exists():
            try:
                old = read_json(path)
                if isinstance(old, dict) and old.get("schema") == "baselines.v2":
                    data = old
            except ValueError as e:
                logger.error("{} unreadable ({}); rewriting it", path, e)
        measured = now_iso()
        entry = {}
        for regime, trials in stock.items():
            if not any(t.ok for t in trials):
                continue
            entry[regime] = baseline_entry(
                trials,
                baseline_id=ids[regime],
                code_hash=code_hash(),
                measured_at=measured,
                rng=rng,
                n_boot=self.n_boot,
            )
            # Bogo-ops are only comparable within one stress-ng version and kernel: record both.
            entry[regime]["stress_ng_version"] = self.d.stress_ng_version
            entry[regime]["kernel"] = platform.release()
            entry[regime]["genome"] = self.stock[name]
        if entry:
            data[name] = {**data.get(name, {}), **entry}
            atomic_write_json(path, data)

    # --- collapse of PHASE results ---------------------------------------------------------------

    def hall_of_fame_for_phase(self, name: str, k: int) -> list[dict[str, Any]]:
        return list(self.hall_of_fame.get(name, []))[:k]

    def collapse(self, results: PhaseResults, *, source: str) -> dict[str, Any]:
        """Ingest PHASE's verdict; returns what changed (logged with ``results_collapsed``)."""
        changes: dict[str, Any] = {
            "source": source,
            "run_id": results.run_id,
            "complete": results.complete,
            "domains": {},
        }
        for name in results.domains_tested:
            if name not in self.engines:
                continue
            try:
                changes["domains"][name] = self._collapse_domain(name, results)
            except (ValueError, KeyError, TypeError) as e:
                # Results from another host/version may not fit this search: keep our own state.
                logger.error("collapse of {} into {} failed: {}", results.run_id, name, e)
                changes["domains"][name] = {"error": str(e)}
        self.d.state.last_collapsed = results.run_id
        self.d.save_state()
        return changes

    def _collapse_domain(self, name: str, results: PhaseResults) -> dict[str, Any]:
        eng = self.engines[name]
        ch: dict[str, Any] = {
            "baseline_regimes": [],
            "rescored": [],
            "removed": [],
            "seeded": [],
            "space": [],
            "rejected": [],
        }
        m = results.metrics.get(name)
        hof = self.hall_of_fame.setdefault(name, [])
        if m is not None:
            for regime, kpis in m.baseline.items():
                append_jsonl(
                    self.d.paths.fitness_history,
                    {
                        "ts": self.d.clock(),
                        "kind": "phase_baseline",
                        "phase_run_id": results.run_id,
                        "domain": name,
                        "regime": regime,
                        "kpis": kpis,
                    },
                )
                ch["baseline_regimes"].append(regime)
            # PHASE's many-epoch score replaces D-REAM's quick estimate as the variant's fitness.
            for cid, summary in (m.variants or {}).items():
                for h in hof:
                    if h["cand_id"] == cid and summary.score_v2 is not None:
                        h["score"] = summary.score_v2
                        h["score_ci95"] = list(summary.score_ci95) if summary.score_ci95 else None
                        h["phase_run_id"] = results.run_id
                        ch["rescored"].append(cid)
        for f in results.flagged_variants:
            if f.domain != name:
                continue
            before = len(hof)
            hof[:] = [h for h in hof if h["cand_id"] != f.cand_id and h["genome"] != f.genome]
            if len(hof) != before:
                ch["removed"].append({"cand_id": f.cand_id, "reasons": list(f.reasons)})
        hof.sort(key=lambda h: h["score"] if h.get("score") is not None else float("-inf"), reverse=True)
        seeds = [dict(p.genome) for p in results.promoted_variants if p.domain == name]
        if seeds:
            try:
                eng.inject(seeds)
                ch["seeded"] = [p.cand_id for p in results.promoted_variants if p.domain == name]
            except ValueError as e:  # e.g. a genome from before a knob appeared on this host
                logger.error("PHASE-promoted seeds for {} rejected: {}", name, e)
                ch["rejected"].append({"seeds": len(seeds), "error": str(e)})
        for knob, rec in results.search_space_recommendations.get(name, {}).items():
            if rec.action == "keep":
                continue
            try:
                ch["space"].append(eng.space.apply_recommendation(knob, msgspec.to_builtins(rec)))
            except ValueError as e:
                logger.error("PHASE recommendation for {}.{} rejected: {}", name, knob, e)
                ch["rejected"].append({"knob": knob, "error": str(e)})
        self.committed[name] = eng.state()
        return ch

    def collapse_from_disk(self) -> None:
        """At start-up: ingest the latest PHASE results if this state has not yet (validated first)."""
        path = latest_results(self.d.paths.phase)
        if path is None:
            return
        try:
            results = load_results(path)
        except SchemaError as e:
            logger.error("PHASE results rejected, D-REAM continues on its own state: {}", e)
            self.d.record("phase_results_rejected", path=str(path), field=e.field, problem=e.problem)
            return
        if results.run_id == self.d.state.last_collapsed:
            return
        changes = self.collapse(results, source=str(path))
        self.d.record("results_collapsed", changes=changes, from_disk=True)
