"""Outbound operations the outbox can run against OKdokument."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from handlers.okdokument.adapter import OUTCOME_STATES
from handlers.okdokument.client import OkdokumentClient, provider_message
from receiver.context import AppContext
from receiver.errors import InvalidAction
from receiver.model import SignatureRequest
from receiver.outbox.outcomes import (
    Done,
    Failed,
    FollowUpEvent,
    GiveUp,
    Outcome,
    Skipped,
    excerpt,
    from_response,
)
from receiver.providers import Operation
from receiver.reconcile.scheduler import read_soon
from receiver.store import requests
from receiver.store.db.base import Row

PATCH = "okdokument.patch_signature_request"
CONFIRM = "okdokument.confirm_document_state"
PATCHABLE = ("sendInfoURL", "resulturl")


def _client(ctx: AppContext) -> OkdokumentClient:
    client = ctx.clients.get("okdokument")
    if not isinstance(client, OkdokumentClient):
        raise InvalidAction("SIGNBACK_OKDOKUMENT_API_KEY is not set: cannot call OKdokument")
    return client


def _absolute_url(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidAction(f"{name} must be a URL string")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidAction(f"{name} must be an absolute http(s) URL")
    return value


async def patch_signature_request(
    ctx: AppContext, request: SignatureRequest, payload: Mapping[str, Any]
) -> Outcome:
    """PATCH /JSON/signatureRequest with only the fields being changed."""
    unknown = set(payload) - set(PATCHABLE)
    if unknown or not payload:
        raise InvalidAction(
            f"OKdokument's update takes only {', '.join(PATCHABLE)}; got {sorted(payload)}"
        )
    send_info = payload.get("sendInfoURL")
    result = payload.get("resulturl")
    response = await _client(ctx).patch_signature_request(
        request.external_id,
        send_info_url=_absolute_url("sendInfoURL", send_info) if send_info is not None else None,
        result_url=_absolute_url("resulturl", result) if result is not None else None,
    )
    return from_response(response, now=ctx.clock(), message=provider_message)


async def confirm_document_state(
    ctx: AppContext, request: SignatureRequest, payload: Mapping[str, Any]
) -> Outcome:
    """Rule (b): ask Document info whether the callback's claim is true before acting.

    Only the document registered for the request is asked about: a ``document_id`` in the
    payload (earlier versions copied the callback body's ``id`` there) is ignored, and the
    answer counts only if it is about that very document. Only the claimed state confirms
    the claim. ``errorsendinfo`` (OKdokument could not deliver a sendInfo callback) is
    recorded as a ``delivery.failed`` fact and the question is asked again later, under the
    outbox's retry policy: Document info can lag behind the callback. Any other state means
    the claim is not confirmed: the action is skipped, saying why. Whenever the claim is not
    confirmed, the reconciler reads the document soon (``SIGNBACK_RECONCILE_SOON_SECONDS``):
    what Document info says then goes down the callbacks' road, confirmed.
    """
    claimed = str(payload.get("claimed_state", ""))
    confirms = str(payload.get("confirms", ""))
    if claimed not in OUTCOME_STATES:
        # Only an outcome is ever confirmed (an action queued by an earlier version, or by
        # a rule of one's own, could ask about another state): never "errorsendinfo".
        raise InvalidAction(
            f"only an outcome ({', '.join(sorted(OUTCOME_STATES))}) can be confirmed, "
            f"not {_short(claimed)}; nothing was acted on"
        )
    document_id = request.document_id
    if not document_id:
        raise InvalidAction(
            "this request was registered without a documentId, so there is no document to "
            "confirm the claim with; nothing was acted on (register requests with their "
            "documentId, or set SIGNBACK_OKDOKUMENT_CONFIRM_CALLBACKS=false)"
        )
    rounds = await requests.same_document(ctx.db, request.provider, document_id)
    later = [int(r["id"]) for r in rounds if int(r["id"]) > request.id]
    if later:
        # The document went on to a new signing round (a new request on it): what Document
        # info says now is about that round, not this one.
        raise InvalidAction(
            f"not confirmed: document {document_id!r} is in a later signing round now "
            f"(request {later[-1]}), so Document info no longer speaks of this round's "
            "outcome; nothing was acted on"
        )
    earlier = latest_earlier_version(rounds, request.id)
    response = await _client(ctx).document_metadata(document_id)
    if response.status_code != 200:
        return from_response(response, now=ctx.clock(), message=provider_message)
    try:
        info = response.json()
    except ValueError:
        info = None
    if not isinstance(info, dict):
        return Failed(
            "Document info answer is not a JSON object",
            status_code=200,
            response_excerpt=excerpt(response),
        )
    about = info.get("id")
    if not isinstance(about, str) or about != document_id:
        return GiveUp(
            f"not confirmed: Document info answered about document {_short(about)}, not "
            f"this request's {document_id!r}; nothing was acted on",
            status_code=200,
            response_excerpt=excerpt(response),
        )
    version = document_version(info.get("modification"))
    if earlier is not None and (version is None or version <= earlier):
        # An earlier round's outcome was confirmed when the document was at that version:
        # an answer no later than that is still that round's, whatever state it says.
        return Failed(
            f"not confirmed yet: Document info still shows an earlier round's state "
            f"(modification {_short(info.get('modification'))}, not after "
            f"{earlier!r}, when that round's outcome was confirmed); asking again later",
            status_code=200,
            response_excerpt=excerpt(response),
        )
    actual = info.get("state")
    fact = {
        "state": actual,
        "id": document_id,
        "signatureRequestId": request.external_id,
        "confirms": confirms,
        "claimed_state": claimed,
    }
    if actual != claimed:
        # Document info lags behind the callback, or OKdokument could not call us: the
        # reconciler reads the document soon, and what it finds is what counts.
        await read_soon(ctx, request.id)
    if actual == "errorsendinfo":
        return Failed(
            f"not confirmed yet: OKdokument says the document is 'errorsendinfo' (it could "
            f"not deliver a sendInfo callback), the callback claimed {claimed!r}; asking "
            "again later",
            status_code=200,
            response_excerpt=excerpt(response),
            # Its own key: recorded once per claim, and it cannot use up the confirmation's.
            follow_up=[_fact(request, fact, f"delivery-failed:{confirms}")],
        )
    if actual != claimed:
        return Skipped(
            f"not confirmed: OKdokument says the document is {_short(actual)}, the "
            f"callback claimed {claimed!r}; nothing was acted on (a reconcile read of the "
            "document follows soon)",
            status_code=200,
            response_excerpt=excerpt(response),
        )
    if version is not None:
        # What a later round's answers must come after (migration 0008).
        await requests.set_document_version(ctx.db, request.id, version)
    return Done(
        status_code=200,
        response_excerpt=excerpt(response),
        follow_up=[_fact(request, fact, f"confirmation:{confirms}")],
    )


# Document info's "modification": "2022-06-21 14:30:44". Written so, it sorts as it reads
# (the time zone is not documented, but it is the same for every answer).
_MODIFICATION = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d{1,6})?")


def document_version(value: Any) -> str | None:
    """Document info's ``modification`` as a comparable version, or None if unreadable."""
    if isinstance(value, str) and _MODIFICATION.fullmatch(value.strip()):
        return value.strip().replace("T", " ")
    return None


def latest_earlier_version(rounds: list[Row], request_id: int) -> str | None:
    """The newest version of the document at which an *earlier* round's outcome was
    confirmed (``rounds``: :func:`requests.same_document`), or None. An answer no later than
    it is still that round's. This request's own confirmed version does not count, or a
    second claim of the outcome already confirmed (a provider's retry, a duplicate queued
    before the first confirmation landed) would wait for a newer answer that never comes,
    and be asked again until its retries ran out."""
    versions = [
        str(r["document_version"])
        for r in rounds
        if int(r["id"]) < request_id and r["document_version"]
    ]
    return max(versions) if versions else None


def _short(value: Any) -> str:
    """A provider's value for a message: quoted, and cut short."""
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _fact(request: SignatureRequest, body: Mapping[str, Any], dedupe_key: str) -> FollowUpEvent:
    """What Document info said, fed back to the inbox on channel ``confirmation``."""
    return FollowUpEvent(
        provider="okdokument",
        channel="confirmation",
        body=json.dumps(body).encode(),
        dedupe_key=dedupe_key,
        request_id=request.id,
    )


OPERATIONS: Mapping[str, Operation] = {
    PATCH: patch_signature_request,
    CONFIRM: confirm_document_state,
}
