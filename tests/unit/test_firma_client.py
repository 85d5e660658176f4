"""The Firma outbound client: property validation, requests on the wire (to a recording
server on loopback), reading answers."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from starlette.responses import JSONResponse, Response

from handlers.firma.client import (
    DEFAULT_BASE_URL,
    FirmaClient,
    is_immutable_answer,
    provider_message,
    retry_after_seconds,
    validate_properties,
)
from receiver.errors import ConfigurationError, InvalidAction
from tests.servers import Recorded, Recorder, running_server

API_KEY = "fk_live_0123456789abcdef"
PDF = base64.b64encode(b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n%%EOF\n").decode()
BASE_PATH = "/functions/v1/signing-request-api"

# --- validate_properties --------------------------------------------------------------------

GOOD: list[dict[str, Any]] = [
    {"name": "Updated Contract Name", "expiration_hours": 72},  # the seed's example
    {"name": "n" * 255},
    {"description": "Renewal 2026"},
    {"description": None},
    {"document": PDF},
    {"expiration_hours": 1},
    {"settings": {"allow_download": True, "require_otp_verification": False}},
    {"settings": {"hand_drawn_only": True, "some_future_switch": False}},
    {"language": "en"},
    {"language": "pt-BR"},
    {"completion_title": "Thank you"},
    {"completion_message": ""},
    {"completion_redirect_url": "https://example.com/signed?order=42"},
    {"completion_redirect_url": "http://localhost:8000/done"},
    {"completion_redirect_delay": 0},
    {"completion_redirect_delay": 5, "completion_title": "Done", "language": "fr"},
]


@pytest.mark.parametrize("props", GOOD, ids=lambda props: ",".join(props))
def test_valid_properties_pass_unchanged(props: dict[str, Any]) -> None:
    checked = validate_properties(props)
    assert checked == props
    assert checked is not props  # a copy: later changes to the rule's dict do not leak in


BAD: list[tuple[Any, str]] = [
    ({}, "no Firma properties"),
    ({"name": ""}, "'name'"),
    ({"name": "   "}, "'name'"),
    ({"name": "n" * 256}, "'name'.*256"),
    ({"name": 5}, "'name'.*string"),
    ({"description": 5}, "'description'"),
    ({"document": "not base64!"}, "'document'.*base64"),
    ({"document": PDF[:20] + "\n" + PDF[20:]}, "'document'.*base64"),
    ({"document": base64.b64encode(b"<html></html>").decode()}, "'document'.*PDF"),
    ({"document": ""}, "'document'.*PDF"),
    ({"expiration_hours": 0}, "'expiration_hours'.*at least 1"),
    ({"expiration_hours": -5}, "'expiration_hours'"),
    ({"expiration_hours": True}, "'expiration_hours'.*integer"),
    ({"expiration_hours": 72.0}, "'expiration_hours'.*integer"),
    ({"expiration_hours": "72"}, "'expiration_hours'.*integer"),
    ({"settings": []}, "'settings'.*object"),
    ({"settings": {}}, "'settings'.*empty"),
    ({"settings": {"allow_download": "yes"}}, "'settings.allow_download'.*true or false"),
    ({"settings": {"allow_download": 1}}, "'settings.allow_download'"),
    ({"settings": {"future_switch": "on"}}, "'settings.future_switch'"),
    ({"settings": {"Not A Key": True}}, "'settings.Not A Key'.*setting name"),
    ({"language": "english please"}, "'language'"),
    ({"language": 7}, "'language'"),
    ({"completion_title": None}, "'completion_title'"),
    ({"completion_message": 1}, "'completion_message'"),
    ({"completion_redirect_url": "/relative/path"}, "'completion_redirect_url'"),
    ({"completion_redirect_url": "javascript:alert(1)"}, "'completion_redirect_url'"),
    ({"completion_redirect_url": "ftp://example.com/x"}, "'completion_redirect_url'"),
    ({"completion_redirect_url": "https://"}, "'completion_redirect_url'"),
    ({"completion_redirect_url": "https://ex ample.com/"}, "'completion_redirect_url'"),
    ({"completion_redirect_delay": -1}, "'completion_redirect_delay'.*at least 0"),
    ({"completion_redirect_delay": False}, "'completion_redirect_delay'"),
    ({"recipient": {"id": "rec_abc", "email": "a@example.com"}}, "'recipient'.*entity"),
    ({"field": {"id": "fld_1"}}, "'field'.*entity"),
    ({"name": "ok", "recipients": []}, "'recipients'.*entity"),
    ({"status": "finished"}, "'status'.*not one Firma documents"),
    ({"expiration": 72}, "'expiration'.*known: .*expiration_hours"),
    ("name=x", "must be an object"),
]


@pytest.mark.parametrize(("props", "pattern"), BAD, ids=[repr(p)[:40] for p, _ in BAD])
def test_invalid_properties_are_refused_naming_the_property(props: Any, pattern: str) -> None:
    with pytest.raises(InvalidAction, match=pattern) as caught:
        validate_properties(props)
    assert "not sent" in caught.value.message


# --- the client on the wire -----------------------------------------------------------------


def _created(_: Recorded) -> Response:
    return JSONResponse({"id": "sr_789"})


@pytest.fixture(scope="module")
def served_recorder() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()
    with running_server(recorder) as url:
        yield url, recorder


@pytest.fixture
def recorder(served_recorder: tuple[str, Recorder]) -> Recorder:
    """A Firma stand-in on loopback that records each request and answers ``{"id": …}``."""
    served_recorder[1].reset(_created)
    return served_recorder[1]


@pytest.fixture
def base_url(served_recorder: tuple[str, Recorder]) -> str:
    """Firma's base URL, path included, on the recording server."""
    return served_recorder[0] + BASE_PATH


