"""The one normalized event model every provider adapter produces.

A provider callback is stored raw in the inbox first; the pipeline then asks the provider's
adapter to turn it into a :class:`NormalizedEvent`. Everything after that point (matching,
the state machine, business rules) only ever sees this model, never provider JSON.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# When a provider's own timestamp of an event is believable. Anything outside (milliseconds
# taken for seconds, 1e308, a 70-digit number, a browser's made-up ``ts``) is no time at
# all: the adapter leaves ``occurred_at`` None and keeps the raw value in ``details``
# (``occurred_at_raw``), so that no stored time is one a view cannot show.
EARLIEST_OCCURRED_AT = 946_684_800.0  # 2000-01-01T00:00:00Z
LATEST_OCCURRED_AT = 4_102_444_800.0  # 2100-01-01T00:00:00Z
RAW_TIME_CHARS = 64  # how much of an unusable raw time is kept in details


def plausible_time(seconds: float | None) -> float | None:
    """``seconds`` if it is a unix time between 2000 and 2100, else None."""
    if seconds is None or not EARLIEST_OCCURRED_AT <= seconds < LATEST_OCCURRED_AT:
        return None  # NaN fails the comparison too
    return seconds


class EventKind(enum.StrEnum):
    """What happened, in provider-neutral words. Stored as its string value."""

    REQUEST_REGISTERED = "request.registered"  # signback's own: the request was just registered
    REQUEST_CREATED = "request.created"  # the provider created the request (still a draft)
    REQUEST_SENT = "request.sent"  # sent to the signers
    REQUEST_VIEWED = "request.viewed"  # a signer opened it (first view)
    RECIPIENT_SIGNED = "recipient.signed"  # one signer signed; others may still be pending
    REQUEST_COMPLETED = "request.completed"  # every signer signed: the round is done
    REQUEST_DECLINED = "request.declined"  # a signer declined; the request stops
    REQUEST_CANCELLED = "request.cancelled"  # cancelled by the sender or the signer
    REQUEST_EXPIRED = "request.expired"  # ran out of time
    REQUEST_DELETED = "request.deleted"  # deleted at the provider (drafts only)
    REQUEST_UPDATED = "request.updated"  # properties changed at the provider
    SIGNER_RETURNED = "signer.returned"  # the signer's browser came back to our result URL
    DELIVERY_FAILED = "delivery.failed"  # the provider says it could not call us
    INFORMATIONAL = "informational"  # known but irrelevant to state (reminders, certificates…)
    TEST = "test"  # a provider's "is this endpoint alive" ping; changes nothing
    UNKNOWN = "unknown"  # a type we do not know: stored and shown, never dropped


@dataclass(frozen=True, slots=True)
class NormalizedEvent:
    """One callback, as the rest of signback sees it."""

    provider: str  # the provider's name (its package under handlers/)
    kind: EventKind  # normalized kind, see the table above
    provider_type: str  # the provider's own name for it ("signed", "signing_request.completed")
    external_id: str | None  # the provider's id of the signature request, used for matching
    event_id: str | None = None  # the provider's id of this event, if it has one
    # When the provider says it happened (unix seconds), if plausible (see plausible_time).
    occurred_at: float | None = None
    # Whether the claim can be acted on. Signed (HMAC) events are; an unsigned callback may be
    # a claim until the provider's API confirms it (a rule checks it, see the README).
    confirmed: bool = True
    # Small provider-neutral facts rules may want: {"result": "close"}, {"recipient": "…"}.
    details: Mapping[str, Any] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict)  # the untouched parsed payload
