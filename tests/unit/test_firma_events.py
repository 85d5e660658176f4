"""Firma envelope parsing and normalization, driven by the payload fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from handlers.firma.events import (
    EVENT_KINDS,
    PROVIDER_STATUS_AFTER,
    Envelope,
    normalize,
    parse_envelope,
    parse_timestamp,
)
from receiver.errors import CallbackRejected
from receiver.events import EventKind, NormalizedEvent
from receiver.providers import StoredCallback

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "firma"
FIXTURE_FILES = sorted(FIXTURES.glob("*.json"))
OLD_PREFIX = "old."

# The specification of the kind table, written out independently of the code under test.
EXPECTED_KINDS: dict[str, EventKind] = {
    "signing_request.created": EventKind.REQUEST_CREATED,
    "signing_request.sent": EventKind.REQUEST_SENT,
    "signing_request.viewed": EventKind.REQUEST_VIEWED,
    "signing_request.completed": EventKind.REQUEST_COMPLETED,
    "signing_request.expired": EventKind.REQUEST_EXPIRED,
    "signing_request.cancelled": EventKind.REQUEST_CANCELLED,
    "signing_request.updated": EventKind.REQUEST_UPDATED,
    "signing_request.document.updated": EventKind.REQUEST_UPDATED,
    "signing_request.deleted": EventKind.REQUEST_DELETED,
    "signing_request.certificate.generated": EventKind.INFORMATIONAL,
    "signing_request.reminder.sent": EventKind.INFORMATIONAL,
    "signing_request.field.filled": EventKind.INFORMATIONAL,
    "signing_request.recipient.signed": EventKind.RECIPIENT_SIGNED,
    "signing_request.signed": EventKind.RECIPIENT_SIGNED,
    "signing_request.recipient.declined": EventKind.REQUEST_DECLINED,
    "signing_request.recipient.identity_changed": EventKind.INFORMATIONAL,
    "template.created": EventKind.INFORMATIONAL,
    "template.updated": EventKind.INFORMATIONAL,
    "template.deleted": EventKind.INFORMATIONAL,
    "template.used": EventKind.INFORMATIONAL,
    "workspace.created": EventKind.INFORMATIONAL,
    "workspace.updated": EventKind.INFORMATIONAL,
    "domain.verified": EventKind.INFORMATIONAL,
    "domain.verification.failed": EventKind.INFORMATIONAL,
    "webhook.test": EventKind.TEST,
}

# Older-envelope fixture → the current-envelope fixture describing the same thing.
OLD_TO_CURRENT = {
    "old.signing_request.created.json": "signing_request.created.json",
    "old.signing_request.sent.json": "signing_request.sent.json",
    "old.signing_request.signed.json": "signing_request.recipient.signed.json",
    "old.signing_request.recipient.declined.json": "signing_request.recipient.declined.json",
    "old.signing_request.completed.json": "signing_request.completed.json",
}


def event_type_of(path: Path) -> str:
    return path.name.removesuffix(".json").removeprefix(OLD_PREFIX)


def callback(body: bytes) -> StoredCallback:
    return StoredCallback(
        inbox_id=1,
        provider="firma",
        channel="webhook",
        body=body,
        headers={"x-firma-event": "ignored-by-normalize"},
        query="",
        request_id=None,
        received_at=1_759_501_700.0,
    )


def load(name: str) -> NormalizedEvent:
    return normalize(callback((FIXTURES / name).read_bytes()))


def envelope_of(document: Any) -> Envelope:
    return parse_envelope(json.dumps(document).encode())


# --- the fixtures ---------------------------------------------------------------------------


def test_there_is_a_fixture_for_every_documented_type() -> None:
    names = {path.name for path in FIXTURE_FILES}
    missing = [
        event_type
        for event_type in EVENT_KINDS
        if f"{event_type}.json" not in names and f"{OLD_PREFIX}{event_type}.json" not in names
    ]
    assert missing == []
    assert "unknown.something.new.json" in names
    assert set(OLD_TO_CURRENT) == {p.name for p in FIXTURE_FILES if p.name.startswith(OLD_PREFIX)}


def test_event_ids_are_unique_across_fixtures() -> None:
    ids = [parse_envelope(path.read_bytes()).event_id for path in FIXTURE_FILES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda path: path.name)
def test_every_fixture_parses_and_normalizes(path: Path) -> None:
    body = path.read_bytes()
    document = json.loads(body)
    envelope = parse_envelope(body)
    event = normalize(callback(body))

    assert envelope.event_type == event_type_of(path)
    assert envelope.event_id == document.get("id", document.get("event_id"))
    assert envelope.event_id.startswith("evt_")
    assert envelope.payload == document
    assert isinstance(envelope.created_at, float)
    assert envelope.created_at > 1_700_000_000  # 2023 or later: a real timestamp was read

    assert event.provider == "firma"
    assert event.provider_type == envelope.event_type
    assert event.kind is EXPECTED_KINDS.get(envelope.event_type, EventKind.UNKNOWN)
    assert event.event_id == envelope.event_id
    assert event.occurred_at == envelope.created_at
    assert event.confirmed is True
    assert event.raw == document
    if envelope.event_type.startswith(("signing_request.", "unknown.")):
        assert event.external_id == "sr_789"
    else:
        assert event.external_id is None  # template/workspace/domain/test events
    expected_status = PROVIDER_STATUS_AFTER.get(envelope.event_type)
    if expected_status is not None:
        assert event.details["provider_status"] == expected_status


def test_the_kind_table_is_exactly_the_documented_list() -> None:
    assert dict(EVENT_KINDS) == EXPECTED_KINDS


@pytest.mark.parametrize(("old", "current"), sorted(OLD_TO_CURRENT.items()))
def test_both_envelopes_give_the_same_kind_and_ids(old: str, current: str) -> None:
    before, now = load(old), load(current)
    assert before.kind is now.kind
    assert before.external_id == now.external_id == "sr_789"
    assert before.details.get("workspace_id") == now.details.get("workspace_id") == "ws_456"
    assert before.details.get("provider_status") == now.details.get("provider_status")
    assert before.details.get("recipient_id") == now.details.get("recipient_id")
    assert before.event_id != now.event_id


# --- details --------------------------------------------------------------------------------


def test_completed_example_from_the_docs() -> None:
    event = load("signing_request.completed.json")
    assert event.kind is EventKind.REQUEST_COMPLETED
    assert event.event_id == "evt_1707500000_k8f2m9x3a"
    assert event.occurred_at == 1_759_501_800.0  # 2025-10-03T14:30:00Z
    assert event.details == {"workspace_id": "ws_456", "provider_status": "finished"}


def test_recipient_signed_names_the_recipient_who_signed() -> None:
    # Two recipients are listed; only Alice has signed_at: she is the one the event is about.
    event = load("signing_request.recipient.signed.json")
    assert event.details == {
        "workspace_id": "ws_456",
        "recipient_id": "rec_abc",
        "recipient_email": "alice@example.com",
        "recipient_name": "Alice Johnson",
    }


def test_recipient_declined_stops_the_request() -> None:
    event = load("signing_request.recipient.declined.json")
    assert event.kind is EventKind.REQUEST_DECLINED
    assert event.details["recipient_id"] == "rec_abc"
    assert event.details["provider_status"] == "declined"


def test_old_flat_recipient_fields_are_read() -> None:
    event = load("old.signing_request.signed.json")
    assert event.kind is EventKind.RECIPIENT_SIGNED
    assert event.details["recipient_email"] == "alice@example.com"
    assert event.details["recipient_name"] == "Alice Johnson"


def test_ambiguous_recipient_is_not_guessed() -> None:
    both_signed = {
        "id": "evt_1",
        "type": "signing_request.recipient.signed",
        "data": {
            "signing_request": {"id": "sr_789"},
            "recipients": [
                {"id": "rec_abc", "signed_at": "2025-10-03T14:20:00Z"},
                {"id": "rec_def", "signed_at": "2025-10-03T14:21:00Z"},
            ],
        },
    }
    event = normalize(callback(json.dumps(both_signed).encode()))
    assert "recipient_id" not in event.details


def test_singular_recipient_and_name_from_parts() -> None:
    document = {
        "id": "evt_2",
        "type": "signing_request.recipient.identity_changed",
        "data": {
            "signing_request": {"id": "sr_789"},
            "recipient": {"id": "rec_abc", "first_name": "Alice", "last_name": "Smith"},
        },
    }
    event = normalize(callback(json.dumps(document).encode()))
    assert event.kind is EventKind.INFORMATIONAL
    assert event.details == {"recipient_id": "rec_abc", "recipient_name": "Alice Smith"}


@pytest.mark.parametrize(
    ("name", "status", "provider_status"),
    [
        ("signing_request.created.json", "draft", "draft"),
        ("old.signing_request.created.json", "draft", "draft"),
        # The reported status wins over the table; updated has no table entry at all.
        ("signing_request.updated.json", "not_sent", "not_sent"),
    ],
)
def test_created_and_updated_carry_the_reported_status(
    name: str, status: str, provider_status: str
) -> None:
    event = load(name)
    assert event.details["status"] == status
    assert event.details["provider_status"] == provider_status


def test_created_reporting_not_sent_keeps_firmas_word() -> None:
    document = {
        "id": "evt_3",
        "type": "signing_request.created",
        "data": {"signing_request": {"id": "sr_789", "status": "not_sent"}},
    }
    event = normalize(callback(json.dumps(document).encode()))
    assert event.details == {"status": "not_sent", "provider_status": "not_sent"}


def test_an_odd_reported_status_is_kept_but_not_trusted() -> None:
    document = {
        "id": "evt_4",
        "type": "signing_request.created",
        "data": {"signing_request": {"id": "sr_789", "status": "weird"}},
    }
    event = normalize(callback(json.dumps(document).encode()))
    assert event.details == {"status": "weird", "provider_status": "draft"}


def test_informational_events_have_no_provider_status() -> None:
    for name in ("signing_request.viewed.json", "signing_request.reminder.sent.json"):
        assert "provider_status" not in load(name).details


# --- unknown types --------------------------------------------------------------------------


def test_unknown_type_is_kept_not_dropped() -> None:
    event = load("unknown.something.new.json")
    assert event.kind is EventKind.UNKNOWN
    assert event.provider_type == "unknown.something.new"
    assert event.external_id == "sr_789"
    assert event.raw["data"]["signing_request"]["name"] == "NDA - Acme Corp"


@pytest.mark.parametrize(
    "event_type",
    ["signing_request.declined", "template.archived", "SIGNING_REQUEST.COMPLETED", "x"],
)
def test_undocumented_types_are_unknown(event_type: str) -> None:
    document = {"id": "evt_5", "type": event_type, "data": {"signing_request_id": "sr_789"}}
    event = normalize(callback(json.dumps(document).encode()))
    assert event.kind is EventKind.UNKNOWN
    assert event.provider_type == event_type


# --- envelopes ------------------------------------------------------------------------------


def test_mixed_envelope_current_fields_with_old_data() -> None:
    envelope = envelope_of(
        {
            "id": "evt_6",
            "type": "signing_request.sent",
            "timestamp": "2026-01-05T08:00:00Z",
            "data": {"signing_request_id": "sr_789", "workspace_id": "ws_456"},
        }
    )
    assert envelope == Envelope(
        event_id="evt_6",
        event_type="signing_request.sent",
        created_at=1_767_600_000.0,
        signing_request_id="sr_789",
        workspace_id="ws_456",
        payload=envelope.payload,
    )


def test_current_fields_win_over_old_ones() -> None:
    envelope = envelope_of(
        {
            "id": "evt_new",
            "event_id": "evt_old",
            "type": "signing_request.sent",
            "event_type": "signing_request.viewed",
            "created_at": "2025-10-03T14:30:00Z",
            "timestamp": 1,
        }
    )
    assert (envelope.event_id, envelope.event_type) == ("evt_new", "signing_request.sent")
    assert envelope.created_at == 1_759_501_800.0


def test_null_current_fields_fall_back_to_old_ones() -> None:
    envelope = envelope_of(
        {"id": None, "event_id": "evt_7", "type": None, "event_type": "webhook.test"}
    )
    assert (envelope.event_id, envelope.event_type) == ("evt_7", "webhook.test")
    assert envelope.signing_request_id is None
    assert envelope.workspace_id is None
    assert envelope.created_at is None


def test_same_id_in_both_places_is_fine() -> None:
    envelope = envelope_of(
        {
            "id": "evt_8",
            "type": "signing_request.sent",
            "data": {"signing_request": {"id": "sr_789"}, "signing_request_id": "sr_789"},
        }
    )
    assert envelope.signing_request_id == "sr_789"


def test_workspace_falls_back_to_the_signing_request_and_workspace_objects() -> None:
    nested = envelope_of(
        {"id": "e", "type": "t", "data": {"signing_request": {"id": "sr", "workspace_id": "ws_1"}}}
    )
    workspace = envelope_of({"id": "e", "type": "t", "data": {"workspace": {"id": "ws_2"}}})
    assert (nested.workspace_id, workspace.workspace_id) == ("ws_1", "ws_2")


def test_byte_order_mark_is_tolerated() -> None:
    envelope = parse_envelope(b'\xef\xbb\xbf{"id": "evt_9", "type": "webhook.test"}')
    assert envelope.event_id == "evt_9"


LONG = "x" * 201

MALFORMED: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("not utf-8", b'{"id": "evt_1", "type": "\xff"}'),
    ("utf-16", '{"id": "evt_1", "type": "webhook.test"}'.encode("utf-16")),
    ("not json", b"id=evt_1&type=webhook.test"),
    ("truncated json", b'{"id": "evt_1", "type": '),
    ("deeply nested", b"[" * 100_000 + b"]" * 100_000),
    ("array", b'[{"id": "evt_1", "type": "webhook.test"}]'),
    ("string", b'"evt_1"'),
    ("null", b"null"),
    ("no id", b'{"type": "webhook.test"}'),
    ("null ids", b'{"id": null, "event_id": null, "type": "webhook.test"}'),
    ("no type", b'{"id": "evt_1"}'),
    ("numeric id", b'{"id": 123, "type": "webhook.test"}'),
    ("empty id", b'{"id": "", "type": "webhook.test"}'),
    ("blank id", b'{"id": "   ", "type": "webhook.test"}'),
    ("id too long", json.dumps({"id": LONG, "type": "webhook.test"}).encode()),
    ("id with newline", b'{"id": "evt\\n1", "type": "webhook.test"}'),
    ("object id", b'{"id": {"x": 1}, "type": "webhook.test"}'),
    ("empty type", b'{"id": "evt_1", "type": ""}'),
    ("list type", b'{"id": "evt_1", "type": ["webhook.test"]}'),
    ("type too long", json.dumps({"id": "evt_1", "type": LONG}).encode()),
    ("data not an object", b'{"id": "evt_1", "type": "webhook.test", "data": []}'),
    (
        "signing request not an object",
        b'{"id": "evt_1", "type": "signing_request.sent", "data": {"signing_request": 5}}',
    ),
    (
        "numeric signing request id",
        b'{"id": "evt_1", "type": "signing_request.sent", "data": {"signing_request_id": 789}}',
    ),
    (
        "empty signing request id",
        b'{"id": "e", "type": "signing_request.sent", "data": {"signing_request": {"id": ""}}}',
    ),
    (
        "signing request id too long",
        json.dumps({"id": "e", "type": "t", "data": {"signing_request_id": LONG}}).encode(),
    ),
    (
        "conflicting signing request ids",
        json.dumps(
            {
                "id": "e",
                "type": "signing_request.sent",
                "data": {"signing_request": {"id": "sr_789"}, "signing_request_id": "sr_790"},
            }
        ).encode(),
    ),
    ("numeric workspace id", b'{"id": "evt_1", "type": "webhook.test", "workspace_id": 456}'),
]


@pytest.mark.parametrize(("case", "body"), MALFORMED, ids=[case for case, _ in MALFORMED])
def test_malformed_bodies_are_rejected_with_400(case: str, body: bytes) -> None:
    with pytest.raises(CallbackRejected) as caught:
        parse_envelope(body)
    assert caught.value.status_code == 400
    assert caught.value.message  # a reason, for the log


def test_rejections_say_what_is_wrong() -> None:
    with pytest.raises(CallbackRejected, match="no id"):
        parse_envelope(b'{"type": "webhook.test"}')
    with pytest.raises(CallbackRejected, match="no type"):
        parse_envelope(b'{"id": "evt_1"}')
    with pytest.raises(CallbackRejected, match="different signing request ids"):
        parse_envelope(
            b'{"id": "e", "type": "t", "data": {"signing_request": "a", "signing_request_id": "b"}}'
        )


def test_an_id_of_exactly_200_characters_is_accepted() -> None:
    envelope = envelope_of({"id": "e" * 200, "type": "webhook.test"})
    assert len(envelope.event_id) == 200


# --- timestamps -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-10-03T14:30:00Z", 1_759_501_800.0),
        ("2025-10-03T14:30:00.250Z", 1_759_501_800.25),
        ("2025-10-03T16:30:00+02:00", 1_759_501_800.0),
        ("2025-10-03T14:30:00", 1_759_501_800.0),  # no zone: UTC
        ("2025-10-03 14:30:00Z", 1_759_501_800.0),
        (1_759_501_800, 1_759_501_800.0),
        (1_759_501_800.5, 1_759_501_800.5),
        ("1759501800", 1_759_501_800.0),
        (1_759_501_800_000, 1_759_501_800.0),  # milliseconds
        ("not a date", None),
        ("2025-13-45T99:00:00Z", None),
        ("", None),
        ("9" * 100, None),
        (True, None),
        (None, None),
        ([2025], None),
        (float("nan"), None),
        (float("inf"), None),
        # Integers past a double's range: float() raises OverflowError (was a 500).
        (10**400, None),
        (-(10**400), None),
        (10**309, None),
        ("-1e308", None),
        ("NaN", None),
        ("-Infinity", None),
    ],
)
def test_parse_timestamp(value: Any, expected: float | None) -> None:
    assert parse_timestamp(value) == expected


def test_unparseable_timestamp_is_not_an_error() -> None:
    envelope = envelope_of({"id": "e", "type": "webhook.test", "created_at": "yesterday"})
    assert envelope.created_at is None


def test_unparseable_created_at_falls_back_to_timestamp() -> None:
    envelope = envelope_of(
        {"id": "e", "type": "webhook.test", "created_at": "soon", "timestamp": 1_767_600_000}
    )
    assert envelope.created_at == 1_767_600_000.0
