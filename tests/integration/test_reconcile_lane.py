"""The reconciler's reads never hold up a request's other provider calls.

Hundreds of OKdokument requests come due for a read at once (after a downtime, or all
registered together), far more than the read budget serves: the reads wait for slots.
A PATCH a rule queues meanwhile for one of those requests goes out at once; it does not
wait for that request's read, nor for the reads' places in flight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from handlers.okdokument.fake import DEFAULT_API_KEY, FakeOkdokument
from receiver.app import build_context, prepare_database
from receiver.context import AppContext
from receiver.model import Action
from receiver.pipeline.registration import Registration, register
from receiver.settings import Settings
from receiver.store import outbox
from receiver.worker import Worker
from tests.harness import running_okdokument

REQUESTS = 200
PATCH = "okdokument.patch_signature_request"


async def until(what: str, done: Callable[[], Awaitable[Any]], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := await done()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)
    return found


async def pending(ctx: AppContext, lane: str) -> int:
    row = await ctx.db.fetch_one(
        "SELECT COUNT(*) AS n FROM outbox WHERE lane = :lane AND operation <> :patch"
        " AND status IN ('pending', 'in_flight')",
        {"lane": lane, "patch": PATCH},
    )
    return 0 if row is None else int(row["n"])


async def a_deferred_read(ctx: AppContext) -> int | None:
    """The request of a read that waits for a slot of the read budget (put back, due later)."""
    row = await ctx.db.fetch_one(
        "SELECT request_id FROM outbox WHERE operation = 'okdokument.reconcile'"
        " AND status = 'pending' AND due_at > :now ORDER BY id DESC LIMIT 1",
        {"now": ctx.clock() + 1.0},
    )
    return None if row is None else int(row["request_id"])


async def action_status(ctx: AppContext, request_id: int, key: str) -> str:
    row = await ctx.db.fetch_one(
        "SELECT status FROM outbox WHERE request_id = :id AND action_key = :key",
        {"id": request_id, "key": key},
    )
    return "" if row is None else str(row["status"])


def seed(fake: FakeOkdokument, count: int) -> None:
    for i in range(count):
        doc = fake.new_document("contract.pdf", b"%PDF-1.4", document_id=f"doc-{i}")
        fake.new_round(doc, signature_request_id=f"sr-{i}", send_info_url=None, result_url=None)


@pytest.mark.anyio
async def test_a_patch_goes_out_while_hundreds_of_reads_wait_for_the_budget(
    make_settings: Callable[..., Settings],
) -> None:
    with running_okdokument() as (okd_url, okd):
        seed(okd, REQUESTS)
        ctx = build_context(
            make_settings(
                okdokument_base_url=okd_url,
                okdokument_api_key=DEFAULT_API_KEY,
                okdokument_reads_per_minute=1.0,  # far below 200 reads: one, then a minute
                reconcile_enabled=True,
                reconcile_first_delay_seconds=3600.0,  # only the "due now" below
                reconcile_tick_seconds=0.05,
                reconcile_batch_size=50,
                poll_interval=0.05,
            )
        )
        await prepare_database(ctx, serving=False)
        await ctx.start_providers()
        made = [
            await register(ctx, Registration("okdokument", f"sr-{i}", document_id=f"doc-{i}"))
            for i in range(REQUESTS)
        ]
        worker = Worker(ctx)
        task = asyncio.create_task(worker.run())
        try:
            await until("the registrations' PATCHes", lambda: _settled(ctx), timeout=60)
            await ctx.db.execute(
                "UPDATE signature_requests SET next_reconcile_at = :now", {"now": ctx.clock()}
            )
            request_id = await until("a read put back", lambda: a_deferred_read(ctx), timeout=30)
            async with ctx.db.transaction() as tx:
                await outbox.insert_actions(
                    tx,
                    request_id,
                    [Action(PATCH, {"resulturl": "https://shop.example/later"}, key="later")],
                    now=ctx.clock(),
                    source_inbox_id=None,
                )
            queued_at = time.monotonic()
            await until(
                "the PATCH sent",
                lambda: _is(action_status(ctx, request_id, "later"), "done"),
                timeout=10,
            )
            waited = time.monotonic() - queued_at
            reads_waiting = await pending(ctx, outbox.RECONCILE_LANE)
        finally:
            worker.stopping.set()
            await ctx.db.notify("inbox")
            await task
            await ctx.close()
            await ctx.db.close()
    assert waited < 10
    # The reads were still waiting for the budget: the PATCH did not go after them.
    assert reads_waiting >= 40
    reads = [c for c in okd.calls if c.method == "GET"]
    assert len(reads) <= 2  # one slot at once, and at most one more a minute
    patched = [c for c in okd.calls if c.method == "PATCH" and c.body.get("resulturl")]
    assert [c.body["signatureRequestId"] for c in patched][-1] == next(
        m.request.external_id for m in made if m.request.id == request_id
    )


async def _settled(ctx: AppContext) -> bool:
    row = await ctx.db.fetch_one(
        "SELECT COUNT(*) AS n FROM outbox WHERE status IN ('pending', 'in_flight')"
    )
    return row is not None and int(row["n"]) == 0


async def _is(value: Awaitable[str], expected: str) -> bool:
    return await value == expected
