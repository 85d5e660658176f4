"""With more enabled endpoints than the total delivery concurrency holds at each one's
per-endpoint share, a due delivery to any of them is claimed at once, whatever the lanes'
turn: lanes with nothing due do not keep the capacity to themselves. (They did: the claim
set aside each lane's room in turn order, asked only the first lanes, and a delivery to a
later one waited a poll interval per turn; found by a black-box try, with seven endpoints
and the default 128 / 64.) Both databases."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from receiver.app import build_context, prepare_database
from receiver.context import AppContext
from receiver.outbox.downstream import emit, manage
from receiver.outbox.downstream.lanes import EndpointLanes
from receiver.settings import Settings

pytestmark = pytest.mark.anyio

ENDPOINTS = 7


@pytest.fixture
async def ctx(make_settings: Callable[..., Settings]) -> AsyncIterator[AppContext]:
    # Room for two endpoints at their full share, as the defaults (128 / 64) are.
    context = build_context(
        make_settings(
            endpoint_allow_private=True,
            endpoint_concurrency=4,
            endpoint_concurrency_per_endpoint=2,
        )
    )
    await prepare_database(context)
    try:
        yield context
    finally:
        await context.db.close()


async def test_a_due_delivery_is_claimed_whatever_the_lanes_turn(ctx: AppContext) -> None:
    endpoints = [
        (await manage.create(ctx, {"url": f"http://127.0.0.1:9/{n}"}))[0] for n in range(ENDPOINTS)
    ]
    lanes = EndpointLanes(ctx)
    for target in endpoints:
        async with ctx.db.transaction() as tx:
            emitted = await emit.test_event(tx, endpoint=target, now=ctx.clock())
        assert emitted is not None
        # One claim, as the dispatcher makes on the wake-up that queuing sends.
        rows = (await lanes.claim(4, {}, now=ctx.clock() + 1)).rows
        assert [r["lane"] for r in rows] == [f"endpoint:{target.id}"], target.id
        assert rows[0]["event_row"]["public_id"] == emitted.public_id


async def test_the_total_still_caps_the_claim(ctx: AppContext) -> None:
    """Four in flight at most, two per endpoint, whichever lanes have work."""
    endpoints = [
        (await manage.create(ctx, {"url": f"http://127.0.0.1:9/{n}"}))[0] for n in range(ENDPOINTS)
    ]
    for target in endpoints:
        for _ in range(3):
            async with ctx.db.transaction() as tx:
                await emit.test_event(tx, endpoint=target, now=ctx.clock())
    lanes = EndpointLanes(ctx)
    rows = (await lanes.claim(4, {}, now=ctx.clock() + 1)).rows
    per_lane = [str(r["lane"]) for r in rows]
    assert len(rows) == 4
    assert all(per_lane.count(lane) <= 2 for lane in per_lane)
