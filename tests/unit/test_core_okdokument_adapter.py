"""OKdokument: stored callback → NormalizedEvent (handlers/okdokument/adapter.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from handlers.okdokument.adapter import DOCUMENT_STATE_KINDS, normalize
from receiver.events import EventKind
from receiver.providers import StoredCallback

# The specification of the state table (OKdokument docs §1.6), written out independently.
EXPECTED_KINDS: dict[str, EventKind] = {
    "signed": EventKind.REQUEST_COMPLETED,
    "canceled": EventKind.REQUEST_CANCELLED,
    "cancelled": EventKind.REQUEST_CANCELLED,
    "errorsendinfo": EventKind.DELIVERY_FAILED,
    "tosign": EventKind.REQUEST_SENT,
    "tags": EventKind.INFORMATIONAL,
    "tostamp": EventKind.INFORMATIONAL,
}
# sendInfo is unsigned: the states that end a round are claims until confirmed.
CLAIMS = frozenset({"signed", "canceled", "cancelled"})


def callback(body: Any, channel: str = "sendinfo") -> StoredCallback:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return StoredCallback(
        inbox_id=11,
        provider="okdokument",
        channel=channel,
        body=raw,
        headers={"content-type": "application/json"},
        query="",
        request_id=3,
        received_at=1_700_000_000.0,
    )


def payload(state: Any, **extra: Any) -> dict[str, Any]:
    return {"signatureRequestId": "SR-1", "id": "DOC-1", "state": state, **extra}


def test_state_table_is_the_documented_one() -> None:
    assert dict(DOCUMENT_STATE_KINDS) == EXPECTED_KINDS


@pytest.mark.parametrize("state", sorted(EXPECTED_KINDS))
@pytest.mark.parametrize("confirm_claims", [True, False])
def test_sendinfo(state: str, confirm_claims: bool) -> None:
    body = payload(state)
    event = normalize(callback(body), confirm_claims=confirm_claims)

    assert event.provider == "okdokument"
    assert event.kind == EXPECTED_KINDS[state]
    assert event.provider_type == f"sendinfo:{state}"
    assert event.external_id == "SR-1"
    assert event.event_id == "inbox-11"  # sendInfo has no id of its own: the row is the event
    # Unsigned: with confirmation on, no state acts by itself (outcomes are checked first,
    # the other states are only recorded); with it off, every state is trusted.
    assert event.confirmed is not confirm_claims
    assert event.details == {"document_state": state, "document_id": "DOC-1"}
    assert event.raw == body


@pytest.mark.parametrize("state", sorted(CLAIMS))
def test_claims_are_unconfirmed_by_default(state: str) -> None:
    assert normalize(callback(payload(state))).confirmed is False


@pytest.mark.parametrize("state", sorted(EXPECTED_KINDS))
@pytest.mark.parametrize("confirm_claims", [True, False])
def test_confirmation_is_always_confirmed(state: str, confirm_claims: bool) -> None:
    body = payload(state, confirms="42")
    event = normalize(callback(body, channel="confirmation"), confirm_claims=confirm_claims)

    assert event.kind == EXPECTED_KINDS[state]
    assert event.confirmed is True
    assert event.provider_type == f"documentinfo:{state}"
    # errorsendinfo confirms nothing: it is a delivery-failed fact with an event id of its own.
    prefix = "delivery-failed" if state == "errorsendinfo" else "confirmation"
    assert event.event_id == f"{prefix}-42"
    assert event.external_id == "SR-1"
    assert event.details == {"document_state": state, "document_id": "DOC-1", "confirms": "42"}
    assert event.raw == body


@pytest.mark.parametrize(
    ("confirms", "event_id"),
    [
        pytest.param("inbox-9", "confirmation-inbox-9", id="text"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="null"),
        pytest.param(42, None, id="not-a-string"),
    ],
)
def test_confirmation_event_id(confirms: Any, event_id: str | None) -> None:
    event = normalize(callback(payload("signed", confirms=confirms), channel="confirmation"))
    assert event.event_id == event_id
    assert event.details["confirms"] == (confirms if event_id else None)


def test_confirmation_without_confirms_key() -> None:
    event = normalize(callback(payload("signed"), channel="confirmation"))
    assert event.event_id is None
    assert event.details["confirms"] is None
    assert event.confirmed is True


@pytest.mark.parametrize(
    ("body", "document_state"),
    [
        pytest.param(payload("completed"), "completed", id="not-an-okdokument-state"),
        pytest.param(payload("SIGNED"), "SIGNED", id="case-sensitive"),
        pytest.param(payload(" signed"), " signed", id="whitespace"),
        pytest.param(payload(""), "", id="empty"),
        pytest.param(payload(None), "", id="null"),
        pytest.param(payload(5), "", id="number"),
        pytest.param(payload(["signed"]), "", id="list"),
        pytest.param({"signatureRequestId": "SR-1", "id": "DOC-1"}, "", id="missing"),
    ],
)
@pytest.mark.parametrize("channel", ["sendinfo", "confirmation"])
def test_unknown_states(body: dict[str, Any], document_state: str, channel: str) -> None:
    event = normalize(callback(body, channel=channel))

    assert event.kind == EventKind.UNKNOWN
    assert event.confirmed is (channel == "confirmation")
    assert event.details["document_state"] == document_state
    assert event.external_id == "SR-1"


@pytest.mark.parametrize(
    ("extra", "external_id"),
    [
        pytest.param({"signatureRequestId": "SR-9"}, "SR-9", id="text"),
        pytest.param({"signatureRequestId": ""}, None, id="empty"),
        pytest.param({"signatureRequestId": 9}, None, id="number"),
        pytest.param({"signatureRequestId": None}, None, id="null"),
        pytest.param({}, None, id="missing"),
    ],
)
@pytest.mark.parametrize("channel", ["sendinfo", "confirmation"])
def test_external_id_comes_from_signature_request_id(
    extra: dict[str, Any], external_id: str | None, channel: str
) -> None:
    event = normalize(callback({"state": "tosign", **extra}, channel=channel))
    assert event.external_id == external_id


@pytest.mark.parametrize(
    ("document_id", "details"),
    [
        pytest.param("DOC-7", {"document_state": "tosign", "document_id": "DOC-7"}, id="text"),
        pytest.param("", {"document_state": "tosign"}, id="empty"),
        pytest.param(7, {"document_state": "tosign"}, id="number"),
    ],
)
def test_details_carry_the_document_id(document_id: Any, details: dict[str, Any]) -> None:
    event = normalize(
        callback({"signatureRequestId": "SR-1", "state": "tosign", "id": document_id})
    )
    assert event.details == details


def test_an_empty_body_is_an_unknown_event() -> None:
    event = normalize(callback(b""))
    assert event.kind == EventKind.UNKNOWN
    assert event.external_id is None
    assert event.raw == {}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[]", id="list"),
        pytest.param(b'"signed"', id="string"),
        pytest.param(b"{", id="invalid-json"),
        pytest.param(b'{"state": "\xff"}', id="invalid-utf8"),
    ],
)
def test_a_body_that_is_not_an_object_raises_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (JSONDecodeError and UnicodeDecodeError too)
        normalize(callback(body))
