"""The outbox action ``<provider>.reconcile``: one read of one request's real state.

It runs like every provider call (receiver/outbox/dispatcher.py): in the provider's lane,
under its retry policy, with its attempt log; the provider's read takes a slot of the read
budget its other operations share, and a 429 waits without counting as an attempt. What
the read found is not acted on here: it is fed back to the inbox as a finding (channel
``reconcile``, the provider's raw answer as the body), and the pipeline takes it from there
exactly as it takes a callback: the provider's ``normalize``, the monotonic state machine,
the rules, the downstream event (``"source": "reconcile"``).

A finding's dedupe key is the request and the state found: reading the same state again is a
duplicate, stored once; a new state is a new finding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from receiver.model import SignatureRequest
from receiver.outbox.outcomes import Done, FollowUpEvent, Outcome, Skipped
from receiver.pipeline import states
from receiver.providers.contract import Operation, Provider, Reading, ReconcileRead

if TYPE_CHECKING:
    from receiver.context import AppContext

CHANNEL = "reconcile"
VERB = "reconcile"
_STATE_CHARS = 120  # of a state word in a dedupe key (the key holds 200)


def operation_name(provider: str) -> str:
    return f"{provider}.{VERB}"


def dedupe_key(request_id: int, state: str) -> str:
    """The finding's key: the same state of the same request is one finding."""
    if len(state) > _STATE_CHARS or not state.isprintable():
        state = "sha256:" + hashlib.sha256(state.encode("utf-8", "surrogatepass")).hexdigest()
    return f"reconcile:{request_id}:{state}"


def finding(provider: str, request: SignatureRequest, reading: Reading) -> FollowUpEvent:
    """What a read found, as the inbox row it becomes."""
    return FollowUpEvent(
        provider=provider,
        channel=CHANNEL,
        body=reading.body,
        dedupe_key=dedupe_key(request.id, reading.state),
        request_id=request.id,
    )


def as_operation(provider: str, read: ReconcileRead) -> Operation:
    """The outbox operation around a provider's read."""

    async def reconcile(
        ctx: AppContext, request: SignatureRequest, payload: Mapping[str, Any]
    ) -> Outcome:
        if states.is_terminal(request.state):
            return Skipped(f"not read: the request already ended as {request.state.value}")
        result = await read(ctx, request)
        if not isinstance(result, Reading):
            return result
        return Done(
            status_code=result.status_code,
            response_excerpt=result.body[:500].decode("utf-8", "replace"),
            follow_up=[finding(provider, request, result)],
        )

    return reconcile


def find(provider: Provider, name: str) -> Operation | None:
    """The provider's reconcile operation when ``name`` names it (the core adds it to each
    provider that can be read)."""
    if provider.reconcile is None or name != operation_name(provider.name):
        return None
    return as_operation(provider.name, provider.reconcile)
