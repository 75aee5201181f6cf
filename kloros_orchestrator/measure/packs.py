"""``candidate_pack.v2`` and ``baselines.v2``: one typed schema, built from trials, written and read.

Every number in a pack is computed from the trials handed in: per-regime KPI values, the stock
baseline's mean measured in the same tournament (interleaved, so drift does not favour a side),
deltas against it, bootstrap 95% CIs, and the ``score_v2`` of the README ("How a number is made").
A KPI with no measured value is listed in ``missing_kpis`` and appears nowhere else.

The Structs below are the file format: ``build_pack``/``baseline_entry`` construct them once (pure,
no I/O), ``write_pack``/``write_baselines`` encode them once, and ``load_pack``/``read_baselines``
decode into the same types. Both directions run the same checks (``validate_pack``) for what the
types cannot say — finite numbers (msgspec writes NaN as null, which would not read back) and
intervals with lower ≤ upper — so a pack that could not be read back cannot be written.

The formats are a contract read by outside checks and are additive: every key keeps its meaning,
new keys get defaults so files written by older versions still load, and unknown keys in a file
are ignored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
import numpy as np

from kloros_orchestrator.errors import SchemaError
from kloros_orchestrator.measure.arms import (
    Trials,
    arm_score,
    arm_score_ci,
    kpi_means,
    kpi_values,
    scoring_shortfall,
    stressor_means,
    successful,
)
from kloros_orchestrator.measure.arms import round_score as round_score  # the race's, re-exported
from kloros_orchestrator.measure.scoring import OVERALL, improves_over_baseline
from kloros_orchestrator.measure.stats import bootstrap_mean_ci
from kloros_orchestrator.model import REGIMES, Scalar, TrialResult
from kloros_orchestrator.safefs import (
    MAX_JSON_DEPTH,
    RefusedFile,
    move_aside_for,
    nesting_exceeds,
    read_bounded,
)
from kloros_orchestrator.store import atomic_write_bytes

Interval = tuple[float, float]

PACK_SCHEMA: Final = "candidate_pack.v2"
BASELINES_SCHEMA: Final = "baselines.v2"
MAX_PACK_BYTES: Final = 8 * 2**20
MAX_BASELINES_BYTES: Final = 8 * 2**20
NOT_MEASURED: Final = "not measured in any trial"
NO_INTERVAL: Final = "fewer than 2 successful trials in a regime: no interval, so no claim of improvement"

# --- the schema ----------------------------------------------------------------------------------
# Field order is key order on disk (kw_only lets defaulted fields sit where they were always written).


class PackRegime(msgspec.Struct, frozen=True, kw_only=True):
    """One regime of a candidate: its trials' KPI values against the stock arm of the same tournament."""

    regime: str
    trials: int  # successful trials
    attempted: int
    failures: list[str]  # why each failed trial failed
    kpis: dict[str, list[float]]  # KPI -> one value per successful trial
    baseline: dict[str, float | str]  # KPI -> stock mean, plus "baseline_id"
    delta: dict[str, list[float]]  # KPI -> value − baseline, per trial
    ci95: dict[str, Interval]  # KPI -> bootstrap CI of the mean; absent for a KPI measured once


class PackAggregate(msgspec.Struct, frozen=True, kw_only=True):
    means: dict[str, dict[str, float]]  # KPI -> {regime: mean, "overall": mean of regime means}
    score_v2: float | None
    score_ci95: Interval | None
    improves_over_baseline: bool  # only when score_ci95's lower bound is above 0
    score_ci_note: str | None = None  # why a scored pack has no interval
    scored: bool
    not_scored_reason: str | None


