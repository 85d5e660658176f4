"""The downstream event catalogue: which event types exist and what causes each.

One schema for every provider (docs/events.md, docs/events.schema.json). Types about a
signature request start with ``signature_request.``; operational ones with ``signback.``.
Later features add types here (reconciliation, archiving): an endpoint that keeps the
default filter (every ``signature_request.*`` type) receives them without a change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from receiver.events import EventKind
from receiver.model import RequestState

SCHEMA_VERSION = 1

REQUEST_PREFIX = "signature_request."
OPERATIONAL_PREFIX = "signback."
ALL_REQUEST_TYPES = "signature_request.*"
ALL_OPERATIONAL_TYPES = "signback.*"

# The state a request reached → the event it emits. ``registered`` is signback's own start
# and emits nothing (the registration's answer already says it).
STATE_TYPES: Mapping[RequestState, str] = {
    RequestState.DRAFT: "signature_request.created",
    RequestState.SENT: "signature_request.sent",
    RequestState.VIEWED: "signature_request.viewed",
    RequestState.PARTIALLY_SIGNED: "signature_request.signer_signed",
    RequestState.COMPLETED: "signature_request.completed",
    RequestState.DECLINED: "signature_request.declined",
    RequestState.CANCELLED: "signature_request.cancelled",
    RequestState.EXPIRED: "signature_request.expired",
    RequestState.DELETED: "signature_request.deleted",
}
SIGNER_RETURNED = "signature_request.signer_returned"
DELIVERY_FAILED = "signature_request.delivery_failed"
STALE = "signature_request.stale"
DOCUMENT_ARCHIVED = "signature_request.document_archived"
ACTION_DEAD = "signback.action.dead"
ENDPOINT_DISABLED = "signback.endpoint.disabled"
TEST = "signback.test"

# Every type and a line about it (the API validates filters against it; docs/events.md
# has the full catalogue).
TYPES: Mapping[str, str] = {
    STATE_TYPES[RequestState.DRAFT]: "the provider created the request (a draft)",
    STATE_TYPES[RequestState.SENT]: "sent to the signers",
    STATE_TYPES[RequestState.VIEWED]: "a signer opened it",
    STATE_TYPES[RequestState.PARTIALLY_SIGNED]: "a signer signed; others have not yet",
    STATE_TYPES[RequestState.COMPLETED]: "every signer signed",
    STATE_TYPES[RequestState.DECLINED]: "a signer declined",
    STATE_TYPES[RequestState.CANCELLED]: "cancelled",
    STATE_TYPES[RequestState.EXPIRED]: "ran out of time",
    STATE_TYPES[RequestState.DELETED]: "deleted at the provider",
    SIGNER_RETURNED: "the signer's browser came back to signback's return URL",
    DELIVERY_FAILED: "the provider says it could not deliver a callback to signback",
    STALE: "nothing heard of an open request for longer than expected in its state",
    DOCUMENT_ARCHIVED: "a file of the request (signed PDF, evidence) is in signback's archive",
    ACTION_DEAD: "an outbound call to a provider was given up (dead)",
    ENDPOINT_DISABLED: "an endpoint was disabled (410 Gone, or failing for too long)",
    TEST: "a test event asked for with POST /api/endpoints/{id}/test",
}
WILDCARDS = (ALL_REQUEST_TYPES, ALL_OPERATIONAL_TYPES)

# Where the fact came from, by inbox channel (docs/events.md, ``data.event.source``): the
# core's own channels here; every other one is a provider's (a hook's, or what its API said
# about a callback's claim, fed back by an operation), so the provider called signback.
SOURCES: Mapping[str, str] = {
    "return": "browser",
    "reconcile": "reconcile",
    "signback": "signback",
}


def source_of(channel: str) -> str:
    return SOURCES.get(channel, "callback")


def type_for(
    kind: EventKind,
    *,
    before: RequestState,
    after: RequestState,
    confirmed: bool,
) -> str | None:
    """The event a processed provider event emits, or None when it changes nothing.

    A state change emits the type of the state reached. Without one, only facts that are
    news by themselves emit: a signer's browser return, a provider's failed delivery to
    signback, and a further signer's signature while the request is partly signed (a second
    signer of several; the inbox has already dropped the provider's duplicates). A late or
    repeated state event emits nothing.
    """
    if before != after:
        return STATE_TYPES.get(after)
    if kind is EventKind.SIGNER_RETURNED:
        return SIGNER_RETURNED
    if kind is EventKind.DELIVERY_FAILED and confirmed:  # an unsigned claim of it is no news
        return DELIVERY_FAILED
    if kind is EventKind.RECIPIENT_SIGNED and confirmed and after is RequestState.PARTIALLY_SIGNED:
        return STATE_TYPES[RequestState.PARTIALLY_SIGNED]
    return None


def filter_problem(kinds: Iterable[str]) -> str | None:
    """Why an endpoint's ``kinds`` filter is refused, or None."""
    unknown = sorted({k for k in kinds if k not in TYPES and k not in WILDCARDS})
    if unknown:
        return (
            f"unknown event type(s) {', '.join(unknown)}; known: {', '.join(TYPES)}, "
            f"or {' / '.join(WILDCARDS)}"
        )
    return None


def wanted(event_type: str, kinds: Sequence[str]) -> bool:
    """Whether an endpoint with this ``kinds`` filter receives ``event_type``. An empty
    filter means every signature-request event and no operational one."""
    if not kinds:
        return event_type.startswith(REQUEST_PREFIX)
    if event_type in kinds:
        return True
    if event_type.startswith(REQUEST_PREFIX):
        return ALL_REQUEST_TYPES in kinds
    return event_type.startswith(OPERATIONAL_PREFIX) and ALL_OPERATIONAL_TYPES in kinds
