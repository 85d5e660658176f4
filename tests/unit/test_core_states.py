"""The monotonic request state machine (receiver/pipeline/states.py)."""

from __future__ import annotations

import itertools

import pytest

from receiver.events import EventKind
from receiver.model import RequestState
from receiver.pipeline.states import RANK, TARGET, apply, is_terminal

S = RequestState
K = EventKind

# The kinds that propose a state, in the column order of the table below.
COLUMNS: tuple[EventKind, ...] = (
    K.REQUEST_CREATED,
    K.REQUEST_SENT,
    K.REQUEST_VIEWED,
    K.RECIPIENT_SIGNED,
    K.REQUEST_COMPLETED,
    K.REQUEST_DECLINED,
    K.REQUEST_CANCELLED,
    K.REQUEST_EXPIRED,
    K.REQUEST_DELETED,
)
CODES: dict[str, RequestState] = {
    "reg": S.REGISTERED,
    "dra": S.DRAFT,
    "sen": S.SENT,
    "vie": S.VIEWED,
    "par": S.PARTIALLY_SIGNED,
    "com": S.COMPLETED,
    "dec": S.DECLINED,
    "can": S.CANCELLED,
    "exp": S.EXPIRED,
    "del": S.DELETED,
}
# The specification, written out by hand: current state → state after each kind in COLUMNS
# (created, sent, viewed, recipient.signed, completed, declined, cancelled, expired, deleted).
TABLE: dict[RequestState, str] = {
    S.REGISTERED: "dra sen vie par com dec can exp del",
    S.DRAFT: "dra sen vie par com dec can exp del",
    S.SENT: "sen sen vie par com dec can exp del",
    S.VIEWED: "vie vie vie par com dec can exp del",
    S.PARTIALLY_SIGNED: "par par par par com dec can exp del",
    S.COMPLETED: "com com com com com com com com com",
    S.DECLINED: "dec dec dec dec dec dec dec dec dec",
    S.CANCELLED: "can can can can can can can can can",
    S.EXPIRED: "exp exp exp exp exp exp exp exp exp",
    S.DELETED: "del del del del del del del del del",
}
FULL_TABLE = [
    pytest.param(current, kind, CODES[code], id=f"{current.value}+{kind.value}")
    for current, row in TABLE.items()
    for kind, code in zip(COLUMNS, row.split(), strict=True)
]
NO_TARGET: tuple[EventKind, ...] = (
    K.SIGNER_RETURNED,
    K.UNKNOWN,
    K.TEST,
    K.INFORMATIONAL,
    K.DELIVERY_FAILED,
    K.REQUEST_REGISTERED,
    K.REQUEST_UPDATED,
)
TERMINAL_STATES = frozenset({S.COMPLETED, S.DECLINED, S.CANCELLED, S.EXPIRED, S.DELETED})


def test_the_table_covers_every_state_and_every_kind() -> None:
    assert set(TABLE) == set(RequestState)
    assert set(COLUMNS) | set(NO_TARGET) == set(EventKind)
    assert not set(COLUMNS) & set(NO_TARGET)


@pytest.mark.parametrize(("current", "kind", "expected"), FULL_TABLE)
def test_full_transition_table(
    current: RequestState, kind: EventKind, expected: RequestState
) -> None:
    transition = apply(current, kind)

    assert transition.before == current
    assert transition.after == expected
    assert transition.changed is (expected != current)
    assert transition.note


