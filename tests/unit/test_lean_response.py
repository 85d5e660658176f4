"""The outbox client's answers (receiver/outbox/lean_http.py): what provider clients read of them
must read as it does on an ``httpx.Response`` built from the same bytes."""

from __future__ import annotations

import httpx
import pytest

from receiver.outbox.lean_http import LeanHeaders, LeanResponse

RAW = [
    (b"Content-Type", b"application/json; charset=utf-8"),
    (b"Retry-After", b"7"),
    (b"X-Thing", b"a"),
    (b"x-thing", b"b"),
]


def both(status: int, raw: list[tuple[bytes, bytes]], body: bytes) -> list[object]:
    return [
        LeanResponse(status, LeanHeaders(raw), body),
        httpx.Response(status, headers=raw, content=body),
    ]


@pytest.mark.parametrize("answer", both(429, RAW, b'{"error": "slow down"}'))
def test_reads_like_an_httpx_response(answer: LeanResponse | httpx.Response) -> None:
    assert answer.status_code == 429
    assert answer.reason_phrase == "Too Many Requests"
    assert answer.headers.get("retry-after") == "7"
    assert answer.headers["RETRY-AFTER"] == "7"
    assert "Content-Type" in answer.headers
    assert answer.headers.get("x-thing") == "a, b"  # repeated headers, joined
    assert answer.headers.get("missing") is None
    assert answer.json() == {"error": "slow down"}
    assert answer.text == '{"error": "slow down"}'
    assert answer.content == b'{"error": "slow down"}'


@pytest.mark.parametrize(
    ("content_type", "body", "text"),
    [
        (b"text/plain; charset=latin-1", "Grüße".encode("latin-1"), "Grüße"),
        (b"text/plain", "Grüße".encode(), "Grüße"),
        (b"text/plain; charset=no-such-charset", b"ok", "ok"),
        (b"text/plain", b"\xff\xfe broken", "\ufffd\ufffd broken"),
    ],
)
def test_text_follows_the_charset(content_type: bytes, body: bytes, text: str) -> None:
    answer = LeanResponse(200, LeanHeaders([(b"content-type", content_type)]), body)
    assert answer.text == text


def test_an_unknown_status_has_no_reason_and_bad_json_raises_value_error() -> None:
    answer = LeanResponse(599, LeanHeaders([]), b"{not json")
    assert answer.reason_phrase == ""
    with pytest.raises(ValueError, match=r"\w"):
        answer.json()
