"""Every event type of the catalogue, as signback stores and sends it, is valid under the
published JSON Schema (docs/events.schema.json); the deliveries in the other downstream
tests are validated by their receiver (tests/downstream.py) too."""

from __future__ import annotations

import json

import pytest

from receiver.archive.views import document_json
from receiver.events import EventKind, NormalizedEvent
from receiver.model import RequestState, SignatureRequest
from receiver.outbox.downstream import catalogue, emit
from receiver.outbox.downstream import endpoints as endpoint_store
from receiver.outbox.downstream.events import body_for
from receiver.pipeline.states import Transition
from receiver.providers import StoredCallback
from receiver.store.db import open_database
from receiver.store.documents import Document
from tests.conftest import test_settings
from tests.downstream import SCHEMA, VALIDATOR, schema_errors

pytestmark = pytest.mark.anyio

NOW = 1_770_000_000.25
CHANNELS = {EventKind.SIGNER_RETURNED: "return", EventKind.DELIVERY_FAILED: "confirmation"}


def test_the_schema_is_a_valid_draft_2020_12_schema_listing_every_type() -> None:
    VALIDATOR.check_schema(SCHEMA)
    assert SCHEMA["properties"]["type"]["enum"] == list(catalogue.TYPES)


async def test_every_type_in_the_catalogue_is_valid(database_url: str) -> None:
    db = open_database(database_url)
    await db.connect()
    try:
        async with db.transaction() as tx:
            await tx.execute(
                "INSERT INTO signature_requests (provider, external_id, reference, state,"
                " metadata, token_hash, token_nonce, created_at, updated_at) VALUES ('firma',"
                " 'sr-schema', 'order-1', 'sent', '{\"k\": [1, null]}', 'h', 'n', 0, 0)"
            )
            endpoint = await endpoint_store.insert(
                tx,
                url="https://example.com/hooks",
                description="",
                kinds=["signature_request.*", "signback.*"],
                providers=[],
                include_raw=True,
                sealed_secret="v1:x",
                now=NOW,
            )
        row = await db.fetch_one("SELECT id FROM signature_requests")
        assert row is not None
        request = SignatureRequest(
            id=int(row["id"]),
            provider="firma",
            external_id="sr-schema",
            state=RequestState.SENT,
            reference="order-1",
            metadata={"k": [1, None]},
        )
        cases: list[tuple[EventKind, RequestState, RequestState, bool]] = [
            (EventKind.UNKNOWN, RequestState.REGISTERED, state, True)
            for state in catalogue.STATE_TYPES
        ]
        cases += [
            (EventKind.SIGNER_RETURNED, RequestState.SENT, RequestState.SENT, False),
            (EventKind.DELIVERY_FAILED, RequestState.SENT, RequestState.SENT, True),
        ]
        async with db.transaction() as tx:
            for i, (kind, before, after, confirmed) in enumerate(cases):
                event = NormalizedEvent(
                    provider="firma",
                    kind=kind,
                    provider_type=f"type-{i}",
                    external_id="sr-schema",
                    occurred_at=None if i % 2 else NOW,
                    confirmed=confirmed,
                    details={"recipient": "alice@example.com", "n": i},
                    raw={"id": f"evt-{i}", "nested": {"x": [1, 2]}},
                )
                callback = StoredCallback(
                    inbox_id=1000 + i,
                    provider="firma",
                    channel=CHANNELS.get(kind, "webhook"),
                    body=b"{}",
                    headers={},
                    query="",
                    request_id=request.id,
                    received_at=NOW,
                )
                emitted = await emit.for_processed_event(
                    tx,
                    callback=callback,
                    event=event,
                    request=request,
                    transition=Transition(before, after, ""),
                    now=NOW,
                )
                assert emitted is not None
                assert emitted.deliveries == 1
            dead = await emit.action_dead(
                tx,
                action={"id": 5, "operation": "firma.patch", "action_key": "k", "attempts": 3},
                request=request,
                reason="HTTP 400: no",
                status_code=400,
                now=NOW,
            )
            disabled = await emit.endpoint_disabled(tx, endpoint=endpoint, reason="410", now=NOW)
            tested = await emit.test_event(tx, endpoint=endpoint, now=NOW)
            stale = await emit.stale(tx, request=request, state="sent", threshold=60.0, now=NOW)
            assert stale is not None
            archived_file = Document(
                id=9,
                request_id=request.id,
                name="signed.pdf",
                kind="signed",
                media_type="application/pdf",
                size=1234,
                sha256="ab" * 32,
                storage_key=f"firma/{request.id}/{'ab' * 32}-signed.pdf",
                archived_at=NOW,
                purged_at=None,
            )
            archived = await emit.document_archived(
                tx,
                request=request,
                document=document_json(test_settings(database_url), archived_file, now=NOW),
                document_id=archived_file.id,
                now=NOW,
            )
            assert archived is not None
            assert dead is not None
            assert disabled is not None
            assert tested is not None
        rows = await db.fetch_all("SELECT type, payload, raw FROM events ORDER BY id")
        assert {r["type"] for r in rows} == set(catalogue.TYPES)
        for stored in rows:
            for include_raw in (False, True):
                document = json.loads(
                    body_for(stored["payload"], stored["raw"], include_raw=include_raw)
                )
                assert schema_errors(document) == [], (stored["type"], include_raw)
        # And the schema does refuse what is not an event.
        assert schema_errors({"type": "signature_request.completed"})
        wrong = json.loads(rows[0]["payload"])
        wrong["data"]["request"]["state"] = "signed"
        assert schema_errors(wrong)
    finally:
        await db.close()
