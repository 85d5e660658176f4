"""What wakes the outbox dispatcher, and what a wake-up costs: at most one claim per class of
lanes (no second claim to find nothing, no query for the next due time: the claim says),
none for the reconciler's reads while they have nothing, and a slot given back where there
was none wakes it, even after its settle's notification came. Both databases; the real
dispatcher loop, with its claims counted."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping

import pytest

from receiver.app import build_context, prepare_database
from receiver.clock import FrozenClock
from receiver.context import AppContext
from receiver.outbox.dispatcher import Dispatcher
from receiver.outbox.lanes import LaneClass, ProviderLanes, ReconcileLanes
from receiver.outbox.outcomes import Outcome
from receiver.outbox.retry import Decision, RetryPolicy
from receiver.settings import Settings
from receiver.store import outbox
from receiver.store.db.base import Row

pytestmark = pytest.mark.anyio

POLL = 30.0  # far longer than any test here: only a wake-up or a due time moves the loop


class Counted:
    """A lane class whose claims are counted."""

    def __init__(self, inner: LaneClass) -> None:
        self.inner = inner
        self.eager = inner.eager
        self.ahead = inner.ahead
        self.claims = 0
        self.taken: list[int] = []  # how many each claim took

    def owns(self, lane: str) -> bool:
        return self.inner.owns(lane)

    def free(self, busy: Mapping[str, int]) -> int:
        return self.inner.free(busy)

    def at_limit(self, lane: str, busy: Mapping[str, int]) -> bool:
        return self.inner.at_limit(lane, busy)

    async def claim(self, free: int, busy: Mapping[str, int], *, now: float) -> outbox.Claim:
        self.claims += 1
        claim = await self.inner.claim(free, busy, now=now)
        self.taken.append(len(claim.rows))
        return claim

    def policy(self) -> RetryPolicy:
        return self.inner.policy()

    async def settled(self, row: Row, decision: Decision, outcome: Outcome) -> None:
        await self.inner.settled(row, decision, outcome)


@pytest.fixture
async def ctx(make_settings: Callable[..., Settings]) -> AsyncIterator[AppContext]:
    context = build_context(
        make_settings(poll_interval=POLL, outbox_concurrency=2), clock=FrozenClock()
    )
    await prepare_database(context)
    try:
        yield context
    finally:
        await context.db.close()


async def settle_down() -> None:
    """Let the dispatcher's loop, and what it started, run until it waits again."""
    for _ in range(20):
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(ctx: AppContext, dispatcher: Dispatcher) -> AsyncIterator[None]:
    """The dispatcher's loop, stopped (and drained) on the way out."""
    stopping = asyncio.Event()
    loop = asyncio.create_task(dispatcher.run(stopping))
    try:
        yield
    finally:
        stopping.set()
        ctx.db.wake(outbox.OUTBOX_CHANNEL)
        await loop


@contextlib.asynccontextmanager
async def dispatching(ctx: AppContext, lanes: list[Counted]) -> AsyncIterator[None]:
    """The dispatcher's loop over ``lanes``, once it has looked for work and waits. (On
    PostgreSQL its listener, once connected, wakes it once more: a NOTIFY may have been
    missed before it listened.)"""
    async with running(ctx, Dispatcher(ctx, lanes=lanes)):
        await asyncio.sleep(0.5)
        await settle_down()
        yield


async def add_read(ctx: AppContext, *, due: float) -> None:
    """A reconciler's read in its lane, of an operation no provider has (given up at once)."""
    async with ctx.db.transaction() as tx:
        row = await tx.fetch_one(
            "INSERT INTO signature_requests (provider, external_id, state, token_hash,"
            " token_nonce, created_at, updated_at) VALUES ('firma', 'sr-1', 'sent',"
            " 'h', 'n', 0, 0) RETURNING id"
        )
        assert row is not None
        await tx.execute(
            "INSERT INTO outbox (request_id, lane, action_key, operation, payload, status,"
            " due_at, attempts, created_at, updated_at) VALUES (:request, 'reconcile',"
            " 'read-1', 'nobody.reconcile', '{}', 'pending', :due, 0, 0, 0)",
            {"request": int(row["id"]), "due": due},
        )


async def test_a_wake_up_claims_each_class_once_and_the_empty_reads_lane_not_at_all(
    ctx: AppContext,
) -> None:
    clock = ctx.clock
    assert isinstance(clock, FrozenClock)
    provider, reads = Counted(ProviderLanes(ctx)), Counted(ReconcileLanes(ctx))
    async with dispatching(ctx, [provider, reads]):
        assert reads.claims == 1  # the first look found nothing
        before = provider.claims
        for _ in range(5):
            ctx.db.wake(outbox.OUTBOX_CHANNEL)
            await settle_down()
        # Each wake-up: one claim of the provider calls; none of the reads' empty lane.
        assert (provider.claims - before, reads.claims) == (5, 1)

        # A read queued meanwhile (by another process, say) waits for the lane's poll...
        await add_read(ctx, due=clock() - 1)
        ctx.db.wake(outbox.OUTBOX_CHANNEL)
        await settle_down()
        assert reads.claims == 1
        # ... which comes a poll interval after the lane was last found empty: the read is
        # claimed and run (given up), and its settle's wake-up finds the lane empty again.
        clock.advance(POLL)
        ctx.db.wake(outbox.OUTBOX_CHANNEL)
        await settle_down()
        assert reads.claims == 3
        done = await ctx.db.fetch_all("SELECT status FROM outbox WHERE lane = 'reconcile'")
        assert [r["status"] for r in done] == ["dead"]
        ctx.db.wake(outbox.OUTBOX_CHANNEL)
        await settle_down()
        assert reads.claims == 3


