"""Firma.dev webhook envelopes: parse them and normalize them. Pure: bytes in, values out.

Firma has shipped two envelope generations and we accept both, plus mixtures of the two:

* current: ``{"id", "type", "created_at", "company_id", "workspace_id",
  "data": {"signing_request": {"id", …}, "recipients": […], "workspace": {…}}}``
* older (early 2026): ``{"event_id", "event_type", "timestamp", "company_id",
  "workspace_id", "data": {"signing_request_id", …}}``

The event id (``id`` / ``event_id``) is Firma's deduplication key; ``X-Firma-Delivery`` changes
on every retry and is not. The type comes from the body, which is signed, never from the
``X-Firma-Event`` header, which is not.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

from receiver import jsonutil
from receiver.errors import CallbackRejected
from receiver.events import RAW_TIME_CHARS, EventKind, NormalizedEvent, plausible_time
from receiver.providers import StoredCallback

__all__ = [
    "EVENT_KINDS",
    "FIRMA_STATUSES",
    "PROVIDER",
    "PROVIDER_STATUS_AFTER",
    "Envelope",
    "kind_of",
    "normalize",
    "normalize_reading",
    "parse_envelope",
    "parse_timestamp",
]

PROVIDER = "firma"

MAX_ID_LENGTH = 200  # Firma's ids are UUIDs or "evt_<unix>_<9 chars>"; 200 is generous

EVENT_KINDS: Mapping[str, EventKind] = {
    # --- signing request lifecycle ---
    # Firma's create answers status "draft" (its list endpoint calls the same state "not_sent").
    "signing_request.created": EventKind.REQUEST_CREATED,
    "signing_request.sent": EventKind.REQUEST_SENT,
    "signing_request.viewed": EventKind.REQUEST_VIEWED,  # first view only, per the docs
    "signing_request.completed": EventKind.REQUEST_COMPLETED,  # every recipient signed
    "signing_request.expired": EventKind.REQUEST_EXPIRED,  # cannot be extended afterwards
    "signing_request.cancelled": EventKind.REQUEST_CANCELLED,
    "signing_request.updated": EventKind.REQUEST_UPDATED,  # properties ("metadata") changed
    "signing_request.deleted": EventKind.REQUEST_DELETED,  # only drafts can be deleted
    # Listed in one docs version only ("Document was updated"): a property change too.
    "signing_request.document.updated": EventKind.REQUEST_UPDATED,
    # Known, but they change nothing about the request's state.
    "signing_request.certificate.generated": EventKind.INFORMATIONAL,
    "signing_request.reminder.sent": EventKind.INFORMATIONAL,
    "signing_request.field.filled": EventKind.INFORMATIONAL,  # one docs version; per field
    # --- recipients ---
    "signing_request.recipient.signed": EventKind.RECIPIENT_SIGNED,
    # The older docs' name for the same event (early-2026 envelope).
    "signing_request.signed": EventKind.RECIPIENT_SIGNED,
    # Quirk: a decline is a *recipient* event, yet it stops the whole request, and there is no
    # request-level "signing_request.declined" in the documented list (status "declined"
    # exists though). So the recipient event is what ends the request. We deliberately do not
    # map an undocumented "signing_request.declined": it would arrive as UNKNOWN and be shown.
    "signing_request.recipient.declined": EventKind.REQUEST_DECLINED,
    # A signer corrected their name/company while signing: nothing to do for the state.
    "signing_request.recipient.identity_changed": EventKind.INFORMATIONAL,
    # --- other entities: never about a signing request's state ---
    "template.created": EventKind.INFORMATIONAL,  # older docs list
    "template.updated": EventKind.INFORMATIONAL,
    "template.deleted": EventKind.INFORMATIONAL,  # older docs list
    "template.used": EventKind.INFORMATIONAL,  # a template was used to create a request
    "workspace.created": EventKind.INFORMATIONAL,
    "workspace.updated": EventKind.INFORMATIONAL,
    "domain.verified": EventKind.INFORMATIONAL,
    "domain.verification.failed": EventKind.INFORMATIONAL,
    # POST /webhooks/{id}/test sends this; it bypasses Firma's master switch, so a passing
    # test does not prove that live events are delivered.
    "webhook.test": EventKind.TEST,
}
"""Firma event type → normalized kind. Anything not listed is :attr:`EventKind.UNKNOWN`."""

PROVIDER_STATUS_AFTER: Mapping[str, str] = {
    "signing_request.created": "draft",
    "signing_request.sent": "in_progress",
    "signing_request.completed": "finished",
    "signing_request.cancelled": "cancelled",
    "signing_request.recipient.declined": "declined",  # the decline stops the request
    "signing_request.expired": "expired",
    "signing_request.deleted": "deleted",
}
"""Firma's own status word for a signing request right after an event of that type."""

