"""At start-up: give requests registered before the split a hook token of their own.

Until migration 0006 one token opened both ``/return/<token>`` and the request's hook route
(``/hooks/<provider>/{hook_token}``). The migration adds the hook token's hash
(``sendinfo_hash``) but cannot fill it in: tokens are derived from ``SIGNBACK_SECRET_KEY``,
which only the app knows. So at every start the app looks for rows without it (none, once
done: one probe of the unique index), in batches of ``BATCH``, one transaction each:

- it stores the hook token's hash;
- a still-open request whose provider has a hook-token URL gets that provider's
  ``point_hook_url`` action, with the fixed key ``MOVE_KEY``: through the outbox (retried,
  visible in the attempt log) it gives the provider the new URL, and nothing else. Until
  the provider has acknowledged it, the old token keeps opening the hook route, or
  callbacks sent in between would be lost; the dispatcher retires it the moment that call
  succeeds (see dispatcher.py).
- any other request (ended, or of a provider without such a route) has its shared token
  retired at once. The old token keeps opening ``/return/<token>`` in every case: signers
  may still hold those links.

Idempotent and safe with several processes starting at once: on PostgreSQL the batch is
read ``FOR UPDATE SKIP LOCKED``, so processes share the rows out; a row is updated only while
its hash is missing, and an action key is stored once per request.
"""

from __future__ import annotations

from receiver.context import AppContext
from receiver.intake.tokens import token_hash
from receiver.logs import get_logger
from receiver.pipeline import states
from receiver.store import outbox, requests

log = get_logger("signback.hook_token_split")

# Stored as the action's key: never change it (a second start must find the same action).
MOVE_KEY = "move-sendinfo-url"
BATCH = 500


async def split_shared_tokens(ctx: AppContext) -> tuple[int, int]:
    """Fill in missing hook token hashes; return (rows done, re-point actions queued)."""
    lock = ctx.db.render("{skip_locked}")
    done = queued = 0
    while True:
        now = ctx.clock()
        async with ctx.db.transaction() as tx:
            rows = await requests.without_hook_hash(tx, limit=BATCH, lock=lock)
            for row in rows:
                request = requests.from_row(row)
                nonce = str(row["token_nonce"])
                action = None
                provider = ctx.providers.get(request.provider)
                if (
                    provider is not None
                    and provider.point_hook_url is not None
                    and not states.is_terminal(request.state)
                ):
                    action = provider.point_hook_url(request, MOVE_KEY)
                digest = token_hash(ctx.hook_token(nonce))
                retire_at = None if action is not None else now
                if not await requests.set_hook_hash(
                    tx, request.id, digest, retire_shared_at=retire_at
                ):
                    continue  # another process was first (SQLite has no SKIP LOCKED)
                done += 1
                if action is not None:
                    queued += await outbox.insert_actions(
                        tx, request.id, [action], now=now, source_inbox_id=None
                    )
        if len(rows) < BATCH:
            break
    if done:
        log.warning(
            "requests registered before the hook token was split from the return token:"
            " each now has a hook URL of its own; open ones are being moved to it",
            requests=done,
            repoint_actions=queued,
        )
    return done, queued


async def split_quietly(ctx: AppContext) -> None:
    """:func:`split_shared_tokens`, where a database outage must not stop the start-up: it
    is done at the next start, and until then the dispatcher stores a missing hash itself
    before it hands out a hook-token URL."""
    try:
        await split_shared_tokens(ctx)
    except Exception as exc:
        log.error("could not give older requests their own hook token", error=str(exc))
