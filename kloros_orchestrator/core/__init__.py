"""Pure, synchronous core: the coordinator state machine, the PHASE schedule and D-REAM pacing.

Nothing here does I/O, reads a clock or logs; time is passed in as data.
"""

from __future__ import annotations

from kloros_orchestrator.core.coordinator import (
    EVENT_TYPES,
    CollapseResults,
    Command,
    Coordinator,
    Event,
    ForceExit,
    PauseDream,
    PhaseComplete,
    RecordEvent,
    ResultsCollapsed,
    ResumeDream,
    Shutdown,
    Started,
    StartPhase,
    State,
    StopRequested,
    TournamentDone,
    TournamentStarted,
    WindowOpened,
)
from kloros_orchestrator.core.pacing import (
    PacingDecision,
    PacingInputs,
    decide,
    estimate_tournament_s,
    should_start,
)
from kloros_orchestrator.core.schedule import (
    DailyStart,
    RelativeStart,
    Schedule,
    Window,
    WindowStart,
    local_to_unix,
    parse_window_start,
)

__all__ = [
    "EVENT_TYPES",
    "CollapseResults",
    "Command",
    "Coordinator",
    "DailyStart",
    "Event",
    "ForceExit",
    "PacingDecision",
    "PacingInputs",
    "PauseDream",
    "PhaseComplete",
    "RecordEvent",
    "RelativeStart",
    "ResultsCollapsed",
    "ResumeDream",
    "Schedule",
    "Shutdown",
    "StartPhase",
    "Started",
    "State",
    "StopRequested",
    "TournamentDone",
    "TournamentStarted",
    "Window",
    "WindowOpened",
    "WindowStart",
    "decide",
    "estimate_tournament_s",
    "local_to_unix",
    "parse_window_start",
    "should_start",
]
