"""The reconciler's read of a Firma signing request: ``GET /signing-requests/{id}``.

One read slot of the budget Firma's operations share (handlers/firma/budgets.py), then the
GET with the request's registered id. The answer's bytes are the finding (normalized by
``events.normalize_reading``); the state it is keyed by is the status, with the number of
signatures while it is out for signing.
"""

from __future__ import annotations

from typing import Any

from handlers.firma import budgets
from handlers.firma.client import FirmaClient, provider_message, retry_after_seconds
from handlers.firma.events import reading_state
from receiver.context import AppContext
from receiver.errors import InvalidAction
from receiver.model import SignatureRequest
from receiver.outbox.budgets import take_slot
from receiver.outbox.outcomes import Failed, Outcome, Skipped, deferred, excerpt, from_response
from receiver.providers import Reading


async def read(ctx: AppContext, request: SignatureRequest) -> Reading | Outcome:
    client = ctx.clients.get("firma")
    if not isinstance(client, FirmaClient):
        raise InvalidAction("SIGNBACK_FIRMA_API_KEY is not set: cannot read Firma")
    waiting = await take_slot(ctx.db, budgets.reads(ctx), clock=ctx.clock)
    if waiting is not None:
        return deferred(waiting, "waiting for a slot under Firma's read rate limit")
    response = await client.get_signing_request(request.external_id)
    now = ctx.clock()
    if response.status_code == 404:
        # Gone at Firma (or never there under this key): nothing to find; the schedule goes
        # on (until the request's maximum age) in case it was a passing fault.
        return Skipped(
            f"Firma does not know this signing request: {provider_message(response)}",
            status_code=404,
            response_excerpt=excerpt(response),
        )
    if response.status_code != 200:
        return from_response(
            response,
            now=now,
            message=provider_message,
            retry_after=retry_after_seconds(response, now=now),
        )
    try:
        answer: Any = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("status"), str):
        return Failed(
            "Firma's answer is not a signing request with a status",
            status_code=200,
            response_excerpt=excerpt(response),
        )
    if answer.get("id") != request.external_id:
        return Failed(
            "Firma answered about another signing request; nothing was recorded",
            status_code=200,
            response_excerpt=excerpt(response),
        )
    return Reading(body=response.content, state=reading_state(answer), status_code=200)
