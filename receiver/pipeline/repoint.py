"""When the public URL changes (a new tunnel address on every restart is common), point every
still-open request's callback URLs at the new address, through the outbox.

Each provider says, per request, which action (if any) re-points it; the action's payload
uses placeholders, so it always sends the address in force when it goes out. The action key
includes the new address, so two processes starting at once queue it once.
"""

from __future__ import annotations

import hashlib

from receiver.context import AppContext
from receiver.logs import get_logger
from receiver.store import kv, outbox, requests

log = get_logger("signback.repoint")

PUBLIC_URL_KEY = "public_url"
BATCH = 500


async def repoint_if_public_url_changed(ctx: AppContext) -> int:
    """Queue re-point actions if the public URL differs from the last one seen; return how
    many requests were re-pointed (0 on a first start or when nothing changed)."""
    current = ctx.settings.public_url
    previous = await kv.get(ctx.db, PUBLIC_URL_KEY)
    if previous == current:
        return 0
    count = 0
    if previous is not None:
        count = await repoint_open_requests(ctx, current)
        log.warning(
            "public URL changed: re-pointing open requests",
            previous=previous,
            current=current,
            requests=count,
        )
    async with ctx.db.transaction() as tx:
        await kv.put(tx, PUBLIC_URL_KEY, current, now=ctx.clock())
    return count


async def repoint_open_requests(ctx: AppContext, public_url: str) -> int:
    key = "repoint:" + hashlib.sha256(public_url.encode()).hexdigest()[:16]
    after, total = 0, 0
    while True:
        rows = await requests.open_requests(ctx.db, after_id=after, limit=BATCH)
        if not rows:
            return total
        now = ctx.clock()
        async with ctx.db.transaction() as tx:
            for row in rows:
                request = requests.from_row(row)
                provider = ctx.providers.get(request.provider)
                if provider is None or provider.repoint is None:
                    continue
                action = provider.repoint(request, key)
                if action is not None:
                    total += await outbox.insert_actions(
                        tx, request.id, [action], now=now, source_inbox_id=None
                    )
        after = int(rows[-1]["id"])