@pytest.mark.anyio
async def test_patch_sends_raw_key_json_body_and_stays_under_the_base_path(
    recorder: Recorder, base_url: str
) -> None:
    async with FirmaClient(base_url, API_KEY) as client:
        response = await client.patch_signing_request(
            "sr_789", {"name": "Updated Contract Name", "expiration_hours": 72}
        )
    assert response.status_code == 200
    [request] = recorder.requests
    assert request.method == "PATCH"
    assert request.target == f"{BASE_PATH}/signing-requests/sr_789".encode()
    assert request.headers["authorization"] == API_KEY  # raw key, no "Bearer "
    assert request.headers["user-agent"].startswith("signback")
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body) == {"name": "Updated Contract Name", "expiration_hours": 72}


@pytest.mark.anyio
async def test_get_signing_request(recorder: Recorder, base_url: str) -> None:
    async with FirmaClient(base_url, API_KEY) as client:
        await client.get_signing_request("3c90c3cc-0d44-4b50-8888-8dd25736052a")
    [request] = recorder.requests
    assert request.method == "GET"
    assert request.target == (
        f"{BASE_PATH}/signing-requests/3c90c3cc-0d44-4b50-8888-8dd25736052a".encode()
    )
    assert request.headers["authorization"] == API_KEY
    assert request.body == b""


@pytest.mark.parametrize(
    ("signing_request_id", "segment"),
    [
        ("../webhooks", "..%2Fwebhooks"),
        ("sr/789", "sr%2F789"),
        ("sr?admin=1", "sr%3Fadmin%3D1"),
        ("sr#frag", "sr%23frag"),
        ("sr%2F789", "sr%252F789"),
        ("sr 789", "sr%20789"),
        ("..\\..", "..%5C.."),
    ],
)
@pytest.mark.anyio
async def test_ids_are_quoted_so_nothing_escapes_the_base_url(
    signing_request_id: str, segment: str, recorder: Recorder, base_url: str
) -> None:
    async with FirmaClient(base_url, API_KEY) as client:
        await client.patch_signing_request(signing_request_id, {"name": "x"})
        await client.get_signing_request(signing_request_id)
    assert len(recorder.requests) == 2
    for request in recorder.requests:
        assert request.target == f"{BASE_PATH}/signing-requests/{segment}".encode()


@pytest.mark.parametrize("signing_request_id", ["", ".", "..", "...", "s" * 201])
@pytest.mark.anyio
async def test_ids_that_would_change_the_endpoint_are_refused(
    signing_request_id: str, recorder: Recorder, base_url: str
) -> None:
    async with FirmaClient(base_url, API_KEY) as client:
        with pytest.raises(InvalidAction, match="not a Firma signing request id"):
            await client.patch_signing_request(signing_request_id, {"name": "x"})
        with pytest.raises(InvalidAction):
            await client.get_signing_request(signing_request_id)
    assert recorder.requests == []