class CandidatePack(msgspec.Struct, frozen=True, kw_only=True):
    """A ``candidate_pack.v2`` file."""

    schema: Literal["candidate_pack.v2"] = PACK_SCHEMA
    run_id: str
    domain: str
    cand_id: str
    generation: int
    spica_id: str
    genome: dict[str, Scalar]
    regimes: list[PackRegime]
    aggregate: PackAggregate
    safe: bool
    unsafe_reasons: list[str]
    missing_kpis: list[str]
    missing_reasons: dict[str, str]  # missing KPI -> why
    code_hash: str
    lineage: dict[str, Any] = {}  # parent, generation, mutations
    eliminated: str | None = None  # why racing eliminated it, None when it ran every trial
    stress_ng_version: str | None = None  # bogo-ops compare only within one stress-ng version
    # The configuration the stock arm measured (the host's current one), and whether this candidate's
    # effective knobs are that configuration: such a pack is never an improvement (additive fields).
    current_genome: dict[str, Scalar] | None = None
    same_as_current: bool = False
    # A generation's best was chosen from ``selected_from`` scored candidates; ``selection_ci`` is its
    # score interval at level 1 - 0.05/selected_from (the claim an improvement needs, when k > 1).
    selected_from: int | None = None
    selection_ci: Interval | None = None
    # {regime: {stressor: mean bogo-ops/s}} of the candidate and of the stock arm: what the score's
    # per-stressor throughput ratio is made of. A regime is present only where every successful trial
    # of that arm carried the same stressors (absent for command workloads and older trials).
    stressor_throughput: dict[str, dict[str, float]] = {}
    current_stressor_throughput: dict[str, dict[str, float]] = {}


class PackContext(msgspec.Struct, frozen=True):
    """What every pack of one tournament shares."""

    run_id: str
    domain: str
    generation: int
    baseline_ids: dict[str, str]  # regime -> id of the stock measurement
    expected_kpis: tuple[str, ...]
    missing_reasons: dict[str, str]  # KPI -> why the host cannot measure it
    min_trials: int  # successful trials per regime (each arm) needed for a score
    code_hash: str
    n_boot: int
    stress_ng_version: str | None
    current_genome: dict[str, Scalar] | None = None  # the stock arm's configuration


class BaselineEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One ``baselines.v2`` entry: the stock arm of one domain in one regime."""

    kpis: dict[str, float]  # KPI -> mean over successful trials
    ci95: dict[str, Interval]
    trials: int
    baseline_id: str
    code_hash: str
    measured_at: str  # ISO 8601
    # Bogo-ops are only comparable within one stress-ng version and kernel: both are recorded.
    stress_ng_version: str | None = None
    kernel: str | None = None
    genome: dict[str, Scalar] | None = None  # the stock knob values


# --- from trials to numbers ----------------------------------------------------------------------


def corrected_for_selection(
    pack: CandidatePack, arm: Trials, stock: Trials, k: int, *, rng: np.random.Generator, n_boot: int
) -> CandidatePack:
    """The best of ``k`` scored candidates claims an improvement only when its score interval at the
    Bonferroni level ``1 - 0.05/k`` stays above 0: the maximum of several noisy scores is biased
    upwards, and a plain 95 % interval of it is too often above 0 under no effect at all."""
    agg = pack.aggregate
    if k < 2 or not agg.improves_over_baseline or agg.score_v2 is None:
        return msgspec.structs.replace(pack, selected_from=k)
    lo, hi = arm_score_ci(arm, stock, rng=rng, n_boot=n_boot, level=1.0 - 0.05 / k)
    wide = (min(lo, agg.score_v2), max(hi, agg.score_v2))
    if wide[0] > 0.0:
        return msgspec.structs.replace(pack, selected_from=k, selection_ci=wide)
    note = f"the best of {k}: its interval corrected for that selection reaches 0"
    aggregate = msgspec.structs.replace(agg, improves_over_baseline=False, score_ci_note=note)
    return msgspec.structs.replace(pack, aggregate=aggregate, selected_from=k, selection_ci=wide)


def _kpi_cis(
    values: Mapping[str, list[float]], *, rng: np.random.Generator, n_boot: int
) -> dict[str, Interval]:
    # One value has no interval: a KPI measured once gets no ci95 entry rather than [x, x].
    out: dict[str, Interval] = {}
    for k, v in values.items():
        if len(v) >= 2:
            lo, hi = bootstrap_mean_ci(np.asarray(v), rng=rng, n_boot=n_boot)
            out[k] = (float(lo), float(hi))
    return out


def _pack_regime(
    regime: str,
    trials: Sequence[TrialResult],
    stock: Sequence[TrialResult],
    baseline_id: str,
    *,
    rng: np.random.Generator,
    n_boot: int,
) -> PackRegime:
    values = kpi_values(trials)
    base = kpi_means(stock)
    return PackRegime(
        regime=regime,
        trials=successful(trials),
        attempted=len(trials),
        failures=[t.failure for t in trials if not t.ok and t.failure],
        kpis=values,
        baseline={**base, "baseline_id": baseline_id},
        delta={k: [v - base[k] for v in vals] for k, vals in values.items() if k in base},
        ci95=_kpi_cis(values, rng=rng, n_boot=n_boot),
    )


def _means(regimes: Sequence[PackRegime]) -> dict[str, dict[str, float]]:
    """KPI -> {regime: mean, "overall": mean of the regime means}."""
    means: dict[str, dict[str, float]] = {}
    for reg in regimes:
        for k, v in reg.kpis.items():
            means.setdefault(k, {})[reg.regime] = float(np.mean(v))
    for m in means.values():
        m[OVERALL] = float(np.mean(list(m.values())))
    return means


def _aggregate(
    arm: Trials, stock: Trials, regimes: Sequence[PackRegime], ctx: PackContext, rng: np.random.Generator
) -> PackAggregate:
    score: float | None = None
    ci: Interval | None = None
    note: str | None = None
    shortfall = scoring_shortfall(arm, stock, ctx.min_trials)
    if shortfall is None:
        score = arm_score(arm, stock)
        if score is None:
            shortfall = "no regime could be scored (throughput absent)"
        elif min(min(successful(arm[r]), successful(stock.get(r, ()))) for r in arm) < 2:
            note = NO_INTERVAL
        else:
            lo, hi = arm_score_ci(arm, stock, rng=rng, n_boot=ctx.n_boot)
            # A percentile CI of a ratio need not contain the plug-in estimate; widen to contain it.
            ci = (min(lo, score), max(hi, score))
    return PackAggregate(
        means=_means(regimes),
        score_v2=None if score is None else float(score),
        score_ci95=ci,
        improves_over_baseline=improves_over_baseline(ci),
        score_ci_note=note,
        scored=score is not None,
        not_scored_reason=shortfall,
    )


def build_pack(
    ctx: PackContext,
    *,
    cand_id: str,
    spica_id: str,
    genome: Mapping[str, Scalar],
    arm: Trials,
    stock: Trials,
    unsafe_reasons: Sequence[str],
    rng: np.random.Generator,
    lineage: Mapping[str, Any] | None = None,
    eliminated: str | None = None,
) -> CandidatePack:
    """The pack of one candidate arm against the stock arm of the same tournament (pure)."""
    regimes = [
        _pack_regime(r, arm[r], stock.get(r, ()), ctx.baseline_ids.get(r, ""), rng=rng, n_boot=ctx.n_boot)
        for r in REGIMES
        if r in arm
    ]
    aggregate = _aggregate(arm, stock, regimes, ctx, rng)
    same = ctx.current_genome is not None and dict(genome) == dict(ctx.current_genome)
    if same and aggregate.improves_over_baseline:  # the current configuration cannot beat itself
        aggregate = msgspec.structs.replace(aggregate, improves_over_baseline=False)
    missing = sorted(set(ctx.expected_kpis) - {k for reg in regimes for k in reg.kpis})
    cand_rates = {r.regime: stressor_means(arm[r.regime]) for r in regimes}
    stock_rates = {r.regime: stressor_means(stock.get(r.regime, ())) for r in regimes}
    return CandidatePack(
        run_id=ctx.run_id,
        domain=ctx.domain,
        cand_id=cand_id,
        generation=ctx.generation,
        spica_id=spica_id,
        genome=dict(genome),
        regimes=regimes,
        aggregate=aggregate,
        safe=not unsafe_reasons,
        unsafe_reasons=list(unsafe_reasons),
        missing_kpis=missing,
        missing_reasons={k: ctx.missing_reasons.get(k, NOT_MEASURED) for k in missing},
        code_hash=ctx.code_hash,
        # Through JSON (tuples become lists), so the pack equals what reading it back gives.
        lineage=msgspec.json.decode(msgspec.json.encode(dict(lineage or {}))),
        eliminated=eliminated,
        stress_ng_version=ctx.stress_ng_version,
        current_genome=None if ctx.current_genome is None else dict(ctx.current_genome),
        same_as_current=same,
        stressor_throughput={r: m for r, m in cand_rates.items() if m is not None},
        current_stressor_throughput={r: m for r, m in stock_rates.items() if m is not None},
    )


def baseline_entry(
    trials: Sequence[TrialResult],
    *,
    baseline_id: str,
    code_hash: str,
    measured_at: str,
    rng: np.random.Generator,
    n_boot: int,
    stress_ng_version: str | None = None,
    kernel: str | None = None,
    genome: Mapping[str, Scalar] | None = None,
) -> BaselineEntry:
    """One ``baselines.v2`` regime entry from the stock arm's trials (pure)."""
    values = kpi_values(trials)
    return BaselineEntry(
        kpis={k: float(np.mean(v)) for k, v in values.items()},
        ci95=_kpi_cis(values, rng=rng, n_boot=n_boot),
        trials=successful(trials),
        baseline_id=baseline_id,
        code_hash=code_hash,
        measured_at=measured_at,
        stress_ng_version=stress_ng_version,
        kernel=kernel,
        genome=None if genome is None else dict(genome),
    )


