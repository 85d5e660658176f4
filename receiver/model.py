"""Plain values shared by the pipeline, the rules and the dispatcher."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class RequestState(enum.StrEnum):
    """A signature request's state in signback. Ranks only ever go up (see states.py)."""

    REGISTERED = "registered"  # known to signback, nothing heard from the provider yet
    DRAFT = "draft"  # the provider created it; it is not sent yet
    SENT = "sent"  # out for signing
    VIEWED = "viewed"  # a signer opened it
    PARTIALLY_SIGNED = "partially_signed"  # some signers signed
    COMPLETED = "completed"  # terminal: signed by everyone
    DECLINED = "declined"  # terminal: a signer declined
    CANCELLED = "cancelled"  # terminal
    EXPIRED = "expired"  # terminal
    DELETED = "deleted"  # terminal


@dataclass(frozen=True, slots=True)
class SignatureRequest:
    """A registered signature request, as rules and operations see it."""

    id: int  # signback's own id
    provider: str  # the provider's name (its package under handlers/)
    external_id: str  # the provider's own id of the request
    state: RequestState
    document_id: str | None = None  # the provider's document id, where it has one
    reference: str | None = None  # the business's own reference (order number, case id…)
    return_url: str | None = None  # where the signer's browser goes after signing
    retry_url: str | None = None  # where a signer who cancelled is sent to try again
    metadata: Mapping[str, Any] = field(default_factory=dict)  # free, the caller's
    # Provider properties to apply while the request is still editable (a provider's rule).
    defaults: Mapping[str, Any] = field(default_factory=dict)
    provider_status: str | None = None  # the provider's last known status word ("draft", …)
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Action:
    """What a business rule asks for: one call to a provider, sent later by the outbox.

    ``key`` makes the action idempotent: the same key for the same request is stored once,
    however often the rule runs (duplicates, replays, re-processing after a crash).
    """

    operation: str  # a provider's operation, "<provider>.<name>" (e.g. "acme.patch_request")
    payload: Mapping[str, Any]  # JSON-serializable arguments for the operation
    key: str  # unique per request
    delay_seconds: float = 0.0  # send no earlier than this after it was decided
