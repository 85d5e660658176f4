"""The outbox dispatcher: claim due actions, call the provider, record, decide what's next.

Due actions go out ordered per request (the claim's head-of-line rule) and in parallel across
requests, up to ``SIGNBACK_OUTBOX_CONCURRENCY`` at once. Every attempt is logged with its
status code, duration and the first bytes of the answer. On shutdown it stops claiming,
lets in-flight calls finish within the grace period, and gives back what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

import httpx

from receiver import jsonutil
from receiver.aio import sleep_or_stop
from receiver.context import AppContext, CallbackUrls
from receiver.errors import InvalidAction
from receiver.intake.tokens import token_hash
from receiver.logs import get_logger
from receiver.providers import Outcome
from receiver.store import inbox, outbox, requests
from receiver.store.db.base import Row, Transaction

log = get_logger("signback.outbox")

# Rules may put ``{signback.<name>}`` anywhere in a payload, for any callback URL a provider
# gives its requests (``return_url`` and the provider's own: Provider.urls). They are filled
# in at send time, so the outbox never stores a callback token and URLs always use the
# current public address.
PLACEHOLDER_MARK = "{signback."


class _Unknown:
    """Not read yet (as opposed to None: read, and there is no such row)."""


_UNKNOWN = _Unknown()


def resolve_placeholders(value: Any, urls: CallbackUrls, names: Collection[str] = ()) -> Any:
    """``value`` with each ``{signback.<name>}`` string replaced by the request's URL of that
    name. ``names``: every URL name some provider has; one this request's provider lacks is
    an InvalidAction, and any other ``{signback.…}`` string is left alone."""
    if isinstance(value, str):
        if not (value.startswith(PLACEHOLDER_MARK) and value.endswith("}")):
            return value
        name = value[len(PLACEHOLDER_MARK) : -1]
        resolved = urls.get(name)
        if resolved is not None:
            return resolved
        if name in names:
            raise InvalidAction(f"{value} has no meaning for this provider")
        return value
    if isinstance(value, Mapping):
        return {k: resolve_placeholders(v, urls, names) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_placeholders(v, urls, names) for v in value]
    return value


def hands_out_hook_token(ctx: AppContext, row: Row) -> bool:
    """Whether an action's payload gives its provider a URL carrying the hook token."""
    provider = ctx.providers.get(str(row["operation"]).split(".", 1)[0])
    if provider is None or not provider.hook_token_placeholders:
        return False
    text = str(row["payload"])
    return any(name in text for name in provider.hook_token_placeholders)