# Every status word Firma uses: the documented enum plus "draft", which create answers.
FIRMA_STATUSES: frozenset[str] = frozenset(
    {"draft", "not_sent", "in_progress", "finished", "cancelled", "declined", "deleted", "expired"}
)

# Event types whose `details` carry the signing request's reported status.
_STATUS_REPORTING_TYPES: frozenset[str] = frozenset(
    {"signing_request.created", "signing_request.updated"}
)

# Recipient-centred event types → the recipient field that marks the recipient who acted,
# used to pick them out when `data.recipients` lists several (None: no such marker).
_RECIPIENT_MARKER: Mapping[str, str | None] = {
    "signing_request.recipient.signed": "signed_at",
    "signing_request.signed": "signed_at",
    "signing_request.recipient.declined": "declined_at",
    "signing_request.recipient.identity_changed": None,
    "signing_request.viewed": "viewed_at",
}

_NUMERIC = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_MAX_TIMESTAMP_CHARS = 64
# A unix time in seconds stays below 1e11 until the year 5138; larger numbers are taken to be
# milliseconds (a common slip in webhook producers; Firma documents seconds/ISO only).
_MILLISECONDS_FROM = 1e11


@dataclass(frozen=True)
class Envelope:
    """The parts of a Firma webhook body the receiver relies on, whichever envelope it used."""

    event_id: str  # `id` (current) or `event_id` (older): the deduplication key
    event_type: str  # `type` or `event_type`, e.g. "signing_request.completed"
    created_at: float | None  # `created_at` or `timestamp` as unix seconds; None if unreadable
    signing_request_id: str | None  # None for template/workspace/domain/test events
    workspace_id: str | None  # the workspace the event belongs to, when stated
    payload: Mapping[str, Any]  # the whole parsed body


def _reject(reason: str) -> NoReturn:
    raise CallbackRejected(reason, 400)


def _checked_id(value: Any, what: str) -> str:
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > MAX_ID_LENGTH
        or not value.isprintable()
    ):
        _reject(f"{what} must be a non-empty string of at most {MAX_ID_LENGTH} characters")
    return value


def _first(*candidates: Any) -> Any:
    """The first candidate that is not None (a JSON null counts as absent)."""
    for value in candidates:
        if value is not None:
            return value
    return None


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        _reject(f"{what} is not a JSON object")
    return value


def parse_timestamp(value: Any) -> float | None:
    """ISO-8601 (``Z`` or an offset; naive means UTC) or unix seconds → unix seconds.

    Anything unreadable, or outside the plausible range of
    :func:`receiver.events.plausible_time`, is None: a bad timestamp never makes a callback
    invalid, and never becomes a stored time that no view can show.
    """
    if isinstance(value, bool):  # bool is an int in Python; true is not 1970-01-01T00:00:01
        return None
    number: float | None = None
    if isinstance(value, int) and not -(10**20) < value < 10**20:
        # A JSON integer of any length (the standard library's parser reads 400 digits):
        # float() would raise OverflowError past a double's range. Far from any time anyway.
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text or len(text) > _MAX_TIMESTAMP_CHARS:
            return None
        if _NUMERIC.fullmatch(text):
            number = float(text)
        else:
            try:
                moment = datetime.fromisoformat(text)  # 3.11+: accepts "Z" and fractions
            except ValueError:
                return None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return plausible_time(moment.timestamp())
    if number is None or not math.isfinite(number):
        return None
    if abs(number) >= _MILLISECONDS_FROM:
        number /= 1000.0
    return plausible_time(number)


