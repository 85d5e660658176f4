"""Downstream delivery end to end: provider callbacks in, signed events out, on both databases.

A company receiver (tests/downstream.py) verifies every delivery with the ``standardwebhooks``
package and validates it against docs/events.schema.json. Whole OKdokument and Firma flows,
with duplicates and out-of-order provider events: every event arrives, each ``webhook-id``
once, in per-request order, every signature verifies, and a late or duplicate provider event
emits nothing.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from handlers.firma.signature import sign
from handlers.firma.simulate import firma_envelope
from handlers.okdokument.fake import FakeOkdokument
from receiver.settings import Settings
from tests.downstream import (
    Answer,
    Delivery,
    DownstreamReceiver,
    add_endpoint,
    admin_client,
    running_downstream,
)
from tests.harness import Receiver, running_okdokument, running_receiver, wait_until

FIRMA_SECRET = "firma-test-secret"


@pytest.fixture
def downstream() -> Iterator[tuple[str, DownstreamReceiver]]:
    with running_downstream() as pair:
        yield pair


@pytest.fixture
def okd() -> Iterator[tuple[str, FakeOkdokument]]:
    with running_okdokument() as pair:
        yield pair


@pytest.fixture
def signback(
    make_settings: Callable[..., Settings], okd: tuple[str, FakeOkdokument]
) -> Iterator[Receiver]:
    with running_receiver(
        make_settings, okdokument_base_url=okd[0], endpoint_allow_private=True
    ) as receiver:
        yield receiver


def post_firma(
    signback: Receiver, sr_id: str, event_type: str, *, event_id: str | None = None
) -> dict[str, Any]:
    """A signed Firma webhook, as Firma sends it; the same ``event_id`` is a duplicate."""
    envelope = firma_envelope(event_type, sr_id, now=__import__("time").time())
    envelope["id"] = event_id or f"evt_{uuid.uuid4().hex}"
    body = json.dumps(envelope).encode()
    timestamp = int(__import__("time").time())
    with signback.client() as client:
        response = client.post(
            "/hooks/firma",
            content=body,
            headers={
                "content-type": "application/json",
                "x-firma-signature": sign(FIRMA_SECRET, body, timestamp),
            },
        )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def stored_events(signback: Receiver, request_id: int) -> list[dict[str, Any]]:
    with admin_client(signback.url) as admin:
        items: list[dict[str, Any]] = admin.get(
            "/api/events", params={"request_id": str(request_id), "limit": "500"}
        ).json()["items"]
    return items


def types_of(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def test_a_firma_flow_with_duplicates_and_late_events_arrives_once_in_order(
    signback: Receiver, downstream: tuple[str, DownstreamReceiver]
) -> None:
    url, receiver = downstream
    endpoint = add_endpoint(signback.url, receiver, url, "/hooks/signing")
    # The first delivery of each request's first event fails, and the others are slowed by
    # a few ms: without the per-request order, its later events would overtake it.
    rng = random.Random(16)
    failed_once: set[int] = set()

    def answer(delivery: Delivery) -> Answer:
        event = delivery.event
        request_id = event["data"]["request"]["id"]
        if event["type"] == "signature_request.created" and request_id not in failed_once:
            failed_once.add(request_id)
            return Answer(status=500, body=b"not yet")
        return Answer(delay=rng.uniform(0, 0.01))

    receiver.behaviour["/hooks/signing"] = answer
    requests = [signback.register(provider="firma", signatureRequestId=f"sr-{i}") for i in range(6)]
    flow = [
        "signing_request.created",
        "signing_request.sent",
        "signing_request.viewed",
        "signing_request.recipient.signed",
        "signing_request.completed",
    ]
    for request in requests:  # each request's events in a burst
        for step in flow:
            event_id = f"evt_{step}_{request['id']}"
            post_firma(signback, request["signature_request_id"], step, event_id=event_id)
            if step == "signing_request.sent":  # Firma retries a delivery: a duplicate
                post_firma(signback, request["signature_request_id"], step, event_id=event_id)
    for request in requests:  # late events: the request has completed already
        post_firma(signback, request["signature_request_id"], "signing_request.viewed")
        post_firma(signback, request["signature_request_id"], "signing_request.cancelled")
    expected = [
        "signature_request.created",
        "signature_request.sent",
        "signature_request.viewed",
        "signature_request.signer_signed",
        "signature_request.completed",
    ]
    wait_until(
        lambda: len(receiver.accepted("/hooks/signing")) >= len(expected) * len(requests),
        timeout=30,
        what="every event delivered",
    )
    for request in requests:
        signback.wait_for_state(request["id"], "completed")
    assert receiver.problems() == []
    deliveries = receiver.accepted("/hooks/signing")
    assert all(d.verified for d in receiver.to("/hooks/signing"))
    ids = [d.webhook_id for d in deliveries]
    assert len(ids) == len(set(ids)) == len(expected) * len(requests)  # each once
    retried = [d for d in receiver.to("/hooks/signing") if d.status == 500]
    assert len(retried) == len(requests)
    assert {d.webhook_id for d in retried} <= set(ids)  # a retry keeps its webhook-id
    for request in requests:
        mine = [d.event for d in deliveries if d.event["data"]["request"]["id"] == request["id"]]
        assert types_of(mine) == expected  # in per-request order, late ones emitted nothing
        stored = stored_events(signback, request["id"])
        assert [e["id"] for e in stored] == [e["id"] for e in mine]  # as they were emitted
        assert mine[-1]["data"]["request"] == {
            "id": request["id"],
            "provider": "firma",
            "external_id": request["signature_request_id"],
            "reference": None,
            "state": "completed",
            "previous_state": "partially_signed",
            "metadata": {},
        }
        assert mine[-1]["data"]["event"]["source"] == "callback"
        assert mine[-1]["data"]["event"]["provider_type"] == "signing_request.completed"
        assert "raw" not in mine[-1]["data"]
    # Every delivery carries the webhook-id made from its event and this endpoint.
    for delivery in deliveries:
        event_id = delivery.event["id"].removeprefix("evt_")
        assert delivery.webhook_id == f"msg_{event_id}_{endpoint['id']}"


def test_an_okdokument_flow_delivers_the_confirmed_completion_and_the_return(
    signback: Receiver,
    okd: tuple[str, FakeOkdokument],
    downstream: tuple[str, DownstreamReceiver],
) -> None:
    okd_url, fake = okd
    url, receiver = downstream
    add_endpoint(signback.url, receiver, url, "/okd", include_raw=True)
    doc = fake.new_document("contract.pdf", b"%PDF-1.4", document_id="doc-ds")
    fake.new_round(doc, signature_request_id="sr-ds", send_info_url=None, result_url=None)
    registered = signback.register(
        provider="okdokument",
        signatureRequestId="sr-ds",
        documentId="doc-ds",
        reference="order-42",
        metadata={"customer": 7},
    )
    signback.wait_for_actions(registered["id"], settled=1)  # the URLs are at OKdokument
    result = httpx.post(
        f"{okd_url}/_fake/sign/sr-ds", json={"follow_redirect": True}, timeout=10
    ).json()
    assert result["sendinfo_status"] == 200
    signback.wait_for_state(registered["id"], "completed")
    # The same sendInfo again, twice, and a late cancel claim: nothing more is emitted.
    sendinfo = registered["callback_urls"]["sendinfo_url"].removeprefix(signback.url)
    with signback.client() as client:
        for state in ("signed", "signed", "canceled"):
            body = {"state": state, "id": "doc-ds", "signatureRequestId": "sr-ds"}
            assert client.post(sendinfo, json=body).status_code == 200
    wait_until(
        lambda: (
            len([e for e in stored_events(signback, registered["id"])]) >= 2
            and len(receiver.to("/okd")) >= 2
        ),
        what="the return and the completion delivered",
    )

    def timeline_settled() -> bool:
        timeline = signback.show(registered["id"])["timeline"]
        return sum(1 for e in timeline if e["status"] == "processed") >= 5

    wait_until(timeline_settled, what="the late callbacks processed")
    stored = stored_events(signback, registered["id"])
    assert sorted(types_of(stored)) == [
        "signature_request.completed",
        "signature_request.signer_returned",
    ]
    events = receiver.events("/okd")
    assert [e["id"] for e in events] == [e["id"] for e in stored]
    assert receiver.problems() == []
    completed = next(e for e in events if e["type"] == "signature_request.completed")
    assert completed["data"]["request"]["reference"] == "order-42"
    assert completed["data"]["request"]["metadata"] == {"customer": 7}
    assert completed["data"]["request"]["previous_state"] == "registered"
    assert completed["data"]["event"]["confirmed"] is True
    assert completed["data"]["event"]["source"] == "callback"
    assert completed["data"]["raw"]["state"] == "signed"  # include_raw: the provider's payload
    returned = next(e for e in events if e["type"] == "signature_request.signer_returned")
    assert returned["data"]["event"]["source"] == "browser"
    assert returned["data"]["request"]["state"] in ("registered", "completed")