@pytest.mark.anyio
async def test_invalid_properties_never_reach_the_server(recorder: Recorder, base_url: str) -> None:
    async with FirmaClient(base_url, API_KEY) as client:
        for props, _ in BAD:
            with pytest.raises(InvalidAction):
                await client.patch_signing_request("sr_789", props)
    assert recorder.requests == []


@pytest.mark.anyio
async def test_redirects_are_not_followed(recorder: Recorder, base_url: str) -> None:
    def redirect(_: Recorded) -> Response:
        return Response(status_code=302, headers={"Location": f"{base_url}/steal"})

    recorder.reset(redirect)
    async with FirmaClient(base_url, API_KEY) as client:
        response = await client.patch_signing_request("sr_789", {"name": "x"})
    assert response.status_code == 302
    assert len(recorder.requests) == 1


@pytest.mark.anyio
async def test_base_url_with_trailing_slash(
    recorder: Recorder, served_recorder: tuple[str, Recorder]
) -> None:
    async with FirmaClient(f"{served_recorder[0]}/firma/", API_KEY) as client:
        await client.get_signing_request("sr_789")
    assert recorder.requests[0].target == b"/firma/signing-requests/sr_789"


@pytest.mark.parametrize(
    ("configured", "sent"),
    [("  key_123\n", "key_123"), ("Bearer key_123", "key_123"), ("bearer  key_123 ", "key_123")],
)
@pytest.mark.anyio
async def test_key_is_sent_raw(
    configured: str, sent: str, recorder: Recorder, base_url: str
) -> None:
    async with FirmaClient(base_url, configured) as client:
        await client.get_signing_request("sr_789")
    assert recorder.requests[0].headers["authorization"] == sent


@pytest.mark.parametrize("key", ["", "   ", "Bearer ", "key with space", "k\ney", "clé"])
def test_bad_keys_are_refused_without_echoing_them(key: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        FirmaClient(DEFAULT_BASE_URL, key)
    if key.strip():
        assert key.strip() not in caught.value.message


@pytest.mark.parametrize("base_url", ["", "api.firma.dev", "ftp://api.firma.dev/x", "https://"])
def test_bad_base_urls_are_refused(base_url: str) -> None:
    with pytest.raises(ConfigurationError, match="base URL"):
        FirmaClient(base_url, API_KEY)


@pytest.mark.anyio
async def test_the_key_is_never_in_repr_or_logs(
    caplog: pytest.LogCaptureFixture, recorder: Recorder, base_url: str
) -> None:
    caplog.set_level(logging.DEBUG)
    async with FirmaClient(base_url, API_KEY) as client:
        await client.patch_signing_request("sr_789", {"name": "x"})
        assert API_KEY not in repr(client)
        assert API_KEY not in str(vars(client))
        assert repr(client) == f"FirmaClient(base_url={base_url!r})"
    assert recorder.requests[0].headers["authorization"] == API_KEY  # it was sent…
    assert API_KEY not in caplog.text  # …and logged nowhere


# --- reading answers ------------------------------------------------------------------------


def answer(
    status: int, body: Any = None, headers: Mapping[str, str] | None = None
) -> httpx.Response:
    if isinstance(body, bytes | str):
        return httpx.Response(status, content=body, headers=headers)
    if body is None:
        return httpx.Response(status, headers=headers)
    return httpx.Response(status, json=body, headers=headers)


ALREADY_SENT_400 = {
    "error": "Cannot update signing request",
    "message": "Signing request has already been sent and cannot be modified",
}
ALREADY_SENT_409 = {
    "error": "Cannot delete a signing request that has been sent. Use cancel instead.",
    "code": "ALREADY_SENT",
}
RATE_LIMITED = {
    "error": "Too Many Requests",
    "message": "Rate limit exceeded. Please retry after 45 seconds.",
    "code": "RATE_LIMIT_EXCEEDED",
}


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (
            answer(429, RATE_LIMITED),
            "Too Many Requests: Rate limit exceeded. Please retry after 45 seconds. "
            "[RATE_LIMIT_EXCEEDED]",
        ),
        (
            answer(400, ALREADY_SENT_400),
            "Cannot update signing request: Signing request has already been sent and "
            "cannot be modified",
        ),
        (
            answer(409, ALREADY_SENT_409),
            "Cannot delete a signing request that has been sent. Use cancel instead. "
            "[ALREADY_SENT]",
        ),
        (answer(404, {"error": "Not found", "message": "Not found"}), "Not found"),
        (
            answer(
                400,
                {
                    "error": "Validation failed",
                    "code": "VALIDATION_ERROR",
                    "details": {"expiration_hours": "must be >= 1"},
                },
            ),
            'Validation failed [VALIDATION_ERROR] (details: {"expiration_hours": "must be >= 1"})',
        ),
        (
            answer(502, b"<html><body>Bad gateway</body></html>"),
            "<html><body>Bad gateway</body></html>",
        ),
        (answer(500, "x" * 1000), "x" * 300),
        (answer(500, b"line one\n\n  line two"), "line one line two"),
        (answer(503), "HTTP 503 Service Unavailable"),
        (answer(400, {"message": "no error key"}), '{"message":"no error key"}'),
        (answer(400, [1, 2]), "[1,2]"),
    ],
)
def test_provider_message(response: httpx.Response, expected: str) -> None:
    assert provider_message(response) == expected


