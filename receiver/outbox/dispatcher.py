"""The outbox dispatcher: claim due actions, call the provider, record, decide what's next.

Due actions go out ordered per request and lane (the claim's head-of-line rule) and in
parallel across requests, each class of lanes up to its own number at once
(``receiver/outbox/lanes.py``: the provider calls ``SIGNBACK_OUTBOX_CONCURRENCY``, the
downstream deliveries theirs, the reconciler's reads ``SIGNBACK_RECONCILE_CONCURRENCY``).
Every attempt is logged with its status code, duration and the first bytes of the answer.
On shutdown it stops claiming, lets in-flight calls finish within the grace period, and
gives back what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

import httpx

from receiver import jsonutil
from receiver.archive import ARCHIVE_OPERATION
from receiver.archive.step import archive_request
from receiver.backoff import MAX_LOOP_DELAY, Backoff
from receiver.context import AppContext, CallbackUrls
from receiver.errors import InvalidAction
from receiver.intake.tokens import token_hash
from receiver.logs import get_logger
from receiver.outbox.downstream import DELIVER_OPERATION
from receiver.outbox.downstream import emit as downstream_emit
from receiver.outbox.downstream.deliver import deliver
from receiver.outbox.downstream.lanes import EndpointLanes
from receiver.outbox.lanes import LaneClass, ProviderLanes, ReconcileLanes
from receiver.outbox.outcomes import Deferred, Failed, GiveUp, Outcome, redacted
from receiver.outbox.retry import Decision, DecisionStatus, RetryPolicy
from receiver.reconcile import operation as reconcile_operation
from receiver.store import inbox, outbox, requests
from receiver.store.db.base import Later, Row, Transaction
from receiver.store.statuses import ActionStatus, AttemptOutcome

log = get_logger("signback.outbox")

# Rules may put ``{signback.<name>}`` anywhere in a payload, for any callback URL a provider
# gives its requests (``return_url`` and the provider's own: Provider.urls). They are filled
# in at send time, so the outbox never stores a callback token and URLs always use the
# current public address.
PLACEHOLDER_MARK = "{signback."


# The core's own operations that act on a request (besides the providers' and deliveries).
CORE_OPERATIONS = {ARCHIVE_OPERATION: archive_request}  # receiver/archive/step.py
# Operations that may outlast a lease (a download of many megabytes): their claim is
# renewed while they run, so that it does not come back to another worker meanwhile.
LONG_OPERATIONS = frozenset({ARCHIVE_OPERATION})


# Actions whose call is over but whose result is not written yet, per process: past this,
# nothing more is claimed until some are (a slow database must not let calls run ever further
# ahead of their records; each of them would be made again should the process die).
MAX_RECORDING = 64

# After an attempt that was made: the action's status, and the attempt log's outcome.
_SETTLED: dict[DecisionStatus, tuple[ActionStatus, AttemptOutcome]] = {
    DecisionStatus.DONE: (ActionStatus.DONE, AttemptOutcome.OK),
    DecisionStatus.RETRY: (ActionStatus.PENDING, AttemptOutcome.RETRY),
    DecisionStatus.THROTTLED: (ActionStatus.PENDING, AttemptOutcome.THROTTLED),
    DecisionStatus.DEAD: (ActionStatus.DEAD, AttemptOutcome.DEAD),
    DecisionStatus.SKIPPED: (ActionStatus.SKIPPED, AttemptOutcome.SKIPPED),
}


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
    def __init__(
        self,
        ctx: AppContext,
        *,
        rand: random.Random | None = None,
        lanes: Sequence[LaneClass] | None = None,
    ) -> None:
        self.ctx = ctx
        # Claimed actions until their result is written (or given up on).
        self.in_flight: dict[int, asyncio.Task[None]] = {}
        # Those of them whose call is still out, and its lane. A class's slot is the call's:
        # it is given back as soon as the answer came, not after the result's commit, so a
        # slot's turn costs the call and not also the database round trips of its record
        # (the head-of-line rule still holds back the lane's next action until that commit).
        self._calling: dict[int, str] = {}
        # Claimed actions held ready for a class's next free slots (LaneClass.ahead), by
        # class, in claim order; and those found with half their lease gone, to give back.
        self._ready: dict[int, deque[tuple[Row, Row | _Unknown | None]]] = {}
        self._stale: list[int] = []
        self._rand = rand or random.Random()  # jitter, not security
        # Each class of lanes is claimed from a capacity of its own (receiver/outbox/lanes.py).
        self.lanes: list[LaneClass] = (
            list(lanes)
            if lanes is not None
            else [ProviderLanes(ctx), EndpointLanes(ctx), ReconcileLanes(ctx)]
        )
        self.busy: Counter[str] = Counter()  # calls out from this process, by lane
        # A class that is not eager, after a claim that took nothing: when that was, and
        # when its next action comes due (see LaneClass.eager).
        self._found_nothing: dict[int, tuple[float, float | None]] = {}

    async def run(self, stopping: asyncio.Event) -> None:
        settings = self.ctx.settings
        backoff = Backoff(settings.poll_interval, MAX_LOOP_DELAY, rand=self._rand.random)
        while not stopping.is_set():
            # When to look again unwoken: when the first action not due yet comes due, in a
            # class that took all it had due. Everything else wakes the dispatcher: a new or
            # settled action (its commit's notification) and a slot given back in a class
            # that was full (_forget). At most one claim per class per wake-up (fewer for a
            # class that is not eager), and no other query: on PostgreSQL, a round trip each.
            due: float | None = None
            try:
                if self._stale:
                    await self._give_back(because="they waited half a lease for a slot")
                for lanes in self.lanes if not self._recording_full() else ():
                    if self._ready_of(lanes) and lanes.free(self.busy) > 0:
                        await self.ctx.governor.turn()  # the acknowledgements come first
                        self._start_ready(lanes)
                    free, ready = lanes.free(self.busy), len(self._ready_of(lanes))
                    # Claimed when a slot has nothing ready, or once the ready ones are half
                    # gone: a claim for each slot given back would be a round trip each.
                    if free <= 0 and not (lanes.ahead and ready <= lanes.ahead // 2):
                        continue
                    limit = max(free, 0) + lanes.ahead - ready
                    quiet = self._quiet_until(lanes)
                    if quiet is not None:
                        due = outbox.earliest(due, quiet)
                        continue
                    await self.ctx.governor.turn()  # the acknowledgements come first
                    claim = await self._claim_and_start(lanes, limit)
                    if len(claim.rows) < limit:
                        due = outbox.earliest(due, claim.next_due)
                    if not lanes.eager:
                        self._note_claim(lanes, claim)
                backoff.reset()
            except Exception as exc:
                delay = backoff.next_delay()
                log.warning(
                    "outbox cannot reach the database", error=str(exc), retry_in=round(delay, 2)
                )
                await backoff.sleep(delay, stopping)
                continue
            await self.ctx.db.wait(outbox.OUTBOX_CHANNEL, self._sleep_until(due))
        await self._drain()

    def _quiet_until(self, lanes: LaneClass) -> float | None:
        """For a class not eager that found nothing last time: when to claim it next (None:
        now)."""
        last = self._found_nothing.get(id(lanes))
        if last is None:
            return None
        found_at, next_due = last
        until = outbox.earliest(found_at + self.ctx.settings.poll_interval, next_due)
        return until if until is not None and until > self.ctx.clock() else None

    def _note_claim(self, lanes: LaneClass, claim: outbox.Claim) -> None:
        if claim.rows:
            self._found_nothing.pop(id(lanes), None)
        else:
            self._found_nothing[id(lanes)] = (self.ctx.clock(), claim.next_due)

    def _sleep_until(self, due: float | None) -> float:
        """Seconds to wait for a wake-up: until ``due``, at most a poll interval (which also
        bounds how late anything missed is found)."""
        poll = self.ctx.settings.poll_interval
        if due is None:
            return poll
        return max(0.005, min(poll, due - self.ctx.clock()))

    async def _claim_and_start(self, lanes: LaneClass, limit: int) -> outbox.Claim:
        """Claim up to ``limit`` actions of a class: those its free slots take now start,
        the rest wait ready for the next slots."""
        claim = await lanes.claim(limit, self.busy, now=self.ctx.clock())
        rows, prefetched = outbox.split_claimed(claim.rows)
        # The actions' requests came with the claim (PostgreSQL), or are read in one query
        # rather than one each. Should that fail, each action reads its own, and one that
        # cannot is deferred, not counted as an attempt. (Deliveries need none: their
        # document holds what they send.)
        wanted = {
            int(row["request_id"])
            for row in rows
            if row["request_id"] is not None and row["operation"] != DELIVER_OPERATION
        }
        if wanted and prefetched is None:
            try:
                prefetched = await requests.get_many(self.ctx.db, wanted)
            except Exception:
                prefetched = None
        ready = self._ready_of(lanes)
        for row in rows:
            request_row: Row | _Unknown | None = _UNKNOWN
            if prefetched is not None and row["request_id"] is not None:
                request_row = prefetched.get(int(row["request_id"]))
            ready.append((row, request_row))
        self._start_ready(lanes)
        return claim

    def _ready_of(self, lanes: LaneClass) -> deque[tuple[Row, Row | _Unknown | None]]:
        return self._ready.setdefault(id(lanes), deque())

    def _start_ready(self, lanes: LaneClass) -> int:
        """Start the class's ready actions its free slots take; how many started. One whose
        lease is half gone (it waited behind slow calls) is given back instead: another
        process could take it over before its call is over."""
        ready = self._ready_of(lanes)
        started = 0
        while ready and lanes.free(self.busy) > 0:
            row, request_row = ready.popleft()
            expires = float(row["lease_expires_at"] or 0)
            if expires - self.ctx.clock() < self.ctx.settings.lease_seconds / 2:
                self._stale.append(int(row["id"]))
                continue
            self._start(row, request_row)
            started += 1
        if self._stale:
            self.ctx.db.wake(outbox.OUTBOX_CHANNEL)  # the loop gives them back
        return started

    def _start(self, row: Row, request_row: Row | _Unknown | None) -> None:
        action_id, lane = int(row["id"]), str(row["lane"])
        task = asyncio.create_task(self.execute(row, request_row), name=f"outbox-{action_id}")
        self.in_flight[action_id] = task
        self._calling[action_id] = lane
        self.busy[lane] += 1
        task.add_done_callback(functools.partial(self._forget, action_id))

    async def _give_back(self, *, because: str) -> None:
        """Give the claims in ``_stale`` back: due again at once, for any process."""
        stale, self._stale = self._stale, []
        try:
            released = await outbox.release(
                self.ctx.db, stale, worker=self.ctx.worker_id, now=self.ctx.clock()
            )
        except Exception:
            self._stale.extend(stale)  # the next look tries again (or their leases end)
            raise
        log.info("claimed actions given back unstarted", count=released, reason=because)

    def _recording_full(self) -> bool:
        return len(self.in_flight) - len(self._calling) >= MAX_RECORDING

    def _call_over(self, action_id: int) -> None:
        """The action's call is over: its slot is free (once; the task's end gives back a
        slot not given back before)."""
        lane = self._calling.pop(action_id, None)
        if lane is None:
            return
        # The dispatcher passes over a class, or a lane, with no room; a wake-up may have
        # come before this slot is given back, so a slot given back where there was none
        # wakes it again (in this process only).
        lanes = self._lanes_of_lane(lane)
        was_at_limit = lanes.at_limit(lane, self.busy)
        self.busy[lane] -= 1
        if self.busy[lane] <= 0:
            del self.busy[lane]
        if self.ctx.governor.saturated():
            # Under a flood of callbacks a ready action waits for the loop's governed turn,
            # as a claim does: the acknowledgements come first.
            if self._ready_of(lanes) or was_at_limit:
                self.ctx.db.wake(outbox.OUTBOX_CHANNEL)
        elif self._start_ready(lanes):
            # The slot went to a ready action; once half of them are gone, a claim for more.
            if len(self._ready_of(lanes)) <= lanes.ahead // 2:
                self.ctx.db.wake(outbox.OUTBOX_CHANNEL)
        elif was_at_limit:
            self.ctx.db.wake(outbox.OUTBOX_CHANNEL)

    def _forget(self, action_id: int, _task: asyncio.Task[None]) -> None:
        was_full = self._recording_full()
        self.in_flight.pop(action_id, None)
        self._call_over(action_id)  # deferred, failed or cancelled before it was given back
        if was_full:
            self.ctx.db.wake(outbox.OUTBOX_CHANNEL)

    def _lanes_of_lane(self, lane: str) -> LaneClass:
        return next((c for c in self.lanes if c.owns(lane)), self.lanes[0])

    def _lanes_of(self, row: Row) -> LaneClass:
        return self._lanes_of_lane(str(row.get("lane") or outbox.PROVIDER_LANE))

    def _policy(self, row: Row) -> RetryPolicy:
        return self._lanes_of(row).policy()

    async def _drain(self) -> None:
        """Shutdown: finish in-flight calls within the grace period, give back the rest (and
        the actions held ready, never started)."""
        self._stale.extend(int(row["id"]) for ready in self._ready.values() for row, _ in ready)
        self._ready.clear()
        if self._stale:
            with contextlib.suppress(Exception):  # their leases bring them back otherwise
                await self._give_back(because="shutting down")
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
        # Nothing token-shaped from here on: not in the attempt log, a log line, an event.
        outcome = redacted(await self._attempt(row, request_row))
        duration_ms = (time.perf_counter() - t0) * 1000
        now = ctx.clock()
        decision = self._policy(row).decide(
            outcome,
            attempts=attempt,
            created_at=float(row["created_at"]),
            now=now,
            rand=self._rand.random(),
        )
        decided = decision.status
        if decided is DecisionStatus.DEFERRED:
            # Nothing was sent: no attempt to log, and the attempt count is given back.
            async with ctx.db.transaction() as tx:
                await outbox.settle(
                    tx,
                    action_id,
                    status=ActionStatus.PENDING,
                    now=now,
                    due_at=decision.retry_at,
                    status_code=None,
                    error=None,
                    worker=ctx.worker_id,
                    uncount=True,
                    keep_last=True,
                )
            ctx.metrics.attempts.inc(str(row["operation"]), decided)
            await self._settled(row, decision, outcome)
            log.debug(
                "action deferred",
                action=action_id,
                reason=decision.reason,
                retry_in=round((decision.retry_at or now) - now, 2),
            )
            return
        # The call is over: its slot is free while its result is written. (A deferred one's
        # slot waits for its settle: the lane's bookkeeping of why it was deferred, a spent
        # budget, decides how much the next claim takes.)
        self._call_over(action_id)
        status, logged = _SETTLED[decided]
        error = None if decided is DecisionStatus.DONE else (decision.reason or outcome.message)
        # The provider asked us to wait (429): logged as an attempt, but not counted as one.
        throttled = decided is DecisionStatus.THROTTLED

        async def record_in(tx: Transaction) -> Later:
            settled = await outbox.record_result(
                tx,
                action_id,
                attempt=attempt,
                started_at=started_at,
                duration_ms=round(duration_ms, 2),
                outcome=logged,
                response_excerpt=outcome.response_excerpt[:500] or None,
                status=status,
                now=now,
                due_at=decision.retry_at,
                status_code=outcome.status_code,
                error=error,
                worker=ctx.worker_id,
                uncount=throttled,
            )
            retire = decided is DecisionStatus.DONE and hands_out_hook_token(ctx, row)
            # --- downstream (issue 16): a provider call given up is an operational event.
            dead = decided is DecisionStatus.DEAD and row["operation"] != DELIVER_OPERATION
            # ---
            if not (retire or dead or outcome.follow_up):
                # Nothing more to write: the attempt and the settlement go with the commit
                # (on PostgreSQL, a shared transaction's results in one statement, and with
                # its NOTIFY and COMMIT in one round trip).
                return settled
            await tx.flush()  # what follows is written only if this worker held the action
            if settled.rowcount and retire:
                # The provider now calls the request's own hook URL: a token it used before
                # (shared with the signer's return URL, see credentials.py) stops opening it.
                await requests.retire_shared_token(tx, int(row["request_id"]), now=now)
            if settled.rowcount and dead:
                await self._emit_action_dead(tx, row, error or "", outcome.status_code, now)
            if settled.rowcount:
                for follow_up in outcome.follow_up:
                    await inbox.insert_fed_back(tx, follow_up, now=now)
            return settled

        async def record() -> bool:
            # Results of actions finishing together share a commit.
            return (await ctx.db.in_shared_transaction(record_in)).rowcount > 0

        held = await self._with_db_retries(record, deadline=float(row["lease_expires_at"] or 0))
        operation_name = str(row["operation"])
        ctx.metrics.attempts.inc(operation_name, decided)
        ctx.metrics.observe_attempt(operation_name, duration_ms / 1000)
        facts = {
            "action": action_id,
            "operation": row["operation"],
            "request": None if row["request_id"] is None else int(row["request_id"]),
            "attempt": attempt,
            "status_code": outcome.status_code,
            "duration_ms": round(duration_ms, 1),
        }
        if not held:
            log.warning("action result discarded: lease was lost to another worker", **facts)
        elif decided is DecisionStatus.DONE:
            log.info("action done", **facts)
        elif decided is DecisionStatus.SKIPPED:
            log.info("action skipped", reason=decision.reason, **facts)
        elif throttled:
            log.info(
                "action throttled by the provider, not counted as an attempt",
                reason=decision.reason,
                retry_in=round((decision.retry_at or now) - now, 2),
                **facts,
            )
        elif decided is DecisionStatus.RETRY:
            log.warning(
                "action failed, will retry",
                reason=decision.reason,
                retry_in=round((decision.retry_at or now) - now, 2),
                **facts,
            )
        else:
            log.error("action dead", reason=decision.reason, **facts)
        if held:
            await self._settled(row, decision, outcome)

    async def _settled(self, row: Row, decision: Decision, outcome: Outcome) -> None:
        try:
            await self._lanes_of(row).settled(row, decision, outcome)
        except Exception:
            log.exception("lane bookkeeping failed", action=int(row["id"]))

    async def _emit_action_dead(
        self, tx: Transaction, row: Row, error: str, status_code: int | None, now: float
    ) -> None:
        request = None
        if row["request_id"] is not None:
            found = await requests.get(tx, int(row["request_id"]))
            request = None if found is None else requests.from_row(found)
        await downstream_emit.action_dead(
            tx, action=row, request=request, reason=error, status_code=status_code, now=now
        )

    async def _with_db_retries(
        self, work: Callable[[], Awaitable[bool]], *, deadline: float
    ) -> bool:
        """Record a result, retrying a lost database until half-way to the lease's end."""
        backoff: Backoff | None = None  # made on the first failure: none on the hot path
        while True:
            try:
                return await work()
            except Exception as exc:
                if backoff is None:
                    backoff = Backoff(0.2, 5.0, rand=self._rand.random)
                delay = backoff.next_delay()
                if self.ctx.clock() + delay > deadline - self.ctx.settings.lease_seconds / 2:
                    raise
                log.warning(
                    "retrying to record an action's result",
                    error=str(exc),
                    retry_in=round(delay, 2),
                )
                await backoff.sleep(delay)

    @contextlib.asynccontextmanager
    async def _lease_renewed(self, action_id: int) -> AsyncIterator[None]:
        """Renew the action's lease every third of a lease while the block runs."""
        lease = self.ctx.settings.lease_seconds

        async def renew() -> None:
            while True:
                await asyncio.sleep(lease / 3)
                try:
                    kept = await outbox.extend_lease(
                        self.ctx.db,
                        action_id,
                        worker=self.ctx.worker_id,
                        lease_seconds=lease,
                        now=self.ctx.clock(),
                    )
                except Exception as exc:  # the database is away: the next renewal may work
                    log.warning("could not renew a lease", action=action_id, error=str(exc))
                    continue
                if not kept:
                    return  # no longer ours: the result will be discarded anyway

        renewing = asyncio.create_task(renew(), name=f"lease-{action_id}")
        try:
            yield
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing

    async def _attempt(self, row: Row, request_row: Row | _Unknown | None) -> Outcome:
        ctx = self.ctx
        operation_name = str(row["operation"])
        if operation_name == DELIVER_OPERATION:  # downstream delivery (issue 16)
            return await deliver(ctx, row)
        provider_name = operation_name.split(".", 1)[0]
        provider = ctx.providers.get(provider_name)
        operation = CORE_OPERATIONS.get(operation_name) or (
            provider.operations.get(operation_name) if provider else None
        )
        if operation is None and provider is not None:
            operation = reconcile_operation.find(provider, operation_name)
        if operation is None:
            return GiveUp(f"unknown operation {operation_name!r}")
        if row["request_id"] is None:
            return GiveUp("a provider call needs a request")
        if isinstance(request_row, _Unknown):
            try:
                request_row = await requests.get(ctx.db, int(row["request_id"]))
            except Exception as exc:  # nothing was sent: try again soon, without counting it
                return Deferred(1.0, f"database unavailable: {type(exc).__name__}")
        if request_row is None:
            return GiveUp("the signature request is gone")
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
                return Deferred(1.0, f"database unavailable: {type(exc).__name__}")
        try:
            text = str(row["payload"])
            payload = jsonutil.loads(text)
            if PLACEHOLDER_MARK in text:  # the callback tokens are derived only when needed
                urls = ctx.callback_urls(request.provider, str(request_row["token_nonce"]))
                payload = resolve_placeholders(payload, urls, ctx.url_names)
            if operation_name in LONG_OPERATIONS:
                async with self._lease_renewed(int(row["id"])):
                    return await operation(ctx, request, payload)
            return await operation(ctx, request, payload)
        except InvalidAction as exc:
            return GiveUp(str(exc))
        except httpx.TimeoutException:
            return Failed("the provider did not answer in time")
        except httpx.TransportError as exc:
            return Failed(f"could not reach the provider ({type(exc).__name__})")
        except Exception as exc:
            log.exception("operation crashed", operation=operation_name, action=int(row["id"]))
            return Failed(f"internal error: {type(exc).__name__}: {exc}")
