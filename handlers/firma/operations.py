"""Outbound operations the outbox can run against Firma.dev."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from handlers.firma.client import (
    FirmaClient,
    is_immutable_answer,
    provider_message,
    retry_after_seconds,
)
from receiver.context import AppContext
from receiver.errors import InvalidAction
from receiver.model import RequestState, SignatureRequest
from receiver.outbox.budgets import next_free_in, wait_for_slot
from receiver.outbox.outcomes import excerpt, from_response
from receiver.providers import Operation, Outcome

PATCH = "firma.patch_signing_request"

# Firma's words for a request that can still be edited (create says "draft", lists "not_sent").
EDITABLE_STATUSES = frozenset({"draft", "not_sent"})
EDITABLE_STATES = frozenset({RequestState.REGISTERED, RequestState.DRAFT})


# Sleep for a write slot only briefly while holding the action; farther slots defer it.
MAX_SLOT_WAIT = 5.0


def write_schedule(ctx: AppContext) -> str:
    """One schedule per API key (its hash: the key itself is never stored)."""
    key = ctx.settings.firma_api_key
    digest = hashlib.sha256(key.get_secret_value().encode() if key else b"").hexdigest()[:16]
    return f"firma-writes:{digest}"


def _client(ctx: AppContext) -> FirmaClient:
    client = ctx.clients.get("firma")
    if not isinstance(client, FirmaClient):
        raise InvalidAction("SIGNBACK_FIRMA_API_KEY is not set: cannot call Firma")
    return client


def _not_editable(why: str) -> Outcome:
    return Outcome(
        ok=True,
        skipped=True,
        message=f"not sent: {why}; Firma makes a signing request immutable once it is sent",
    )


async def patch_signing_request(
    ctx: AppContext, request: SignatureRequest, payload: Mapping[str, Any]
) -> Outcome:
    """PATCH /signing-requests/{id} with properties, but only while the request is a draft.

    Not editable by our own state, or by Firma's answer to a GET just before: recorded as
    skipped with the reason, nothing is written. Refused as immutable anyway (sent in the
    moment between the GET and the PATCH): final, never retried, and said so.
    """
    client = _client(ctx)
    if request.state not in EDITABLE_STATES:
        return _not_editable(f"the request is {request.state.value}")
    if request.provider_status and request.provider_status not in EDITABLE_STATUSES:
        return _not_editable(f"Firma reports it as {request.provider_status}")
    # Our state may lag behind Firma's even when it says "draft": webhooks arrive late and
    # out of order, and a "sent" may be stored but not processed yet. So ask before writing
    # (reads have their own, larger rate budget; a skipped write beats a refused one).
    current = await client.get_signing_request(request.external_id)
    if current.status_code != 200:
        return from_response(
            current,
            now=ctx.clock(),
            message=provider_message,
            retry_after=retry_after_seconds(current, now=ctx.clock()),
        )
    try:
        answer = current.json()
    except ValueError:  # not JSON: no status to go by
        answer = None
    status = str(answer.get("status") or "") if isinstance(answer, dict) else ""
    if status not in EDITABLE_STATUSES:
        return _not_editable(f"Firma reports it as {status or 'unknown'}")
    # Our own pace, shared by every process on this database: stay under Firma's 120 writes
    # a minute per API key even when several workers send at once.
    waited = await wait_for_slot(
        ctx.db,
        write_schedule(ctx),
        per_minute=ctx.settings.firma_writes_per_minute,
        clock=ctx.clock,
        max_wait=MAX_SLOT_WAIT,
    )
    if waited is None:
        later = await next_free_in(ctx.db, write_schedule(ctx), now=ctx.clock())
        return Outcome(
            ok=False,
            deferred=True,
            retry_after=later,
            message="waiting for a slot under Firma's write rate limit",
        )
    response = await client.patch_signing_request(request.external_id, payload)
    now = ctx.clock()
    if is_immutable_answer(response):
        return Outcome(
            ok=False,
            final=True,
            status_code=response.status_code,
            message=f"immutable after sending: {provider_message(response)}",
            response_excerpt=excerpt(response),
        )
    return from_response(
        response,
        now=now,
        message=provider_message,
        retry_after=retry_after_seconds(response, now=now),
    )


OPERATIONS: Mapping[str, Operation] = {PATCH: patch_signing_request}
