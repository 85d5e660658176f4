"""Outbound operations the outbox can run against Firma.dev."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from handlers.firma import budgets
from handlers.firma.client import (
    FirmaClient,
    is_immutable_answer,
    provider_message,
    retry_after_seconds,
    validate_properties,
)
from receiver.context import AppContext
from receiver.errors import InvalidAction
from receiver.model import RequestState, SignatureRequest
from receiver.outbox.budgets import take_slots
from receiver.outbox.outcomes import GiveUp, Outcome, Skipped, deferred, excerpt, from_response
from receiver.providers import Operation

PATCH = "firma.patch_signing_request"

# Firma's words for a request that can still be edited (create says "draft", lists "not_sent").
EDITABLE_STATUSES = frozenset({"draft", "not_sent"})
EDITABLE_STATES = frozenset({RequestState.REGISTERED, RequestState.DRAFT})


def _client(ctx: AppContext) -> FirmaClient:
    client = ctx.clients.get("firma")
    if not isinstance(client, FirmaClient):
        raise InvalidAction("SIGNBACK_FIRMA_API_KEY is not set: cannot call Firma")
    return client


def _not_editable(why: str) -> Skipped:
    return Skipped(f"not sent: {why}; Firma makes a signing request immutable once it is sent")


async def patch_signing_request(
    ctx: AppContext, request: SignatureRequest, payload: Mapping[str, Any]
) -> Outcome:
    """PATCH /signing-requests/{id} with properties, but only while the request is a draft.

    Not editable by our own state, or by Firma's answer to a GET just before: recorded as
    skipped with the reason, nothing is written. Refused as immutable anyway (sent in the
    moment between the GET and the PATCH): final, never retried, and said so.

    Rate budgets: the write slot is taken first, and only then the read slot and the GET.
    An action that has to wait for a write slot is put back without reading anything, so
    each write costs at most one read however often it comes back.
    """
    client = _client(ctx)
    if request.state not in EDITABLE_STATES:
        return _not_editable(f"the request is {request.state.value}")
    if request.provider_status and request.provider_status not in EDITABLE_STATUSES:
        return _not_editable(f"Firma reports it as {request.provider_status}")
    validate_properties(payload)  # an invalid update costs no slot: it is final at once
    # The write slot first: if it is far, the action is put back before any read slot is
    # taken. (The read slot is far only when something else uses up the reads: rare.)
    waiting = await take_slots(ctx.db, budgets.writes(ctx), budgets.reads(ctx), clock=ctx.clock)
    if waiting is not None:
        what = "read" if waiting.budget == budgets.reads(ctx).key else "write"
        return deferred(waiting, f"waiting for a slot under Firma's {what} rate limit")
    # Both slots have started. Our state may lag behind Firma's even when it says "draft":
    # webhooks arrive late and out of order, and a "sent" may be stored but not processed
    # yet. So ask before writing (a skipped write beats a refused one).
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
    response = await client.patch_signing_request(request.external_id, payload)
    now = ctx.clock()
    if is_immutable_answer(response):
        return GiveUp(
            f"immutable after sending: {provider_message(response)}",
            status_code=response.status_code,
            response_excerpt=excerpt(response),
        )
    return from_response(
        response,
        now=now,
        message=provider_message,
        retry_after=retry_after_seconds(response, now=now),
    )


OPERATIONS: Mapping[str, Operation] = {PATCH: patch_signing_request}
