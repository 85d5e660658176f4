"""The intake's shared steps, around every provider's hooks.

A provider declares its callback routes (:class:`~receiver.providers.contract.HookSpec`):
the path, the channel, the media types it accepts, its acknowledgement and a ``verify``
function. Everything else is done here, once, for all of them, in this order:

1. POST only: 405 (receiver/intake/router.py, before this handler runs);
2. a ``{hook_token}`` route: the request whose hook token it is (404 unknown, or of another
   provider; 503 when the database cannot say); another ``{name}``: the provider's
   ``resolve`` (e.g. 404 for an unknown workspace);
3. the media type: 415;
4. the body, bounded: 413 (400 for a Content-Length that is no number);
5. ``verify`` (signature, parsing, checks against the request): its CallbackRejected;
6. the inbox row, committed: then the provider's acknowledgement (or 503: retry);

with the refusal's log line and the callback metrics. Nothing here allocates or awaits more
per callback than a provider's own handler did before: the answers are encoded once, and
log facts are merged only for a line that is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from receiver.context import AppContext
from receiver.errors import CallbackRejected
from receiver.intake.ack import rejected, store
from receiver.intake.credentials import find_by_hook_token
from receiver.intake.router import Answer, Callback, Hook, HookHandler
from receiver.logs import debug_enabled, get_logger
from receiver.providers.contract import HOOK_TOKEN, Accepted, HookSpec

log = get_logger("signback.intake")

MAX_QUERY = 4096
UNKNOWN_URL = Answer.error(404, "unknown callback URL")
UNKNOWN_URL_REFUSAL = CallbackRejected("unknown callback URL (no request has this token)", 404)
STORE_FAILED = "temporarily unable to store the callback; please retry"


def router_hooks(ctx: AppContext, provider: str, specs: Sequence[HookSpec]) -> list[Hook]:
    """The router's routes for a provider's hooks."""
    return [Hook(spec.path, handler(ctx, provider, spec)) for spec in specs]


def handler(ctx: AppContext, provider: str, spec: HookSpec) -> HookHandler:
    """One hook's handler: the shared steps around ``spec.verify``."""
    limit = ctx.settings.max_body_bytes
    channel = spec.channel
    media = spec.media_types
    verify = spec.verify
    ack = spec.ack
    token_route = spec.parameter == HOOK_TOKEN
    resolve = spec.resolve if not token_route else None
    keep_query = spec.keep_query
    refusal_facts = spec.refusal_facts
    count = ctx.metrics.callbacks.inc
    note = ctx.rejections.record  # the rejection log: an append, written later in a batch
    # Time spent waiting for the database or the client is not spent on the loop
    # (loadshare.py).
    waiting, resumed = ctx.intake_load.waiting, ctx.intake_load.resumed

    async def handle(call: Callback) -> Answer:
        found: Any = None
        request: int | None = None
        if token_route:
            waiting()
            try:
                found = await find_by_hook_token(ctx, call.param or "")
            except CallbackRejected as exc:
                note(exc, provider=provider, call=call)
                return rejected(exc, provider=provider, channel=channel)
            finally:
                resumed()
            if found is None or found["provider"] != provider:
                log.warning(
                    "callback to an unknown URL", provider=provider, channel=channel, status=404
                )
                note(UNKNOWN_URL_REFUSAL, provider=provider, call=call)
                return UNKNOWN_URL
            request = int(found["id"])
        elif resolve is not None:
            try:
                found = resolve(call.param or "")
            except CallbackRejected as exc:
                note(exc, provider=provider, call=call)
                return rejected(exc, provider=provider, channel=channel)
        body: bytes | None = None
        try:
            problem = media.problem(call.headers.get("content-type"))
            if problem is not None:
                raise CallbackRejected(problem, 415)
            waiting()  # for the client to send the rest of its body, if it has not
            try:
                body = await call.read_body(limit)
            finally:
                resumed()
            accepted = verify(call, body, found)
        except CallbackRejected as exc:
            note(exc, provider=provider, call=call, body=body)
            facts: dict[str, Any] = {} if request is None else {"request": request}
            if refusal_facts is not None:
                facts.update(refusal_facts(call))
            return rejected(exc, provider=provider, channel=channel, **facts)
        waiting()
        try:
            new = await store(
                ctx,
                provider=provider,
                channel=channel,
                dedupe_key=accepted.dedupe_key,
                body=body,
                headers=call.headers,
                query=call.query[:MAX_QUERY] if keep_query else "",
                request_id=request if accepted.request_id is None else accepted.request_id,
                external_id=accepted.external_id,
            )
        except CallbackRejected as exc:  # a value the inbox cannot hold: nothing was written
            note(exc, provider=provider, call=call, body=body)
            return rejected(exc, provider=provider, channel=channel, **accepted.log_facts)
        except Exception as exc:  # only what is committed is acknowledged: the provider retries
            count(provider, channel, "503")
            log.error(
                "could not store callback",
                error=f"{type(exc).__name__}: {exc}",
                provider=provider,
                channel=channel,
                **accepted.log_facts,
            )
            return Answer.error(503, STORE_FAILED)
        finally:
            resumed()
        count(provider, channel, "accepted" if new else "duplicate")
        _log_stored(new, provider, channel, accepted)
        return ack.accepted if new else ack.duplicate

    return handle


def _log_stored(new: bool, provider: str, channel: str, accepted: Accepted) -> None:
    facts: Mapping[str, Any] = accepted.log_facts
    try:
        if new:
            # At INFO each callback is logged once, by the pipeline ("event processed", with
            # what it did); a line here too costs a sixth of the intake's CPU.
            if debug_enabled():
                log.debug("callback stored", provider=provider, channel=channel, **facts)
        else:
            log.info("duplicate callback ignored", provider=provider, channel=channel, **facts)
    except Exception:  # the callback is committed: a logging mistake must not turn it into a 500
        log.exception("could not log a stored callback")
