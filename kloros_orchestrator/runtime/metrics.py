"""The Prometheus text file (``metrics.textfile``): the daemon's state for node_exporter's textfile
collector or any scraper that reads a ``.prom`` file.

Theory of operation
-------------------
:class:`MetricsFile` owns a private ``prometheus_client.CollectorRegistry`` (never the global one)
with one collector that renders a snapshot: the daemon's ``status()`` dict as last handed to
:meth:`MetricsFile.write`, plus the trial counts :meth:`MetricsFile.trial` accumulated since start.
Nothing is kept in ``prometheus_client`` metric objects, so a domain or reason that disappears
from the status leaves no stale series behind, and a value the daemon does not know (no best
score yet, no PHASE so far) is *absent* from the file — never 0.

Each write renders the registry with ``prometheus_client.generate_latest`` and replaces the file by
rename, so a reader sees the old file or the new one, never a torn one. The temporary file is
``mkstemp``'s (``O_EXCL``, a random name starting with a dot and ending in ``.tmp``, which the
textfile collector skips) rather than ``write_to_textfile``'s predictable ``<path>.<pid>.<tid>``
opened through any symbolic link found there: the daemon runs as root. No fsync: the file is
rewritten at the next event and only atomicity matters, so a busy disk never stalls the event loop.
A write that fails (disk full, a parent that is not a directory) is logged once per distinct error
and never raised: metrics never stop the daemon.

Label cardinality is bounded: trial failure reasons are the text before the first ``:`` of the
failure (``knob drift``, ``cap breach``, ``tool_missing``, ``could not apply or run``, stress-ng's
``timeout``, ``short_run``, ...), at most :data:`MAX_REASONS_PER_DOMAIN` distinct ones per domain,
the rest counted as ``other``.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from loguru import logger
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kloros_orchestrator.core.coordinator import State
from kloros_orchestrator.model import TrialResult
from kloros_orchestrator.safefs import DIR_MODE, FILE_MODE, make_dirs

STATES: Final = tuple(s.value for s in State)
SUPPORTS: Final = ("ok", "unsupported", "disabled")
VERDICT_KINDS: Final = ("promoted", "flagged")
MAX_REASONS_PER_DOMAIN: Final = 20
MAX_REASON_CHARS: Final = 40
OTHER: Final = "other"
DRIFT: Final = "knob drift"


def reason_class(result: TrialResult) -> str:
    """The short class of a trial's outcome: ``""`` for a successful trial, else the failure text
    before its first ``:`` (whitespace collapsed); ``other`` when that is empty or too long to be
    a class."""
    if result.ok:
        return ""
    text = result.failure or ("cap breach" if result.cap_breach else "")
    head = " ".join(text.split(":", 1)[0].split())
    return head if 0 < len(head) <= MAX_REASON_CHARS else OTHER


class MetricsFile:
    """The Prometheus text file at ``path``: call :meth:`trial` for every finished trial and
    :meth:`write` with the daemon's status at each event."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self.registry = CollectorRegistry()
        self._trials: Counter[tuple[str, str, str]] = Counter()  # (domain, outcome, reason)
        self._drift: Counter[str] = Counter()
        self._reasons: dict[str, set[str]] = {}
        self._status: Mapping[str, Any] = {}
        self._written_at: float | None = None
        self._errors: set[str] = set()  # distinct write errors already logged
        self.registry.register(_Snapshot(self))

    def trial(self, result: TrialResult) -> None:
        """Count one finished trial by domain, outcome (``ok``/``failed``) and reason class."""
        reason = reason_class(result)
        if reason == DRIFT:
            self._drift[result.domain] += 1
        if reason and reason != OTHER:
            seen = self._reasons.setdefault(result.domain, set())
            if reason not in seen:
                if len(seen) >= MAX_REASONS_PER_DOMAIN:
                    reason = OTHER
                else:
                    seen.add(reason)
        self._trials[(result.domain, "ok" if result.ok else "failed", reason)] += 1

    def write(self, status: Mapping[str, Any]) -> None:
        """Render ``status`` (``Daemon.status()`` plus ``best``, ``phase_verdicts`` and
        ``duty_cycle``, each optional) and the trial counts, and replace the file atomically.
        Never raises: a failure is logged once per distinct error."""
        self._status = status
        self._written_at = self.clock()
        try:
            data = generate_latest(self.registry)
            _replace(self.path, data)
        except Exception as e:  # metrics never stop the daemon
            key = f"{type(e).__name__}: {e.strerror if isinstance(e, OSError) else e}"
            if key not in self._errors:
                self._errors.add(key)
                logger.warning("metrics file {}: cannot write it: {}", self.path, e)
            return
        if self._errors:
            self._errors.clear()
            logger.info("metrics file {}: written again", self.path)

    # --- what the collector renders ----------------------------------------------------------------

    def families(self) -> Iterator[Metric]:
        """Every metric family of the current snapshot (families without a sample left out)."""
        st = self._status
        parts: Iterable[Metric] = (
            *_daemon(st, self._written_at),
            *_domains(st),
            *_best(st),
            *_phase(st),
            *_promotions(st),
            *self._trial_families(),
        )
        return (m for m in parts if m.samples)

    def _trial_families(self) -> Iterator[Metric]:
        trials = CounterMetricFamily(
            "kloros_trials", "Trials finished since the daemon started, by domain, outcome (ok/failed) "
            "and failure reason class (the failure text before its first ':'; '' for ok trials).",
            labels=["domain", "outcome", "reason"],
        )  # fmt: skip
        for (domain, outcome, reason), n in sorted(self._trials.items()):
            trials.add_metric([domain, outcome, reason], n)
        drift = CounterMetricFamily(
            "kloros_knob_drift_trials", "Trials failed as knob drift (another tool rewrote a knob "
            "under the trial) since the daemon started, by domain.", labels=["domain"],
        )  # fmt: skip
        for domain, n in sorted(self._drift.items()):
            drift.add_metric([domain], n)
        yield trials
        yield drift


