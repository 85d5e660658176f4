"""The OKdokument emulator: API validation, failure plans, and the signer's side over real HTTP."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from handlers.okdokument.client import OkdokumentClient
from handlers.okdokument.fake import FakeOkdokument, create_app
from tests.servers import running_server

KEY = "fake-test-key"
AUTH = {"x-api-key": KEY}

pytestmark = pytest.mark.anyio


class ManualClock:
    """Monotonic time that only moves when told, so failure windows need no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class SleepRecorder:
    slept: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


@pytest.fixture
def monotonic() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
def fake(monotonic: ManualClock, sleeps: SleepRecorder) -> FakeOkdokument:
    return FakeOkdokument(api_key=KEY, monotonic=monotonic, sleep=sleeps)


@pytest.fixture
async def http(fake: FakeOkdokument) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(fake))
    async with httpx.AsyncClient(transport=transport, base_url="http://fake.test") as client:
        yield client


async def _seed(http: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await http.post("/_fake/signature-requests", json=fields)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _metadata(http: httpx.AsyncClient, document_id: str) -> httpx.Response:
    return await http.get(f"/JSON/document/metadata/{document_id}", headers=AUTH)


async def _fail(http: httpx.AsyncClient, **plan: Any) -> None:
    response = await http.post("/_fake/failures", json=plan)
    assert response.status_code == 201, response.text


# -- API behaviour --------------------------------------------------------------------------


async def test_seed_returns_what_it_made(http: httpx.AsyncClient) -> None:
    seeded = await _seed(
        http,
        signatureRequestId="sr-1",
        documentId="doc-1",
        filename="contract.pdf",
        sendInfoURL="https://r.example/s?arg=1",
        resulturl="https://r.example/done",
    )

    assert seeded == {
        "signatureRequestId": "sr-1",
        "documentId": "doc-1",
        "filename": "contract.pdf",
        "sendInfoURL": "https://r.example/s?arg=1",
        "resulturl": "https://r.example/done",
        "state": "tosign",
        "url": "http://fake.test/openDocument/sr-1",
    }
    assert (await _metadata(http, "doc-1")).json()["state"] == "tosign"


async def test_seed_generates_a_uuid_request_id(http: httpx.AsyncClient) -> None:
    seeded = await _seed(http)

    assert len(seeded["signatureRequestId"]) == 36
    assert seeded["signatureRequestId"].count("-") == 4


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"x-api-key": "wrong"}, 401), ({"x-api-key": KEY}, 404)],
)
async def test_api_key_is_required(
    http: httpx.AsyncClient, headers: dict[str, str], status: int
) -> None:
    response = await http.get("/JSON/document/metadata/nope", headers=headers)

    assert response.status_code == status


async def test_patch_accepts_both_spellings_of_send_info_url(
    fake: FakeOkdokument, http: httpx.AsyncClient
) -> None:
    await _seed(http, signatureRequestId="sr-1")

    response = await http.patch(
        "/JSON/signatureRequest",
        headers=AUTH,
        json={"signatureRequestId": "sr-1", "sendInfoUrl": "http://r.example/table-spelling"},
    )

    assert response.status_code == 200
    assert fake.signature_requests["sr-1"].send_info_url == "http://r.example/table-spelling"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"sendInfoURL": "https://r.example/x"}, {"message": "err.missing.signatureRequestId"}),
        (
            {"signatureRequestId": "sr-1", "sendInfoURL": "/relative/path"},
            {"message": "err.invalid.url", "value": "/relative/path"},
        ),
        (
            {"signatureRequestId": "sr-1", "resulturl": "ftp://r.example/x"},
            {"message": "err.invalid.url", "value": "ftp://r.example/x"},
        ),
        (
            {"signatureRequestId": "other", "resulturl": "https://r.example/x"},
            {"message": "View ID does not exist: other", "value": "other"},
        ),
    ],
)
async def test_patch_validation(
    fake: FakeOkdokument, http: httpx.AsyncClient, body: dict[str, str], expected: dict[str, str]
) -> None:
    await _seed(http, signatureRequestId="sr-1")

    response = await http.patch("/JSON/signatureRequest", headers=AUTH, json=body)

    assert response.status_code == 400
    assert response.json() == expected
    assert fake.signature_requests["sr-1"].send_info_url is None


