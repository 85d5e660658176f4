"""Intake helpers shared by every provider hook and the browser return: parse, key, store,
refuse (the steps around them: receiver/intake/hooks.py).

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
from receiver.logs import get_logger, redact_tokens
from receiver.store import inbox

log = get_logger("signback.intake")


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
        headers=ctx.redaction(headers),
        query=query,
        request_id=request_id,
        external_id=external_id,
    )
    return await ctx.db.insert_new(inbox.NEW_CALLBACK, params, inbox.INBOX_CHANNEL)


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