async def test_the_reads_lane_is_claimed_when_its_next_read_comes_due(ctx: AppContext) -> None:
    clock = ctx.clock
    assert isinstance(clock, FrozenClock)
    await add_read(ctx, due=clock() + 10)  # the lane's first (empty) claim learns of it
    reads = Counted(ReconcileLanes(ctx))
    async with dispatching(ctx, [Counted(ProviderLanes(ctx)), reads]):
        ctx.db.wake(outbox.OUTBOX_CHANNEL)
        await settle_down()
        assert reads.claims == 1
        clock.advance(10)
        ctx.db.wake(outbox.OUTBOX_CHANNEL)
        await settle_down()
        assert reads.claims == 3  # the read, then the empty lane on its settle's wake-up
        done = await ctx.db.fetch_all("SELECT status FROM outbox WHERE lane = 'reconcile'")
        assert [r["status"] for r in done] == ["dead"]


async def test_a_slot_given_back_where_there_was_none_wakes_the_dispatcher(
    ctx: AppContext,
) -> None:
    dispatcher = Dispatcher(ctx)
    finished = asyncio.create_task(asyncio.sleep(0))
    await finished
    # Nothing left over from the set-up (on PostgreSQL, the listener's first wake-up).
    while await ctx.db.wait(outbox.OUTBOX_CHANNEL, 0.3):
        pass

    # Both slots of the provider calls taken: the dispatcher passes the class over, and the
    # settle's wake-up may have come before the slot is given back.
    dispatcher.busy[outbox.PROVIDER_LANE] = 2
    dispatcher._calling.update({1: outbox.PROVIDER_LANE, 2: outbox.PROVIDER_LANE})
    dispatcher._forget(1, finished)
    assert await ctx.db.wait(outbox.OUTBOX_CHANNEL, 0.05) is True
    # One of two taken: the class had room, so nothing waits for this slot.
    dispatcher._forget(2, finished)
    assert await ctx.db.wait(outbox.OUTBOX_CHANNEL, 0.05) is False
    assert dispatcher.busy[outbox.PROVIDER_LANE] == 0


async def add_calls(ctx: AppContext, count: int) -> None:
    """``count`` provider calls due now, each of a request of its own, of an operation no
    provider has (given up at once: the call is over as soon as it starts)."""
    async with ctx.db.transaction() as tx:
        for n in range(count):
            row = await tx.fetch_one(
                "INSERT INTO signature_requests (provider, external_id, state, token_hash,"
                " token_nonce, created_at, updated_at) VALUES ('firma', :ext, 'sent',"
                " :h, 'n', 0, 0) RETURNING id",
                {"ext": f"sr-call-{n}", "h": f"h-call-{n}"},
            )
            assert row is not None
            await tx.execute(
                "INSERT INTO outbox (request_id, lane, action_key, operation, payload, status,"
                " due_at, attempts, created_at, updated_at) VALUES (:request, 'provider',"
                " :key, 'nobody.patch', '{}', 'pending', 0, 0, 0, 0)",
                {"request": int(row["id"]), "key": f"call-{n}"},
            )


async def statuses(ctx: AppContext) -> list[str]:
    rows = await ctx.db.fetch_all("SELECT status FROM outbox ORDER BY id")
    return [str(r["status"]) for r in rows]


def calls_held(
    dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch
) -> tuple[asyncio.Event, list[int]]:
    """The dispatcher's calls wait until the event is set; the ids of the actions whose call
    started, in order."""
    go = asyncio.Event()
    attempt = dispatcher._attempt
    started: list[int] = []

    async def held_call(row: Row, request_row: object) -> Outcome:
        started.append(int(row["id"]))
        await go.wait()
        return await attempt(row, request_row)  # type: ignore[arg-type]

    monkeypatch.setattr(dispatcher, "_attempt", held_call)
    return go, started


@contextlib.asynccontextmanager
async def records_held(ctx: AppContext) -> AsyncIterator[asyncio.Event]:
    """The dispatcher's results wait to be written until the event is set."""
    gate = asyncio.Event()
    write = ctx.db.in_shared_transaction

    async def held(work: Callable[..., object]) -> object:
        await gate.wait()
        return await write(work)  # type: ignore[arg-type]

    ctx.db.in_shared_transaction = held  # type: ignore[method-assign,assignment]
    try:
        yield gate
    finally:
        gate.set()
        ctx.db.in_shared_transaction = write  # type: ignore[method-assign]