async def test_malformed_json_is_400(fake: FakeOkdokument, http: httpx.AsyncClient) -> None:
    response = await http.patch(
        "/JSON/signatureRequest",
        headers={**AUTH, "Content-Type": "application/json"},
        content=b'{"signatureRequestId": ',
    )

    assert response.status_code == 400
    assert fake.calls[-1].body is None
    assert fake.calls[-1].status == 400


async def test_multi_round_signing(fake: FakeOkdokument, http: httpx.AsyncClient) -> None:
    content = base64.b64encode(b"%PDF-1.4 two rounds").decode()
    first = await http.post(
        "/JSON/signatureRequest",
        headers=AUTH,
        json={"filedata": {"filename": "deal.pdf", "content": content, "state": "tags"}},
    )
    assert first.status_code == 200
    document_id = first.json()["documentId"]
    assert (await _metadata(http, document_id)).json()["state"] == "tosign"

    # A second round while the first is open but already finished needs changeState.
    assert (await http.post(f"/_fake/sign/{first.json()['result']}")).status_code == 200
    refused = await http.post("/JSON/signatureRequest", headers=AUTH, json={"id": document_id})
    assert refused.status_code == 409

    second = await http.post(
        "/JSON/signatureRequest",
        headers=AUTH,
        json={"id": document_id, "changeState": "tosign", "signatureRequestId": "round-2"},
    )
    assert second.status_code == 200
    assert second.json()["result"] == "round-2"
    assert second.json()["documentId"] == document_id
    assert (await _metadata(http, document_id)).json()["state"] == "tosign"

    # The first round cannot be signed again, the second can.
    assert (await http.post(f"/_fake/sign/{first.json()['result']}")).status_code == 409
    assert (await http.post("/_fake/sign/round-2")).status_code == 200

    pdf = await http.get(f"/JSON/document/{document_id}", headers=AUTH)
    assert pdf.headers["content-type"] == "application/pdf"
    # Each round's signature is appended to the document, as a PDF signature is.
    assert pdf.content.startswith(b"%PDF-1.4 two rounds\n% Signed (OKdokument emulator) in")
    assert pdf.content.count(b"% Signed (OKdokument emulator) in round") == 2


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 400),
        ({"filedata": {"filename": "a.pdf", "content": "not base64!"}}, 400),
        ({"filedata": {"filename": "a.pdf", "content": "JVBERg==", "state": "x"}}, 400),
        ({"id": "no-such-document", "changeState": "tosign"}, 400),
        (
            {"signatureRequestId": "taken", "filedata": {"filename": "a.pdf", "content": "JVBE"}},
            409,
        ),
    ],
)
async def test_create_validation(
    http: httpx.AsyncClient, body: dict[str, Any], status: int
) -> None:
    await _seed(http, signatureRequestId="taken")

    response = await http.post("/JSON/signatureRequest", headers=AUTH, json=body)

    assert response.status_code == status
    assert "message" in response.json()


async def test_list_counter_and_open_document(http: httpx.AsyncClient) -> None:
    await _seed(http, signatureRequestId="a", documentId="doc-a")
    await _seed(http, signatureRequestId="b", documentId="doc-b")
    await http.post("/_fake/cancel/b")

    canceled = await http.get("/JSON/list/flat", params={"state": "canceled"}, headers=AUTH)
    every = await http.get("/JSON/list/flat", params={"state": "*"}, headers=AUTH)
    counter = await http.get("/JSON/counter", headers=AUTH)
    # Open document is the one call without a key.
    opened = await http.get("/openDocument/a")

    assert [d["id"] for d in canceled.json()] == ["doc-b"]
    assert sorted(d["id"] for d in every.json()) == ["doc-a", "doc-b"]
    assert set(every.json()[0]) == {
        "filename",
        "state",
        "modification",
        "id",
        "url",
        "date",
        "number",
        "group",
    }
    assert counter.json()["signatureRequests"] == 2
    assert opened.status_code == 302


