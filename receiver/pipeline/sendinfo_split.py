"""At start-up: give requests registered before the split a sendInfo token of their own.

Until migration 0006 one token opened both ``/return/<token>`` and the sendInfo route. The
migration adds ``sendinfo_hash`` but cannot fill it in: tokens are derived from
``SIGNBACK_SECRET_KEY``, which only the app knows. So at every start the app looks for rows
without it (none, once done: one probe of the unique index), in batches of ``BATCH``, one
transaction each:

- it stores the sendInfo token's hash;
- a still-open request with a sendInfo URL (OKdokument) gets its provider's
  ``point_sendinfo`` action, with the fixed key ``MOVE_KEY``: through the outbox (retried,
  visible in the attempt log) it PATCHes the new sendInfo URL to OKdokument, and nothing
  else. Until OKdokument has acknowledged it, the old token keeps opening the sendInfo route,
  or callbacks sent in between would be lost; the dispatcher retires it the moment the PATCH
  succeeds (see dispatcher.py).
- any other request (ended, or Firma's, which never had a sendInfo route) has its shared
  token retired at once. The old token keeps opening ``/return/<token>`` in every case:
  signers may still hold those links.

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

log = get_logger("signback.sendinfo_split")

MOVE_KEY = "move-sendinfo-url"
BATCH = 500


async def split_shared_tokens(ctx: AppContext) -> tuple[int, int]:
    """Fill in missing sendInfo hashes; return (rows done, re-point actions queued)."""
    lock = ctx.db.render("{skip_locked}")
    done = queued = 0
    while True:
        now = ctx.clock()
        async with ctx.db.transaction() as tx:
            rows = await requests.without_sendinfo_hash(tx, limit=BATCH, lock=lock)
            for row in rows:
                request = requests.from_row(row)
                nonce = str(row["token_nonce"])
                action = None
                provider = ctx.providers.get(request.provider)
                if (
                    provider is not None
                    and provider.point_sendinfo is not None
                    and not states.is_terminal(request.state)
                ):
                    action = provider.point_sendinfo(request, MOVE_KEY)
                digest = token_hash(ctx.sendinfo_token(nonce))
                retire_at = None if action is not None else now
                if not await requests.set_sendinfo_hash(
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
            "requests registered before the sendInfo token was split from the return token:"
            " each now has a sendInfo URL of its own; open ones are being moved to it",
            requests=done,
            repoint_actions=queued,
        )
    return done, queued


async def split_quietly(ctx: AppContext) -> None:
    """:func:`split_shared_tokens`, where a database outage must not stop the start-up: it
    is done at the next start, and until then the dispatcher stores a missing hash itself
    before it hands out a sendInfo URL."""
    try:
        await split_shared_tokens(ctx)
    except Exception as exc:
        log.error("could not give older requests their own sendInfo token", error=str(exc))
