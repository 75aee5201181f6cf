"""PHASE's analysis in a process of its own: ``python -m kloros_orchestrator.phase.worker``.

The analysis (paired bootstraps, multiplicity-corrected tests, recommendations) is CPU-heavy and
needs scipy. Run inside the daemon it would block the event loop (signals and the status socket
freeze) and leave scipy's ~65 MB resident for good; run here, the daemon stays responsive and small.

Protocol: one :class:`AnalysisRequest` as JSON on stdin; the ``phase_results.v1`` document as JSON on
stdout; exit 0. Anything else (bad input, a bug) exits non-zero with the reason on stderr.
"""

from __future__ import annotations

import sys
from typing import Any

import msgspec

from kloros_orchestrator.phase.records import PhaseData
from kloros_orchestrator.phase.results import PhaseResults, Qtime, ResultsWindow, TrialCounts


class AnalysisRequest(msgspec.Struct, frozen=True):
    """Everything the analysis and the results document need, measured by the daemon."""

    data: PhaseData
    seed: int
    n_boot: int
    run_id: str
    timestamp: str
    qtime: Qtime
    complete: bool
    qtime_requested: Qtime | None = None
    shrink: dict[str, Any] | None = None
    window: ResultsWindow | None = None
    trials: TrialCounts | None = None
    stopped_reason: str | None = None


def analyze(req: AnalysisRequest) -> PhaseResults:
    """The results document for ``req`` (imports the statistics only when called)."""
    from kloros_orchestrator.phase.analysis import analyze_phase, build_results

    analysis = analyze_phase(req.data, seed=req.seed, n_boot=req.n_boot)
    return build_results(
        analysis,
        run_id=req.run_id,
        timestamp=req.timestamp,
        qtime=req.qtime,
        complete=req.complete,
        qtime_requested=req.qtime_requested,
        shrink=req.shrink,
        window=req.window,
        trials=req.trials,
        stopped_reason=req.stopped_reason,
    )


def main() -> int:
    try:
        req = msgspec.json.decode(sys.stdin.buffer.read(), type=AnalysisRequest)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        print(f"phase worker: bad request: {e}", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(msgspec.json.encode(analyze(req)))
    sys.stdout.buffer.flush()
    return 0


__all__ = ["AnalysisRequest", "analyze", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