async def test_calls_log_records_in_order_without_the_key(
    fake: FakeOkdokument, http: httpx.AsyncClient
) -> None:
    await _seed(http, signatureRequestId="sr-1", documentId="doc-1")
    await http.patch(
        "/JSON/signatureRequest",
        headers=AUTH,
        json={"signatureRequestId": "sr-1", "resulturl": "https://r.example/x"},
    )
    await http.get("/JSON/list/flat?state=signed", headers={"x-api-key": "wrong"})

    response = await http.get("/_fake/calls")

    calls = response.json()
    assert [(c["method"], c["path"], c["query"], c["status"]) for c in calls] == [
        ("PATCH", "/JSON/signatureRequest", "", 200),
        ("GET", "/JSON/list/flat", "state=signed", 401),
    ]
    assert calls[0]["body"] == {"signatureRequestId": "sr-1", "resulturl": "https://r.example/x"}
    assert calls[1]["body"] is None
    assert isinstance(calls[0]["time"], float)
    assert KEY not in response.text
    assert "wrong" not in response.text

    assert (await http.post("/_fake/reset")).status_code == 200
    assert (await http.get("/_fake/calls")).json() == []
    assert fake.signature_requests == {}


# -- failure plans --------------------------------------------------------------------------


async def test_failure_plan_by_count(fake: FakeOkdokument, http: httpx.AsyncClient) -> None:
    seeded = await _seed(http)
    await _fail(http, status=503, count=2)

    statuses = [(await _metadata(http, seeded["documentId"])).status_code for _ in range(3)]

    assert statuses == [503, 503, 200]
    # Failing calls are logged with the status answered.
    assert [c.status for c in fake.calls] == [503, 503, 200]


async def test_failure_plan_by_seconds(monotonic: ManualClock, http: httpx.AsyncClient) -> None:
    seeded = await _seed(http)
    await _fail(http, status=503, seconds=20)

    first = await _metadata(http, seeded["documentId"])
    monotonic.now += 19.5
    still = await _metadata(http, seeded["documentId"])
    monotonic.now += 1
    after = await _metadata(http, seeded["documentId"])

    assert (first.status_code, still.status_code, after.status_code) == (503, 503, 200)


async def test_a_time_factor_shortens_windows_and_delays(
    monotonic: ManualClock, sleeps: SleepRecorder
) -> None:
    """time_factor 0.05: a 20-second outage ends after one real second, a 2-second delay
    sleeps 0.1 s, and windows are set and reported in the emulated seconds."""
    fake = FakeOkdokument(api_key=KEY, monotonic=monotonic, sleep=sleeps, time_factor=0.05)
    transport = httpx.ASGITransport(app=create_app(fake))
    async with httpx.AsyncClient(transport=transport, base_url="http://fake.test") as http:
        seeded = await _seed(http)
        await _fail(http, status=503, seconds=20, methods=["GET"])
        await _fail(http, delay=2.0, count=1, methods=["GET"])
        first = await _metadata(http, seeded["documentId"])
        monotonic.now += 0.95  # 19 emulated seconds
        (plan,) = (await http.get("/_fake/failures")).json()
        still = await _metadata(http, seeded["documentId"])
        monotonic.now += 0.1
        after = await _metadata(http, seeded["documentId"])

    assert (first.status_code, still.status_code, after.status_code) == (503, 503, 200)
    assert plan["seconds_left"] == pytest.approx(1.0)
    assert sleeps.slept == [pytest.approx(0.1)]


@pytest.mark.parametrize("factor", [0.0, -1.0])
def test_a_time_factor_must_be_positive(factor: float) -> None:
    with pytest.raises(ValueError, match="time_factor must be positive"):
        FakeOkdokument(api_key=KEY, time_factor=factor)


async def test_failure_plan_methods_filter(http: httpx.AsyncClient) -> None:
    seeded = await _seed(http)
    await _fail(http, status=503, methods=["patch"])

    get = await _metadata(http, seeded["documentId"])
    patch = await http.patch(
        "/JSON/signatureRequest",
        headers=AUTH,
        json={"signatureRequestId": seeded["signatureRequestId"], "resulturl": "https://x.io/"},
    )

    assert get.status_code == 200
    assert patch.status_code == 503


async def test_429_carries_retry_after(http: httpx.AsyncClient) -> None:
    seeded = await _seed(http)
    await _fail(http, status=429, retry_after=1, count=2)

    answers = [await _metadata(http, seeded["documentId"]) for _ in range(3)]

    assert [a.status_code for a in answers] == [429, 429, 200]
    assert [a.headers.get("retry-after") for a in answers] == ["1", "1", None]


async def test_429_without_retry_after_still_carries_one(http: httpx.AsyncClient) -> None:
    await _fail(http, status=429, count=1)

    response = await http.get("/JSON/counter", headers=AUTH)

    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 0


