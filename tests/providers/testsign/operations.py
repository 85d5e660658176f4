"""Testsign's one operation: archive an envelope (once it is completed)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from receiver.context import AppContext
from receiver.errors import InvalidAction
from receiver.model import SignatureRequest
from receiver.outbox.outcomes import Outcome, from_response
from receiver.providers import Operation
from tests.providers.testsign.client import TestsignClient

ARCHIVE = "testsign.archive"


async def archive(
    ctx: AppContext, request: SignatureRequest, payload: Mapping[str, Any]
) -> Outcome:
    client = ctx.clients.get("testsign")
    if not isinstance(client, TestsignClient):
        raise InvalidAction("SIGNBACK_TESTSIGN_CLIENT_ID is not set: cannot call Testsign")
    notify = payload.get("notify")
    if not isinstance(notify, str):
        raise InvalidAction("archive takes notify: a URL")
    response = await client.archive(request.external_id, notify)
    return from_response(response, now=ctx.clock(), message=lambda answer: answer.text[:200])


OPERATIONS: Mapping[str, Operation] = {ARCHIVE: archive}
