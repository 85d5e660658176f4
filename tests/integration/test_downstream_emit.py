"""Emitting an event: one that goes to no endpoint is stored by a held write (no id read
back: a round trip per event on PostgreSQL), and still says whether it was new; one that
goes to endpoints is stored with its deliveries. Both databases."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from receiver.app import build_context, prepare_database
from receiver.context import AppContext
from receiver.outbox.downstream import emit, manage
from receiver.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture
async def ctx(make_settings: Callable[..., Settings]) -> AsyncIterator[AppContext]:
    context = build_context(make_settings(endpoint_allow_private=True))
    await prepare_database(context)
    try:
        yield context
    finally:
        await context.db.close()


async def emit_once(ctx: AppContext, dedupe_key: str) -> emit.Emitted | None:
    async with ctx.db.transaction() as tx:
        return await emit.emit(
            tx,
            event_type="signature_request.completed",
            request=None,
            data={"note": dedupe_key},
            dedupe_key=dedupe_key,
            now=ctx.clock(),
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
