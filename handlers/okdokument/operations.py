"""Outbound operations the outbox can run against OKdokument."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from handlers.okdokument.client import OkdokumentClient, provider_message
from receiver.context import AppContext
from receiver.errors import InvalidAction
from receiver.model import SignatureRequest
from receiver.outbox.outcomes import excerpt, from_response
from receiver.providers import FollowUpEvent, Operation, Outcome

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
    """Rule (b): ask Document info whether the callback's claim is true before acting."""
    claimed = str(payload.get("claimed_state", ""))
    document_id = payload.get("document_id") or request.document_id
    confirms = str(payload.get("confirms", ""))
    if not isinstance(document_id, str) or not document_id:
        raise InvalidAction("no document id to confirm with (register it with document_id)")
    response = await _client(ctx).document_metadata(document_id)
    if response.status_code != 200:
        return from_response(response, now=ctx.clock(), message=provider_message)
    try:
        info = response.json()
        actual = str(info.get("state", ""))
    except (ValueError, AttributeError):
        return Outcome(
            ok=False,
            status_code=200,
            message="Document info answer is not JSON",
            response_excerpt=excerpt(response),
        )
    if actual != claimed and actual != "errorsendinfo":
        return Outcome(
            ok=True,
            skipped=True,
            status_code=200,
            message=(
                f"not confirmed: OKdokument says the document is {actual!r}, the callback "
                f"claimed {claimed!r}; nothing was acted on"
            ),
            response_excerpt=excerpt(response),
        )
    # errorsendinfo: OKdokument failed to reach us; that is recorded, but it confirms nothing.
    body = {
        "state": actual,
        "id": document_id,
        "signatureRequestId": request.external_id,
        "confirms": confirms,
        "claimed_state": claimed,
    }
    return Outcome(
        ok=True,
        status_code=200,
        response_excerpt=excerpt(response),
        follow_up=[
            FollowUpEvent(
                provider="okdokument",
                channel="confirmation",
                body=json.dumps(body).encode(),
                dedupe_key=f"confirmation:{confirms}",
                request_id=request.id,
            )
        ],
    )


OPERATIONS: Mapping[str, Operation] = {
    PATCH: patch_signature_request,
    CONFIRM: confirm_document_state,
}
