"""Emission and fan-out: store an event and queue its deliveries, in the caller's transaction.

Everything here runs inside the transaction that records the fact (the pipeline's state
change, the dispatcher's dead action, an endpoint being disabled): an event is queued if and
only if that transaction commits, so none is lost and none is sent for a change that rolled
back. The endpoints are read in that same transaction (a handful of rows; no cache that
could miss an endpoint created a moment ago).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from receiver.events import NormalizedEvent
from receiver.model import SignatureRequest
from receiver.outbox.downstream import DELIVER_OPERATION, catalogue, lane_of
from receiver.outbox.downstream import endpoints as endpoint_store
from receiver.outbox.downstream import events as event_store
from receiver.pipeline.states import Transition
from receiver.providers import StoredCallback
from receiver.store.db.base import BatchedWrite, Later, Params, Row, Transaction, json_rows
from receiver.store.outbox import OUTBOX_CHANNEL

if TYPE_CHECKING:
    from receiver.outbox.downstream.endpoints import Endpoint


@dataclass(frozen=True, slots=True)
class Emitted:
    event_id: int | None  # None: stored by a held write (it went to no endpoint)
    public_id: str
    event_type: str
    deliveries: int
    held: Later | None = None  # that held write: whether the event was new, once sent

    @property
    def new(self) -> bool:
        """The event was stored now (not before, under its dedupe key). For a held write,
        known only once the transaction's writes were sent."""
        return self.held is None or self.held.rowcount > 0


def request_data(request: SignatureRequest, *, previous_state: str | None) -> dict[str, Any]:
    return {
        "id": request.id,
        "provider": request.provider,
        "external_id": request.external_id,
        "reference": request.reference,
        "state": request.state.value,
        "previous_state": previous_state,
        "metadata": dict(request.metadata),
    }


def _matches(filters: Row, event_type: str, provider: str | None) -> bool:
    kinds = endpoint_store.strings(filters["kinds"])
    providers = endpoint_store.strings(filters["providers"])
    if not catalogue.wanted(event_type, kinds):
        return False
    return provider is None or not providers or provider in providers


async def emit(
    tx: Transaction,
    *,
    event_type: str,
    request: SignatureRequest | None,
    data: Mapping[str, Any],
    dedupe_key: str,
    now: float,
    raw: Mapping[str, Any] | None = None,
    source_inbox_id: int | None = None,
    to_endpoints: Sequence[int] | None = None,
    hold: bool = False,
) -> Emitted | None:
    """Store the event and queue one delivery per enabled endpoint that wants it (or to
    ``to_endpoints`` only, whatever their filters). None if this dedupe key was stored
    before: the event and its deliveries exist already.

    An event that goes to no endpoint (none registered, or none wants it) is stored by a
    held write: nothing needs its id, and reading it back was a round trip per event on
    PostgreSQL. Its :class:`Emitted` then says whether it was new once the writes went.
    With ``hold`` (the caller needs no event id) so is one that goes to endpoints, with
    its deliveries: one statement for all of a pipeline chunk's, where reading each id back
    and then queueing its deliveries had been two round trips per event or more."""
    public_id = event_store.new_public_id()
    provider = None if request is None else request.provider
    if to_endpoints is None:
        targets = [
            int(f["id"])
            for f in await endpoint_store.enabled_filters(tx)
            if _matches(f, event_type, provider)
        ]
    else:
        targets = list(to_endpoints)
    row = event_store.row_params(
        public_id=public_id,
        event_type=event_type,
        request_id=None if request is None else request.id,
        provider=provider,
        timestamp=now,
        payload=event_store.document(event_type, public_id, now, data),
        raw=raw,
        dedupe_key=dedupe_key,
        source_inbox_id=source_inbox_id,
        now=now,
    )
    if not targets:
        held = await event_store.insert_later(tx, row)
        return Emitted(None, public_id, event_type, 0, held)
    if hold:
        held = await tx.execute_batched_later(
            _EMIT_WITH_DELIVERIES,
            {**row, "targets": [{"endpoint": e, "lane": lane_of(e)} for e in targets]},
        )
        tx.notify_on_commit(OUTBOX_CHANNEL)  # for nothing if the event was stored before
        return Emitted(None, public_id, event_type, len(targets), held)
    event_id = await event_store.insert(tx, row)
    if event_id is None:
        return None
    queued = await queue_deliveries(
        tx,
        event_id=event_id,
        request_id=None if request is None else request.id,
        endpoint_ids=targets,
        key_suffix="",
        source_inbox_id=source_inbox_id,
        now=now,
    )
    return Emitted(event_id, public_id, event_type, queued)


