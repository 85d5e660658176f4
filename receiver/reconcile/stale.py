"""Gap detection: open requests silent for longer than expected in their state.

"Silent" is measured from the request's last state change (``updated_at``: a confirmed
event, whatever brought it). The thresholds are per state (``SIGNBACK_STALE_AFTER``). The
admin API lists them (``GET /api/requests?stale=true``), a gauge counts them at scrape time
(``signback_stale_requests``), and each becomes one ``signature_request.stale`` downstream
event per request and state: the state it was reported in is stored with it
(``stale_state``), and the event's dedupe key is the request and the state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from receiver.outbox.downstream import emit as downstream_emit
from receiver.store import reconcile as store
from receiver.store import requests

if TYPE_CHECKING:
    from receiver.context import AppContext

BATCH = 200  # requests reported per state and look


async def report_stale(ctx: AppContext) -> int:
    """Emit ``signature_request.stale`` for each request newly silent past its state's
    threshold (at most BATCH per state per call); how many were reported."""
    now = ctx.clock()
    lock = ctx.db.render("{skip_locked}")
    reported = 0
    for state, threshold in ctx.settings.stale_after.items():
        async with ctx.db.transaction() as tx:
            rows = await store.newly_stale(
                tx, state=state, cutoff=now - threshold, limit=BATCH, lock=lock
            )
            for row in rows:
                request = requests.from_row(row)
                await downstream_emit.stale(
                    tx, request=request, state=state, threshold=threshold, now=now
                )
                await store.mark_stale(tx, request.id, state)
                reported += 1
    return reported