class Dispatcher:
    def __init__(self, ctx: AppContext, *, rand: random.Random | None = None) -> None:
        self.ctx = ctx
        self.in_flight: dict[int, asyncio.Task[None]] = {}
        self._rand = rand or random.Random()  # jitter, not security

    async def run(self, stopping: asyncio.Event) -> None:
        settings = self.ctx.settings
        delay = settings.poll_interval
        while not stopping.is_set():
            free = settings.outbox_concurrency - len(self.in_flight)
            claimed = 0
            try:
                if free > 0:
                    await self.ctx.governor.turn()  # the acknowledgements come first
                    claimed = await self._claim_and_start(free)
                delay = settings.poll_interval
            except Exception as exc:
                log.warning("outbox cannot reach the database", error=str(exc), retry_in=delay)
                await sleep_or_stop(stopping, delay)
                delay = min(delay * 2, 30.0)
                continue
            if claimed and claimed == free:
                # Full: wait for a slot (a finished action also notifies the channel).
                await self.ctx.db.wait(outbox.OUTBOX_CHANNEL, settings.poll_interval)
            elif not claimed:
                await self.ctx.db.wait(outbox.OUTBOX_CHANNEL, await self._idle_timeout())
        await self._drain()

    async def _idle_timeout(self) -> float:
        """Sleep until the next claimable action is due, at most a poll interval."""
        poll = self.ctx.settings.poll_interval
        try:
            due = await outbox.next_due_at(self.ctx.db)
        except Exception:  # the database is away: just poll; the claim reports the outage
            return poll
        if due is None:
            return poll
        return max(0.005, min(poll, due - self.ctx.clock()))

    async def _claim_and_start(self, free: int) -> int:
        rows = await outbox.claim(
            self.ctx.db,
            limit=free,
            now=self.ctx.clock(),
            lease_seconds=self.ctx.settings.lease_seconds,
            worker=self.ctx.worker_id,
        )
        # The actions' requests in one query rather than one each. Should it fail, each
        # action reads its own, and one that cannot is deferred, not counted as an attempt.
        prefetched: dict[int, Row] | None = None
        if rows:
            try:
                prefetched = await requests.get_many(
                    self.ctx.db, {int(row["request_id"]) for row in rows}
                )
            except Exception:
                prefetched = None
        for row in rows:
            action_id = int(row["id"])
            request_row: Row | _Unknown | None = _UNKNOWN
            if prefetched is not None:
                request_row = prefetched.get(int(row["request_id"]))
            task = asyncio.create_task(self.execute(row, request_row), name=f"outbox-{action_id}")
            self.in_flight[action_id] = task
            task.add_done_callback(functools.partial(self._forget, action_id))
        return len(rows)

    def _forget(self, action_id: int, _task: asyncio.Task[None]) -> None:
        self.in_flight.pop(action_id, None)

    async def _drain(self) -> None:
        """Shutdown: finish in-flight calls within the grace period, give back the rest."""
        if not self.in_flight:
            return
        grace = self.ctx.settings.shutdown_grace_seconds
        log.info("waiting for in-flight actions", count=len(self.in_flight), grace_seconds=grace)
        _, pending = await asyncio.wait(list(self.in_flight.values()), timeout=grace)
        if pending:
            ids = [i for i, t in self.in_flight.items() if t in pending]
            for task in pending:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*pending, return_exceptions=True)
            released = await outbox.release(
                self.ctx.db, ids, worker=self.ctx.worker_id, now=self.ctx.clock()
            )
            log.warning("released unfinished actions", count=released)

    async def execute(self, row: Row, request_row: Row | _Unknown | None) -> None:
        """Run one claimed action; never raises (a crash here would leave it in flight).
        ``request_row``: its request as read with the claim (None: there is none), or
        ``_UNKNOWN`` to read it now."""
        try:
            await self._execute(row, request_row)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Most likely the database went away while recording the result. The claim's
            # lease brings the action back; its attempt is then logged as interrupted.
            log.exception("could not record an action's result", action=int(row["id"]))

    async def _execute(self, row: Row, request_row: Row | _Unknown | None) -> None:
        ctx = self.ctx
        action_id, attempt = int(row["id"]), int(row["attempts"])
        started_at = ctx.clock()
        t0 = time.perf_counter()
        outcome = await self._attempt(row, request_row)
        duration_ms = (time.perf_counter() - t0) * 1000
        now = ctx.clock()
        decision = ctx.retry_policy.decide(
            outcome,
            attempts=attempt,
            created_at=float(row["created_at"]),
            now=now,
            rand=self._rand.random(),
        )
        deferred = decision.status == "deferred"
        # The provider asked us to wait (429): logged as an attempt, but not counted as one.
        throttled = decision.status == "throttled"
        status = (
            "pending" if decision.status in ("retry", "throttled", "deferred") else decision.status
        )
        error = (
            None
            if decision.status in ("done", "deferred")
            else (decision.reason or outcome.message)
        )
        if deferred:
            # Nothing was sent: no attempt to log, and the attempt count is given back.
            async with ctx.db.transaction() as tx:
                await outbox.settle(
                    tx,
                    action_id,
                    status="pending",
                    now=now,
                    due_at=decision.retry_at,
                    status_code=None,
                    error=None,
                    worker=ctx.worker_id,
                    uncount=True,
                    keep_last=True,
                )
        if deferred:
            ctx.metrics.attempts.inc(str(row["operation"]), "deferred")
            log.debug(
                "action deferred",
                action=action_id,
                reason=decision.reason,
                retry_in=round((decision.retry_at or now) - now, 2),
            )
            return

        async def record_in(tx: Transaction) -> bool:
            await outbox.record_attempt(
                tx,
                action_id=action_id,
                attempt=attempt,
                started_at=started_at,
                duration_ms=round(duration_ms, 2),
                status_code=outcome.status_code,
                outcome={"done": "ok"}.get(decision.status, decision.status),
                error=error,
                response_excerpt=outcome.response_excerpt[:500] or None,
            )
            held = await outbox.settle(
                tx,
                action_id,
                status=status,
                now=now,
                due_at=decision.retry_at,
                status_code=outcome.status_code,
                error=error,
                worker=ctx.worker_id,
                uncount=throttled,
            )
            if held and decision.status == "done" and hands_out_hook_token(ctx, row):
                # The provider now calls the request's own hook URL: a token it used before
                # (shared with the signer's return URL, see credentials.py) stops opening it.
                await requests.retire_shared_token(tx, int(row["request_id"]), now=now)
            if held:
                for follow_up in outcome.follow_up:
                    await inbox.insert(
                        tx,
                        inbox.insert_params(
                            provider=follow_up.provider,
                            channel=follow_up.channel,
                            dedupe_key=follow_up.dedupe_key,
                            received_at=now,
                            body=follow_up.body,
                            headers={},
                            query="",
                            request_id=follow_up.request_id,
                            external_id=None,
                        ),
                    )
            return held

        async def record() -> bool:
            # Results of actions finishing together share a commit (on SQLite).
            return await ctx.db.in_shared_transaction(record_in)

        held = await self._with_db_retries(record, deadline=float(row["lease_expires_at"] or 0))
        operation_name = str(row["operation"])
        ctx.metrics.attempts.inc(operation_name, decision.status)
        ctx.metrics.observe_attempt(operation_name, duration_ms / 1000)
        facts = {
            "action": action_id,
            "operation": row["operation"],
            "request": int(row["request_id"]),
            "attempt": attempt,
            "status_code": outcome.status_code,
            "duration_ms": round(duration_ms, 1),
        }
        if not held:
            log.warning("action result discarded: lease was lost to another worker", **facts)
        elif decision.status == "done":
            log.info("action done", **facts)
        elif decision.status == "skipped":
            log.info("action skipped", reason=decision.reason, **facts)
        elif throttled:
            log.info(
                "action throttled by the provider, not counted as an attempt",
                reason=decision.reason,
                retry_in=round((decision.retry_at or now) - now, 2),
                **facts,
            )
        elif decision.status == "retry":
            log.warning(
                "action failed, will retry",
                reason=decision.reason,
                retry_in=round((decision.retry_at or now) - now, 2),
                **facts,
            )
        else:
            log.error("action dead", reason=decision.reason, **facts)

    async def _with_db_retries(
        self, work: Callable[[], Awaitable[bool]], *, deadline: float
    ) -> bool:
        """Record a result, retrying a lost database until half-way to the lease's end."""
        delay = 0.2
        while True:
            try:
                return await work()
            except Exception as exc:
                if self.ctx.clock() + delay > deadline - self.ctx.settings.lease_seconds / 2:
                    raise
                log.warning("retrying to record an action's result", error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _attempt(self, row: Row, request_row: Row | _Unknown | None) -> Outcome:
        ctx = self.ctx
        operation_name = str(row["operation"])
        provider_name = operation_name.split(".", 1)[0]
        provider = ctx.providers.get(provider_name)
        operation = provider.operations.get(operation_name) if provider else None
        if operation is None:
            return Outcome(ok=False, final=True, message=f"unknown operation {operation_name!r}")
        if isinstance(request_row, _Unknown):
            try:
                request_row = await requests.get(ctx.db, int(row["request_id"]))
            except Exception as exc:  # nothing was sent: try again soon, without counting it
                return Outcome(
                    ok=False,
                    deferred=True,
                    retry_after=1.0,
                    message=f"database unavailable: {type(exc).__name__}",
                )
        if request_row is None:
            return Outcome(ok=False, final=True, message="the signature request is gone")
        request = requests.from_row(request_row)
        if request_row.get("sendinfo_hash") is None and hands_out_hook_token(ctx, row):
            # Written before the hook token existed and not yet completed at start-up (an
            # older process registered it during a rolling deploy): store the hash before the
            # URL goes out, or the provider's callbacks to it would find no request.
            try:
                digest = token_hash(ctx.hook_token(str(request_row["token_nonce"])))
                async with ctx.db.transaction() as tx:
                    await requests.set_hook_hash(tx, request.id, digest, retire_shared_at=None)
            except Exception as exc:  # nothing was sent: try again soon, without counting it
                return Outcome(
                    ok=False,
                    deferred=True,
                    retry_after=1.0,
                    message=f"database unavailable: {type(exc).__name__}",
                )
        try:
            text = str(row["payload"])
            payload = jsonutil.loads(text)
            if PLACEHOLDER_MARK in text:  # the callback tokens are derived only when needed
                urls = ctx.callback_urls(request.provider, str(request_row["token_nonce"]))
                payload = resolve_placeholders(payload, urls, ctx.url_names)
            return await operation(ctx, request, payload)
        except InvalidAction as exc:
            return Outcome(ok=False, final=True, message=str(exc))
        except httpx.TimeoutException:
            return Outcome(ok=False, message="the provider did not answer in time")
        except httpx.TransportError as exc:
            return Outcome(ok=False, message=f"could not reach the provider ({type(exc).__name__})")
        except Exception as exc:
            log.exception("operation crashed", operation=operation_name, action=int(row["id"]))
            return Outcome(ok=False, message=f"internal error: {type(exc).__name__}: {exc}")