# --- what the types cannot say -------------------------------------------------------------------
# Each check yields (field, problem); the field path has the form msgspec uses in its own errors.

Problems = Iterator[tuple[str, str]]


def _number(x: object, field: str) -> Problems:
    if isinstance(x, float) and not math.isfinite(x):
        yield field, f"{x} is not a finite number"


def _numbers(values: Mapping[str, Any], field: str) -> Problems:
    """Every float in a {key: number} or {key: [numbers]} mapping."""
    for k, v in values.items():
        if isinstance(v, list | tuple):
            for i, x in enumerate(v):
                yield from _number(x, f"{field}.{k}[{i}]")
        else:
            yield from _number(v, f"{field}.{k}")


def _rates(rates: Mapping[str, float], field: str) -> Problems:
    for k, x in rates.items():
        if not (math.isfinite(x) and x >= 0.0):
            yield f"{field}.{k}", f"{x} is not a finite rate >= 0"


def _intervals(cis: Mapping[str, Interval], field: str) -> Problems:
    for k, (lo, hi) in cis.items():
        yield from _numbers({k: (lo, hi)}, field)
        if not lo <= hi:
            yield f"{field}.{k}", f"lower bound {lo} above upper {hi}"


def _pack_problems(pack: CandidatePack) -> Problems:
    yield from _numbers(pack.genome, "genome")
    for i, reg in enumerate(pack.regimes):
        at = f"regimes[{i}]"
        yield from _numbers(reg.kpis, f"{at}.kpis")
        yield from _numbers(reg.baseline, f"{at}.baseline")
        yield from _numbers(reg.delta, f"{at}.delta")
        yield from _intervals(reg.ci95, f"{at}.ci95")
        both = sorted(set(reg.kpis) & set(pack.missing_kpis))
        if both:
            yield f"{at}.kpis", f"has values for KPIs listed as missing: {both}"
    agg = pack.aggregate
    for k, by_regime in agg.means.items():
        yield from _numbers(by_regime, f"aggregate.means.{k}")
    yield from _number(agg.score_v2, "aggregate.score_v2")
    if agg.score_ci95 is not None:
        yield from _intervals({"score_ci95": agg.score_ci95}, "aggregate")
    if agg.improves_over_baseline and not improves_over_baseline(agg.score_ci95):
        yield "aggregate.improves_over_baseline", "true without a score_ci95 whose lower bound is above 0"
    if agg.scored != (agg.score_v2 is not None):
        yield "aggregate.scored", f"{agg.scored} but score_v2 is {agg.score_v2}"
    if pack.selection_ci is not None:
        yield from _intervals({"selection_ci": pack.selection_ci}, "pack")
        if agg.improves_over_baseline and pack.selection_ci[0] <= 0.0:
            yield "aggregate.improves_over_baseline", "true though the selection-corrected interval reaches 0"
    if pack.same_as_current and agg.improves_over_baseline:
        yield "aggregate.improves_over_baseline", "true for the current configuration itself"
    for field, table in (
        ("stressor_throughput", pack.stressor_throughput),
        ("current_stressor_throughput", pack.current_stressor_throughput),
    ):
        for regime, rates in table.items():
            yield from _rates(rates, f"{field}.{regime}")
    if pack.current_genome is not None:
        yield from _numbers(pack.current_genome, "current_genome")
        if pack.same_as_current != (pack.genome == pack.current_genome):
            yield "same_as_current", f"{pack.same_as_current} but the genomes say otherwise"