def parse_envelope(body: bytes) -> Envelope:
    """Read a webhook body; raise :class:`CallbackRejected` (400) when it is not a Firma event."""
    try:
        # utf-8-sig: a byte-order mark is still UTF-8; the JSON parser would refuse it.
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        _reject("body is not UTF-8")
    try:
        payload: Any = jsonutil.loads(text)
    except (ValueError, RecursionError):
        _reject("body is not JSON")
    if not isinstance(payload, dict):
        _reject("body is not a JSON object")

    raw_event_id = _first(payload.get("id"), payload.get("event_id"))
    if raw_event_id is None:
        _reject("event has no id (neither 'id' nor 'event_id')")
    event_id = _checked_id(raw_event_id, "event id")
    raw_type = _first(payload.get("type"), payload.get("event_type"))
    if raw_type is None:
        _reject("event has no type (neither 'type' nor 'event_type')")
    event_type = _checked_id(raw_type, "event type")

    data = _object(payload.get("data"), "data")
    raw_request = data.get("signing_request")
    request: Mapping[str, Any] = {}
    candidates: list[Any]
    if isinstance(raw_request, str):
        # Tolerated mixture: the id itself instead of the object.
        candidates = [raw_request]
    else:
        request = _object(raw_request, "data.signing_request")
        candidates = [request.get("id")]
    # Older envelope: `data.signing_request_id`; seen top-level as well.
    candidates += [data.get("signing_request_id"), payload.get("signing_request_id")]
    request_ids = {
        _checked_id(value, "signing request id") for value in candidates if value is not None
    }
    if len(request_ids) > 1:
        # Matching goes by this id: refuse to guess which of two different ids is meant.
        _reject("event names different signing request ids")
    signing_request_id = next(iter(request_ids), None)

    workspace = data.get("workspace")
    raw_workspace_id = _first(
        payload.get("workspace_id"),
        data.get("workspace_id"),
        request.get("workspace_id"),
        workspace.get("id") if isinstance(workspace, dict) else None,
    )
    workspace_id = (
        None if raw_workspace_id is None else _checked_id(raw_workspace_id, "workspace id")
    )

    # The first readable timestamp wins (`created_at`, then the older `timestamp`).
    created_at = parse_timestamp(payload.get("created_at"))
    if created_at is None:
        created_at = parse_timestamp(payload.get("timestamp"))
    return Envelope(
        event_id=event_id,
        event_type=event_type,
        created_at=created_at,
        signing_request_id=signing_request_id,
        workspace_id=workspace_id,
        payload=payload,
    )


def kind_of(event_type: str) -> EventKind:
    """The normalized kind of a Firma event type; UNKNOWN for types we have never seen."""
    return EVENT_KINDS.get(event_type, EventKind.UNKNOWN)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _pick_recipient(data: Mapping[str, Any], event_type: str) -> Mapping[str, Any] | None:
    """The recipient an event is about, or None when the payload does not say unambiguously."""
    single = data.get("recipient")
    if isinstance(single, dict):
        return single
    listed = data.get("recipients")
    if isinstance(listed, list):
        recipients = [item for item in listed if isinstance(item, dict)]
        if len(recipients) == 1:
            return recipients[0]
        marker = _RECIPIENT_MARKER.get(event_type)
        if marker is not None:
            acted = [item for item in recipients if item.get(marker)]
            if len(acted) == 1:
                return acted[0]
        return None
    # Older envelope style: flat `recipient_*` fields next to `signing_request_id`.
    flat = {
        key: data[f"recipient_{key}"]
        for key in ("id", "email", "name")
        if f"recipient_{key}" in data
    }
    return flat or None


def _recipient_details(recipient: Mapping[str, Any]) -> dict[str, str]:
    details: dict[str, str] = {}
    recipient_id = recipient.get("id")
    if isinstance(recipient_id, int | str) and not isinstance(recipient_id, bool):
        details["recipient_id"] = str(recipient_id)
    email = _text(recipient.get("email"))
    if email:
        details["recipient_email"] = email
    name = _text(recipient.get("name"))
    if name is None:
        parts: Sequence[Any] = (recipient.get("first_name"), recipient.get("last_name"))
        name = " ".join(part for part in parts if _text(part)) or None
    if name:
        details["recipient_name"] = name
    return details


# What GET /signing-requests/{id} says (its ``status``) → the kind a reconcile finding is.
STATUS_KINDS: Mapping[str, EventKind] = {
    "draft": EventKind.REQUEST_CREATED,  # create's word for an unsent request
    "not_sent": EventKind.REQUEST_CREATED,
    "in_progress": EventKind.REQUEST_SENT,  # RECIPIENT_SIGNED once a recipient signed
    "finished": EventKind.REQUEST_COMPLETED,
    "declined": EventKind.REQUEST_DECLINED,
    "cancelled": EventKind.REQUEST_CANCELLED,
    "expired": EventKind.REQUEST_EXPIRED,
    "deleted": EventKind.REQUEST_DELETED,
}
# When the request reached each final status, as the answer dates it.
_STATUS_DATES: Mapping[str, str] = {
    "finished": "date_finished",
    "declined": "date_declined",
    "cancelled": "date_cancelled",
    "in_progress": "date_sent",
}


