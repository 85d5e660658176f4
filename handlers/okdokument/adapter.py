"""OKdokument: from a stored callback to a NormalizedEvent (pure).

sendInfo carries no signature (the docs require the endpoint to work without any
authorization), so its body is a *claim*: unless confirmation is switched off, a state it
reports is marked unconfirmed, and the confirm-before-acting rule checks it with the
Document-info API, about the document registered for the request (never one the body
names). The confirmation comes back through the inbox on channel ``confirmation`` and is
what moves the request's state. Only the outcome states are checked: a sendInfo saying
``tosign`` or ``errorsendinfo`` (or anything else) is recorded and acts on nothing. When
Document info says ``errorsendinfo`` instead, the same channel brings a ``delivery.failed``
fact, with an event id of its own: it confirms nothing.
On channel ``reconcile`` the body is Document info's own answer about the registered
document, read by the reconciler: what it says is the document's state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from receiver import jsonutil
from receiver.events import EventKind, NormalizedEvent
from receiver.providers import StoredCallback

PROVIDER = "okdokument"

# OKdokument document states (docs §1.6) → normalized kinds.
DOCUMENT_STATE_KINDS: Mapping[str, EventKind] = {
    "signed": EventKind.REQUEST_COMPLETED,  # Submit: signed within this signatureRequestId
    "canceled": EventKind.REQUEST_CANCELLED,  # Cancel (sic: one "l" in OKdokument's spelling)
    "cancelled": EventKind.REQUEST_CANCELLED,  # not documented; accepted in case it is fixed
    "errorsendinfo": EventKind.DELIVERY_FAILED,  # OKdokument could not call our sendInfo URL
    "tosign": EventKind.REQUEST_SENT,  # ready for the signer
    "tags": EventKind.INFORMATIONAL,  # tag search running; becomes tosign by itself
    "tostamp": EventKind.INFORMATIONAL,  # waiting for a stamp
}
# Claims worth confirming: the ones that end a round.
CONFIRMABLE: frozenset[EventKind] = frozenset(
    {EventKind.REQUEST_COMPLETED, EventKind.REQUEST_CANCELLED}
)
# The document states that mean an outcome: the only ones a sendInfo claim is checked for,
# and the only ones Document info can confirm a claim with (errorsendinfo never does).
OUTCOME_STATES: frozenset[str] = frozenset(
    state for state, kind in DOCUMENT_STATE_KINDS.items() if kind in CONFIRMABLE
)


def _text(payload: Mapping[str, Any], key: str) -> str | None:
    value = payload.get(key)
    return value if isinstance(value, str) and value else None


def normalize(callback: StoredCallback, *, confirm_claims: bool = True) -> NormalizedEvent:
    payload = jsonutil.loads(callback.body) if callback.body else {}
    if not isinstance(payload, dict):
        raise ValueError("OKdokument callback body is not a JSON object")
    state = _text(payload, "state") or ""
    kind = DOCUMENT_STATE_KINDS.get(state, EventKind.UNKNOWN)
    details: dict[str, Any] = {"document_state": state}
    if document_id := _text(payload, "id"):
        details["document_id"] = document_id
    if callback.channel == "reconcile":
        # Document info's answer, read by signback about the registered document (the
        # reconciler checked that the answer is about it): confirmed. The row names the
        # request; Document info names no signature request.
        return NormalizedEvent(
            provider=PROVIDER,
            kind=kind,
            provider_type=f"reconcile:{state or 'unknown'}",
            external_id=None,
            confirmed=True,
            details=details,
            raw=payload,
        )
    if callback.channel == "confirmation":
        # Made by signback from Document info: the provider's own answer, so confirmed.
        confirms = _text(payload, "confirms")
        prefix = "delivery-failed" if kind is EventKind.DELIVERY_FAILED else "confirmation"
        return NormalizedEvent(
            provider=PROVIDER,
            kind=kind,
            provider_type=f"documentinfo:{state}",
            external_id=_text(payload, "signatureRequestId"),
            event_id=f"{prefix}-{confirms}" if confirms else None,
            confirmed=True,
            details={**details, "confirms": confirms},
            raw=payload,
        )
    return NormalizedEvent(
        provider=PROVIDER,
        kind=kind,
        provider_type=f"sendinfo:{state}",
        external_id=_text(payload, "signatureRequestId"),
        # sendInfo carries no event id of its own: the inbox row is the event.
        event_id=f"inbox-{callback.inbox_id}",
        # Unsigned: with confirmation on, no state it reports acts by itself. An outcome
        # (signed, canceled) is a claim that rule (b) checks with Document info; any other
        # state (tosign, errorsendinfo, tags, …) is recorded on the timeline and moves
        # nothing, emits nothing downstream and runs no rule.
        confirmed=not confirm_claims,
        details=details,
        raw=payload,
    )
