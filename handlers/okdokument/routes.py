"""``POST /hooks/okdokument/{token}``: OKdokument's sendInfo callback.

The URL is the credential: a per-request token of 256 bits, stored only as a hash. The body
is then checked against the token's request (``signatureRequestId`` must match), stored raw
and acknowledged. Answers: 200 stored (or duplicate), 400 malformed, 404 unknown URL,
405 wrong method, 409 body names another request, 413 too large, 415 not JSON, 503 store
unavailable (OKdokument should retry). A query string on the URL is accepted and ignored.
"""

from __future__ import annotations

import hmac

from receiver.callbacks import body_key, parse_json_object, rejected, store_and_ack
from receiver.context import AppContext
from receiver.errors import CallbackRejected
from receiver.intake import Answer, Callback, Hook
from receiver.logs import get_logger
from receiver.web import find_by_token

log = get_logger("signback.okdokument")


def check_content_type(call: Callback) -> None:
    content_type = call.headers.get("content-type")
    if content_type is None:
        return  # undocumented either way: the body must still parse as JSON
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise CallbackRejected(f"content type must be application/json, not {media!r}", 415)


_UNKNOWN_URL = Answer.error(404, "unknown callback URL")


def hooks(ctx: AppContext) -> list[Hook]:
    limit = ctx.settings.max_body_bytes

    async def sendinfo(call: Callback) -> Answer:
        try:
            row = await find_by_token(ctx, call.param or "")
        except CallbackRejected as exc:
            return rejected(exc, provider="okdokument", channel="sendinfo")
        if row is None:
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