def signed_recipients(answer: Mapping[str, Any]) -> int:
    """How many recipients of a signing request (GET's answer) have signed."""
    recipients = answer.get("recipients")
    if not isinstance(recipients, list):
        return 0
    return sum(1 for r in recipients if isinstance(r, dict) and r.get("signed_at"))


def reading_state(answer: Mapping[str, Any]) -> str:
    """The state a reconcile finding is keyed by: the status, and for a request out for
    signing the number of signatures (each new one is news)."""
    status = _text(answer.get("status")) or "unknown"
    return f"{status}:{signed_recipients(answer)}" if status == "in_progress" else status


def normalize_reading(callback: StoredCallback) -> NormalizedEvent:
    """What Firma's API answered about a signing request (channel ``reconcile``: signback
    asked, over its API key, so the answer is confirmed)."""
    answer = jsonutil.loads(callback.body)
    if not isinstance(answer, dict):
        raise ValueError("Firma's signing request answer is not a JSON object")
    status = _text(answer.get("status")) or ""
    kind = STATUS_KINDS.get(status, EventKind.UNKNOWN)
    signed = signed_recipients(answer)
    if kind is EventKind.REQUEST_SENT and signed:
        kind = EventKind.RECIPIENT_SIGNED
    details: dict[str, Any] = {"status": status, "signed_recipients": signed}
    if status in FIRMA_STATUSES:
        details["provider_status"] = status
    date_field = _STATUS_DATES.get(status)
    request_id = answer.get("id")
    return NormalizedEvent(
        provider=PROVIDER,
        kind=kind,
        provider_type=f"reconcile:{status or 'unknown'}",
        external_id=request_id if isinstance(request_id, str) and request_id else None,
        occurred_at=parse_timestamp(answer.get(date_field)) if date_field else None,
        confirmed=True,
        details=details,
        raw=answer,
    )


def normalize(callback: StoredCallback) -> NormalizedEvent:
    """A stored Firma webhook → the normalized event.

    ``confirmed`` is True: the HMAC signature was verified at intake, before storing.
    ``details`` may hold ``workspace_id``; ``recipient_id``/``recipient_email``/
    ``recipient_name`` for recipient events; ``status`` (the status the payload reports, for
    created/updated); ``provider_status`` (Firma's status word after this event, when known).
    """
    if callback.channel == "reconcile":
        return normalize_reading(callback)
    envelope = parse_envelope(callback.body)
    event_type = envelope.event_type
    data = envelope.payload.get("data")
    data = data if isinstance(data, dict) else {}

    details: dict[str, Any] = {}
    if envelope.workspace_id is not None:
        details["workspace_id"] = envelope.workspace_id
    if event_type in _RECIPIENT_MARKER:
        recipient = _pick_recipient(data, event_type)
        if recipient is not None:
            details.update(_recipient_details(recipient))

    provider_status = PROVIDER_STATUS_AFTER.get(event_type)
    if event_type in _STATUS_REPORTING_TYPES:
        request = data.get("signing_request")
        reported = _first(
            request.get("status") if isinstance(request, dict) else None, data.get("status")
        )
        if isinstance(reported, str) and reported:
            details["status"] = reported
            # What Firma says beats what we expect: create may answer "not_sent" not "draft".
            if reported in FIRMA_STATUSES:
                provider_status = reported
    if provider_status is not None:
        details["provider_status"] = provider_status
    if envelope.created_at is None:
        raw_time = _first(envelope.payload.get("created_at"), envelope.payload.get("timestamp"))
        if isinstance(raw_time, str | int | float):  # other JSON values: not worth keeping
            details["occurred_at_raw"] = str(raw_time)[:RAW_TIME_CHARS]

    return NormalizedEvent(
        provider=PROVIDER,
        kind=kind_of(event_type),
        provider_type=event_type,
        external_id=envelope.signing_request_id,
        event_id=envelope.event_id,
        occurred_at=envelope.created_at,
        confirmed=True,
        details=details,
        raw=envelope.payload,
    )