class _Snapshot(Collector):
    def __init__(self, owner: MetricsFile) -> None:
        self.owner = owner

    def collect(self) -> Iterable[Metric]:
        return self.owner.families()


# --- the status dict, read defensively (any key may be missing or of another type) ----------------


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def _mapping(x: Any) -> Mapping[str, Any]:
    return x if isinstance(x, Mapping) else {}


def _timestamp(x: Any) -> float | None:
    if not isinstance(x, str) or not x:
        return None
    try:
        t = datetime.fromisoformat(x)
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels or [])


def _daemon(st: Mapping[str, Any], written_at: float | None) -> Iterator[Metric]:
    up = _gauge("kloros_up", "1 while the daemon runs and writes this file.")
    up.add_metric([], 1)
    yield up
    written = _gauge("kloros_metrics_written_timestamp_seconds", "When this file was written (Unix s).")
    if written_at is not None:
        written.add_metric([], written_at)
    yield written
    uptime = _gauge("kloros_uptime_seconds", "Seconds since the daemon started.")
    if (v := _number(st.get("uptime_s"))) is not None:
        uptime.add_metric([], v)
    yield uptime
    state = _gauge("kloros_state", "1 for the coordinator's current state, 0 for the others.", ["state"])
    current = st.get("state")
    if isinstance(current, str):
        for s in (*STATES, *([current] if current not in STATES else [])):
            state.add_metric([s], 1 if s == current else 0)
    yield state
    duty = _gauge("kloros_duty_cycle_ratio", "Fraction of wall time spent in trials since start (0..1).")
    if (v := _number(st.get("duty_cycle"))) is not None:
        duty.add_metric([], min(1.0, max(0.0, v)))
    yield duty
    tournaments = CounterMetricFamily("kloros_tournaments", "D-REAM tournaments finished.")
    if (v := _number(_mapping(st.get("counters")).get("tournaments"))) is not None:
        tournaments.add_metric([], v)
    yield tournaments


