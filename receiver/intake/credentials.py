"""Which request a callback URL's token opens, and for which route.

Each request has a return token (``/return/<token>``, seen by the signer's browser) and a
hook token (``/hooks/<provider>/{hook_token}``, seen only by the provider); see tokens.py. A
token opens only its own route: the return token is looked up in ``token_hash``, the hook
token in ``sendinfo_hash`` (its column's name from when one provider had such a route), and
the cache keeps the routes apart.

One exception, for requests registered before the two tokens were split: their only token
(the return token) was also their hook URL's, and the provider may still call that URL.
Until the provider has acknowledged the new hook URL (``shared_token_retired_at`` is set,
see hook_token_split.py), the return token still opens their hook route. Such a match is
never cached: the moment the database retires it, every process stops accepting it.
"""

from __future__ import annotations

from collections.abc import Awaitable

from receiver.context import AppContext
from receiver.errors import CallbackRejected
from receiver.intake.tokens import looks_like_token, same_hash, token_hash
from receiver.logs import get_logger
from receiver.store import requests
from receiver.store.db.base import Row

log = get_logger("signback.credentials")

# What the callback routes read from a token's request: all fixed at registration.
TOKEN_ROW_FIELDS = ("id", "provider", "external_id", "document_id", "return_url", "retry_url")


async def find_by_return_token(ctx: AppContext, token: str) -> Row | None:
    """The request whose ``/return/<token>`` this is, or None."""
    if not looks_like_token(token):
        return None
    digest = token_hash(token)
    key = "return:" + digest
    cached = ctx.token_cache.get(key)
    if cached is not None:
        return cached
    row = await _lookup(requests.by_return_hash(ctx.db, digest))
    if row is None or not same_hash(str(row["token_hash"]), digest):
        return None
    return _remember(ctx, key, row)


async def find_by_hook_token(ctx: AppContext, token: str) -> Row | None:
    """The request whose hook URL carries this token, or None."""
    if not looks_like_token(token):
        return None
    digest = token_hash(token)
    key = "hook:" + digest
    cached = ctx.token_cache.get(key)
    if cached is not None:
        return cached
    row = await _lookup(requests.by_hook_hash(ctx.db, digest))
    if row is None:
        return None
    own = row["sendinfo_hash"]
    if own is not None and same_hash(str(own), digest):
        return _remember(ctx, key, row)
    if row["shared_token_retired_at"] is None and same_hash(str(row["token_hash"]), digest):
        return _fixed(row)  # the shared token, not retired yet: deliberately not cached
    return None


async def _lookup(query: Awaitable[Row | None]) -> Row | None:
    """Await a lookup; a database that cannot answer is a 503, never a 500. The token itself
    is never logged."""
    try:
        return await query
    except Exception as exc:
        log.error("cannot look up a callback token", error=f"{type(exc).__name__}: {exc}")
        raise CallbackRejected("temporarily unable to look up this URL; please retry", 503) from exc


def _fixed(row: Row) -> Row:
    # Only fields that never change after registration (no state), and the same shape
    # whether the answer came from the cache or from the database.
    return {k: row[k] for k in TOKEN_ROW_FIELDS}


def _remember(ctx: AppContext, key: str, row: Row) -> Row:
    fixed = _fixed(row)
    ctx.token_cache.put(key, fixed)
    return fixed
