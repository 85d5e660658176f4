"""The background side of signback: pipeline + outbox dispatcher + lease recovery +
reconciler."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from receiver.archive import retention
from receiver.backoff import MAX_LOOP_DELAY, Backoff, sleep_or_stop
from receiver.context import AppContext
from receiver.errors import one_line
from receiver.loadshare import background_context
from receiver.logs import get_logger
from receiver.outbox.dispatcher import Dispatcher
from receiver.pipeline.processor import Pipeline
from receiver.reconcile.scheduler import Reconciler
from receiver.store import inbox, outbox

log = get_logger("signback.worker")


class Worker:
    def __init__(self, ctx: AppContext, *, rand: random.Random | None = None) -> None:
        self.ctx = ctx
        self._rand = rand or random.Random()  # jitter, not security
        self.pipeline = Pipeline(ctx)
        self.dispatcher = Dispatcher(ctx, rand=self._rand)
        self.reconciler = Reconciler(ctx)
        self.stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        log.info(
            "worker started",
            worker=self.ctx.worker_id,
            concurrency=self.ctx.settings.outbox_concurrency,
        )
        loops = [
            self._supervised("pipeline", self.pipeline.run),
            self._supervised("outbox", self.dispatcher.run),
            self._supervised("lease recovery", lambda _stopping: self._recover_leases()),
        ]
        if self.ctx.settings.reconcile_enabled:
            loops.append(self._supervised("reconciler", self.reconciler.run))
        if retention.enabled(self.ctx):
            loops.append(
                self._supervised("retention", lambda stopping: retention.run(self.ctx, stopping))
            )
        await asyncio.gather(*loops)
        log.info("worker stopped", worker=self.ctx.worker_id)

    async def _supervised(
        self, name: str, loop: Callable[[asyncio.Event], Awaitable[None]]
    ) -> None:
        """Keep a loop running: one that dies of an unexpected error is logged and restarted
        (a silent, dead outbox is the worst failure a receiver can have)."""
        backoff = Backoff(0.5, MAX_LOOP_DELAY, rand=self._rand.random)
        while not self.stopping.is_set():
            try:
                await loop(self.stopping)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                delay = backoff.next_delay()
                log.exception(
                    "worker loop crashed; restarting it", loop=name, retry_in=round(delay, 2)
                )
                await backoff.sleep(delay, self.stopping)

    def start(self) -> None:
        """Run in the background of this event loop (``signback serve``): every task the
        worker starts is timed, so that the acknowledgements can come first (loadshare.py)."""
        self.ctx.occupancy.install(asyncio.get_running_loop())
        self._task = asyncio.create_task(
            self.run(), name="signback-worker", context=background_context()
        )

    async def stop(self) -> None:
        self.stopping.set()
        # Wake the loops so they notice at once instead of after their poll interval. With
        # the database gone they notice at their next poll: a line says so, no traceback.
        try:
            await self.ctx.db.notify(inbox.INBOX_CHANNEL)
            await self.ctx.db.notify(outbox.OUTBOX_CHANNEL)
        except Exception as exc:
            log.warning("stopping without waking the worker loops", error=one_line(exc))
        if self._task is not None:
            await self._task

    async def _recover_leases(self) -> None:
        interval = max(0.5, self.ctx.settings.lease_seconds / 4)
        while not self.stopping.is_set():
            try:
                now = self.ctx.clock()
                rows = await inbox.recover_expired(self.ctx.db, now=now)
                actions = await outbox.recover_expired(self.ctx.db, now=now)
                if rows or actions:
                    log.warning("recovered expired claims", inbox=rows, outbox=actions)
            except Exception as exc:
                log.warning("lease recovery failed", error=str(exc))
            await sleep_or_stop(self.stopping, interval)
