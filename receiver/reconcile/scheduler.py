"""The reconciler in the worker: queue the due reads, in bounded batches.

Every ``SIGNBACK_RECONCILE_TICK_SECONDS`` it writes the worker's heartbeat (``kv``), and for
each provider that can be read, queues a ``<provider>.reconcile`` action for each request
whose next read is due (``next_reconcile_at``), then moves that time on by the schedule
(receiver/reconcile/schedule.py). In one transaction per provider, rows taken with
``SKIP LOCKED`` on PostgreSQL, and each read keyed by the time it was due: several workers
looking at once queue each read once. A request with a read or a provider call still
waiting in the outbox gets no read now (what that call learns may settle it); its next read
is a step later. At most ``SIGNBACK_RECONCILE_BATCH_SIZE`` reads per provider wait in the
outbox at any time; the rest wait for a later look. The reads themselves wait in a lane of
their own (``reconcile``: receiver/outbox/lanes.py), apart from the requests' other provider
calls, and go at the pace of the provider's read budget (the outbox defers the ones without
a slot, without counting an attempt).

Every STALE_EVERY looks it also reports the requests newly stale (receiver/reconcile/stale.py).

At start, when the last heartbeat is older than ``SIGNBACK_RECONCILE_DOWNTIME_SECONDS``
(callbacks may have been lost meanwhile), every open request is due at once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from receiver.backoff import sleep_or_stop
from receiver.errors import one_line
from receiver.jsonutil import dumps
from receiver.logs import get_logger
from receiver.providers.contract import Provider
from receiver.reconcile.operation import operation_name
from receiver.reconcile.schedule import Policy
from receiver.reconcile.stale import report_stale
from receiver.store import kv
from receiver.store import reconcile as store
from receiver.store.db.base import Row

if TYPE_CHECKING:
    from receiver.context import AppContext

log = get_logger("signback.reconcile")

HEARTBEAT_KEY = "worker:heartbeat"
STALE_EVERY = 12  # looks between two searches for stale requests


def readable(ctx: AppContext) -> list[Provider]:
    """The installed providers whose requests can be read."""
    return [p for _, p in sorted(ctx.providers.items()) if p.reconcile is not None]


def first_read(ctx: AppContext, provider: str, created_at: float) -> tuple[float, float] | None:
    """A new request's first read and step, or None when its provider cannot be read."""
    found = ctx.providers.get(provider)
    if found is None or found.reconcile is None:
        return None
    return Policy.from_settings(ctx.settings).first(created_at)


async def read_soon(ctx: AppContext, request_id: int) -> bool:
    """Read this open request soon (``SIGNBACK_RECONCILE_SOON_SECONDS``), its backoff
    starting over: for a provider's operation that met a claim the provider's API does not
    confirm yet, or a provider saying it could not call signback. False: it has ended."""
    policy = Policy.from_settings(ctx.settings)
    return await store.read_soon(
        ctx.db, request_id, at=ctx.clock() + policy.soon, interval=policy.soon
    )


def read_key(due_at: float) -> str:
    """A read's action key: when it was due, so that it is queued once, whoever queues it."""
    return f"reconcile:{due_at!r}"


# A scheduled read's payload (the operation reads the request; the reason is for people).
SCHEDULED_PAYLOAD = dumps({"reason": "schedule"})


@dataclass(frozen=True, slots=True)
class Look:
    """What one look did."""

    queued: int  # reads queued
    moved: int  # due requests moved on without a read (heard from, or outbox work waiting)
    ended: int  # schedules that ended (past the maximum age)
    stale: int  # requests newly reported stale