def _baseline_problems(entry: BaselineEntry, field: str) -> Problems:
    yield from _numbers(entry.kpis, f"{field}.kpis")
    yield from _intervals(entry.ci95, f"{field}.ci95")
    yield from _numbers(entry.genome or {}, f"{field}.genome")


def _raise_first(problems: Problems, where: str) -> None:
    for field, problem in problems:
        raise SchemaError(where, field, problem)


def validate_pack(pack: CandidatePack, where: str) -> None:
    """Raise SchemaError(where, field, problem) for what the types cannot express."""
    _raise_first(_pack_problems(pack), where)


# --- files ---------------------------------------------------------------------------------------

_AT = re.compile(r"^(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")


def _schema_error(e: msgspec.ValidationError, where: str, prefix: str = "") -> SchemaError:
    """msgspec's "problem - at `$.a[1].b`" as SchemaError(where, "a[1].b", problem)."""
    m = _AT.match(str(e))
    problem = m.group("problem") if m else str(e)
    field = (m.group("path") or "").lstrip(".") if m else ""
    missing = _MISSING.match(problem)
    if missing:
        field = f"{field}.{missing.group('field')}" if field else missing.group("field")
    if prefix:
        field = f"{prefix}.{field}" if field else prefix
    return SchemaError(where, field or "<document>", problem)


def _encode(obj: Any) -> bytes:
    # Indented: these files are read by people too.
    return msgspec.json.format(msgspec.json.encode(obj), indent=2) + b"\n"


def _decode_pack(raw: bytes, where: str) -> CandidatePack:
    try:
        return msgspec.json.decode(raw, type=CandidatePack)
    except msgspec.ValidationError as e:
        raise _schema_error(e, where) from e
    except msgspec.DecodeError as e:
        raise SchemaError(where, "<document>", f"not valid JSON: {e}") from e


def write_pack(path: Path, pack: CandidatePack) -> None:
    """Validate, encode once, write atomically; raise SchemaError for a pack that would not read back."""
    where = str(path)
    validate_pack(pack, where)  # before encoding: the encoder would turn NaN into null
    data = _encode(pack)
    # Struct construction does not check types; decoding what is about to be written does.
    _decode_pack(data, where)
    atomic_write_bytes(Path(path), data)


def _read(path: Path, max_bytes: int) -> bytes:
    """The file's bytes; SchemaError for a file refused by ``read_bounded`` or nested too deeply."""
    try:
        raw = read_bounded(path, max_bytes=max_bytes)
    except RefusedFile as e:
        raise SchemaError(str(path), "<document>", f"unreadable: {e.strerror}") from None
    if nesting_exceeds(raw):
        raise SchemaError(str(path), "<document>", f"nested deeper than {MAX_JSON_DEPTH} levels")
    return raw


