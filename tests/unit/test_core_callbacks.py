"""Intake helpers shared by every provider route (receiver/intake/ack.py), and the header
redaction built from the installed providers' secret headers (receiver/intake/redaction.py)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from receiver.app import build_providers
from receiver.errors import CallbackRejected, SignatureInvalid
from receiver.intake.ack import body_key, parse_json_object
from receiver.intake.redaction import HeaderRedaction
from receiver.providers.contract import SecretHeader
from tests.conftest import test_settings

SECRET_VALUE = "s3cr3t-value-that-must-not-be-stored"


@pytest.fixture(scope="module")
def redact_headers() -> HeaderRedaction:
    """What the app redacts: the core's list and every installed provider's headers."""
    providers, _ = build_providers(test_settings("sqlite:///unused.db"))
    return HeaderRedaction(h for p in providers.values() for h in p.secret_headers)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(
            {"Authorization": f"Bearer {SECRET_VALUE}"},
            {"authorization": "[redacted]"},
            id="authorization",
        ),
        pytest.param({"X-API-Key": SECRET_VALUE}, {"x-api-key": "[redacted]"}, id="x-api-key"),
        pytest.param({"COOKIE": f"s={SECRET_VALUE}"}, {"cookie": "[redacted]"}, id="cookie"),
        pytest.param({"Set-Cookie": SECRET_VALUE}, {"set-cookie": "[redacted]"}, id="set-cookie"),
        pytest.param(
            {"Proxy-Authorization": SECRET_VALUE},
            {"proxy-authorization": "[redacted]"},
            id="proxy-authorization",
        ),
        pytest.param({"authorization": ""}, {"authorization": "[redacted]"}, id="empty-secret"),
        pytest.param(
            {"X-Firma-Signature": f"t=1700000000,v1={SECRET_VALUE}"},
            {"x-firma-signature": "t=1700000000,v1=[redacted]"},
            id="firma-signature",
        ),
        pytest.param(
            {"x-firma-signature": f"v1={SECRET_VALUE}, t=42"},
            {"x-firma-signature": "t=42,v1=[redacted]"},
            id="firma-signature-v1-first-with-spaces",
        ),
        pytest.param(
            {"x-firma-signature": f"t=1,t=2,v1={SECRET_VALUE},v1={SECRET_VALUE}"},
            {"x-firma-signature": "t=1,v1=[redacted]"},
            id="firma-signature-first-timestamp-only",
        ),
        pytest.param(
            {"x-firma-signature": f"v1={SECRET_VALUE}"},
            {"x-firma-signature": "v1=[redacted]"},
            id="firma-signature-no-timestamp",
        ),
        pytest.param(
            {"x-firma-signature": SECRET_VALUE},
            {"x-firma-signature": "v1=[redacted]"},
            id="firma-signature-malformed",
        ),
        pytest.param(
            {"X-Firma-Signature-Old": f"t=9,v1={SECRET_VALUE}"},
            {"x-firma-signature-old": "t=9,v1=[redacted]"},
            id="firma-signature-old",
        ),
        pytest.param(
            {"Content-Type": "application/json", "User-Agent": "OKdokument/1.0"},
            {"content-type": "application/json", "user-agent": "OKdokument/1.0"},
            id="ordinary-headers-kept-lower-cased",
        ),
        pytest.param({"X-Long": "a" * 5000}, {"x-long": "a" * 1000}, id="long-value-cut"),
        pytest.param({"X-Edge": "b" * 1000}, {"x-edge": "b" * 1000}, id="exactly-1000-kept"),
        pytest.param({}, {}, id="none"),
    ],
)
def test_redact_headers(
    redact_headers: HeaderRedaction, headers: dict[str, str], expected: dict[str, str]
) -> None:
    redacted = redact_headers(headers)

    assert redacted == expected
    assert SECRET_VALUE not in repr(redacted)


def test_redact_headers_does_not_change_its_input(redact_headers: HeaderRedaction) -> None:
    headers = {"Authorization": "Bearer x"}
    redact_headers(headers)
    assert headers == {"Authorization": "Bearer x"}


def test_a_provider_declares_names_and_patterns_with_their_own_redactor() -> None:
    """Numbered signature headers (DocuSign's X-DocuSign-Signature-1..N) by pattern, a
    name with a redactor that keeps part of the value, the core's list kept either way."""
    redaction = HeaderRedaction(
        [
            SecretHeader(r"x-acme-signature-\d+"),
            SecretHeader("x-acme-stamp", lambda value: value[:2] + "…"),
        ]
    )
    headers = {
        "X-Acme-Signature-1": SECRET_VALUE,
        "x-acme-signature-12": SECRET_VALUE,
        "x-acme-signature-": "kept: no number",
        "x-acme-signature-1x": "kept: not the whole name",
        "X-Acme-Stamp": "t=" + SECRET_VALUE,
        "Authorization": SECRET_VALUE,
    }
    assert redaction(headers) == {
        "x-acme-signature-1": "[redacted]",
        "x-acme-signature-12": "[redacted]",
        "x-acme-signature-": "kept: no number",
        "x-acme-signature-1x": "kept: not the whole name",
        "x-acme-stamp": "t=…",
        "authorization": "[redacted]",
    }


@pytest.mark.parametrize(
    "parts",
    [
        (),
        ("a",),
        (1, b"body"),
        ("provider", "channel", None, b"\x00\xff"),
        (123, "ts=1&result=success"),
    ],
)
def test_body_key_is_stable_sha256_hex(parts: tuple[str | bytes | int | None, ...]) -> None:
    key = body_key(*parts)

    assert key == body_key(*parts)
    assert len(key) == 64
    assert set(key) <= set("0123456789abcdef")


def test_body_key_of_nothing_is_the_empty_digest() -> None:
    assert body_key() == hashlib.sha256().hexdigest()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(("ab", "c"), ("a", "bc"), id="boundary"),
        pytest.param((b"ab", b"c"), (b"a", b"bc"), id="boundary-bytes"),
        pytest.param(("a", "b"), ("b", "a"), id="order"),
        pytest.param(("a",), ("a", ""), id="trailing-empty-part"),
        pytest.param(("",), (), id="one-empty-part"),
        pytest.param((1, b"{}"), (2, b"{}"), id="request-id"),
        pytest.param((1, b'{"a":1}'), (1, b'{"a": 1}'), id="raw-bytes-not-parsed-json"),
        pytest.param((1, "q=1"), (1, "q=1&"), id="query"),
    ],
)
def test_body_key_is_order_and_boundary_sensitive(
    first: tuple[str | bytes | int | None, ...], second: tuple[str | bytes | int | None, ...]
) -> None:
    assert body_key(*first) != body_key(*second)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            b'{"signatureRequestId": "SR-1", "state": "signed"}',
            {"signatureRequestId": "SR-1", "state": "signed"},
        ),
        (b"{}", {}),
        (b'  {"nested": {"list": [1, 2, null]}}\n', {"nested": {"list": [1, 2, None]}}),
        ('{"name": "Ján Novák"}'.encode(), {"name": "Ján Novák"}),
        (b'{"name": "J\\u00e1n"}', {"name": "Ján"}),
        (b'\xef\xbb\xbf{"bom": true}', {"bom": True}),
        (b'{"a": 1, "a": 2}', {"a": 2}),
    ],
)
def test_parse_json_object_accepts_objects(body: bytes, expected: dict[str, Any]) -> None:
    assert parse_json_object(body) == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b"[]", "must be a JSON object", id="empty-list"),
        pytest.param(b'[{"a": 1}]', "must be a JSON object", id="list"),
        pytest.param(b'"text"', "must be a JSON object", id="string"),
        pytest.param(b"1", "must be a JSON object", id="number"),
        pytest.param(b"null", "must be a JSON object", id="null"),
        pytest.param(b"true", "must be a JSON object", id="bool"),
        pytest.param(b"", "not valid JSON", id="empty"),
        pytest.param(b"   ", "not valid JSON", id="blank"),
        pytest.param(b"{", "not valid JSON", id="truncated"),
        pytest.param(b"{'a': 1}", "not valid JSON", id="single-quotes"),
        pytest.param(b'{"a": 1} {"b": 2}', "not valid JSON", id="two-documents"),
        pytest.param(b"state=signed&id=1", "not valid JSON", id="form-encoded"),
        pytest.param(b'{"a": "\xff"}', "not valid JSON", id="invalid-utf8"),
        pytest.param(b'{"a": "\xc3"}', "not valid JSON", id="truncated-utf8"),
        pytest.param(b"\x00\x01\x02", "not valid JSON", id="binary"),
    ],
)
def test_parse_json_object_rejects_with_400(body: bytes, message: str) -> None:
    with pytest.raises(CallbackRejected, match=message) as caught:
        parse_json_object(body)
    assert caught.value.status_code == 400
    assert not isinstance(caught.value, SignatureInvalid)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 100_000, id="deep-nesting"),
        pytest.param(b'{"a": 1' + b"0" * 5_000 + b"}", id="huge-integer"),
    ],
)
def test_parse_json_object_rejects_pathological_json_with_400(body: bytes) -> None:
    with pytest.raises(CallbackRejected) as caught:
        parse_json_object(body)
    assert caught.value.status_code == 400