def test_provider_message_of_an_unread_stream() -> None:
    response = httpx.Response(500, stream=httpx.ByteStream(b"boom"))
    assert provider_message(response) == "HTTP 500 Internal Server Error"


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (answer(400, ALREADY_SENT_400), True),  # the API spec's answer
        (answer(409, ALREADY_SENT_409), True),  # the guide's answer
        (answer(409, {"error": "Conflict", "code": "ALREADY_SENT"}), True),
        (answer(400, {"error": "Signing request cannot be modified"}), True),
        (answer(400, {"error": "Cannot update", "message": "ALREADY BEEN SENT"}), True),
        (answer(400, {"error": "Validation failed", "code": "VALIDATION_ERROR"}), False),
        (answer(409, {"error": "Conflict", "code": "INVALID_STATE"}), False),
        (answer(500, ALREADY_SENT_400), False),  # a server error is not a final refusal
        (answer(429, RATE_LIMITED), False),
        (answer(200, {"id": "sr_789", "status": "not_sent"}), False),
        (answer(400, b"already been sent"), False),  # not a Firma error body
        (answer(400), False),
    ],
)
def test_is_immutable_answer(response: httpx.Response, expected: bool) -> None:
    assert is_immutable_answer(response) is expected


NOW = 1_734_451_155.0
HTTP_DATE_IN_30S = format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True)
HTTP_DATE_PAST = format_datetime(datetime.fromtimestamp(NOW - 30, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (answer(429, RATE_LIMITED, {"Retry-After": "45"}), 45.0),
        (answer(503, None, {"Retry-After": "1.5"}), 1.5),
        (answer(429, None, {"Retry-After": HTTP_DATE_IN_30S}), 30.0),
        (answer(429, None, {"Retry-After": HTTP_DATE_PAST}), 0.0),
        (answer(429, None, {"Retry-After": "-10"}), 0.0),
        # Retry-After wins over X-RateLimit-Reset.
        (answer(429, None, {"Retry-After": "5", "X-RateLimit-Reset": "1734451200"}), 5.0),
        (answer(429, None, {"X-RateLimit-Reset": "1734451200"}), 45.0),
        (answer(429, None, {"Retry-After": "soon", "X-RateLimit-Reset": "1734451200"}), 45.0),
        (answer(429, None, {"X-RateLimit-Reset": "1734451000"}), 0.0),  # already past
        (answer(429, None, {"X-RateLimit-Reset": "20"}), 20.0),  # a delay, not a date
        (
            answer(400, None, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1734451200"}),
            45.0,
        ),
        # Every Firma answer carries the reset header; without a hit limit it means nothing.
        (
            answer(500, None, {"X-RateLimit-Remaining": "7", "X-RateLimit-Reset": "1734451200"}),
            None,
        ),
        (answer(200, None, {"X-RateLimit-Reset": "1734451200"}), None),
        (answer(429, RATE_LIMITED), None),
        (answer(429, None, {"Retry-After": "soon"}), None),
        (answer(429, None, {"X-RateLimit-Reset": "nan"}), None),
    ],
)
def test_retry_after_seconds(response: httpx.Response, expected: float | None) -> None:
    assert retry_after_seconds(response, now=NOW) == (
        None if expected is None else pytest.approx(expected)
    )
