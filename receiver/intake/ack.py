"""Intake helpers shared by every provider route: read the body safely, redact, store, ack.

Nothing slow happens before the acknowledgement: read (bounded), check, one INSERT, commit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from receiver import jsonutil
from receiver.context import AppContext
from receiver.errors import CallbackRejected
from receiver.intake.router import Answer
from receiver.logs import debug_enabled, get_logger, redact_tokens
from receiver.store import inbox

log = get_logger("signback.intake")

# Header names whose values never reach the database or a log line.
SECRET_HEADERS = frozenset(
    {"authorization", "cookie", "x-api-key", "proxy-authorization", "set-cookie"}
)
SIGNATURE_HEADERS = frozenset({"x-firma-signature", "x-firma-signature-old"})


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Lower-cased headers with credentials removed and signatures cut to their timestamp."""
    kept: dict[str, str] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in SECRET_HEADERS:
            kept[lowered] = "[redacted]"
        elif lowered in SIGNATURE_HEADERS:
            stamp = [p.strip() for p in value.split(",") if p.strip().startswith("t=")]
            kept[lowered] = ",".join([*stamp[:1], "v1=[redacted]"])
        else:
            kept[lowered] = value[:1000]
    return kept


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        value = jsonutil.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, huge ints, nesting
        raise CallbackRejected(f"body is not valid JSON: {str(exc)[:200]}", 400) from None
    if not isinstance(value, dict):
        raise CallbackRejected("body must be a JSON object", 400)
    return value


def body_key(*parts: str | bytes | int | None) -> str:
    """A dedupe key: SHA-256 over the given parts (identical repeats give the same key).

    Each part is framed by its length, so ("ab", "c") and ("a", "bc") differ. Stored keys
    depend on these exact bytes: changing them would let a retry of a callback that arrived
    before an upgrade through as new."""
    framed = []
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        framed.append(len(data).to_bytes(8, "big"))
        framed.append(data)
    return hashlib.sha256(b"".join(framed)).hexdigest()


async def store(
    ctx: AppContext,
    *,
    provider: str,
    channel: str,
    dedupe_key: str,
    body: bytes,
    headers: Mapping[str, str],
    query: str,
    request_id: int | None,
    external_id: str | None,
) -> bool:
    """Commit one callback to the inbox. True if new, False for a duplicate. Raises
    :class:`CallbackRejected` (400) for values the inbox cannot hold, before writing."""
    if problem := inbox.intake_problem(dedupe_key=dedupe_key, query=query, external_id=external_id):
        raise CallbackRejected(problem, 400)
    params = inbox.insert_params(
        provider=provider,
        channel=channel,
        dedupe_key=dedupe_key,
        received_at=ctx.clock(),
        body=body,
        headers=redact_headers(headers),
        query=query,
        request_id=request_id,
        external_id=external_id,
    )
    return await ctx.db.insert_new(inbox.NEW_CALLBACK, params, inbox.INBOX_CHANNEL)


async def store_and_ack(ctx: AppContext, *, log_facts: Mapping[str, Any], **fields: Any) -> Answer:
    """Store, then acknowledge. A store that fails is a 503 (the provider retries), never a
    500 and never a 200: we only acknowledge what is committed."""
    labels = (str(fields.get("provider")), str(fields.get("channel")))
    try:
        new = await store(ctx, **fields)
    except CallbackRejected as exc:
        facts = {"provider": labels[0], "channel": labels[1], **log_facts}
        return rejected(exc, **facts)
    except Exception as exc:
        ctx.metrics.callbacks.inc(*labels, "503")
        log.error("could not store callback", error=f"{type(exc).__name__}: {exc}", **log_facts)
        return Answer.error(503, "temporarily unable to store the callback; please retry")
    ctx.metrics.callbacks.inc(*labels, "accepted" if new else "duplicate")
    return accepted(new, **log_facts)


def rejected(exc: CallbackRejected, *, provider: str, channel: str, **facts: Any) -> Answer:
    log.warning(
        "callback refused",
        provider=provider,
        channel=channel,
        status=exc.status_code,
        reason=redact_tokens(exc.message),  # a reason may quote the path (a workspace id)
        **facts,
    )
    return Answer.error(exc.status_code, exc.message)


ACCEPTED = Answer.json(200, {"status": "accepted"})
DUPLICATE = Answer.json(200, {"status": "duplicate"})


def accepted(new: bool, **facts: Any) -> Answer:
    try:
        if new:
            # At INFO each callback is logged once, by the pipeline ("event processed", with
            # what it did); a line here too cost a sixth of the intake's CPU.
            if debug_enabled():
                log.debug("callback stored", **facts)
        else:
            log.info("duplicate callback ignored", **facts)
    except Exception:  # the callback is committed: a logging mistake must not turn it into a 500
        log.exception("could not log a stored callback")
    return ACCEPTED if new else DUPLICATE
