"""The pipeline's failure paths, on both databases (receiver/pipeline/processor.py).

Several inbox rows share one transaction, on both databases (redone one row per transaction
if any fails). Either way a row that cannot be normalized is
parked as failed, a row whose processing raises goes back for a retry with its error, and the
good rows around them are processed: one bad row never takes its neighbours down.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from receiver.app import build_context, prepare_database
from receiver.context import AppContext
from receiver.events import NormalizedEvent
from receiver.model import Action, SignatureRequest
from receiver.pipeline.processor import MAX_PROCESSING_ATTEMPTS, Pipeline
from receiver.pipeline.registration import Registration, register
from receiver.settings import Settings
from receiver.store import inbox
from receiver.store.statuses import InboxStatus

pytestmark = pytest.mark.anyio


@pytest.fixture
async def ctx(make_settings: Callable[..., Settings]) -> AsyncIterator[AppContext]:
    context = build_context(make_settings())
    await prepare_database(context)
    try:
        yield context
    finally:
        await context.db.close()


async def put(ctx: AppContext, key: str, *, provider: str = "okdokument", **fields: Any) -> None:
    row = inbox.insert_params(
        provider=provider,
        channel="sendinfo",
        dedupe_key=key,
        received_at=ctx.clock(),
        body=b'{"state": "signed", "signatureRequestId": "sr-1", "id": "doc-1"}',
        headers={},
        query="",
        request_id=fields.get("request_id"),
        external_id="sr-1",
    )
    assert await ctx.db.insert_new(inbox.NEW_CALLBACK, row, inbox.INBOX_CHANNEL)


async def statuses(ctx: AppContext) -> dict[str, tuple[str, str | None]]:
    rows = await ctx.db.fetch_all("SELECT dedupe_key, status, error FROM inbox")
    return {str(r["dedupe_key"]): (str(r["status"]), r["error"]) for r in rows}


async def test_bad_rows_do_not_take_their_neighbours_down(
    ctx: AppContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    registered = await register(
        ctx, Registration(provider="okdokument", external_id="sr-1", document_id="doc-1")
    )
    request_id = registered.request.id
    real_actions_for = ctx.rules.actions_for

    def actions_for(event: NormalizedEvent, request: SignatureRequest) -> list[Action]:
        if event.raw.get("boom"):
            raise RuntimeError("a rule failed")
        return real_actions_for(event, request)

    monkeypatch.setattr(ctx.rules, "actions_for", actions_for)
    await ctx.db.execute("DELETE FROM inbox")  # the registration's own timeline entry
    await put(ctx, "good-1", request_id=request_id)
    await put(ctx, "unknown-provider", provider="nobody", request_id=request_id)
    await put(ctx, "good-2", request_id=request_id)
    row = inbox.insert_params(
        provider="okdokument",
        channel="sendinfo",
        dedupe_key="rule-raises",
        received_at=ctx.clock(),
        body=b'{"state": "tosign", "signatureRequestId": "sr-1", "id": "doc-1", "boom": 1}',
        headers={},
        query="",
        request_id=request_id,
        external_id="sr-1",
    )
    assert await ctx.db.insert_new(inbox.NEW_CALLBACK, row, inbox.INBOX_CHANNEL)
    await put(ctx, "good-3", request_id=request_id)

    assert await Pipeline(ctx).run_once() == 5

    seen = await statuses(ctx)
    assert seen["good-1"][0] == seen["good-2"][0] == seen["good-3"][0] == InboxStatus.PROCESSED
    assert seen["unknown-provider"] == (
        InboxStatus.FAILED,
        "normalize failed: no provider named 'nobody' is installed",
    )
    status, error = seen["rule-raises"]
    assert status == InboxStatus.PENDING  # back for another try, with the reason kept
    assert error == "RuntimeError: a rule failed"

    # It keeps failing: after MAX_PROCESSING_ATTEMPTS it is parked as failed, visible.
    for _ in range(MAX_PROCESSING_ATTEMPTS):
        await Pipeline(ctx).run_once()
    assert (await statuses(ctx))["rule-raises"] == (
        InboxStatus.FAILED,
        "RuntimeError: a rule failed",
    )