async def queue_deliveries(
    tx: Transaction,
    *,
    event_id: int,
    request_id: int | None,
    endpoint_ids: Sequence[int],
    key_suffix: str,
    source_inbox_id: int | None,
    now: float,
) -> int:
    """One ``signback.deliver`` action per endpoint, in that endpoint's lane. The key makes
    the first delivery of an event to an endpoint unique; a replay adds a suffix of its own
    (it is a new action, with the same ``webhook-id``)."""
    queued = 0
    for endpoint_id in endpoint_ids:
        queued += await tx.execute(
            "INSERT INTO outbox (request_id, lane, action_key, operation, payload, status,"
            " due_at, attempts, source_inbox_id, created_at, updated_at) VALUES (:request_id,"
            " :lane, :key, :operation, :payload, 'pending', :now, 0, :source, :now, :now)"
            " ON CONFLICT DO NOTHING",
            {
                "request_id": request_id,
                "lane": lane_of(endpoint_id),
                "key": f"deliver:{event_id}:{endpoint_id}{key_suffix}",
                "operation": DELIVER_OPERATION,
                "payload": f'{{"endpoint":{endpoint_id},"event":{event_id}}}',
                "source": source_inbox_id,
                "now": now,
            },
        )
    if queued:
        tx.notify_on_commit(OUTBOX_CHANNEL)
    return queued


# Events that go to endpoints, each with its deliveries (one per endpoint, keyed by the new
# event's id as queue_deliveries keys them), in one statement on PostgreSQL; returns the
# dedupe keys of the events that were new. An event stored before queues nothing again.
# Independent: the rest of a chunk's held writes are other events and other actions.
_EMIT_SQL = (
    f"WITH r AS (SELECT * FROM {json_rows(event_store.ROW_COLUMNS + ', targets json')}),"
    f" e AS ({event_store.INSERT_ROWS_SQL} RETURNING id, dedupe_key),"
    " d AS (INSERT INTO outbox (request_id, lane, action_key, operation, payload, status,"
    " due_at, attempts, source_inbox_id, created_at, updated_at)"
    " SELECT r.request_id, t.lane, 'deliver:' || e.id || ':' || t.endpoint,"
    f" '{DELIVER_OPERATION}',"
    """ '{"endpoint":' || t.endpoint || ',"event":' || e.id || '}',"""
    " 'pending', r.now, 0, r.source, r.now, r.now"
    " FROM e JOIN r ON r.dedupe_key = e.dedupe_key CROSS JOIN LATERAL"
    " ROWS FROM (json_to_recordset(r.targets) AS (endpoint bigint, lane text))"
    " WITH ORDINALITY AS t(endpoint, lane, m)"
    " ORDER BY r.n, t.m ON CONFLICT DO NOTHING)"
    " SELECT dedupe_key FROM e"
)


async def _emit_one(tx: Transaction, params: Params) -> int:
    """The same by plain statements (other databases): 1 if the event was new."""
    row = {key: value for key, value in params.items() if key != "targets"}
    event_id = await event_store.insert(tx, row)
    if event_id is None:
        return 0
    await queue_deliveries(
        tx,
        event_id=event_id,
        request_id=row["request_id"],
        endpoint_ids=[int(target["endpoint"]) for target in params["targets"]],
        key_suffix="",
        source_inbox_id=row["source"],
        now=row["now"],
    )
    return 1


_EMIT_WITH_DELIVERIES = BatchedWrite(_EMIT_SQL, ("dedupe_key",), _emit_one, independent=True)


