"""Every parser of outside input, in process, over many generated inputs.

The properties: a parser either answers or refuses with its documented exception (a 4xx
at the route), never anything else; what it answers can be stored on both databases
(receiver/store/storable.py: no NUL, no lone surrogate, within the column); and whatever a row
holds renders as JSON any client can read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from handlers.firma import signature
from handlers.firma.events import normalize as firma_normalize
from handlers.firma.events import parse_envelope, parse_timestamp
from handlers.firma.routes import SECRET_HEADERS as FIRMA_SECRET_HEADERS
from handlers.firma.routes import dedupe_key
from handlers.okdokument.adapter import normalize as okdokument_normalize
from handlers.okdokument.returns import parse_return as okdokument_return
from receiver import jsonutil
from receiver.admin.api import ApiJSON, RegisterBody, action_json, event_json, iso, row_id
from receiver.errors import CallbackRejected, SignatureInvalid
from receiver.events import EARLIEST_OCCURRED_AT, LATEST_OCCURRED_AT, NormalizedEvent
from receiver.intake.ack import parse_json_object
from receiver.intake.redaction import HeaderRedaction
from receiver.pipeline.processor import normalize_return
from receiver.providers import StoredCallback
from receiver.store import inbox
from receiver.store.storable import json_problem, storable, text_problem
from tests.property import strategies as s
from tests.property.conftest import examples

T = TypeVar("T")
SECRET = "property-test-secret"
NOW = 1_800_000_000


def stored(body: bytes, *, channel: str, provider: str, query: str = "") -> StoredCallback:
    return StoredCallback(
        inbox_id=7,
        provider=provider,
        channel=channel,
        body=body,
        headers={},
        query=query,
        request_id=None,
        received_at=float(NOW),
    )


def refused_with_400(parse: Callable[[bytes], T], body: bytes) -> T | None:
    """``parse(body)``, or None when it refused the body as a 400 (its only refusal)."""
    status = None
    try:
        return parse(body)
    except CallbackRejected as exc:
        status = exc.status_code
    assert status == 400
    return None


def assert_storable_facts(event: NormalizedEvent) -> None:
    """What the pipeline writes about ``event`` (inbox.finish) fits the inbox's columns,
    and its time is one a view can show."""
    assert event.occurred_at is None or (
        EARLIEST_OCCURRED_AT <= event.occurred_at < LATEST_OCCURRED_AT
    ), event.occurred_at
    facts = inbox.storable_facts(
        {
            "external_id": event.external_id,
            "kind": event.kind.value,
            "provider_type": event.provider_type,
            "event_id": event.event_id,
            "occurred_at": event.occurred_at,
            "note": "a note",
        }
    )
    for name, value in facts.items():
        if isinstance(value, str):
            assert text_problem(value) is None, (name, value)
            assert len(value) <= inbox.FACT_COLUMN_CHARS.get(name, len(value)), (name, value)
    assert iso(facts["occurred_at"]) is not None or facts["occurred_at"] is None


def assert_renders(payload: Any) -> None:
    """An admin answer: strict JSON (orjson refuses NaN and lone surrogates) in UTF-8."""
    body = ApiJSON(payload).body
    orjson.loads(body)


# --- OKdokument -----------------------------------------------------------------------------


@settings(max_examples=examples(400))
@given(s.bodies(s.sendinfo_objects("sr-1")))
@example(b'{"signatureRequestId":"sr-1","state":"\\ud800"}')
@example(b'{"signatureRequestId":"\\ud800","state":"signed"}')
@example(('{"signatureRequestId":"sr-1","state":"' + "x" * 500 + '"}').encode())
def test_sendinfo_is_parsed_or_refused_and_what_is_accepted_is_processable(body: bytes) -> None:
    """The route's checks (receiver/intake/ack.py parse_json_object, then the two fields)
    and the adapter behind them: what the route would acknowledge, the pipeline can always
    normalize and store."""
    payload = refused_with_400(parse_json_object, body)
    if payload is None:
        return
    claimed, state = payload.get("signatureRequestId"), payload.get("state")
    if not (isinstance(claimed, str) and claimed and isinstance(state, str) and state):
        return  # refused with a 400 by the route
    # The route compares the claim with the registered id without encoding errors.
    claimed.encode("utf-8", "surrogatepass")
    for confirm in (True, False):
        event = okdokument_normalize(
            stored(body, channel="sendinfo", provider="okdokument"), confirm_claims=confirm
        )
        assert_storable_facts(event)


# --- Firma ----------------------------------------------------------------------------------


@settings(max_examples=examples(500))
@given(s.bodies(s.firma_objects("fsr-1")))
@example(b'{"id":"e1","type":"signing_request.sent","created_at":1e15}')
@example(b'{"id":"e1","type":"signing_request.sent","created_at":1e308}')
@example(b'{"id":"e1","type":"signing_request.sent","created_at":' + b"9" * 70 + b"}")
@example(('{"id":"' + "e" * 200 + '","type":"x"}').encode())
def test_firma_envelope_is_parsed_or_refused_and_what_is_accepted_is_processable(
    body: bytes,
) -> None:
    envelope = refused_with_400(parse_envelope, body)
    if envelope is None:
        return
    key = dedupe_key(envelope.event_id)
    assert (
        inbox.intake_problem(dedupe_key=key, query="", external_id=envelope.signing_request_id)
        is None
    )
    event = firma_normalize(stored(body, channel="webhook", provider="firma"))
    assert event.event_id == envelope.event_id
    assert_storable_facts(event)


@settings(max_examples=examples(500))
@given(s.timestamps)
def test_a_firma_timestamp_is_a_plausible_time_or_none(value: Any) -> None:
    seconds = parse_timestamp(value)
    assert seconds is None or EARLIEST_OCCURRED_AT <= seconds < LATEST_OCCURRED_AT
    assert seconds is None or iso(seconds) is not None


@settings(max_examples=examples(500))
@given(header=st.one_of(st.text(s.ANY_CHAR, max_size=200), s.signature_headers(b"{}", SECRET, NOW)))
def test_signature_header_parses_or_is_one_verification_error(header: str) -> None:
    try:
        parsed = signature.parse_header(header)
    except SignatureInvalid:
        return
    assert isinstance(parsed.timestamp, int)
    assert all(len(v) == 64 for v in parsed.signatures)


@settings(max_examples=examples(300))
@given(
    data=st.data(),
    body=s.json_bytes(s.firma_objects("fsr-1")),
    old=st.one_of(st.none(), st.text(s.ANY_CHAR, max_size=100)),
)
def test_verification_answers_or_refuses_never_raises_anything_else(
    data: st.DataObject, body: bytes, old: str | None
) -> None:
    headers = {signature.SIGNATURE_HEADER: data.draw(s.signature_headers(body, SECRET, NOW))}
    if old is not None:
        headers[signature.OLD_SIGNATURE_HEADER] = old
    try:
        stamp = signature.verify(headers, body, [SECRET, "another-secret"], now=NOW)
    except SignatureInvalid:
        return
    assert abs(stamp - NOW) <= signature.DEFAULT_TOLERANCE_SECONDS
    # Stored headers are redacted text the database can hold (encoded as JSON).
    jsonutil.loads_object(jsonutil.dumps(HeaderRedaction(FIRMA_SECRET_HEADERS)(headers)))


# --- the browser return ---------------------------------------------------------------------


@settings(max_examples=examples(500))
@given(s.query_strings())
@example("ts=999999999999999&result=success")
@example("result=" + "%00" * 300)
def test_browser_return_always_normalizes_to_storable_facts(query: str) -> None:
    assert inbox.intake_problem(dedupe_key="return:x", query=query, external_id="sr") is None
    callback = stored(b"", channel="return", provider="okdokument", query=query)
    assert_storable_facts(normalize_return(callback, okdokument_return))
    assert_storable_facts(normalize_return(callback))  # a provider that reads nothing


# --- what the pipeline writes and what views show -------------------------------------------


@settings(max_examples=examples(500))
@given(value=s.text, limit=st.integers(min_value=1, max_value=300))
def test_storable_text_fits_any_column(value: str, limit: int) -> None:
    kept = storable(value, limit)
    assert text_problem(kept) is None
    assert len(kept) <= limit
    if text_problem(value) is None and len(value) <= limit:
        assert kept == value  # what fits is stored untouched


row_values = st.one_of(s.scalars, st.binary(max_size=8))


@settings(max_examples=examples(500))
@given(st.fixed_dictionaries(dict.fromkeys(inbox.TIMELINE_COLUMNS.split(", "), row_values)))
def test_any_stored_inbox_row_renders(row: dict[str, Any]) -> None:
    """Whatever an inbox row holds (rows written before these checks existed included),
    its timeline entry renders."""
    row["id"] = 1
    assert_renders(event_json(row))


@settings(max_examples=examples(300))
@given(
    times=st.lists(row_values, min_size=4, max_size=4),
    payload=st.one_of(s.text, st.just('{"a":"\\ud800"}'), st.just('{"a":1e999}')),
)
def test_any_stored_action_renders(times: list[Any], payload: str) -> None:
    row = {
        "id": 1,
        "request_id": 2,
        "action_key": "k",
        "operation": "op",
        "payload": payload,
        "status": "dead",
        "attempts": 3,
        "due_at": times[0],
        "last_status_code": None,
        "last_error": "\ud800",
        "created_at": times[1],
        "updated_at": times[2],
    }
    attempt = {
        "attempt": 1,
        "started_at": times[3],
        "duration_ms": float("nan"),
        "status_code": 500,
        "outcome": "retry",
        "error": "x\x00",
        "response_excerpt": "\udfff",
    }
    assert_renders(action_json(row, [attempt]))


@settings(max_examples=examples(500))
@given(st.one_of(s.scalars, st.binary(max_size=8)))
@example(1e15)
@example(1e308)
@example(10**70)
@example(float("nan"))
@example("1e15")
def test_iso_shows_any_stored_value_as_a_time_or_null(value: Any) -> None:
    shown = iso(value)
    if shown is not None:
        assert shown.endswith("Z")


@settings(max_examples=examples(300))
@given(s.json_values)
def test_any_json_value_renders(value: Any) -> None:
    orjson.loads(jsonutil.dumps_view(value))


# --- the admin API --------------------------------------------------------------------------


@settings(max_examples=examples(500))
@given(s.path_ids)
def test_row_ids_are_positive_64_bit_numbers_or_none(raw: str) -> None:
    value = row_id(raw)
    assert value is None or 0 < value < 2**63


@settings(max_examples=examples(400))
@given(s.json_bytes(s.registration_objects))
def test_a_valid_registration_holds_only_storable_values(body: bytes) -> None:
    """What the registration accepts can be stored on both databases and shown again
    unchanged; everything else is a field error (422) or not JSON (400)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return  # a 400
    try:
        registration = RegisterBody.model_validate(data)
    except ValidationError:
        return  # a 422 with the fields
    for value in (
        registration.provider,
        registration.signature_request_id,
        registration.document_id,
        registration.reference,
    ):
        assert value is None or text_problem(value) is None
    for stored_json in (registration.metadata, registration.defaults):
        assert json_problem(stored_json) is None
        assert jsonutil.loads_object(jsonutil.dumps(stored_json)) == stored_json
        assert_renders(stored_json)


def test_json_problem_refuses_what_cannot_round_trip() -> None:
    assert json_problem({"a": [1, 2.5, "x", None, True]}) is None
    assert json_problem({"a": float("nan")}) is not None
    assert json_problem({"a": 2**63}) is not None
    assert json_problem({"\ud800": 1}) is not None
    assert json_problem({"a": "\x00"}) is not None
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    assert json_problem({"a": deep}) is not None


@pytest.mark.parametrize("value", [1e15, 1e308, -1e308, 10**70, math.inf, math.nan, "abc"])
def test_absurd_stored_times_show_as_null(value: Any) -> None:
    assert iso(value) is None
