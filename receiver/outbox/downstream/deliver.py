"""The ``signback.deliver`` operation: one signed POST of one event to one endpoint.

Run by the dispatcher like any outbox action (claim, lease, attempt log, retry policy), in
the endpoint's lane. What an answer means:

- 2xx: delivered;
- ``410 Gone``: the endpoint says it will never want deliveries again: it is disabled (a
  ``signback.endpoint.disabled`` event and a metric say so) and this delivery is dead;
- 429, or 503 with ``Retry-After``: it waits as asked, not counted as an attempt;
- anything else (3xx included: redirects are not followed), a timeout or no connection:
  retried with backoff and jitter (``Retry-After`` obeyed), then dead, the endpoint's
  answer (status and first bytes) in the attempt log.

An endpoint that keeps failing without a single success for
``SIGNBACK_ENDPOINT_DISABLE_AFTER_SECONDS`` is disabled the same way. A disabled endpoint's
deliveries are held (deferred, no attempt counted) until it is enabled again; a deleted
one's are skipped.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from receiver.context import AppContext
from receiver.logs import get_logger, redact_tokens
from receiver.outbox.downstream import delivery_of, manage, signing
from receiver.outbox.downstream import endpoints as endpoint_store
from receiver.outbox.downstream import events as event_store
from receiver.outbox.downstream.runtime import LiveEndpoint, downstream
from receiver.outbox.downstream.safety import UnsafeAddress, target_of
from receiver.outbox.downstream.secrets import SecretUnreadable
from receiver.outbox.outcomes import (
    Deferred,
    Done,
    Failed,
    GiveUp,
    Outcome,
    Skipped,
    Throttled,
    from_response,
)
from receiver.outbox.provider_http import HttpAnswer
from receiver.store.db.base import Row

log = get_logger("signback.downstream")

HOLD_SECONDS = 60.0  # a disabled endpoint's delivery comes back no sooner (enabling wakes it)
SUCCESS_WRITE_SECONDS = 1.0  # an endpoint's last success is written at most this often


def _describe(response: HttpAnswer) -> str:
    if 300 <= response.status_code < 400:
        location = response.headers.get("location") or "none"
        return f"redirect not followed (Location: {location[:200]})"
    return response.reason_phrase or "not a 2xx answer"


async def deliver(ctx: AppContext, row: Row) -> Outcome:
    """Send one delivery; never raises (what went wrong is in the Outcome)."""
    ids = delivery_of(str(row["payload"]))
    if ids is None:
        return GiveUp("malformed delivery: no event or endpoint")
    event_id, endpoint_id = ids
    runtime = downstream(ctx)
    try:
        endpoint = await runtime.endpoint(endpoint_id)
        event_row = row.get("event_row") or await event_store.get(ctx.db, event_id)
    except Exception as exc:  # nothing was sent: try again soon, without counting it
        return Deferred(1.0, f"database unavailable: {type(exc).__name__}")
    if endpoint is None:
        return Skipped("the endpoint was deleted")
    if endpoint.status != endpoint_store.EndpointStatus.ENABLED:
        return Deferred(HOLD_SECONDS, "the endpoint is disabled: held until it is enabled")
    if endpoint.unreadable:
        return GiveUp(SecretUnreadable().message)
    if event_row is None:
        return GiveUp(f"event {event_id} is not stored")
    return await _send(ctx, endpoint, event_row)


async def _send(ctx: AppContext, endpoint: LiveEndpoint, event_row: Row) -> Outcome:
    runtime = downstream(ctx)
    body = event_store.body_for(
        str(event_row["payload"]), event_row["raw"], include_raw=endpoint.include_raw
    )
    now = ctx.clock()
    headers = signing.headers(
        endpoint.keys(now),
        signing.message_id(str(event_row["public_id"]), endpoint.id),
        int(now),
        body,
    )
    try:
        response = await runtime.client(endpoint).request(
            "POST", target_of(urlsplit(endpoint.url)), content=body, extra_headers=headers
        )
    except UnsafeAddress as exc:
        return await _failed(ctx, endpoint, Failed(f"refused: {exc}"))
    except httpx.TimeoutException:
        timeout = ctx.settings.endpoint_timeout_seconds
        message = f"the endpoint did not answer within {timeout:g} s"
        return await _failed(ctx, endpoint, Failed(message))
    except httpx.TransportError as exc:
        message = f"could not reach the endpoint ({type(exc).__name__}: {exc})"
        return await _failed(ctx, endpoint, Failed(message[:300]))
    except Exception as exc:
        log.exception("delivery crashed", endpoint=endpoint.id)
        return Failed(f"internal error: {type(exc).__name__}: {exc}")
    outcome = from_response(response, now=ctx.clock(), message=_describe)
    if isinstance(outcome, Done):
        await _succeeded(ctx, endpoint)
        return outcome
    if response.status_code == 410:
        await manage.disable(
            ctx, endpoint.id, reason="the endpoint answered 410 Gone", cause="gone"
        )
        return GiveUp(
            "Gone: the endpoint is now disabled",
            status_code=410,
            response_excerpt=outcome.response_excerpt,
        )
    if isinstance(outcome, Throttled):
        return outcome  # the endpoint is alive, and asks us to slow down
    return await _failed(ctx, endpoint, outcome)


async def _succeeded(ctx: AppContext, endpoint: LiveEndpoint) -> None:
    runtime = downstream(ctx)
    now = ctx.clock()
    last = runtime.success_written.get(endpoint.id)
    if last is not None and now - last < SUCCESS_WRITE_SECONDS:
        return
    runtime.success_written[endpoint.id] = now
    try:
        await endpoint_store.mark_success(ctx.db, endpoint.id, now=now)
    except Exception as exc:  # bookkeeping only: the delivery itself went through
        runtime.success_written.pop(endpoint.id, None)
        log.warning("could not record an endpoint's success", endpoint=endpoint.id, error=str(exc))


async def _failed(ctx: AppContext, endpoint: LiveEndpoint, outcome: Failed) -> Failed:
    """Note the failure on the endpoint, and disable it if it has been failing, without a
    single success, for longer than the configured time."""
    runtime = downstream(ctx)
    runtime.success_written.pop(endpoint.id, None)  # the next success is written at once
    now = ctx.clock()
    what = (
        f"HTTP {outcome.status_code}: {outcome.message}" if outcome.status_code else outcome.message
    )
    what = redact_tokens(what)  # kept on the endpoint and shown: an error may quote a URL
    try:
        since = await endpoint_store.mark_failure(ctx.db, endpoint.id, text=what, now=now)
        limit = ctx.settings.endpoint_disable_after_seconds
        if since is not None and now - since >= limit:
            await manage.disable(
                ctx,
                endpoint.id,
                reason=f"no successful delivery for {int(now - since)} s (limit {limit:g} s);"
                f" last: {what}",
                cause="failing",
            )
    except Exception as exc:  # bookkeeping only: the outcome stands
        log.warning("could not record an endpoint's failure", endpoint=endpoint.id, error=str(exc))
    return outcome
