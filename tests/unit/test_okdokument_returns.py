"""The signer's browser coming back to OKdokument's result URL: the query is read by
handlers/okdokument/returns.py, the event made by receiver/pipeline/processor.py
normalize_return."""

from __future__ import annotations

import urllib.parse

import pytest

from handlers.okdokument.returns import parse_return
from receiver import NormalizedEvent
from receiver.events import EventKind
from receiver.pipeline import processor
from receiver.providers import StoredCallback
from receiver.providers.contract import ReturnFacts


def normalize_return(callback: StoredCallback) -> NormalizedEvent:
    return processor.normalize_return(callback, parse_return)


def callback(query: str, provider: str = "okdokument") -> StoredCallback:
    return StoredCallback(
        inbox_id=5,
        provider=provider,
        channel="return",
        body=b"",
        headers={},
        query=query,
        request_id=3,
        received_at=1_700_000_000.0,
    )


@pytest.mark.parametrize(
    ("query", "details", "provider_type"),
    [
        pytest.param(
            "result=success&lang=sk&docid=DOC-1&name=contract.pdf&ts=1700000000123",
            {"result": "success", "lang": "sk", "docid": "DOC-1", "name": "contract.pdf"},
            "return:success",
            id="okdokument-full",
        ),
        pytest.param("result=close", {"result": "close"}, "return:close", id="close"),
        pytest.param("result=mobile&lang=en", {"result": "mobile", "lang": "en"}, "return:mobile"),
        pytest.param("", {}, "return:unknown", id="no-query"),
        pytest.param("foo=bar&utm_source=x", {}, "return:unknown", id="only-other-params"),
        pytest.param("result=", {"result": ""}, "return:", id="blank-result"),
        pytest.param("name=", {"name": ""}, "return:unknown", id="blank-name-kept"),
        pytest.param(
            "name=J%C3%A1n+Nov%C3%A1k.pdf",
            {"name": "Ján Novák.pdf"},
            "return:unknown",
            id="url-decoded",
        ),
        pytest.param(
            "result=" + "r" * 300 + "&name=" + "n" * 5000 + "&docid=" + "d" * 200,
            {"result": "r" * 200, "name": "n" * 200, "docid": "d" * 200},
            "return:" + "r" * 200,
            id="values-cut-to-200",
        ),
        pytest.param("result=a&result=b", {"result": "b"}, "return:b", id="last-value-wins"),
    ],
)
def test_query_parsing(query: str, details: dict[str, str], provider_type: str) -> None:
    event = normalize_return(callback(query))

    assert event.details == details
    assert event.provider_type == provider_type
    assert event.kind == EventKind.SIGNER_RETURNED
    assert event.external_id is None
    assert event.event_id is None
    assert event.provider == "okdokument"


@pytest.mark.parametrize("provider", ["okdokument", "firma"])
def test_provider_comes_from_the_callback(provider: str) -> None:
    assert normalize_return(callback("result=success", provider)).provider == provider


def test_a_provider_that_reads_nothing_keeps_the_parameters_only() -> None:
    event = processor.normalize_return(callback("result=close&ts=1700000000123", "firma"))
    assert event.kind == EventKind.SIGNER_RETURNED
    assert event.provider_type == "return:unknown"
    assert event.details == {}
    assert event.occurred_at is None
    assert event.raw == {"result": "close", "ts": "1700000000123"}


@pytest.mark.parametrize(
    ("query", "retry"),
    [
        ("result=close", True),
        ("result=success", False),
        ("result=mobile", False),
        ("result=CLOSE", False),
        ("", False),
        ("result=close&result=success", False),
    ],
)
def test_close_sends_the_signer_to_the_retry_page(query: str, retry: bool) -> None:
    assert parse_return(query).retry is retry


def test_the_facts_make_the_event() -> None:
    facts = ReturnFacts(result="done", occurred_at=1_700_000_000.5, details={"a": "b"}, raw={})
    event = processor.normalize_return(callback(""), lambda _query: facts)
    assert event.provider_type == "return:done"
    assert event.occurred_at == 1_700_000_000.5
    assert event.details == {"a": "b"}


def test_raw_keeps_every_parameter() -> None:
    event = normalize_return(callback("result=success&utm_source=mail&empty="))
    assert event.raw == {"result": "success", "utm_source": "mail", "empty": ""}


@pytest.mark.parametrize(
    ("query", "occurred_at"),
    [
        pytest.param("ts=1700000000123", 1_700_000_000.123, id="ms"),
        pytest.param("ts=1700000000000", 1_700_000_000.0, id="whole-second"),
        pytest.param("ts=01700000000000", 1_700_000_000.0, id="leading-zero"),
        # Readable, but no time a signer returned at (before 2000, after 2100): no time.
        pytest.param("ts=0", None, id="zero"),
        pytest.param("ts=0001000", None, id="1970"),
        pytest.param("ts=999999999999999", None, id="year-33658"),
        pytest.param("ts=4102444800000", None, id="year-2100"),
        pytest.param("", None, id="missing"),
        pytest.param("ts=", None, id="empty"),
        pytest.param("ts=abc", None, id="letters"),
        pytest.param("ts=-1700000000123", None, id="negative"),
        pytest.param("ts=1700000000.123", None, id="decimal"),
        pytest.param("ts=1e12", None, id="exponent"),
        pytest.param("ts=+1700000000123", None, id="plus-decoded-to-space"),
        pytest.param("ts=%201700000000123", None, id="leading-space"),
        pytest.param("ts=0x10", None, id="hex"),
    ],
)
def test_ts_in_milliseconds(query: str, occurred_at: float | None) -> None:
    event = normalize_return(callback(query))
    assert "ts" not in event.details
    if occurred_at is None:
        assert event.occurred_at is None
        # What the browser sent is kept, never as a time (a view could not show it).
        if query.startswith("ts="):
            raw = urllib.parse.parse_qs(query, keep_blank_values=True)["ts"][0]
            assert event.details["occurred_at_raw"] == raw[:64]
        return
    assert event.occurred_at == pytest.approx(occurred_at)
    assert "occurred_at_raw" not in event.details


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("ts=%C2%B2", id="superscript-two"),
        pytest.param("ts=" + "9" * 5_000, id="over-4300-digits"),
        pytest.param("ts=" + "9" * 400, id="too-large-for-a-float"),
    ],
)
def test_garbage_ts_is_ignored_not_raised(query: str) -> None:
    event = normalize_return(callback(query + "&result=success"))
    assert event.occurred_at is None
    assert event.details["result"] == "success"
    assert len(event.details["occurred_at_raw"]) <= 64


def test_details_never_exceed_200_chars_per_value() -> None:
    query = "&".join(f"{key}={'x' * 1000}" for key in ("result", "lang", "docid", "name"))
    details = normalize_return(callback(query)).details
    assert sorted(details) == ["docid", "lang", "name", "result"]
    assert all(len(v) == 200 for v in details.values())
