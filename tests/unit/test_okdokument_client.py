"""The OKdokument client on the wire: against the emulator served on loopback, and against a
recording server for what exactly it sends."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import AsyncIterator, Iterator
from urllib.parse import unquote

import httpx
import pytest
from starlette.responses import Response

from handlers.okdokument.client import OkdokumentClient, provider_message
from handlers.okdokument.fake import FakeOkdokument, create_app
from tests.servers import Recorded, Recorder, running_server

KEY = "7796b696_bd2b1aaf7ef4f09be9f52ce2d8d5"

pytestmark = pytest.mark.anyio


@pytest.fixture
def fake() -> FakeOkdokument:
    return FakeOkdokument(api_key=KEY, clock=lambda: 1655814644.472)


@pytest.fixture
def base(fake: FakeOkdokument) -> Iterator[str]:
    """The emulator, served on loopback."""
    with running_server(create_app(fake)) as url:
        yield url


@pytest.fixture
async def client(base: str) -> AsyncIterator[OkdokumentClient]:
    async with OkdokumentClient(base, KEY) as c:
        yield c


@pytest.fixture(scope="module")
def served_recorder() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()
    with running_server(recorder) as url:
        yield url, recorder


@pytest.fixture
def recorder(served_recorder: tuple[str, Recorder]) -> Recorder:
    """A server that records what it gets and answers ``{}`` (or what a test sets)."""
    served_recorder[1].reset()
    return served_recorder[1]


@pytest.fixture
def recorder_base(served_recorder: tuple[str, Recorder]) -> str:
    return served_recorder[0]


def _seed(fake: FakeOkdokument, request_id: str = "1d58a59e-e8f7-4d07-bb99-d3fa39cb58a8") -> str:
    doc = fake.new_document("contract.pdf", b"%PDF-1.4", document_id="y7Ki_u1mrUwijfb")
    fake.new_round(doc, signature_request_id=request_id, send_info_url=None, result_url=None)
    return request_id


async def test_patch_sends_only_given_fields_and_gets_documented_answer(
    fake: FakeOkdokument, client: OkdokumentClient, base: str
) -> None:
    request_id = _seed(fake)

    response = await client.patch_signature_request(
        request_id, send_info_url="https://receiver.example/sendInfo/t0k?arg=123456"
    )

    assert response.status_code == 200
    assert response.json() == {
        "message": "msg.updated",
        "result": request_id,
        "url": f"{base}/{request_id}",
    }
    call = fake.calls[-1]
    assert (call.method, call.path, call.authorized) == ("PATCH", "/JSON/signatureRequest", True)
    assert call.body == {
        "signatureRequestId": request_id,
        "sendInfoURL": "https://receiver.example/sendInfo/t0k?arg=123456",
    }
    sr = fake.signature_requests[request_id]
    assert sr.send_info_url == "https://receiver.example/sendInfo/t0k?arg=123456"
    assert sr.result_url is None


async def test_patch_result_url_only(fake: FakeOkdokument, client: OkdokumentClient) -> None:
    request_id = _seed(fake)

    response = await client.patch_signature_request(
        request_id, result_url="https://portal.example/done"
    )

    assert response.status_code == 200
    assert fake.calls[-1].body == {
        "signatureRequestId": request_id,
        "resulturl": "https://portal.example/done",
    }
    assert fake.signature_requests[request_id].result_url == "https://portal.example/done"


async def test_patch_without_fields_is_a_caller_bug(recorder: Recorder, recorder_base: str) -> None:
    async with OkdokumentClient(recorder_base, KEY) as c:
        with pytest.raises(ValueError, match="nothing to update"):
            await c.patch_signature_request("x")
    assert recorder.requests == []


async def test_patch_unknown_id_is_400_with_the_providers_message(
    client: OkdokumentClient,
) -> None:
    response = await client.patch_signature_request(
        "32f8628d-nope", send_info_url="https://receiver.example/s"
    )

    assert response.status_code == 400
    assert response.json() == {
        "message": "View ID does not exist: 32f8628d-nope",
        "value": "32f8628d-nope",
    }
    assert "View ID does not exist: 32f8628d-nope" in provider_message(response)


async def test_wrong_key_is_401(fake: FakeOkdokument, base: str) -> None:
    request_id = _seed(fake)
    async with OkdokumentClient(base, "not-the-key") as c:
        response = await c.patch_signature_request(request_id, result_url="https://p.example/")

    assert response.status_code == 401
    assert fake.calls[-1].authorized is False
    # Nothing changed behind an unauthenticated call.
    assert fake.signature_requests[request_id].result_url is None


async def test_document_metadata_found(fake: FakeOkdokument, client: OkdokumentClient) -> None:
    _seed(fake)

    response = await client.document_metadata("y7Ki_u1mrUwijfb")

    assert response.status_code == 200
    assert response.json() == {
        "filename": "contract.pdf",
        "state": "tosign",
        "modification": "2022-06-21 12:30:44",
        "id": "y7Ki_u1mrUwijfb",
        "date": 1655814644472,
        "number": "1655814644472",
    }


async def test_document_metadata_not_found(client: OkdokumentClient) -> None:
    response = await client.document_metadata("missing-doc")

    assert response.status_code == 404
    assert response.json() == {"message": "err.not.found", "value": "missing-doc"}
    assert provider_message(response) == "err.not.found (missing-doc)"


async def test_create_then_delete_signature_request(
    fake: FakeOkdokument, client: OkdokumentClient, base: str
) -> None:
    created = await client.create_signature_request(
        {
            "signatureRequestId": "round-1",
            "sendInfoURL": "https://receiver.example/s/abc",
            "filedata": {
                "filename": "nda.pdf",
                "content": base64.b64encode(b"%PDF-1.4 nda").decode(),
                "state": "tosign",
            },
        }
    )
    assert created.status_code == 200
    body = created.json()
    assert body["message"] == "msg.signature.request.id.created"
    assert body["result"] == "round-1"
    assert body["url"] == f"{base}/openDocument/round-1"
    assert fake.documents[body["documentId"]].content == b"%PDF-1.4 nda"

    deleted = await client.delete_signature_request("round-1")
    assert deleted.status_code == 200
    assert deleted.json() == {"message": "msg.deleted", "result": "round-1"}

    again = await client.delete_signature_request("round-1")
    assert again.status_code == 400
    assert provider_message(again) == "err.signature.request.not.exist (round-1)"


async def test_sends_key_user_agent_and_json(recorder: Recorder, recorder_base: str) -> None:
    async with OkdokumentClient(recorder_base, KEY) as c:
        await c.patch_signature_request("abc", send_info_url="https://r.example/s")

    (request,) = recorder.requests
    assert request.method == "PATCH"
    assert request.target == b"/JSON/signatureRequest"
    assert request.headers["host"] == recorder_base.removeprefix("http://")
    assert request.headers["x-api-key"] == KEY
    assert request.headers["user-agent"].startswith("signback/")
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body) == {
        "signatureRequestId": "abc",
        "sendInfoURL": "https://r.example/s",
    }


@pytest.mark.parametrize(
    "document_id", ["a/b", "..", ".", "../../admin", "x?y=1#z", "%2e%2e", "a b", "...."]
)
async def test_ids_are_quoted_and_stay_under_the_base_path(
    document_id: str, recorder: Recorder, recorder_base: str
) -> None:
    async with OkdokumentClient(f"{recorder_base}/prefix", KEY) as c:
        await c.document_metadata(document_id)
        await c.delete_signature_request(document_id)

    metadata, delete = recorder.requests
    for request, prefix in (
        (metadata, b"/prefix/JSON/document/metadata/"),
        (delete, b"/prefix/JSON/signatureRequest/"),
    ):
        assert request.query == b""
        assert b"#" not in request.target
        raw_path = request.path
        assert raw_path.startswith(prefix), raw_path
        segment = raw_path[len(prefix) :].decode()
        assert "/" not in segment
        assert unquote(segment) == document_id


async def test_quoted_id_reaches_the_fake_whole(client: OkdokumentClient) -> None:
    response = await client.document_metadata("../a/b")

    assert response.status_code == 404
    assert response.json() == {"message": "err.not.found", "value": "../a/b"}


async def test_empty_id_is_refused(recorder: Recorder, recorder_base: str) -> None:
    async with OkdokumentClient(recorder_base, KEY) as c:
        with pytest.raises(ValueError, match="must not be empty"):
            await c.document_metadata("")
    assert recorder.requests == []


async def test_redirects_are_not_followed(recorder: Recorder, recorder_base: str) -> None:
    def redirect(_: Recorded) -> Response:
        return Response(status_code=302, headers={"Location": f"{recorder_base}/elsewhere"})

    recorder.reset(redirect)
    async with OkdokumentClient(recorder_base, KEY) as c:
        response = await c.document_metadata("doc")

    assert response.status_code == 302
    assert len(recorder.requests) == 1


async def test_transport_errors_propagate() -> None:
    with socket.socket() as unused:  # a port nobody listens on: the connection is refused
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    async with OkdokumentClient(f"http://127.0.0.1:{port}", KEY) as c:
        with pytest.raises(httpx.ConnectError):
            await c.document_metadata("doc")


def test_the_key_never_shows_in_repr() -> None:
    client = OkdokumentClient("https://api.okdokument.com", KEY)

    assert KEY not in repr(client)
    assert KEY not in str(client)
    assert KEY not in repr(vars(client))
    assert "https://api.okdokument.com" in repr(client)


def test_a_missing_key_fails_fast() -> None:
    with pytest.raises(ValueError, match="API key is required"):
        OkdokumentClient("http://okdokument.test", "")


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (
            httpx.Response(400, json={"message": "View ID does not exist: 1", "value": "1"}),
            "View ID does not exist: 1 (1)",
        ),
        (httpx.Response(403, json={"message": "err.forbidden"}), "err.forbidden"),
        (httpx.Response(400, json={"message": "err.x", "value": ""}), "err.x"),
        (httpx.Response(500, json={"error": "boom"}), '{"error":"boom"}'),
        (httpx.Response(502, text="<html>" + "x" * 500), "<html>" + "x" * 294),
        (httpx.Response(503, text=""), "Service Unavailable"),
        (httpx.Response(500, json=["not", "an", "object"]), '["not","an","object"]'),
    ],
)
def test_provider_message(response: httpx.Response, expected: str) -> None:
    assert provider_message(response) == expected
