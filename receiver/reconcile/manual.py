"""``signback reconcile``: read open requests now, with the code the outbox runs.

Each request is read by its provider's ``<provider>.reconcile`` operation (the same
function the dispatcher calls, so the same read budget, shared with every running worker
through the database). A read waiting for a budget slot, or throttled by the provider, is
waited for here (the command is run by a person who wants the answer). What it finds is
stored in the inbox like the outbox's finding (same channel, same dedupe key) and processed
by the pipeline before the command answers, so the answer says where each request ended up.
With ``dry_run`` nothing is stored: the answer says what the finding would do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import httpx

from receiver.errors import InvalidAction
from receiver.model import SignatureRequest
from receiver.outbox.outcomes import (
    Deferred,
    Done,
    Failed,
    FollowUpEvent,
    Outcome,
    Skipped,
    Throttled,
)
from receiver.pipeline import states
from receiver.pipeline.processor import Pipeline
from receiver.providers.contract import StoredCallback
from receiver.reconcile.operation import CHANNEL, as_operation
from receiver.reconcile.scheduler import readable
from receiver.store import inbox, requests
from receiver.store import reconcile as store
from receiver.store.statuses import InboxStatus

if TYPE_CHECKING:
    from receiver.context import AppContext

PAGE = 200
MAX_WAITS = 20  # budget deferrals and 429s waited out per request before giving up
LONGEST_WAIT = 60.0


@dataclass
class Result:
    """One request's read, as the command prints it."""

    request: int
    provider: str
    external_id: str
    state_before: str
    # found (a new finding) | duplicate (the state was found before) | skipped | failed
    outcome: str = ""
    found: str | None = None  # the provider's state, in its words
    kind: str | None = None  # the normalized kind of the finding
    state_after: str | None = None  # where the request is now (dry run: would be)
    message: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class UnknownRequest(LookupError):
    """No request with this id, or its provider cannot be read."""


async def _read(
    ctx: AppContext,
    request: SignatureRequest,
    sleep: Callable[[float], Awaitable[None]],
) -> Outcome:
    provider = ctx.providers[request.provider]
    assert provider.reconcile is not None
    operation = as_operation(provider.name, provider.reconcile)
    for _ in range(MAX_WAITS):
        try:
            outcome = await operation(ctx, request, {"reason": "manual"})
        except InvalidAction as exc:
            return Failed(str(exc))
        except httpx.TransportError as exc:
            return Failed(f"could not reach the provider ({type(exc).__name__})")
        if isinstance(outcome, Deferred):
            await sleep(min(LONGEST_WAIT, max(0.01, outcome.retry_after)))
            continue
        if isinstance(outcome, Throttled):
            await sleep(min(LONGEST_WAIT, max(0.01, outcome.retry_after or 1.0)))
            continue
        return outcome
    return Failed("the provider's read budget had no slot in time; try again later")


async def reconcile_now(
    ctx: AppContext,
    *,
    request_id: int | None = None,
    provider: str | None = None,
    dry_run: bool = False,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> list[Result]:
    """Read the open requests (of ``provider``), or the one request asked for."""
    names = [p.name for p in readable(ctx) if provider is None or p.name == provider]
    results: list[Result] = []
    findings: list[tuple[Result, bool]] = []
    after = 0
    while True:
        rows = await store.open_requests(
            ctx.db, providers=names, request_id=request_id, after_id=after, limit=PAGE
        )
        if request_id is not None and not rows:
            raise UnknownRequest(f"no request {request_id} of a provider that can be read")
        for row in rows:
            request = requests.from_row(row)
            result = Result(request.id, request.provider, request.external_id, request.state)
            results.append(result)
            outcome = await _read(ctx, request, sleep)
            if not isinstance(outcome, Done) or not outcome.follow_up:
                result.outcome = "skipped" if isinstance(outcome, Skipped) else "failed"
                result.message = outcome.message
                continue
            finding = outcome.follow_up[0]
            stored = await _found(ctx, request, finding, result, dry_run=dry_run)
            findings.append((result, stored))
        if request_id is not None or len(rows) < PAGE:
            break
        after = int(rows[-1]["id"])
    if not dry_run and any(stored for _, stored in findings):
        pipeline = Pipeline(ctx)
        while await pipeline.run_once():
            pass
        # A running service's worker may have claimed some of them first: what they did
        # is only known once it has settled them.
        await _settled(ctx, [r.request for r, stored in findings if stored], sleep)
    if not dry_run:
        for result, _ in findings:
            now_row = await requests.get(ctx.db, result.request)
            result.state_after = None if now_row is None else str(now_row["state"])
    return results


SETTLE_TIMEOUT_SECONDS = 30.0


async def _settled(
    ctx: AppContext, request_ids: list[int], sleep: Callable[[float], Awaitable[None]]
) -> None:
    """Wait (bounded) until no finding of these requests waits for the pipeline."""
    waited = 0.0
    while request_ids and waited < SETTLE_TIMEOUT_SECONDS:
        row = await ctx.db.fetch_one(
            "SELECT COUNT(*) AS n FROM inbox WHERE channel = :channel AND status IN"
            f" ('{InboxStatus.PENDING.value}', '{InboxStatus.PROCESSING.value}')"
            f" AND request_id IN ({', '.join(str(int(i)) for i in request_ids)})",
            {"channel": CHANNEL},
        )
        if row is None or int(row["n"]) == 0:
            return
        await sleep(0.05)
        waited += 0.05


async def _found(
    ctx: AppContext,
    request: SignatureRequest,
    finding: FollowUpEvent,
    result: Result,
    *,
    dry_run: bool,
) -> bool:
    """Normalize the finding (to say what it is), then store it unless ``dry_run``. Whether
    it was stored (False: a duplicate, or a dry run)."""
    provider = ctx.providers[request.provider]
    now = ctx.clock()
    event = provider.normalize(
        StoredCallback(
            inbox_id=0,
            provider=request.provider,
            channel=CHANNEL,
            body=finding.body,
            headers={},
            query="",
            request_id=request.id,
            received_at=now,
        )
    )
    result.kind = event.kind.value
    result.found = finding.dedupe_key.split(":", 2)[2]  # reconcile:<request>:<state>
    transition = states.apply(request.state, event.kind, confirmed=event.confirmed)
    if dry_run:
        result.outcome = "found"
        result.state_after = transition.after.value
        result.message = "dry run: " + transition.note
        return False
    async with ctx.db.transaction() as tx:
        stored = await inbox.insert_fed_back(tx, finding, now=now)
    result.outcome = "found" if stored else "duplicate"
    result.message = transition.note if stored else "this state was found before"
    return stored


def exit_code(results: list[Result]) -> int:
    """0: every request was read (or had nothing to read); 1: some read failed."""
    return 1 if any(r.outcome == "failed" for r in results) else 0


__all__ = ["Result", "UnknownRequest", "exit_code", "reconcile_now"]