class Reconciler:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.policy = Policy.from_settings(ctx.settings)
        self.looks = 0
        self._unconfigured: set[str] = set()

    async def run(self, stopping: asyncio.Event) -> None:
        settings = self.ctx.settings
        started = False
        while not stopping.is_set():
            try:
                if not started:
                    await self.after_downtime()
                    started = True
                await self.look()
            except Exception as exc:  # the database went away: the next look tries again
                log.warning("reconciler cannot reach the database", error=one_line(exc))
            await sleep_or_stop(stopping, settings.reconcile_tick_seconds)

    async def heartbeat(self) -> None:
        async with self.ctx.db.transaction() as tx:
            await kv.put(tx, HEARTBEAT_KEY, repr(self.ctx.clock()), now=self.ctx.clock())

    async def after_downtime(self) -> int:
        """At start: if no worker has beaten for longer than the threshold, every open
        request is due now. How many were made due."""
        ctx = self.ctx
        now = ctx.clock()
        last = await kv.get(ctx.db, HEARTBEAT_KEY)
        await self.heartbeat()
        try:
            down_for = now - float(last) if last is not None else 0.0
        except ValueError:
            down_for = 0.0
        if down_for <= ctx.settings.reconcile_downtime_seconds:
            return 0
        names = [p.name for p in readable(ctx)]
        async with ctx.db.transaction() as tx:
            due = await store.all_due(
                tx, providers=names, now=now, created_after=now - self.policy.max_age
            )
        log.warning(
            "no worker ran for a while: every open request is read again",
            down_seconds=round(down_for, 1),
            requests=due,
        )
        return due

    def scheduled(self) -> list[Provider]:
        """The readable providers with a client (an API key): the others' reads could only
        fail, so their requests wait (``signback reconcile`` says why)."""
        providers = []
        for provider in readable(self.ctx):
            if provider.client is not None and provider.name not in self.ctx.clients:
                if provider.name not in self._unconfigured:
                    self._unconfigured.add(provider.name)
                    log.warning(
                        "not reading this provider's requests: its client is not configured",
                        provider=provider.name,
                    )
                continue
            providers.append(provider)
        return providers

    async def look(self) -> Look:
        """Queue the due reads of every readable provider, and report stale requests."""
        await self.heartbeat()
        queued = moved = ended = 0
        for provider in self.scheduled():
            q, m, e = await self.queue_due(provider.name)
            queued, moved, ended = queued + q, moved + m, ended + e
        # Stale requests are looked for every STALE_EVERY looks (a minute at the default
        # tick): the scan walks every open request of each state.
        stale = await report_stale(self.ctx) if self.looks % STALE_EVERY == 0 else 0
        self.looks += 1
        if queued or ended or stale:
            log.info("reconciler looked", queued=queued, moved=moved, ended=ended, stale=stale)
        return Look(queued, moved, ended, stale)

    async def queue_due(self, provider: str) -> tuple[int, int, int]:
        """Queue reads for the provider's due requests (as many as the batch has room
        for) and move each one's next read on. One transaction, and a few statements
        whatever the number of rows: the due scan, the reads in one insert, the schedules
        in one update."""
        ctx = self.ctx
        operation = operation_name(provider)
        room = ctx.settings.reconcile_batch_size - await store.queued_reads(ctx.db, operation)
        if room <= 0:
            return 0, 0, 0
        now = ctx.clock()
        async with ctx.db.transaction() as tx:
            rows = await store.due(
                tx, provider=provider, now=now, limit=room, lock=ctx.db.render("{skip_locked}")
            )
            reads, schedules, moved, ended = self._plan(rows, now)
            queued = await store.insert_reads(
                tx, operation, reads, payload=SCHEDULED_PAYLOAD, now=now
            )
            await store.reschedule(tx, schedules)
        return queued, moved, ended

    def _plan(
        self, rows: list[Row], now: float
    ) -> tuple[list[store.Read], list[store.Schedule], int, int]:
        """For each due row, by the schedule: a read or not, and its next read. The reads,
        the schedules, and how many rows moved on without a read or ended."""
        reads: list[store.Read] = []
        schedules: list[store.Schedule] = []
        moved = ended = 0
        for row in rows:
            request_id = int(row["id"])
            interval = row["reconcile_interval"]
            step = self.policy.due(
                now=now,
                created_at=float(row["created_at"]),
                updated_at=float(row["updated_at"]),
                interval=None if interval is None else float(interval),
                queued=bool(row["queued"]),
            )
            if step.read:
                reads.append(store.Read(request_id, read_key(float(row["next_reconcile_at"]))))
            elif step.at is None:
                ended += 1
            else:
                moved += 1
            schedules.append(store.Schedule(request_id, step.at, step.interval))
        return reads, schedules, moved, ended