async def for_processed_event(
    tx: Transaction,
    *,
    callback: StoredCallback,
    event: NormalizedEvent,
    request: SignatureRequest,
    transition: Transition,
    now: float,
) -> Emitted | None:
    """What the pipeline's processing of one inbox row emits (``request``: as it is now)."""
    event_type = catalogue.type_for(
        event.kind, before=transition.before, after=transition.after, confirmed=event.confirmed
    )
    if event_type is None:
        return None
    data = {
        "request": request_data(request, previous_state=transition.before.value),
        "event": {
            "kind": event.kind.value,
            "provider_type": event.provider_type,
            "occurred_at": event_store.iso(event.occurred_at),
            "confirmed": event.confirmed,
            "details": dict(event.details),
            "source": catalogue.source_of(callback.channel),
        },
    }
    return await emit(
        tx,
        event_type=event_type,
        request=request,
        data=data,
        raw=event.raw,
        dedupe_key=f"inbox:{callback.inbox_id}",
        source_inbox_id=callback.inbox_id,
        now=now,
        hold=True,
    )


async def document_archived(
    tx: Transaction,
    *,
    request: SignatureRequest,
    document: Mapping[str, Any],
    document_id: int,
    now: float,
) -> Emitted | None:
    """``signature_request.document_archived``: a file is whole in the archive (in the
    transaction that records it). ``document``: its API view, with a signed download link."""
    data = {
        "request": request_data(request, previous_state=None),
        "document": dict(document),
    }
    return await emit(
        tx,
        event_type=catalogue.DOCUMENT_ARCHIVED,
        request=request,
        data=data,
        dedupe_key=f"document-archived:{document_id}",
        now=now,
    )


async def action_dead(
    tx: Transaction,
    *,
    action: Row,
    request: SignatureRequest | None,
    reason: str,
    status_code: int | None,
    now: float,
) -> Emitted | None:
    """``signback.action.dead``: a provider call was given up (in the transaction that
    records it). Deliveries that die emit nothing: one endpoint's failures must not become
    another's traffic, nor loop between two failing endpoints."""
    attempts = int(action["attempts"])
    data: dict[str, Any] = {
        "action": {
            "id": int(action["id"]),
            "operation": str(action["operation"]),
            "key": str(action["action_key"]),
            "attempts": attempts,
            "status_code": status_code,
            "error": reason,
        },
        "request": None if request is None else request_data(request, previous_state=None),
    }
    return await emit(
        tx,
        event_type=catalogue.ACTION_DEAD,
        request=request,
        data=data,
        dedupe_key=f"action-dead:{int(action['id'])}:{attempts}",
        now=now,
    )


async def stale(
    tx: Transaction, *, request: SignatureRequest, state: str, threshold: float, now: float
) -> Emitted | None:
    """``signature_request.stale``: nothing heard of an open request for longer than its
    state's threshold. Once per request and state (the dedupe key)."""
    data = {
        "request": request_data(request, previous_state=None),
        "stale": {
            "state": state,
            "silent_since": event_store.iso(request.updated_at),
            "threshold_seconds": threshold,
        },
    }
    return await emit(
        tx,
        event_type=catalogue.STALE,
        request=request,
        data=data,
        dedupe_key=f"stale:{request.id}:{state}",
        now=now,
    )


async def endpoint_disabled(
    tx: Transaction, *, endpoint: Endpoint, reason: str, now: float
) -> Emitted | None:
    """``signback.endpoint.disabled``, to the other endpoints that asked for it."""
    data = {
        "endpoint": {
            "id": endpoint.id,
            "url": endpoint.url,
            "description": endpoint.description,
            "reason": reason,
            "disabled_at": event_store.iso(now),
        }
    }
    return await emit(
        tx,
        event_type=catalogue.ENDPOINT_DISABLED,
        request=None,
        data=data,
        dedupe_key=f"endpoint-disabled:{endpoint.id}:{now!r}:{secrets.token_hex(4)}",
        now=now,
    )


async def test_event(tx: Transaction, *, endpoint: Endpoint, now: float) -> Emitted | None:
    """``signback.test``, to this endpoint only (whatever its filters)."""
    data = {
        "endpoint": {"id": endpoint.id, "url": endpoint.url, "description": endpoint.description},
        "message": "a test event from signback; it changes nothing",
    }
    return await emit(
        tx,
        event_type=catalogue.TEST,
        request=None,
        data=data,
        dedupe_key=f"test:{endpoint.id}:{secrets.token_hex(8)}",
        now=now,
        to_endpoints=[endpoint.id],
    )