def load_pack(path: Path, *, move_aside: bool = True) -> CandidatePack:
    """Read and validate a pack; a corrupted or schema-violating file raises SchemaError(file, field).

    Read through ``read_bounded`` (no link, no FIFO, at most MAX_PACK_BYTES, nesting checked). A
    bad file is moved aside (``<name>.rejected-<ts>``, said in the problem) unless ``move_aside``
    is False; a missing or transiently unreadable one stays.
    """
    where = str(path)
    try:
        pack = _decode_pack(_read(Path(path), MAX_PACK_BYTES), where)
        validate_pack(pack, where)
    except OSError as e:  # missing, or a failing disk: nothing to move aside
        raise SchemaError(where, "<document>", f"unreadable: {e.strerror or e}") from e
    except SchemaError as e:
        raise (move_aside_for(e) if move_aside else e) from None
    return pack


Baselines = dict[str, dict[str, BaselineEntry]]  # domain -> regime -> entry


def _parse_baselines(doc: Any, where: str) -> tuple[Baselines, list[str]]:
    """The valid entries of a decoded ``baselines.v2`` document, and a problem per invalid one."""
    if not isinstance(doc, dict) or doc.get("schema") != BASELINES_SCHEMA:
        return {}, [str(SchemaError(where, "schema", f"not a {BASELINES_SCHEMA} document"))]
    entries: Baselines = {}
    problems: list[str] = []
    for domain, regimes in doc.items():
        if domain == "schema":
            continue
        if not isinstance(regimes, dict):
            problems.append(str(SchemaError(where, domain, "expected an object of regimes")))
            continue
        for regime, raw in regimes.items():
            try:
                entry = msgspec.convert(raw, BaselineEntry)
                _raise_first(_baseline_problems(entry, f"{domain}.{regime}"), where)
            except msgspec.ValidationError as e:
                problems.append(str(_schema_error(e, where, f"{domain}.{regime}")))
            except SchemaError as e:
                problems.append(str(e))
            else:
                entries.setdefault(domain, {})[regime] = entry
    return entries, problems


def read_baselines(path: Path, *, move_aside: bool = True) -> tuple[Baselines, str | None]:
    """The entries of a ``baselines.v2`` file by domain and regime, and what was wrong with it.

    A missing file is no problem (nothing measured yet). An unreadable file, one that is not
    ``baselines.v2``, or an invalid entry gives a problem string (file: field: problem) for the
    caller to log; the entries that could be read are still returned. A file that yields nothing
    (a link, a FIFO, over MAX_BASELINES_BYTES, nested too deeply, not JSON, not ``baselines.v2``)
    is moved aside unless ``move_aside`` is False, so the next write starts a clean one.
    """
    where = str(path)
    try:
        raw = _read(Path(path), MAX_BASELINES_BYTES)
        try:
            doc = msgspec.json.decode(raw)
        except msgspec.DecodeError as e:
            raise SchemaError(where, "<document>", f"not valid JSON: {e}") from None
        if not isinstance(doc, dict) or doc.get("schema") != BASELINES_SCHEMA:
            raise SchemaError(where, "schema", f"not a {BASELINES_SCHEMA} document")
    except FileNotFoundError:
        return {}, None
    except OSError as e:
        return {}, str(SchemaError(where, "<document>", f"unreadable: {e.strerror or e}"))
    except SchemaError as e:
        return {}, str(move_aside_for(e) if move_aside else e)
    entries, problems = _parse_baselines(doc, where)
    return entries, "; ".join(problems) or None


def write_baselines(path: Path, entries: Mapping[str, Mapping[str, BaselineEntry]]) -> None:
    """Write ``{"schema": "baselines.v2", domain: {regime: entry}}`` atomically.

    Raise SchemaError (nothing written) for an entry that would not read back.
    """
    where = str(path)
    if "schema" in entries:
        raise SchemaError(where, "schema", "is the format's own key, not a domain")
    for domain, regimes in entries.items():
        for regime, entry in regimes.items():
            _raise_first(_baseline_problems(entry, f"{domain}.{regime}"), where)
    data = _encode({"schema": BASELINES_SCHEMA, **{d: dict(r) for d, r in entries.items()}})
    _, problems = _parse_baselines(msgspec.json.decode(data), where)
    if problems:
        raise SchemaError(where, "<document>", "; ".join(problems))
    atomic_write_bytes(Path(path), data)