async def test_delay_plans_stack_with_failing_plans(
    sleeps: SleepRecorder, http: httpx.AsyncClient
) -> None:
    await _fail(http, delay=2.0, seconds=60)
    await _fail(http, status=500, count=1)

    first = await http.get("/JSON/counter", headers=AUTH)
    second = await http.get("/JSON/counter", headers=AUTH)

    assert (first.status_code, second.status_code) == (500, 200)
    assert sleeps.slept == [2.0, 2.0]


async def test_clearing_failures_and_control_routes_never_fail(http: httpx.AsyncClient) -> None:
    await _fail(http, status=503)  # no count, no window: until cleared

    assert (await http.get("/JSON/counter", headers=AUTH)).status_code == 503
    assert (await http.get("/_fake/calls")).status_code == 200
    assert (await http.get("/_fake/failures")).json()[0]["status"] == 503
    assert (await http.delete("/_fake/failures")).status_code == 200
    assert (await http.get("/JSON/counter", headers=AUTH)).status_code == 200


@pytest.mark.parametrize(
    "plan",
    [{}, {"status": "503"}, {"status": 503, "count": 0}, {"status": 503, "methods": "PATCH"}],
)
async def test_bad_failure_plans_are_refused(http: httpx.AsyncClient, plan: dict[str, Any]) -> None:
    response = await http.post("/_fake/failures", json=plan)

    assert response.status_code == 400
    assert (await http.get("/_fake/failures")).json() == []


# -- the signer's side over real HTTP --------------------------------------------------------


@dataclass
class Receiver:
    """A tiny stand-in for signback: records what reaches it, answers ``status``."""

    status: int = 200
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    returns: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        async def send_info(request: Request) -> Response:
            self.callbacks.append(
                {
                    "token": request.path_params["token"],
                    "query": request.url.query,
                    "headers": dict(request.headers),
                    "body": await request.body(),
                }
            )
            return Response(status_code=self.status)

        async def result(request: Request) -> Response:
            self.returns.append(request.url.query)
            return RedirectResponse("/thanks", status_code=303)

        async def thanks(request: Request) -> Response:
            return HTMLResponse("<p>Thank you</p>")

        return Starlette(
            routes=[
                Route("/sendinfo/{token}", send_info, methods=["POST"]),
                Route("/return", result, methods=["GET"]),
                Route("/thanks", thanks, methods=["GET"]),
            ]
        )


@dataclass
class Servers:
    receiver: Receiver
    receiver_url: str
    fake_url: str


@pytest.fixture
def servers() -> Iterator[Servers]:
    receiver = Receiver()
    fake = FakeOkdokument(api_key=KEY)
    with running_server(receiver.app()) as receiver_url, running_server(create_app(fake)) as url:
        yield Servers(receiver, receiver_url, url)


async def _seed_real(
    http: httpx.AsyncClient, servers: Servers, send_info_url: str | None = None
) -> dict[str, Any]:
    response = await http.post(
        "/_fake/signature-requests",
        json={
            "signatureRequestId": "1d58a59e-e8f7-4d07-bb99-d3fa39cb58a8",
            "documentId": "y7Ki_u1mrUwijfb-o_S1JiphSsoXya8iypH380F",
            "filename": "doc_1234.pdf",
            "sendInfoURL": send_info_url or f"{servers.receiver_url}/sendinfo/t0ken?arg=123456",
            "resulturl": f"{servers.receiver_url}/return?portal=7",
        },
    )
    assert response.status_code == 201
    body: dict[str, Any] = response.json()
    return body


