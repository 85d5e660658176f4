"""Testsign's callbacks: a form-encoded body (``event_id``, ``envelope_id``, ``status``,
``occurred_at``), read at intake (:func:`parse_form`) and normalized later (pure)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping

from receiver import EventKind, NormalizedEvent
from receiver.errors import CallbackRejected
from receiver.events import plausible_time
from receiver.providers.contract import StoredCallback

PROVIDER = "testsign"

STATUS_KINDS: Mapping[str, EventKind] = {
    "created": EventKind.REQUEST_CREATED,
    "sent": EventKind.REQUEST_SENT,
    "delivered": EventKind.REQUEST_VIEWED,  # the envelope was opened
    "completed": EventKind.REQUEST_COMPLETED,
    "declined": EventKind.REQUEST_DECLINED,
    "voided": EventKind.REQUEST_CANCELLED,  # withdrawn by the sender
}
REQUIRED = ("event_id", "envelope_id", "status")


def parse_form(body: bytes) -> dict[str, str]:
    """The fields of a callback body; CallbackRejected (400) for anything else."""
    try:
        text = body.decode("utf-8")
        fields = dict(urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=True))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CallbackRejected(f"body is not a form: {str(exc)[:100]}", 400) from None
    for name in REQUIRED:
        value = fields.get(name, "")
        if not value or len(value) > 200 or not value.isprintable():
            raise CallbackRejected(f"body has no usable {name}", 400)
    return fields


def normalize(callback: StoredCallback) -> NormalizedEvent:
    fields = parse_form(callback.body)
    stamp = fields.get("occurred_at", "")
    return NormalizedEvent(
        provider=PROVIDER,
        kind=STATUS_KINDS.get(fields["status"], EventKind.UNKNOWN),
        provider_type=fields["status"],
        external_id=fields["envelope_id"],
        event_id=fields["event_id"],
        occurred_at=plausible_time(float(stamp)) if stamp.isdigit() and len(stamp) < 12 else None,
        raw=fields,
    )
