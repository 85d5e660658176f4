"""``POST /hooks/okdokument/{hook_token}``: OKdokument's sendInfo callback.

The URL is the credential: the request's hook token (256 bits, stored only as a hash),
which only OKdokument is given; the signer's browser has the return token, which does not
open this route (receiver/intake/credentials.py). The core finds the token's request
(receiver/intake/hooks.py); :func:`verify` then checks the body against it:
``signatureRequestId`` must be the request's, and ``id``, when the request was registered
with a ``documentId``, must be that document. A body never chooses what is confirmed later.
Then it is stored raw and acknowledged. Answers: 200 stored (or duplicate), 400 malformed,
404 unknown URL, 405 wrong method, 409 body names another request or document, 413 too
large, 415 not JSON, 503 store unavailable (OKdokument should retry). A query string on the
URL is accepted and ignored.
"""

from __future__ import annotations

import hmac
from typing import Any

from receiver.errors import CallbackRejected
from receiver.intake.ack import body_key, parse_json_object
from receiver.intake.router import Callback
from receiver.providers.contract import Accepted, HookSpec, MediaTypes
from receiver.store.db.base import Row

# OKdokument documents no content type: none is let through (the body must still parse as
# JSON); a declared one must be JSON.
MEDIA_TYPES = MediaTypes(("application/json",), suffixes=("+json",), required=False)


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


def verify(call: Callback, body: bytes, row: Row) -> Accepted:
    """A sendInfo body for the token's request ``row``."""
    payload = parse_json_object(body)
    claimed = payload.get("signatureRequestId")
    if not isinstance(claimed, str) or not claimed:
        raise CallbackRejected("body has no signatureRequestId", 400)
    state = payload.get("state")
    if not isinstance(state, str) or not state:
        raise CallbackRejected("body has no state", 400)
    # surrogatepass: a lone surrogate ("\ud800" in the JSON) is no registered id, and must be
    # refused like any other, not fail the encoding.
    if not hmac.compare_digest(
        claimed.encode("utf-8", "surrogatepass"), str(row["external_id"]).encode()
    ):
        raise CallbackRejected(
            "signatureRequestId in the body does not belong to this callback URL", 409
        )
    check_document(payload, row["document_id"])
    request_id = int(row["id"])
    return Accepted(
        dedupe_key="sendinfo:" + body_key(request_id, body),
        external_id=claimed,
        request_id=request_id,
        log_facts={"request": request_id, "state": state},
    )


HOOKS = (
    HookSpec(
        "/hooks/okdokument/{hook_token}", channel="sendinfo", verify=verify, media_types=MEDIA_TYPES
    ),
)
