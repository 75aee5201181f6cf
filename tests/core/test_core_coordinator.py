from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kloros_orchestrator.core import (
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
from kloros_orchestrator.errors import InvalidTransition

T0 = 1_800_000_000.0


def window(now: float = T0, *, catch_up: bool = False, manual: bool = False) -> WindowOpened:
    return WindowOpened("2027-01-15T03:00", now, now + 3600.0, catch_up, manual, now=now)


def sample_event(event_type: type[Event], now: float = T0) -> Event:
    samples: dict[type[Event], Event] = {
        Started: Started(now=now),
        TournamentStarted: TournamentStarted("cpu", 1, now=now),
        TournamentDone: TournamentDone("cpu", 1, now=now),
        WindowOpened: window(now),
        PhaseComplete: PhaseComplete("/state/phase/r1/phase_results.json", True, now=now),
        ResultsCollapsed: ResultsCollapsed({"cpu": {"promoted": 1}}, now=now),
        StopRequested: StopRequested("SIGTERM", now=now),
    }
    return samples[event_type]


def actions(commands: list[Command]) -> list[Command]:
    """The commands after the leading RecordEvent."""
    assert isinstance(commands[0], RecordEvent)
    return commands[1:]


def state_of(c: Coordinator) -> State:
    """Read the state without mypy keeping an earlier narrowing of ``c.state``."""
    return c.state


def in_state(state: State) -> Coordinator:
    """A coordinator driven through legal events into ``state``."""
    c = Coordinator()
    path: dict[State, list[Event]] = {
        State.STARTING: [],
        State.EVOLVING: [Started(now=T0)],
        State.DRAINING: [Started(now=T0), TournamentStarted("cpu", 1, now=T0), window()],
        State.PHASE: [Started(now=T0), window()],
        State.COLLAPSING: [Started(now=T0), window(), PhaseComplete(None, False, now=T0)],
        State.STOPPING: [StopRequested("test", now=T0)],
    }
    for event in path[state]:
        c.handle(event)
    assert c.state is state
    return c


# --- legal transitions, one each ---------------------------------------------------------------------


def test_starting_started_resumes_dream() -> None:
    c = Coordinator()
    commands = c.handle(Started(now=T0))
    assert c.state is State.EVOLVING
    assert actions(commands) == [ResumeDream()]


def test_starting_inside_a_window_goes_straight_to_phase() -> None:
    c = Coordinator()
    commands = c.handle(window(catch_up=True))
    assert c.state is State.PHASE
    assert actions(commands) == [StartPhase("2027-01-15T03:00", T0, T0 + 3600.0, True, False)]
    assert c.current_window == window(catch_up=True)


def test_evolving_tournament_started_marks_running() -> None:
    c = in_state(State.EVOLVING)
    commands = c.handle(TournamentStarted("cpu", 4, now=T0 + 1))
    assert c.state is State.EVOLVING
    assert c.tournament_running is True
    assert actions(commands) == []


def test_evolving_tournament_done_clears_running() -> None:
    c = in_state(State.EVOLVING)
    c.handle(TournamentStarted("cpu", 4, now=T0 + 1))
    commands = c.handle(TournamentDone("cpu", 4, now=T0 + 2))
    assert c.state is State.EVOLVING
    assert c.tournament_running is False
    assert actions(commands) == []


def test_window_while_pacing_pauses_and_starts_phase_at_once() -> None:
    c = in_state(State.EVOLVING)
    commands = c.handle(window(manual=True))
    assert c.state is State.PHASE
    assert actions(commands) == [PauseDream(), StartPhase("2027-01-15T03:00", T0, T0 + 3600.0, False, True)]


def test_window_mid_tournament_drains_until_tournament_done() -> None:
    c = in_state(State.EVOLVING)
    c.handle(TournamentStarted("memory", 2, now=T0))
    commands = c.handle(window(T0 + 10))
    assert c.state is State.DRAINING
    assert actions(commands) == [PauseDream()]
    # The tournament is never cut: nothing else moves the coordinator on.
    for event_type in (Started, TournamentStarted, WindowOpened, PhaseComplete, ResultsCollapsed):
        with pytest.raises(InvalidTransition):
            c.handle(sample_event(event_type))
        assert c.state is State.DRAINING
    commands = c.handle(TournamentDone("memory", 2, now=T0 + 50))
    assert state_of(c) is State.PHASE
    assert c.tournament_running is False
    assert actions(commands) == [StartPhase("2027-01-15T03:00", T0 + 10, T0 + 3610.0, False, False)]


def test_phase_complete_collapses() -> None:
    c = in_state(State.PHASE)
    commands = c.handle(PhaseComplete("/s/phase/r/phase_results.json", False, now=T0 + 99))
    assert c.state is State.COLLAPSING
    assert actions(commands) == [CollapseResults("/s/phase/r/phase_results.json", False)]


def test_results_collapsed_resumes_dream_and_forgets_window() -> None:
    c = in_state(State.COLLAPSING)
    commands = c.handle(ResultsCollapsed({"cpu": 1}, now=T0 + 100))
    assert c.state is State.EVOLVING
    assert c.current_window is None
    assert actions(commands) == [ResumeDream()]


@pytest.mark.parametrize("state", list(State))
def test_stop_from_every_state(state: State) -> None:
    c = in_state(state)
    commands = c.handle(StopRequested("SIGTERM", now=T0 + 5))
    assert c.state is State.STOPPING
    if state is State.STOPPING:
        assert commands == []
    else:
        assert actions(commands) == [Shutdown("SIGTERM")]


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_stopping_absorbs_every_event_without_commands(event_type: type[Event]) -> None:
    c = in_state(State.STOPPING)
    assert c.accepts(event_type)
    assert c.handle(sample_event(event_type, T0 + 7)) == []
    assert c.state is State.STOPPING


def test_a_second_interrupt_forces_the_exit() -> None:
    c = in_state(State.EVOLVING)
    assert actions(c.handle(StopRequested("SIGINT", interrupt=True, now=T0))) == [Shutdown("SIGINT")]
    assert c.handle(StopRequested("SIGTERM", now=T0 + 1)) == []  # a terminate while stopping: nothing
    assert c.handle(StopRequested("SIGINT", interrupt=True, now=T0 + 2)) == [ForceExit("SIGINT")]
    assert c.state is State.STOPPING


def test_terminate_then_one_interrupt_stays_graceful() -> None:
    c = in_state(State.PHASE)
    c.handle(StopRequested("SIGTERM", now=T0))
    assert c.handle(StopRequested("SIGINT", interrupt=True, now=T0 + 1)) == []


@pytest.mark.parametrize("state", list(State))
def test_windows_may_open_only_from_starting_or_evolving(state: State) -> None:
    assert in_state(state).window_may_open is (state in (State.STARTING, State.EVOLVING))


def test_late_tournament_done_after_stop_does_not_raise() -> None:
    c = in_state(State.EVOLVING)
    c.handle(TournamentStarted("cpu", 1, now=T0))
    c.handle(StopRequested("SIGINT", now=T0 + 1))
    assert c.handle(TournamentDone("cpu", 1, now=T0 + 2)) == []
    assert c.state is State.STOPPING


# --- illegal transitions -----------------------------------------------------------------------------

LEGAL: dict[State, set[type[Event]]] = {
    State.STARTING: {Started, WindowOpened, StopRequested},
    State.EVOLVING: {TournamentStarted, TournamentDone, WindowOpened, StopRequested},
    State.DRAINING: {TournamentDone, StopRequested},
    State.PHASE: {PhaseComplete, StopRequested},
    State.COLLAPSING: {ResultsCollapsed, StopRequested},
    State.STOPPING: set(EVENT_TYPES),
}


@pytest.mark.parametrize(
    ("state", "event_type"),
    [(s, e) for s in State for e in EVENT_TYPES if e not in LEGAL[s]],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_illegal_event_raises_and_changes_nothing(state: State, event_type: type[Event]) -> None:
    c = in_state(state)
    before = (c.state, c.tournament_running, c.current_window)
    assert not c.accepts(event_type)
    with pytest.raises(InvalidTransition) as info:
        c.handle(sample_event(event_type, T0 + 3))
    assert info.value.state == state.value
    assert info.value.event == event_type.name
    assert (c.state, c.tournament_running, c.current_window) == before


@pytest.mark.parametrize("state", [State.DRAINING, State.PHASE, State.COLLAPSING])
def test_window_opened_inside_a_window_is_refused(state: State) -> None:
    c = in_state(state)
    assert not c.accepts(WindowOpened)
    with pytest.raises(InvalidTransition):
        c.handle(window(T0 + 20))
    assert c.current_window == window()


def test_accepts_matches_the_table() -> None:
    for state in State:
        c = in_state(state)
        assert {e for e in EVENT_TYPES if c.accepts(e)} == LEGAL[state]


# --- recording and a whole cycle ---------------------------------------------------------------------


def test_every_accepted_event_is_recorded_first_with_ts_data_and_state() -> None:
    c = in_state(State.EVOLVING)
    commands = c.handle(TournamentStarted("storage", 7, now=T0 + 42.5))
    assert commands[0] == RecordEvent(
        "tournament_started",
        {
            "ts": T0 + 42.5,
            "domain": "storage",
            "generation": 7,
            "state": "evolving",
            "prev_state": "evolving",
        },
    )
    record = c.handle(window(T0 + 50))[0]
    assert isinstance(record, RecordEvent)
    assert record.event_name == "window_opened"
    assert record.fields["state"] == "draining"
    assert record.fields["window_id"] == "2027-01-15T03:00"
    assert record.fields["catch_up"] is False


def test_event_names_are_the_contract_names() -> None:
    assert [e.name for e in EVENT_TYPES] == [
        "started",
        "tournament_started",
        "tournament_done",
        "window_opened",
        "phase_complete",
        "results_collapsed",
        "stop_requested",
    ]
    assert [s.value for s in State] == ["starting", "evolving", "draining", "phase", "collapsing", "stopping"]


def test_full_cycle_evolving_phase_collapsing_evolving() -> None:
    c = Coordinator()
    log: list[tuple[str, Any]] = []

    def feed(event: Event) -> list[Command]:
        commands = c.handle(event)
        record = commands[0]
        assert isinstance(record, RecordEvent)
        log.append((record.event_name, record.fields["state"]))
        return commands[1:]

    assert feed(Started(now=T0)) == [ResumeDream()]
    feed(TournamentStarted("cpu", 1, now=T0 + 1))
    assert feed(window(T0 + 2)) == [PauseDream()]
    assert feed(TournamentDone("cpu", 1, now=T0 + 3)) == [
        StartPhase("2027-01-15T03:00", T0 + 2, T0 + 3602.0, False, False)
    ]
    assert feed(PhaseComplete("r.json", True, now=T0 + 4)) == [CollapseResults("r.json", True)]
    assert feed(ResultsCollapsed({}, now=T0 + 5)) == [ResumeDream()]
    assert c.state is State.EVOLVING
    # A second window in the next cycle is accepted again.
    assert feed(window(T0 + 86400)) == [
        PauseDream(),
        StartPhase("2027-01-15T03:00", T0 + 86400, T0 + 86400 + 3600.0, False, False),
    ]
    assert log == [
        ("started", "evolving"),
        ("tournament_started", "evolving"),
        ("window_opened", "draining"),
        ("tournament_done", "phase"),
        ("phase_complete", "collapsing"),
        ("results_collapsed", "evolving"),
        ("window_opened", "phase"),
    ]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(EVENT_TYPES), max_size=40))
def test_random_event_sequences_keep_a_valid_state(sequence: list[type[Event]]) -> None:
    c = Coordinator()
    for i, event_type in enumerate(sequence):
        before = (c.state, c.tournament_running, c.current_window)
        legal = c.accepts(event_type)
        try:
            commands = c.handle(sample_event(event_type, T0 + i))
        except InvalidTransition:
            assert not legal
            assert (c.state, c.tournament_running, c.current_window) == before
        else:
            assert legal
            if before[0] is not State.STOPPING:
                assert isinstance(commands[0], RecordEvent)
                assert commands[0].fields["state"] == c.state.value
                assert not any(isinstance(cmd, RecordEvent) for cmd in commands[1:])
        assert isinstance(c.state, State)
        # PHASE is only ever entered with no tournament running and a window in hand.
        if c.state in (State.PHASE, State.COLLAPSING):
            assert not c.tournament_running
            assert c.current_window is not None