async def test_a_slot_is_free_once_the_call_is_over_not_once_its_result_is_written(
    ctx: AppContext,
) -> None:
    # Two slots, three calls: the third goes out while the first two wait for the database.
    await add_calls(ctx, 3)
    dispatcher = Dispatcher(ctx, lanes=[Counted(ProviderLanes(ctx))])
    async with records_held(ctx) as gate, running(ctx, dispatcher):
        await settle_down()
        assert len(dispatcher.in_flight) == 3  # every call made, no result written yet
        assert not dispatcher.busy
        assert await statuses(ctx) == ["in_flight"] * 3
        gate.set()
        await settle_down()
        assert await statuses(ctx) == ["dead"] * 3
    assert not dispatcher.in_flight


async def test_no_claim_while_too_many_results_wait_to_be_written(
    ctx: AppContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("receiver.outbox.dispatcher.MAX_RECORDING", 2)
    await add_calls(ctx, 5)
    provider = Counted(ProviderLanes(ctx))
    dispatcher = Dispatcher(ctx, lanes=[provider])
    async with records_held(ctx) as gate, running(ctx, dispatcher):
        await settle_down()
        # Two slots and two held ready: four claimed at once, all four calls made (the
        # ready ones as slots came free), and with their results waiting, the fifth waits.
        assert provider.taken == [4]
        assert len(dispatcher.in_flight) == 4
        ctx.db.wake(outbox.OUTBOX_CHANNEL)
        await settle_down()
        assert provider.taken == [4]  # a wake-up claims nothing while they wait
        gate.set()
        await settle_down()  # written: the last one's slot wakes the dispatcher
        assert await statuses(ctx) == ["dead"] * 5


async def test_actions_held_ready_start_as_slots_come_free_without_a_claim(
    ctx: AppContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_calls(ctx, 6)
    provider = Counted(ProviderLanes(ctx))
    dispatcher = Dispatcher(ctx, lanes=[provider])
    calls, _ = calls_held(dispatcher, monkeypatch)
    async with running(ctx, dispatcher):
        await settle_down()
        # Two slots (outbox_concurrency) and as many held ready: one claim of four.
        assert (provider.taken, sorted(dispatcher.busy.values())) == ([4], [2])
        calls.set()
        await settle_down()
        # The ready two started as the first two calls ended, and the claim that refilled
        # the ready ones (half of them gone) took the last two: no claim per slot.
        assert await statuses(ctx) == ["dead"] * 6
        assert sum(1 for n in provider.taken if n) == 2, provider.taken


async def test_an_action_ready_for_half_a_lease_is_given_back_not_started(
    ctx: AppContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ctx.clock
    assert isinstance(clock, FrozenClock)
    await add_calls(ctx, 4)
    provider = Counted(ProviderLanes(ctx))
    dispatcher = Dispatcher(ctx, lanes=[provider])
    calls, started = calls_held(dispatcher, monkeypatch)
    async with running(ctx, dispatcher):
        await settle_down()
        assert (provider.taken, len(started)) == ([4], 2)
        # The two calls out take more than half a lease: the two ready ones would start with
        # less than half of theirs left, and another process could take them over meanwhile.
        clock.advance(ctx.settings.lease_seconds * 0.6)
        calls.set()
        await settle_down()
        # Given back (due again, the attempt not counted), claimed afresh, and made.
        rows = await ctx.db.fetch_all("SELECT status, attempts FROM outbox ORDER BY id")
        assert [(r["status"], r["attempts"]) for r in rows] == [("dead", 1)] * 4
        assert [n for n in provider.taken if n] == [4, 2]
        assert sorted(started) == [1, 2, 3, 4]


async def test_under_a_flood_a_ready_action_waits_for_the_governed_loop(
    ctx: AppContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    dispatcher = Dispatcher(ctx, lanes=[ProviderLanes(ctx)])
    while await ctx.db.wait(outbox.OUTBOX_CHANNEL, 0.3):
        pass
    # Callbacks queue up: the governor holds the background back.
    monkeypatch.setattr(ctx.governor, "saturated", lambda: True)
    dispatcher.busy[outbox.PROVIDER_LANE] = 2
    dispatcher._calling.update({1: outbox.PROVIDER_LANE, 2: outbox.PROVIDER_LANE})
    ready_row: Row = {"id": 3, "lane": outbox.PROVIDER_LANE, "lease_expires_at": ctx.clock() + 60}
    dispatcher._ready_of(dispatcher.lanes[0]).append((ready_row, None))

    dispatcher._call_over(1)
    # Not started from the call's end: the loop starts it after the governor's turn.
    assert not dispatcher.in_flight
    assert len(dispatcher._ready_of(dispatcher.lanes[0])) == 1
    assert await ctx.db.wait(outbox.OUTBOX_CHANNEL, 0.05) is True
