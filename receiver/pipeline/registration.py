"""Registering a signature request: one transaction stores it, runs the registration rules
(e.g. pointing the provider's callback URLs at signback) and re-queues any events that
arrived for it before it was registered."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from receiver.context import AppContext, CallbackUrls
from receiver.errors import SignbackError
from receiver.events import EventKind, NormalizedEvent
from receiver.intake.tokens import new_nonce, token_hash
from receiver.jsonutil import dumps
from receiver.logs import get_logger
from receiver.model import SignatureRequest
from receiver.reconcile.scheduler import first_read
from receiver.store import inbox, outbox, requests

log = get_logger("signback.registration")


@dataclass(frozen=True)
class Registration:
    provider: str
    external_id: str
    document_id: str | None = None
    reference: str | None = None
    return_url: str | None = None
    retry_url: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)


class RegistrationRefused(SignbackError):
    """The registration is incomplete for its provider; ``fields`` says what is missing."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.fields = [{"field": name, "message": message} for name, message in problems]
        super().__init__("; ".join(f"{name}: {message}" for name, message in problems))


def registration_problems(ctx: AppContext, data: Registration) -> list[tuple[str, str]]:
    """(field, message) for each thing the request's provider needs and did not get."""
    provider = ctx.providers.get(data.provider)
    if provider is None or provider.check_registration is None:
        return []
    return list(provider.check_registration(data))


@dataclass(frozen=True)
class Registered:
    request: SignatureRequest
    urls: CallbackUrls
    created: bool  # False: it was registered before (the stored one is returned)
    requeued_events: int = 0
    actions: int = 0


def _schedule(ctx: AppContext, provider: str, now: float) -> dict[str, float | None]:
    """The first read of the request's reconciliation schedule (receiver/reconcile/)."""
    first = first_read(ctx, provider, now)
    return {
        "next_reconcile_at": None if first is None else first[0],
        "reconcile_interval": None if first is None else first[1],
    }


async def register(ctx: AppContext, data: Registration) -> Registered:
    """Store the request (or find it registered already). Raises RegistrationRefused, before
    anything is stored, when its provider needs more (every caller gets the same rules)."""
    if problems := registration_problems(ctx, data):
        log.info(
            "registration refused",
            provider=data.provider,
            fields=[name for name, _ in problems],
            reason="; ".join(message for _, message in problems),
        )
        raise RegistrationRefused(problems)
    now = ctx.clock()
    nonce = new_nonce()
    async with ctx.db.transaction() as tx:
        # Taken before the insert; the pipeline takes it before matching: so an event for this
        # request is either matched after we commit, or already 'unmatched' for our re-queue.
        await tx.lock_key(requests.match_key(data.provider, data.external_id))
        row = await requests.insert(
            tx,
            provider=data.provider,
            external_id=data.external_id,
            document_id=data.document_id,
            reference=data.reference,
            return_url=data.return_url,
            retry_url=data.retry_url,
            metadata=data.metadata,
            defaults=data.defaults,
            token_hash=token_hash(ctx.return_token(nonce)),
            hook_hash=token_hash(ctx.hook_token(nonce)),
            token_nonce=nonce,
            now=now,
            **_schedule(ctx, data.provider, now),
        )
        if row is None:
            existing = await requests.by_external_id(tx, data.provider, data.external_id)
            assert existing is not None
            request = requests.from_row(existing)
            urls = ctx.callback_urls(request.provider, str(existing["token_nonce"]))
            return Registered(request, urls, created=False)
        request = requests.from_row(row)
        event = NormalizedEvent(
            provider=request.provider,
            kind=EventKind.REQUEST_REGISTERED,
            provider_type="signback.registered",
            external_id=request.external_id,
            event_id=f"registered-{request.id}",
            occurred_at=now,
        )
        actions = ctx.rules.actions_for(event, request)
        queued = await outbox.insert_actions(tx, request.id, actions, now=now, source_inbox_id=None)
        # The registration is the first line of the request's timeline.
        await tx.execute(
            "INSERT INTO inbox (provider, channel, dedupe_key, received_at, body, headers, query,"
            " request_id, external_id, status, attempts, kind, provider_type, event_id,"
            " occurred_at, state_after, note, processed_at) VALUES (:provider, 'signback',"
            " :key, :now, :body, '{}', '', :request_id, :external_id, 'processed', 0, :kind,"
            " 'signback.registered', :event_id, :now, 'registered', :note, :now)",
            {
                "provider": request.provider,
                "key": f"registered:{request.id}",
                "now": now,
                "body": dumps({"reference": request.reference}).encode(),
                "request_id": request.id,
                "external_id": request.external_id,
                "kind": EventKind.REQUEST_REGISTERED.value,
                "event_id": event.event_id,
                "note": f"registered; {queued} action(s) queued",
            },
        )
        requeued = await inbox.requeue_unmatched(
            tx, provider=request.provider, external_id=request.external_id
        )
    urls = ctx.callback_urls(request.provider, nonce)
    log.info(
        "request registered",
        request=request.id,
        provider=request.provider,
        reference=request.reference,
        actions=queued,
        requeued_events=requeued,
    )
    return Registered(request, urls, created=True, requeued_events=requeued, actions=queued)
