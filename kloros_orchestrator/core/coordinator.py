"""The coordinator: the one state machine between D-REAM and PHASE.

Theory of operation
-------------------
Every transition of the daemon lives in this module, in the ``_TRANSITIONS`` table below. The
coordinator is sans-I/O: it never sleeps, reads a clock, starts a process or writes a file. A driver
(``runtime``) turns signals, timers, process exits and socket requests into *events* carrying the
time they happened (``now``, Unix seconds), feeds them to :meth:`Coordinator.handle`, and carries out
the *commands* it gets back, in order.

::

               window_opened                  tournament_done
    EVOLVING ───────────────► DRAINING ─────────────────────► PHASE
       ▲   (the running tournament finishes; none is cut)       │ phase_complete
       │                                                        ▼
       └──────────────────────── results_collapsed ──────── COLLAPSING
    any state ── stop_requested ──► STOPPING (absorbing)

* STARTING is left by ``started`` (to EVOLVING) or by a ``window_opened`` when the daemon starts
  inside a window (straight to PHASE; D-REAM is only resumed after the collapse).
* DRAINING exists only while a tournament is running. A window that opens while D-REAM is pacing
  passes through it at once: EVOLVING → PHASE with ``PauseDream`` then ``StartPhase``.
* Within EVOLVING, ``tournament_started``/``tournament_done`` only flip ``tournament_running``;
  ``PauseDream`` lets the running tournament finish and forbids the next one.
* A ``window_opened`` while DRAINING, PHASE or COLLAPSING is illegal: the driver checks
  :meth:`Coordinator.accepts` first and answers "already in a window".
* STOPPING absorbs every event without a command, so late events (a ``tournament_done`` arriving
  after SIGTERM) are harmless — with one exception: a second *interrupt* (``stop_requested`` with
  ``interrupt=True``, i.e. SIGINT; the first may have come before STOPPING) yields ``ForceExit``.
* Windows open only from STARTING or EVOLVING (:attr:`Coordinator.window_may_open`): the driver asks
  before opening one, for the schedule and for ``phase-now`` alike.

An event the table does not list for the current state raises
:class:`~kloros_orchestrator.errors.InvalidTransition` and leaves the coordinator unchanged. Every
accepted event (outside STOPPING) yields a :class:`RecordEvent` first, so ``logs/events.jsonl``
holds exactly the transitions the coordinator took.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, TypeAlias, assert_never

from kloros_orchestrator.errors import InvalidTransition


class State(enum.StrEnum):
    """Coordinator states; the values are contract (status ``state``)."""

    STARTING = "starting"
    EVOLVING = "evolving"
    DRAINING = "draining"
    PHASE = "phase"
    COLLAPSING = "collapsing"
    STOPPING = "stopping"


# --- events ----------------------------------------------------------------------------------------
# ``now`` is keyword-only so that event data reads positionally: TournamentDone("cpu", 3, now=t).


@dataclass(frozen=True, slots=True)
class _EventBase:
    name: ClassVar[str]
    now: float = field(kw_only=True)


@dataclass(frozen=True, slots=True)
class Started(_EventBase):
    """The driver finished start-up (state loaded, knobs restored)."""

    name: ClassVar[str] = "started"


@dataclass(frozen=True, slots=True)
class TournamentStarted(_EventBase):
    name: ClassVar[str] = "tournament_started"
    domain: str
    generation: int


@dataclass(frozen=True, slots=True)
class TournamentDone(_EventBase):
    name: ClassVar[str] = "tournament_done"
    domain: str
    generation: int


@dataclass(frozen=True, slots=True)
class WindowOpened(_EventBase):
    """A PHASE window opened: scheduled, caught up, or asked for (``phase-now``)."""

    name: ClassVar[str] = "window_opened"
    window_id: str
    start: float
    end: float
    catch_up: bool = False
    manual: bool = False


@dataclass(frozen=True, slots=True)
class PhaseComplete(_EventBase):
    """PHASE finished; ``complete`` is False when the window closed first."""

    name: ClassVar[str] = "phase_complete"
    results_path: str | None
    complete: bool


@dataclass(frozen=True, slots=True)
class ResultsCollapsed(_EventBase):
    name: ClassVar[str] = "results_collapsed"
    changes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StopRequested(_EventBase):
    """A graceful stop was asked for; ``interrupt`` marks SIGINT (a second one forces the exit)."""

    name: ClassVar[str] = "stop_requested"
    reason: str
    interrupt: bool = False


Event: TypeAlias = (
    Started
    | TournamentStarted
    | TournamentDone
    | WindowOpened
    | PhaseComplete
    | ResultsCollapsed
    | StopRequested
)
EVENT_TYPES: Final[tuple[type[Event], ...]] = (
    Started,
    TournamentStarted,
    TournamentDone,
    WindowOpened,
    PhaseComplete,
    ResultsCollapsed,
    StopRequested,
)


# --- commands --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResumeDream:
    """D-REAM may start tournaments again."""


@dataclass(frozen=True, slots=True)
class PauseDream:
    """D-REAM must not start a new tournament; a running one finishes."""


@dataclass(frozen=True, slots=True)
class StartPhase:
    window_id: str
    start: float
    end: float
    catch_up: bool
    manual: bool


@dataclass(frozen=True, slots=True)
class CollapseResults:
    results_path: str | None
    complete: bool


@dataclass(frozen=True, slots=True)
class Shutdown:
    reason: str


@dataclass(frozen=True, slots=True)
class ForceExit:
    """Stop now: kill workloads, restore knobs, exit 130 without the graceful path."""

    reason: str


@dataclass(frozen=True, slots=True)
class RecordEvent:
    """Append one line to events.jsonl: ``{"event": event_name, **fields}`` (fields hold ``ts``)."""

    event_name: str
    fields: dict[str, Any]


Command: TypeAlias = (
    ResumeDream | PauseDream | StartPhase | CollapseResults | Shutdown | ForceExit | RecordEvent
)


# --- the transition table --------------------------------------------------------------------------

_TRANSITIONS: Final[dict[State, dict[type[Event], State]]] = {
    State.STARTING: {
        Started: State.EVOLVING,
        WindowOpened: State.PHASE,
        StopRequested: State.STOPPING,
    },
    State.EVOLVING: {
        TournamentStarted: State.EVOLVING,
        TournamentDone: State.EVOLVING,
        # Passed through at once to PHASE when no tournament is running (see handle()).
        WindowOpened: State.DRAINING,
        StopRequested: State.STOPPING,
    },
    State.DRAINING: {
        TournamentDone: State.PHASE,
        StopRequested: State.STOPPING,
    },
    State.PHASE: {
        PhaseComplete: State.COLLAPSING,
        StopRequested: State.STOPPING,
    },
    State.COLLAPSING: {
        ResultsCollapsed: State.EVOLVING,
        StopRequested: State.STOPPING,
    },
    State.STOPPING: dict.fromkeys(EVENT_TYPES, State.STOPPING),
}


def _event_data(event: Event) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for f in dataclasses.fields(event):
        if f.name == "now":
            continue
        value = getattr(event, f.name)
        data[f.name] = dict(value) if isinstance(value, dict) else value
    return data


class Coordinator:
    """Pure state machine: ``handle(event) -> commands``; see the module docstring."""

    def __init__(self) -> None:
        self.state: State = State.STARTING
        self.tournament_running: bool = False
        self.current_window: WindowOpened | None = None
        self.interrupts: int = 0

    @property
    def window_may_open(self) -> bool:
        """Whether a window (scheduled, caught up or ``phase-now``) may open now."""
        return self.state in (State.STARTING, State.EVOLVING)

    def accepts(self, event_type: type[Event]) -> bool:
        """Whether :meth:`handle` would accept an event of this type now (never raises)."""
        return event_type in _TRANSITIONS[self.state]

    def handle(self, event: Event) -> list[Command]:
        """Apply one event; return the commands for the driver, a RecordEvent first.

        Raises InvalidTransition (state unchanged) when the current state does not accept it.
        """
        if isinstance(event, StopRequested) and event.interrupt:
            self.interrupts += 1
        if self.state is State.STOPPING:
            # Absorbing: late events are expected during shutdown. A second interrupt forces.
            if isinstance(event, StopRequested) and event.interrupt and self.interrupts >= 2:
                return [ForceExit(event.reason)]
            return []
        next_state = _TRANSITIONS[self.state].get(type(event))
        if next_state is None:
            raise InvalidTransition(self.state.value, event.name)

        previous = self.state
        commands: list[Command] = []
        match event:
            case Started():
                commands.append(ResumeDream())
            case TournamentStarted():
                self.tournament_running = True
            case TournamentDone():
                self.tournament_running = False
                if next_state is State.PHASE:
                    commands.append(self._start_phase())
            case WindowOpened():
                self.current_window = event
                if next_state is State.DRAINING:
                    commands.append(PauseDream())
                    if not self.tournament_running:
                        # Nothing to drain: D-REAM is pacing, so the window starts now.
                        next_state = State.PHASE
                if next_state is State.PHASE:
                    commands.append(self._start_phase())
            case PhaseComplete():
                commands.append(CollapseResults(event.results_path, event.complete))
            case ResultsCollapsed():
                self.current_window = None
                commands.append(ResumeDream())
            case StopRequested():
                commands.append(Shutdown(event.reason))
            case _:
                assert_never(event)
        self.state = next_state

        fields: dict[str, Any] = {
            "ts": event.now,
            **_event_data(event),
            "state": next_state.value,
            "prev_state": previous.value,
        }
        return [RecordEvent(event.name, fields), *commands]

    def _start_phase(self) -> StartPhase:
        window = self.current_window
        # The table only reaches PHASE after a WindowOpened was stored.
        assert window is not None
        return StartPhase(window.window_id, window.start, window.end, window.catch_up, window.manual)
