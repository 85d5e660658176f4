"""The reconciler's read of an OKdokument request: Document info about its registered document.

``GET /JSON/document/metadata/{documentId}`` with the ``documentId`` registered for the
request: never one a callback's body named. The answer counts only when its ``id`` is that
document. One slot of the OKdokument read budget first (``SIGNBACK_OKDOKUMENT_READS_PER_MINUTE``;
OKdokument documents no limit, this one keeps signback polite, across processes).
"""

from __future__ import annotations

import hashlib
from typing import Any

from handlers.okdokument.client import OkdokumentClient, provider_message
from handlers.okdokument.operations import document_version, latest_earlier_version
from handlers.okdokument.settings import OkdokumentSettings
from receiver.context import AppContext
from receiver.errors import InvalidAction
from receiver.model import SignatureRequest
from receiver.outbox.budgets import Budget, take_slot
from receiver.outbox.outcomes import (
    Failed,
    GiveUp,
    Outcome,
    Skipped,
    deferred,
    excerpt,
    from_response,
)
from receiver.providers import Reading
from receiver.store import requests


def reads(ctx: AppContext) -> Budget:
    settings = ctx.settings.section(OkdokumentSettings)
    key = settings.api_key
    digest = hashlib.sha256(key.get_secret_value().encode() if key else b"").hexdigest()[:16]
    return Budget(
        f"okdokument-reads:{digest}", settings.reads_per_minute, window=ctx.rate_window_seconds
    )


async def read(ctx: AppContext, request: SignatureRequest) -> Reading | Outcome:
    client = ctx.clients.get("okdokument")
    if not isinstance(client, OkdokumentClient):
        raise InvalidAction("SIGNBACK_OKDOKUMENT_API_KEY is not set: cannot read OKdokument")
    document_id = request.document_id
    if not document_id:
        return Skipped(
            "not read: this request was registered without a documentId, and Document info "
            "is asked about a document"
        )
    # Rounds (migration 0008): once the document went on to a new signing round, Document
    # info speaks of that round, never of this request's; and an answer no later than the
    # version an earlier round's outcome was confirmed at is still that round's.
    rounds = await requests.same_document(ctx.db, request.provider, document_id)
    if any(int(r["id"]) > request.id for r in rounds):
        return Skipped(
            f"not read: document {document_id!r} is in a later signing round now, so Document "
            "info no longer speaks of this request"
        )
    earlier = latest_earlier_version(rounds, request.id)
    waiting = await take_slot(ctx.db, reads(ctx), clock=ctx.clock)
    if waiting is not None:
        return deferred(waiting, "waiting for a slot of the OKdokument read budget")
    response = await client.document_metadata(document_id)
    if response.status_code != 200:
        return from_response(response, now=ctx.clock(), message=provider_message)
    try:
        info: Any = response.json()
    except ValueError:
        info = None
    if not isinstance(info, dict) or not isinstance(info.get("state"), str):
        return Failed(
            "Document info answer is not a JSON object with a state",
            status_code=200,
            response_excerpt=excerpt(response),
        )
    if info.get("id") != document_id:
        return GiveUp(
            "Document info answered about another document than this request's; nothing "
            "was recorded",
            status_code=200,
            response_excerpt=excerpt(response),
        )
    version = document_version(info.get("modification"))
    if earlier is not None and (version is None or version <= earlier):
        return Skipped(
            "Document info still shows an earlier round's state; nothing was recorded",
            status_code=200,
            response_excerpt=excerpt(response),
        )
    return Reading(body=response.content, state=str(info["state"]), status_code=200)
