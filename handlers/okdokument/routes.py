"""``POST /hooks/okdokument/{token}``: OKdokument's sendInfo callback.

The URL is the credential: the request's sendInfo token (256 bits, stored only as a hash),
which only OKdokument is given; the signer's browser has the return token, which does not
open this route (receiver/intake/credentials.py). The body is then checked against the token's
request: ``signatureRequestId`` must be the request's, and ``id``, when the request was
registered with a ``documentId``, must be that document. A body never chooses what is
confirmed later. Then it is stored raw and acknowledged. Answers: 200 stored (or
duplicate), 400 malformed, 404 unknown URL, 405 wrong method, 409 body names another
request or document, 413 too large, 415 not JSON, 503 store unavailable (OKdokument should
retry). A query string on the URL is accepted and ignored.
"""

from __future__ import annotations

import hmac
from typing import Any

from receiver.context import AppContext
from receiver.errors import CallbackRejected
from receiver.intake.ack import body_key, parse_json_object, rejected, store_and_ack
from receiver.intake.credentials import find_by_sendinfo_token
from receiver.intake.router import Answer, Callback, Hook
from receiver.logs import get_logger

log = get_logger("signback.okdokument")


def check_content_type(call: Callback) -> None:
    content_type = call.headers.get("content-type")
    if content_type is None:
        return  # undocumented either way: the body must still parse as JSON
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise CallbackRejected(f"content type must be application/json, not {media!r}", 415)


def same_text(a: str, b: str) -> bool:
    # surrogatepass: a lone surrogate in a body must compare unequal, not raise.
    return hmac.compare_digest(
        a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass")
    )


def check_document(payload: dict[str, Any], registered: str | None) -> None:
    """The body's ``id`` (the document) must be the registered one, when one was registered:
    a callback that names another document is refused, so it can neither confirm nor be
    confirmed against a document that is not this request's."""
    if "id" not in payload or payload["id"] is None:
        return  # not sent: confirmation asks about the registered document all the same
    claimed = payload["id"]
    if not isinstance(claimed, str):
        raise CallbackRejected("id in the body must be a string (the documentId)", 400)
    if registered is not None and not same_text(claimed, registered):
        raise CallbackRejected(
            "id (documentId) in the body is not the document registered for this callback URL",
            409,
        )


_UNKNOWN_URL = Answer.error(404, "unknown callback URL")


def hooks(ctx: AppContext) -> list[Hook]:
    limit = ctx.settings.max_body_bytes

    async def sendinfo(call: Callback) -> Answer:
        try:
            row = await find_by_sendinfo_token(ctx, call.param or "")
        except CallbackRejected as exc:
            return rejected(exc, provider="okdokument", channel="sendinfo")
        if row is None or row["provider"] != "okdokument":
            log.warning("sendInfo to an unknown callback URL", status=404)
            return _UNKNOWN_URL
        request_id = int(row["id"])
        try:
            check_content_type(call)
            body = await call.read_body(limit)
            payload = parse_json_object(body)
            claimed = payload.get("signatureRequestId")
            if not isinstance(claimed, str) or not claimed:
                raise CallbackRejected("body has no signatureRequestId", 400)
            state = payload.get("state")
            if not isinstance(state, str) or not state:
                raise CallbackRejected("body has no state", 400)
            # surrogatepass: a lone surrogate ("\ud800" in the JSON) is no registered id,
            # and must be refused like any other, not fail the encoding.
            if not hmac.compare_digest(
                claimed.encode("utf-8", "surrogatepass"), str(row["external_id"]).encode()
            ):
                raise CallbackRejected(
                    "signatureRequestId in the body does not belong to this callback URL", 409
                )
            check_document(payload, row["document_id"])
        except CallbackRejected as exc:
            return rejected(exc, provider="okdokument", channel="sendinfo", request=request_id)
        return await store_and_ack(
            ctx,
            log_facts={"provider": "okdokument", "request": request_id, "state": state},
            provider="okdokument",
            channel="sendinfo",
            dedupe_key="sendinfo:" + body_key(request_id, body),
            body=body,
            headers=call.headers,
            query=call.query[:4096],
            request_id=request_id,
            external_id=claimed,
        )

    return [Hook("/hooks/okdokument/{token}", sendinfo)]
