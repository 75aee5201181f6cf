"""``phase_results.json`` ("phase_results.v1"): the schema, its validation and the on-disk protocol.

Layout under the phase directory (contract: README, "Files under state_dir")::

    phase/<run_id>/phase_results.json     the results, written atomically
    phase/latest -> <run_id>              relative symlink, replaced atomically
    phase/phase_complete_<unix_ts>        flag for outside tools; content: the results path

``write_results`` does these three steps in that order, so whoever sees a flag or follows
``latest`` finds complete results. ``load_results`` validates and names the exact offending field
(``metrics.cpu.ci95``) in a ``SchemaError``; ``write_results`` runs the same validation first, so
the daemon never writes a file it would refuse to read.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
import types
import typing
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
from loguru import logger

from kloros_orchestrator.errors import SchemaError
from kloros_orchestrator.model import REGIMES, Scalar
from kloros_orchestrator.safefs import (
    MAX_JSON_DEPTH,
    RefusedFile,
    move_aside_for,
    nesting_exceeds,
    read_bounded,
)
from kloros_orchestrator.store import atomic_write_bytes, atomic_write_json, fsync_dir

SCHEMA: Final = "phase_results.v1"
RESULTS_NAME: Final = "phase_results.json"
LATEST_NAME: Final = "latest"
FLAG_PREFIX: Final = "phase_complete_"
DOCUMENT: Final = "<document>"  # the field name used when the problem is the file as a whole
MAX_RESULTS_BYTES: Final = 32 * 2**20

Action = Literal["narrow", "widen", "drop", "keep"]
Interval = tuple[float, float]


class Qtime(msgspec.Struct, frozen=True):
    epochs: int
    slices: int
    replicas: int


class DomainMetrics(msgspec.Struct, frozen=True, omit_defaults=True):
    """Per-domain verdict. ``fitness``/``ci95`` are null when nothing could be scored.

    ``best_cand_id`` and ``variants`` are additive extras (which variant ``fitness`` belongs to, and
    a short summary per variant).
    """

    fitness: float | None
    ci95: Interval | None
    baseline: dict[str, dict[str, float]]
    insights: list[str]
    best_cand_id: str | None = None
    variants: dict[str, VariantSummary] | None = None


class VariantSummary(msgspec.Struct, frozen=True, omit_defaults=True):
    score_v2: float | None
    score_ci95: Interval | None
    safe: bool
    trials: int
    failed: int
    epoch_scores: list[float | None] | None = None


class PromotedVariant(msgspec.Struct, frozen=True):
    domain: str
    cand_id: str
    spica_id: str
    genome: dict[str, Scalar]
    score_v2: float
    score_ci95: Interval
    reason: str


class FlaggedVariant(msgspec.Struct, frozen=True):
    domain: str
    cand_id: str
    genome: dict[str, Scalar]
    reasons: list[str]


class Recommendation(msgspec.Struct, frozen=True, omit_defaults=True):
    """What the search space of one knob should become. Absent keys are omitted in the JSON."""

    action: Action
    reason: str
    low: int | float | None = None
    high: int | float | None = None
    choices: list[Scalar] | None = None
    value: Scalar | None = None


class ResultsWindow(msgspec.Struct, frozen=True):
    id: str
    start: str
    end: str


class TrialCounts(msgspec.Struct, frozen=True):
    planned: int
    run: int
    failed: int


class PhaseResults(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="schema", tag=SCHEMA):
    """The whole file. The first block is the contract; the optional tail is additive extras.

    ``schema`` is the struct's tag, so it is always written, first, and checked when read.
    """

    timestamp: str
    run_id: str
    qtime: Qtime
    domains_tested: list[str]
    metrics: dict[str, DomainMetrics]
    promoted_variants: list[PromotedVariant]
    flagged_variants: list[FlaggedVariant]
    search_space_recommendations: dict[str, dict[str, Recommendation]]
    complete: bool
    qtime_requested: Qtime | None = None
    shrink: dict[str, Any] | None = None
    window: ResultsWindow | None = None
    trials: TrialCounts | None = None
    stopped_reason: str | None = None

    @property
    def schema(self) -> str:
        return SCHEMA


# --- paths and file protocol -------------------------------------------------------------------------


def results_path(phase_dir: Path, run_id: str) -> Path:
    return Path(phase_dir) / run_id / RESULTS_NAME


def write_results(phase_dir: Path, results: PhaseResults, *, now: float | None = None) -> Path:
    """Write results, repoint ``latest``, then drop the completion flag; returns the results path.

    ``now`` (Unix seconds) names the flag file; default: the current time.
    """
    phase_dir = Path(phase_dir)
    target = results_path(phase_dir, results.run_id)
    raw = msgspec.to_builtins(results)
    # Same checks as load_results: never write what we would refuse to read.
    _validate(raw, str(target))
    atomic_write_json(target, raw)
    _point_latest(phase_dir, results.run_id)
    stamp = int(time.time() if now is None else now)
    flag = phase_dir / f"{FLAG_PREFIX}{stamp}"
    atomic_write_bytes(flag, os.path.abspath(target).encode())
    return target


def _point_latest(phase_dir: Path, run_id: str) -> None:
    link = phase_dir / LATEST_NAME
    tmp = phase_dir / f".{LATEST_NAME}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    # Relative target: the state dir can be moved or mounted elsewhere and the link still works.
    os.symlink(run_id, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(phase_dir)


def latest_results(phase_dir: Path) -> Path | None:
    """The results file ``latest`` points at, or None when no PHASE has completed.

    ``latest`` must be a relative link naming a run directory beside it (anything else is ignored,
    logged); the file itself need not be a regular one: load_results refuses and moves it aside.
    """
    link = Path(phase_dir) / LATEST_NAME
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return None
    except OSError as e:  # EINVAL: not a link
        logger.error("{} ignored: not the link PHASE writes ({})", link, e.strerror or e)
        return None
    if not target or "/" in target or target in (".", ".."):
        logger.error("{} ignored: points to {!r}, not to a run directory beside it", link, target)
        return None
    path = link / RESULTS_NAME
    return path if os.path.lexists(path) else None


def load_results(path: Path, *, move_aside: bool = True) -> PhaseResults:
    """Read and validate a results file; ``path`` may be the file, a run directory or ``latest``.

    Raises ``SchemaError(path, field, problem)`` naming the exact field for unreadable or malformed
    JSON, missing keys, wrong types, a wrong ``schema`` string, NaN/infinite numbers and inverted
    intervals. The file is read through ``read_bounded`` (no link, no FIFO, at most
    MAX_RESULTS_BYTES, nesting checked); a bad one is moved aside (``phase_results.json.rejected-<ts>``,
    said in the problem) unless ``move_aside`` is False. A missing file stays missing.
    """
    path = Path(path)
    if path.name != RESULTS_NAME and path.is_dir():
        path = path / RESULTS_NAME
    where = str(path)
    try:
        return _decode(_read(path), where)
    except OSError as exc:  # missing, or a failing disk: nothing to move aside
        raise SchemaError(where, DOCUMENT, f"cannot read: {exc.strerror or exc}") from None
    except SchemaError as exc:
        raise (move_aside_for(exc) if move_aside else exc) from None


def _read(path: Path) -> bytes:
    try:
        return read_bounded(path, max_bytes=MAX_RESULTS_BYTES)
    except RefusedFile as exc:  # a link, a FIFO, a directory, too large: moved aside by the caller
        raise SchemaError(str(path), DOCUMENT, f"cannot read: {exc.strerror}") from None


def _decode(data: bytes, where: str) -> PhaseResults:
    if nesting_exceeds(data):
        raise SchemaError(where, DOCUMENT, f"nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        # json (not msgspec) so that NaN/Infinity tokens parse and can be reported by field.
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SchemaError(where, DOCUMENT, f"malformed JSON: {exc}") from None
    return _validate(raw, where)


# --- validation ----------------------------------------------------------------------------------------

_FORBIDDEN_RUN_IDS: Final = {"", ".", "..", LATEST_NAME}


def _validate(raw: Any, where: str) -> PhaseResults:
    if not isinstance(raw, dict):
        raise SchemaError(where, DOCUMENT, f"expected a JSON object, got {_json_type(raw)}")
    if "schema" not in raw:
        raise SchemaError(where, "schema", "missing required key")
    if raw["schema"] != SCHEMA:
        raise SchemaError(where, "schema", f"expected {SCHEMA!r}, got {raw['schema']!r}")
    bad = _first_non_finite(raw, "")
    if bad is not None:
        raise SchemaError(where, bad[0], f"{bad[1]} is not a finite number")
    try:
        results = msgspec.convert(raw, PhaseResults)
    except msgspec.ValidationError as exc:
        field, problem = _locate(raw, PhaseResults, str(exc), "")
        raise SchemaError(where, field, problem) from None
    _check_semantics(results, where)
    return results


def _check_semantics(r: PhaseResults, where: str) -> None:
    def fail(field: str, problem: str) -> typing.NoReturn:
        raise SchemaError(where, field, problem)

    try:
        datetime.fromisoformat(r.timestamp)
    except ValueError:
        fail("timestamp", f"not an ISO 8601 timestamp: {r.timestamp!r}")
    rid = r.run_id
    if rid in _FORBIDDEN_RUN_IDS or "/" in rid or "\0" in rid or rid.startswith((FLAG_PREFIX, ".")):
        fail("run_id", f"not usable as a directory name: {r.run_id!r}")
    for name, q in (("qtime", r.qtime), ("qtime_requested", r.qtime_requested)):
        if q is None:
            continue
        if q.epochs < 0 or q.replicas < 0:
            fail(name, f"epochs and replicas must be >= 0, got {q.epochs} and {q.replicas}")
        if not 0 <= q.slices <= len(REGIMES):
            fail(f"{name}.slices", f"must be in 0..{len(REGIMES)}, got {q.slices}")
    tested = set(r.domains_tested)
    if len(tested) != len(r.domains_tested):
        fail("domains_tested", "duplicate domain names")
    for domain in r.domains_tested:
        if domain not in r.metrics:
            fail(f"metrics.{domain}", "missing required key (domain is in domains_tested)")
    for domain, m in r.metrics.items():
        if domain not in tested:
            fail(f"metrics.{domain}", "domain not listed in domains_tested")
        _check_interval(m.ci95, f"metrics.{domain}.ci95", fail)
        if not m.insights:
            fail(f"metrics.{domain}.insights", "must contain at least one insight")
        for cand_id, summary in (m.variants or {}).items():
            _check_interval(summary.score_ci95, f"metrics.{domain}.variants.{cand_id}.score_ci95", fail)
    for i, p in enumerate(r.promoted_variants):
        if p.domain not in tested:
            fail(f"promoted_variants[{i}].domain", f"{p.domain!r} not listed in domains_tested")
        _check_interval(p.score_ci95, f"promoted_variants[{i}].score_ci95", fail)
    for i, f in enumerate(r.flagged_variants):
        if f.domain not in tested:
            fail(f"flagged_variants[{i}].domain", f"{f.domain!r} not listed in domains_tested")
    for domain, knobs in r.search_space_recommendations.items():
        for knob, rec in knobs.items():
            if rec.low is not None and rec.high is not None and rec.low > rec.high:
                fail(f"search_space_recommendations.{domain}.{knob}", f"low {rec.low} > high {rec.high}")


def _check_interval(
    ci: Interval | None, field: str, fail: typing.Callable[[str, str], typing.NoReturn]
) -> None:
    if ci is not None and ci[0] > ci[1]:
        fail(field, f"lower bound {ci[0]} > upper bound {ci[1]}")


def _first_non_finite(raw: Any, path: str) -> tuple[str, str] | None:
    if isinstance(raw, float) and not math.isfinite(raw):
        return (path or DOCUMENT, repr(raw))
    if isinstance(raw, dict):
        for key, value in raw.items():
            hit = _first_non_finite(value, _join(path, str(key)))
            if hit is not None:
                return hit
    elif isinstance(raw, list | tuple):
        for i, value in enumerate(raw):
            hit = _first_non_finite(value, f"{path}[{i}]")
            if hit is not None:
                return hit
    return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+|\.\.\.)\]")
_MISSING = re.compile(r"Object missing required field `([^`]+)`")


def _locate(raw: Any, typ: Any, message: str, prefix: str) -> tuple[str, str]:
    """Turn a msgspec error into (exact field, problem).

    msgspec writes dict keys as ``[...]``; where one appears, each value of that dict is converted
    on its own to find the offending key, and the search continues inside it.
    """
    problem, sep, at = message.rpartition(" - at `")
    if not sep:
        problem, at = message, "$`"
    path = at.rstrip("`")[1:]  # drop the leading "$"
    cur_raw, cur_typ, field = raw, typ, prefix
    for match in _SEGMENT.finditer(path):
        name, index = match.group(1), match.group(2)
        if name is not None:
            cls = _member(cur_typ, lambda t: hasattr(t, "__struct_fields__"))
            cur_typ = typing.get_type_hints(cls)[name] if cls is not None else Any
            cur_raw = cur_raw.get(name) if isinstance(cur_raw, dict) else None
            field = _join(field, name)
        elif index == "...":
            dict_typ = _member(cur_typ, lambda t: typing.get_origin(t) is dict)
            if dict_typ is None or not isinstance(cur_raw, dict):
                break
            value_typ = typing.get_args(dict_typ)[1]
            for key, value in cur_raw.items():
                try:
                    msgspec.convert(value, value_typ)
                except msgspec.ValidationError as exc:
                    return _locate(value, value_typ, str(exc), _join(field, str(key)))
            break
        else:
            i = int(index)
            seq_typ = _member(cur_typ, lambda t: typing.get_origin(t) in (list, tuple))
            args = typing.get_args(seq_typ) if seq_typ is not None else ()
            if typing.get_origin(seq_typ) is tuple and args and args[-1] is not Ellipsis:
                cur_typ = args[i] if i < len(args) else Any
            else:
                cur_typ = args[0] if args else Any
            cur_raw = cur_raw[i] if isinstance(cur_raw, list) and i < len(cur_raw) else None
            field = f"{field}[{i}]"
    missing = _MISSING.match(problem)
    if missing:
        return _join(field, missing.group(1)), "missing required key"
    return field or DOCUMENT, _humanize(problem)


def _member(typ: Any, pred: typing.Callable[[Any], bool]) -> Any:
    """``typ`` itself or the member of a union that satisfies ``pred``."""
    if pred(typ):
        return typ
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        for arg in typing.get_args(typ):
            if pred(arg):
                return arg
    return None


def _humanize(problem: str) -> str:
    return problem.replace("`", "")
