"""The request state machine: monotonic, so late or repeated events never move a request back.

Each event kind proposes a target state; the request moves only if the target ranks higher
than where it is. Terminal states all share the top rank, so the first terminal event wins
and a late ``completed`` cannot overwrite ``cancelled`` (or the other way round). The event
itself is always kept in the timeline, with a note saying why it did not move the state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from receiver.events import EventKind
from receiver.model import RequestState

RANK: Mapping[RequestState, int] = {
    RequestState.REGISTERED: 0,
    RequestState.DRAFT: 1,
    RequestState.SENT: 2,
    RequestState.VIEWED: 3,
    RequestState.PARTIALLY_SIGNED: 4,
    RequestState.COMPLETED: 9,
    RequestState.DECLINED: 9,
    RequestState.CANCELLED: 9,
    RequestState.EXPIRED: 9,
    RequestState.DELETED: 9,
}

# Event kind → the state it proposes. Kinds missing here never change the state.
TARGET: Mapping[EventKind, RequestState] = {
    EventKind.REQUEST_CREATED: RequestState.DRAFT,
    EventKind.REQUEST_SENT: RequestState.SENT,
    EventKind.REQUEST_VIEWED: RequestState.VIEWED,
    EventKind.RECIPIENT_SIGNED: RequestState.PARTIALLY_SIGNED,
    EventKind.REQUEST_COMPLETED: RequestState.COMPLETED,
    EventKind.REQUEST_DECLINED: RequestState.DECLINED,
    EventKind.REQUEST_CANCELLED: RequestState.CANCELLED,
    EventKind.REQUEST_EXPIRED: RequestState.EXPIRED,
    EventKind.REQUEST_DELETED: RequestState.DELETED,
}


@dataclass(frozen=True, slots=True)
class Transition:
    before: RequestState
    after: RequestState
    note: str  # why it moved, or why not
    # The event proposed a state the request is already past: whatever else it reports (the
    # provider's status with it) is older than what is stored, and is not applied either.
    late: bool = False

    @property
    def changed(self) -> bool:
        return self.before != self.after


def is_terminal(state: RequestState) -> bool:
    return RANK[state] == RANK[RequestState.COMPLETED]


def apply(current: RequestState, kind: EventKind, *, confirmed: bool = True) -> Transition:
    """Where ``current`` goes on an event of ``kind`` (pure)."""
    target = TARGET.get(kind)
    if target is None:
        return Transition(current, current, f"{kind.value} does not change the state")
    if is_terminal(current):
        return Transition(current, current, f"ignored: request already ended as {current.value}")
    if not confirmed:
        return Transition(current, current, "claim not yet confirmed with the provider")
    if target == current:
        return Transition(current, current, f"already {current.value}")
    if RANK[target] <= RANK[current]:
        return Transition(
            current,
            current,
            f"late event ignored: {current.value} is past {target.value}",
            late=True,
        )
    return Transition(current, target, f"{current.value} → {target.value}")
