"""Emitting an event: one that goes to no endpoint is stored by a held write (no id read
back: a round trip per event on PostgreSQL), and still says whether it was new; one that
goes to endpoints is stored with its deliveries, read back or (``hold``, the pipeline's
way) held as well, the events of a transaction and all their deliveries one statement on
PostgreSQL, the same rows either way. Both databases."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from receiver.app import build_context, prepare_database
from receiver.context import AppContext
from receiver.outbox.downstream import emit, lane_of, manage
from receiver.settings import Settings
from receiver.store.db.postgres import PostgresDatabase

pytestmark = pytest.mark.anyio


@pytest.fixture
async def ctx(make_settings: Callable[..., Settings]) -> AsyncIterator[AppContext]:
    context = build_context(make_settings(endpoint_allow_private=True))
    await prepare_database(context)
    try:
        yield context
    finally:
        await context.db.close()


async def emit_once(ctx: AppContext, dedupe_key: str, *, hold: bool = False) -> emit.Emitted | None:
    async with ctx.db.transaction() as tx:
        return await emit.emit(
            tx,
            event_type="signature_request.completed",
            request=None,
            data={"note": dedupe_key},
            dedupe_key=dedupe_key,
            now=ctx.clock(),
            hold=hold,
        )


async def stored(ctx: AppContext, dedupe_key: str) -> int:
    rows = await ctx.db.fetch_all(
        "SELECT id FROM events WHERE dedupe_key = :key", {"key": dedupe_key}
    )
    return len(rows)


async def deliveries(ctx: AppContext) -> int:
    rows = await ctx.db.fetch_all("SELECT id FROM outbox WHERE operation = 'signback.deliver'")
    return len(rows)


async def test_an_event_for_no_endpoint_is_a_held_write_that_knows_it_was_new(
    ctx: AppContext,
) -> None:
    first = await emit_once(ctx, "k-1")
    assert first is not None
    assert first.event_id is None  # nothing read back
    assert first.deliveries == 0
    assert first.new  # known once the transaction's writes went
    assert await stored(ctx, "k-1") == 1
    again = await emit_once(ctx, "k-1")  # the same dedupe key: stored before
    assert again is not None
    assert not again.new
    assert await stored(ctx, "k-1") == 1


async def test_an_event_for_endpoints_is_stored_with_its_deliveries(ctx: AppContext) -> None:
    await manage.create(ctx, {"url": "http://127.0.0.1:9/hook"})
    first = await emit_once(ctx, "k-2")
    assert first is not None
    assert isinstance(first.event_id, int)
    assert first.deliveries == 1
    assert first.new
    assert await emit_once(ctx, "k-2") is None  # stored before, with its deliveries
    assert await stored(ctx, "k-2") == 1
    assert await deliveries(ctx) == 1


async def test_held_events_for_endpoints_queue_the_same_deliveries_in_one_statement(
    ctx: AppContext,
) -> None:
    """Three events held in one transaction, one of them twice (a dedupe key stored
    again), against two endpoints: the same events and deliveries (keys, lanes, payloads,
    order) as emitting them one by one with their ids read back."""
    first_endpoint, _ = await manage.create(ctx, {"url": "http://127.0.0.1:9/one"})
    second_endpoint, _ = await manage.create(ctx, {"url": "http://127.0.0.1:9/two"})
    endpoint_ids = [first_endpoint.id, second_endpoint.id]
    statements_before = getattr(ctx.db, "statements", 0)
    async with ctx.db.transaction() as tx:
        held = [
            await emit.emit(
                tx,
                event_type="signature_request.completed",
                request=None,
                data={"note": key},
                dedupe_key=key,
                now=1000.0 + i,
                source_inbox_id=None,
                hold=True,
            )
            for i, key in enumerate(["h-1", "h-2", "h-1", "h-3"])
        ]
    if isinstance(ctx.db, PostgresDatabase):
        # BEGIN, the endpoints, then the events with their deliveries and NOTIFY, COMMIT.
        assert ctx.db.statements - statements_before == 5
    assert all(h is not None and h.event_id is None for h in held)
    assert [h.new for h in held if h is not None] == [True, True, False, True]
    assert [h.deliveries for h in held if h is not None] == [2, 2, 2, 2]
    await emit_once(ctx, "p-1")  # the plain way, for comparison
    events = {
        row["dedupe_key"]: int(row["id"])
        for row in await ctx.db.fetch_all("SELECT id, dedupe_key FROM events ORDER BY id")
    }
    assert list(events) == ["h-1", "h-2", "h-3", "p-1"]
    rows = await ctx.db.fetch_all(
        "SELECT lane, action_key, payload, status, due_at, attempts FROM outbox"
        " WHERE operation = 'signback.deliver' ORDER BY id"
    )
    expected = [
        (
            lane_of(endpoint),
            f"deliver:{events[key]}:{endpoint}",
            f'{{"endpoint":{endpoint},"event":{events[key]}}}',
            "pending",
            0,
        )
        for key in ["h-1", "h-2", "h-3", "p-1"]
        for endpoint in endpoint_ids
    ]
    assert [
        (r["lane"], r["action_key"], r["payload"], r["status"], r["attempts"]) for r in rows
    ] == expected
    assert [r["due_at"] for r in rows][:6] == [1000.0, 1000.0, 1001.0, 1001.0, 1003.0, 1003.0]
    again = await emit_once(ctx, "h-2", hold=True)  # stored before: nothing queued again
    assert again is not None
    assert not again.new
    assert await deliveries(ctx) == 8