async def test_sign_fires_send_info_and_builds_the_redirect(servers: Servers) -> None:
    async with httpx.AsyncClient(base_url=servers.fake_url) as http:
        seeded = await _seed_real(http, servers)
        before = int(time.time() * 1000)
        response = await http.post(
            f"/_fake/sign/{seeded['signatureRequestId']}",
            json={"lang": "sk", "follow_redirect": True},
        )
        after = int(time.time() * 1000)
    async with OkdokumentClient(servers.fake_url, KEY) as client:
        metadata = await client.document_metadata(seeded["documentId"])

    result = response.json()
    assert response.status_code == 200
    assert result["sendinfo_status"] == 200
    assert result["document_state"] == "signed"
    # The fake reports the receiver's own answer (303) instead of following it.
    assert result["redirect_status"] == 303
    assert metadata.json()["state"] == "signed"

    (callback,) = servers.receiver.callbacks
    assert callback["token"] == "t0ken"
    assert callback["query"] == "arg=123456"
    assert callback["headers"]["content-type"] == "application/json"
    assert "authorization" not in callback["headers"]
    assert "x-api-key" not in callback["headers"]
    assert callback["body"] == (
        b'{"state":"signed","id":"y7Ki_u1mrUwijfb-o_S1JiphSsoXya8iypH380F",'
        b'"signatureRequestId":"1d58a59e-e8f7-4d07-bb99-d3fa39cb58a8"}'
    )

    redirect = urlsplit(result["redirect_url"])
    assert f"{redirect.scheme}://{redirect.netloc}{redirect.path}" == (
        f"{servers.receiver_url}/return"
    )
    query = parse_qs(redirect.query)
    ts = query.pop("ts")
    assert query == {
        "portal": ["7"],
        "name": ["doc_1234"],
        "docid": ["y7Ki_u1mrUwijfb-o_S1JiphSsoXya8iypH380F"],
        "lang": ["sk"],
        "result": ["success"],
    }
    assert before <= int(ts[0]) <= after
    # The browser GET reached the receiver with the same query.
    assert servers.receiver.returns == [redirect.query]


async def test_send_info_answered_500_means_errorsendinfo(servers: Servers) -> None:
    servers.receiver.status = 500
    async with httpx.AsyncClient(base_url=servers.fake_url) as http:
        seeded = await _seed_real(http, servers)
        response = await http.post(f"/_fake/sign/{seeded['signatureRequestId']}")
        metadata = await http.get(f"/JSON/document/metadata/{seeded['documentId']}", headers=AUTH)

    assert response.json()["sendinfo_status"] == 500
    assert response.json()["document_state"] == "errorsendinfo"
    assert response.json()["redirect_status"] is None  # not asked to follow
    assert metadata.json()["state"] == "errorsendinfo"
    assert len(servers.receiver.callbacks) == 1


async def test_unreachable_send_info_means_errorsendinfo(servers: Servers) -> None:
    with socket.socket() as sock:  # a port nobody listens on once it is closed
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    async with httpx.AsyncClient(base_url=servers.fake_url) as http:
        seeded = await _seed_real(http, servers, f"http://127.0.0.1:{dead_port}/sendinfo/x")
        response = await http.post(f"/_fake/sign/{seeded['signatureRequestId']}")

    result = response.json()
    assert result["sendinfo_status"] is None
    assert result["sendinfo_error"].startswith("ConnectError")
    assert result["document_state"] == "errorsendinfo"


async def test_cancel_reports_canceled_and_close(servers: Servers) -> None:
    async with httpx.AsyncClient(base_url=servers.fake_url) as http:
        seeded = await _seed_real(http, servers)
        response = await http.post(f"/_fake/cancel/{seeded['signatureRequestId']}")
        again = await http.post(f"/_fake/sign/{seeded['signatureRequestId']}")

    result = response.json()
    assert result["document_state"] == "canceled"
    assert json.loads(servers.receiver.callbacks[0]["body"]) == {
        "state": "canceled",
        "id": seeded["documentId"],
        "signatureRequestId": seeded["signatureRequestId"],
    }
    assert parse_qs(urlsplit(result["redirect_url"]).query)["result"] == ["close"]
    # A finished round cannot be finished again.
    assert again.status_code == 409
    assert len(servers.receiver.callbacks) == 1


async def test_mobile_result_and_unknown_request(servers: Servers) -> None:
    async with httpx.AsyncClient(base_url=servers.fake_url) as http:
        seeded = await _seed_real(http, servers)
        bad = await http.post(
            f"/_fake/sign/{seeded['signatureRequestId']}", json={"result": "close"}
        )
        # A resulturl changed by PATCH, with a query that clashes with the redirect's own.
        patched = await http.patch(
            "/JSON/signatureRequest",
            headers=AUTH,
            json={
                "signatureRequestId": seeded["signatureRequestId"],
                "resulturl": f"{servers.receiver_url}/return?result=stale&x=1",
            },
        )
        mobile = await http.post(
            f"/_fake/sign/{seeded['signatureRequestId']}", json={"result": "mobile"}
        )
        unknown = await http.post("/_fake/sign/no-such-request")

    assert bad.status_code == 400
    assert patched.status_code == 200
    query = parse_qs(urlsplit(mobile.json()["redirect_url"]).query)
    assert query["result"] == ["mobile"]
    assert query["x"] == ["1"]
    assert unknown.status_code == 404