def _domains(st: Mapping[str, Any]) -> Iterator[Metric]:
    supported = _gauge(
        "kloros_domain_supported", "1 for the domain's support on this host (ok, unsupported, "
        "disabled), 0 for the others.", ["domain", "support"],
    )  # fmt: skip
    support = _mapping(st.get("domains"))
    for domain, value in sorted(support.items()):
        if isinstance(value, str):
            for s in (*SUPPORTS, *([value] if value not in SUPPORTS else [])):
                supported.add_metric([domain, s], 1 if s == value else 0)
    yield supported
    backoff = _mapping(st.get("backoff"))
    host = _mapping(_mapping(st.get("host")).get("domains"))
    backed = _gauge(
        "kloros_domain_backed_off", "1 while D-REAM leaves the domain out (repeated knob drift).", ["domain"]
    )
    for domain in sorted({*support, *host, *backoff}):
        backed.add_metric([domain], 1 if domain in backoff else 0)
    yield backed


def _best(st: Mapping[str, Any]) -> Iterator[Metric]:
    doc = "the best candidate's score_v2 (relative to the stock baseline; 0 = as good as stock)"
    score = _gauge("kloros_best_score", f"Per domain, {doc}.", ["domain"])
    low = _gauge("kloros_best_score_ci_low", f"Per domain, the lower 95% CI bound of {doc}.", ["domain"])
    high = _gauge("kloros_best_score_ci_high", f"Per domain, the upper 95% CI bound of {doc}.", ["domain"])
    for domain, entry in sorted(_mapping(st.get("best")).items()):
        best = _mapping(entry)
        if (v := _number(best.get("score"))) is not None:
            score.add_metric([domain], v)
        ci = best.get("ci95")
        if isinstance(ci, list | tuple) and len(ci) == 2:
            lo, hi = _number(ci[0]), _number(ci[1])
            if lo is not None and hi is not None:
                low.add_metric([domain], lo)
                high.add_metric([domain], hi)
    yield from (score, low, high)


def _phase(st: Mapping[str, Any]) -> Iterator[Metric]:
    last = _gauge("kloros_last_phase_timestamp_seconds", "When the last PHASE window completed (Unix s).")
    if (t := _timestamp(_mapping(st.get("last_phase")).get("completed_at"))) is not None:
        last.add_metric([], t)
    yield last
    verdicts = _gauge("kloros_phase_verdicts", "Variants the last PHASE promoted or flagged.", ["kind"])
    counts = _mapping(st.get("phase_verdicts"))
    for kind in VERDICT_KINDS:
        if (v := _number(counts.get(kind))) is not None:
            verdicts.add_metric([kind], v)
    yield verdicts


def _promotions(st: Mapping[str, Any]) -> Iterator[Metric]:
    promos = _gauge(
        "kloros_promotions", "Per domain: promoted variants waiting to be applied (pending) and whether "
        "an adopted configuration runs instead of the factory one (adopted, 0/1).", ["domain", "kind"],
    )  # fmt: skip
    for domain, entry in sorted(_mapping(_mapping(st.get("host")).get("domains")).items()):
        e = _mapping(entry)
        pending = e.get("pending_promotions")
        promos.add_metric([domain, "pending"], len(pending) if isinstance(pending, list) else 0)
        promos.add_metric([domain, "adopted"], 1 if e.get("config") == "adopted" else 0)
    yield promos


# --- the file -------------------------------------------------------------------------------------


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` to a fresh temporary file beside ``path`` and rename it over ``path``."""
    make_dirs(path.parent, DIR_MODE)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)  # readable by the scraper (mkstemp gives 0600)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


__all__ = ["MAX_REASONS_PER_DOMAIN", "MetricsFile", "reason_class"]