@pytest.mark.parametrize(
    ("current", "kinds", "expected"),
    [
        pytest.param(
            S.COMPLETED,
            [K.REQUEST_SENT, K.REQUEST_VIEWED, K.RECIPIENT_SIGNED, K.REQUEST_CREATED],
            S.COMPLETED,
            id="late-events-after-completed",
        ),
        pytest.param(S.CANCELLED, [K.REQUEST_COMPLETED], S.CANCELLED, id="first-terminal-wins"),
        pytest.param(S.COMPLETED, [K.REQUEST_CANCELLED], S.COMPLETED, id="completed-then-cancel"),
        pytest.param(S.EXPIRED, [K.REQUEST_DELETED], S.EXPIRED, id="expired-then-deleted"),
        pytest.param(
            S.REGISTERED,
            [K.REQUEST_VIEWED, K.REQUEST_SENT, K.REQUEST_CREATED],
            S.VIEWED,
            id="out-of-order-before-viewed",
        ),
        pytest.param(
            S.REGISTERED,
            [K.REQUEST_SENT, K.REQUEST_CANCELLED, K.REQUEST_COMPLETED, K.REQUEST_SENT],
            S.CANCELLED,
            id="cancel-then-late-complete-and-sent",
        ),
        pytest.param(
            S.REGISTERED,
            [K.RECIPIENT_SIGNED, K.RECIPIENT_SIGNED, K.REQUEST_VIEWED, K.REQUEST_COMPLETED],
            S.COMPLETED,
            id="duplicates-then-complete",
        ),
    ],
)
def test_event_sequences(
    current: RequestState, kinds: list[EventKind], expected: RequestState
) -> None:
    state = current
    for kind in kinds:
        state = apply(state, kind).after
    assert state == expected


@pytest.mark.parametrize(
    ("current", "kind"),
    [
        (S.COMPLETED, K.REQUEST_SENT),
        (S.COMPLETED, K.REQUEST_VIEWED),
        (S.COMPLETED, K.RECIPIENT_SIGNED),
        (S.CANCELLED, K.REQUEST_COMPLETED),
        (S.VIEWED, K.REQUEST_SENT),
    ],
)
def test_an_ignored_event_says_why(current: RequestState, kind: EventKind) -> None:
    transition = apply(current, kind)
    assert not transition.changed
    assert current.value in transition.note


@pytest.mark.parametrize(("current", "kind", "expected"), FULL_TABLE)
def test_late_means_the_event_proposed_a_state_already_passed(
    current: RequestState, kind: EventKind, expected: RequestState
) -> None:
    # What a late event reports with it (Firma's status word) is as old as its state.
    passed = current not in TERMINAL_STATES and RANK[TARGET[kind]] < RANK[current]
    assert apply(current, kind).late is passed


@pytest.mark.parametrize("current", list(RequestState))
@pytest.mark.parametrize("kind", COLUMNS)
def test_unconfirmed_claims_never_move(current: RequestState, kind: EventKind) -> None:
    transition = apply(current, kind, confirmed=False)
    assert transition.after == current
    assert not transition.changed
    if current not in TERMINAL_STATES:
        assert "confirmed" in transition.note


@pytest.mark.parametrize("current", list(RequestState))
@pytest.mark.parametrize("kind", NO_TARGET)
@pytest.mark.parametrize("confirmed", [True, False])
def test_kinds_without_a_target_never_move(
    current: RequestState, kind: EventKind, confirmed: bool
) -> None:
    transition = apply(current, kind, confirmed=confirmed)
    assert transition.after == current
    assert not transition.changed
    assert kind.value in transition.note


@pytest.mark.parametrize("state", list(RequestState))
def test_is_terminal(state: RequestState) -> None:
    assert is_terminal(state) is (state in TERMINAL_STATES)


def test_rank_never_decreases_and_terminals_are_final() -> None:
    for current, kind, confirmed in itertools.product(RequestState, EventKind, (True, False)):
        transition = apply(current, kind, confirmed=confirmed)
        assert RANK[transition.after] >= RANK[current], (current, kind, confirmed)
        if current in TERMINAL_STATES:
            assert transition.after == current, (current, kind, confirmed)


def test_every_sequence_of_three_events_is_monotonic() -> None:
    for kinds in itertools.product(EventKind, repeat=3):
        state = S.REGISTERED
        for kind in kinds:
            after = apply(state, kind).after
            assert RANK[after] >= RANK[state], kinds
            if state in TERMINAL_STATES:
                assert after == state, kinds
            state = after
