"""signback behind a real reverse proxy, as behind a tunnel (ngrok, cloudflared) or a PaaS
router: the proxy forwards to signback's internal address (Host is the upstream's, like
nginx's default) and adds ``X-Forwarded-Proto: https``, ``X-Forwarded-Host: public.example``
and ``X-Forwarded-For``. signback runs with ``SIGNBACK_PUBLIC_URL=https://public.example``
and ``--forwarded-allow-ips '*'``; "public.example" resolves to the proxy for the emulator's
outbound calls (its sendInfo and the signer's browser), as DNS would send them to a tunnel.

Through the proxy: every generated callback URL is the public one (never 127.0.0.1), a Firma
webhook signed with a real HMAC still verifies (the raw body crosses the proxy untouched) and
a tampered one does not, OKdokument's sendInfo is accepted and confirmed, and the browser
return redirects to the business's pages.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from handlers.firma import signature
from handlers.okdokument.fake import FakeOkdokument
from tests.acceptance.processes import free_port, processes, signback, signback_env
from tests.conftest import ADMIN_TOKEN
from tests.harness import running_okdokument, wait_until
from tests.servers import running_server

pytestmark = pytest.mark.acceptance

PUBLIC_HOST = "public.example"
PUBLIC_URL = f"https://{PUBLIC_HOST}"
FIRMA_SECRET = "a3f1c9e2b7d4" * 5 + "0f1e"  # 64 hex characters, like Firma's secrets
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones the proxy recomputes itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


def reverse_proxy(upstream: str, forwarded: list[dict[str, str]]) -> Starlette:
    """Forwards every request to ``upstream`` byte for byte, like a tunnel's edge would."""
    clients: list[httpx.AsyncClient] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(base_url=upstream, timeout=30) as client:
            clients.append(client)
            yield

    async def forward(request: Request) -> Response:
        body = await request.body()
        headers = [
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in HOP_BY_HOP and not name.lower().startswith("x-forwarded-")
        ]
        peer = request.client.host if request.client else "unknown"
        prior = request.headers.get("x-forwarded-for")
        headers += [
            ("x-forwarded-for", f"{prior}, {peer}" if prior else peer),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", PUBLIC_HOST),
        ]
        target = request.scope["raw_path"].decode("latin-1")
        if query := request.scope["query_string"].decode("latin-1"):
            target += f"?{query}"
        forwarded.append({"method": request.method, "target": target})
        upstream_response = await clients[0].request(
            request.method, target, content=body, headers=headers
        )
        answer_headers = {
            name: value
            for name, value in upstream_response.headers.items()
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-encoding"
        }
        return Response(
            upstream_response.content,
            status_code=upstream_response.status_code,
            headers=answer_headers,
        )

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


class PublicDns(httpx.AsyncBaseTransport):
    """The emulator's network: https://public.example/… reaches the proxy on loopback (the
    Host header stays public.example, as a tunnel's edge receives it)."""

    def __init__(self) -> None:
        self.proxy: httpx.URL | None = None
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == PUBLIC_HOST:
            assert self.proxy is not None, "the proxy is not running yet"
            request.url = request.url.copy_with(
                scheme=self.proxy.scheme, host=self.proxy.host, port=self.proxy.port
            )
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class Stack:
    def __init__(
        self, proxy: str, okd: str, fake: FakeOkdokument, db: Path, forwarded: list[dict[str, str]]
    ) -> None:
        self.proxy, self.okd, self.fake, self.db = proxy, okd, fake, db
        self.forwarded = forwarded  # what went through the proxy: method and target

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.proxy, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
        )

    def register(self, **body: Any) -> dict[str, Any]:
        with self.api() as api:
            response = api.post("/api/requests", json=body)
        assert response.status_code == 201, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def show(self, request_id: int) -> dict[str, Any]:
        with self.api() as api:
            answer: dict[str, Any] = api.get(f"/api/requests/{request_id}").json()
        return answer


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    port = free_port()
    internal = f"http://127.0.0.1:{port}"
    db = tmp_path / "signback.db"
    forwarded: list[dict[str, str]] = []
    dns = PublicDns()
    with (
        running_okdokument(callback_transport=dns) as (okd, fake),
        running_server(reverse_proxy(internal, forwarded)) as proxy,
        processes(tmp_path) as started,
    ):
        dns.proxy = httpx.URL(proxy)
        serve = signback(
            tmp_path,
            "serve",
            ["serve", "--port", str(port), "--forwarded-allow-ips", "*"],
            signback_env(
                f"sqlite:///{db}",
                port,
                SIGNBACK_PUBLIC_URL=PUBLIC_URL,
                SIGNBACK_OKDOKUMENT_BASE_URL=okd,
                SIGNBACK_OKDOKUMENT_API_KEY="fake-okdokument-key",
                SIGNBACK_FIRMA_WEBHOOK_SECRETS=FIRMA_SECRET,
            ),
        )
        started.append(serve.start())
        serve.wait_http(f"{internal}/healthz")
        yield Stack(proxy, okd, fake, db, forwarded)
        assert forwarded, "nothing went through the proxy"


def test_callback_urls_are_the_public_ones(stack: Stack) -> None:
    stack.fake.new_round(
        stack.fake.new_document("a.pdf", b"%PDF-1.4", document_id="doc-pub"),
        signature_request_id="sr-pub",
        send_info_url=None,
        result_url=None,
    )
    okd = stack.register(provider="okdokument", signatureRequestId="sr-pub", documentId="doc-pub")
    firma = stack.register(provider="firma", signatureRequestId="sr_pub_firma")
    for urls in (
        okd["callback_urls"],
        firma["callback_urls"],
        stack.show(okd["id"])["callback_urls"],
    ):
        assert urls, urls
        for url in urls.values():
            assert url.startswith(f"{PUBLIC_URL}/"), url
            assert "127.0.0.1" not in url, url
            assert "localhost" not in url, url
    assert firma["callback_urls"]["webhook_url"] == f"{PUBLIC_URL}/hooks/firma"
    patches = wait_until(
        lambda: [c.body for c in stack.fake.calls if c.method == "PATCH" and c.status == 200],
        what="the attach PATCH",
    )
    assert patches == [
        {
            "signatureRequestId": "sr-pub",
            "sendInfoURL": okd["callback_urls"]["sendinfo_url"],
            "resulturl": okd["callback_urls"]["return_url"],
        }
    ]


def test_a_signed_firma_webhook_verifies_through_the_proxy(stack: Stack) -> None:
    registered = stack.register(provider="firma", signatureRequestId="sr_789")
    event = json.loads((FIXTURES / "firma" / "signing_request.completed.json").read_bytes())
    event["data"]["recipients"][0]["name"] = "Zoë Ångström-Łukasz"
    # Formatting no re-serializer would keep: odd spacing, raw UTF-8, a trailing newline.
    body = json.dumps(event, ensure_ascii=False, indent=3).replace(": ", " :  ").encode() + b"\n"
    headers = {
        "content-type": "application/json",
        "x-firma-event": "signing_request.completed",
        "x-firma-signature": signature.sign(FIRMA_SECRET, body, int(time.time())),
    }
    with httpx.Client(base_url=stack.proxy, timeout=30) as client:
        tampered = client.post("/hooks/firma", content=body.replace(b"Zo", b"Jo"), headers=headers)
        assert tampered.status_code == 401, tampered.text
        accepted = client.post("/hooks/firma", content=body, headers=headers)
        assert accepted.status_code == 200, accepted.text
        assert accepted.json() == {"status": "accepted"}
    shown = wait_until(
        lambda: (r := stack.show(registered["id"]))["state"] == "completed" and r,
        what="the Firma request completed",
    )
    assert [e["provider_type"] for e in shown["timeline"] if e["channel"] == "webhook"] == [
        "signing_request.completed"
    ]
    with sqlite3.connect(stack.db) as db:
        stored_body, stored_headers = db.execute(
            "SELECT body, headers FROM inbox WHERE channel = 'webhook'"
        ).fetchone()
    assert bytes(stored_body) == body  # exactly the bytes that were signed
    seen = json.loads(stored_headers)
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-host"] == PUBLIC_HOST
    assert seen["x-forwarded-for"] == "127.0.0.1"


def test_okdokument_sendinfo_and_the_browser_return_through_the_proxy(stack: Stack) -> None:
    stack.fake.new_round(
        stack.fake.new_document("contract.pdf", b"%PDF-1.4", document_id="doc-rp"),
        signature_request_id="sr-rp",
        send_info_url=None,
        result_url=None,
    )
    registered = stack.register(
        provider="okdokument",
        signatureRequestId="sr-rp",
        documentId="doc-rp",
        return_url="https://shop.example/thanks",
        retry_url="https://shop.example/try-again",
    )
    urls = registered["callback_urls"]
    wait_until(
        lambda: stack.fake.signature_requests["sr-rp"].send_info_url == urls["sendinfo_url"],
        what="OKdokument to know the public sendInfo URL",
    )
    # The emulator plays OKdokument and the signer: its sendInfo POST and the browser's GET
    # of the result URL both go to https://public.example, i.e. through the proxy.
    response = httpx.post(f"{stack.okd}/_fake/sign/sr-rp", json={"follow_redirect": True})
    signed = response.json()
    assert signed["sendinfo_status"] == 200, signed
    assert signed["redirect_url"].startswith(f"{urls['return_url']}?")
    assert signed["redirect_status"] == 303, signed
    through = [(f["method"], f["target"].split("?")[0]) for f in stack.forwarded]
    sendinfo_path = urls["sendinfo_url"].removeprefix(PUBLIC_URL)
    assert ("POST", sendinfo_path) in through
    assert ("GET", urls["return_url"].removeprefix(PUBLIC_URL)) in through
    wait_until(
        lambda: stack.show(registered["id"])["state"] == "completed",
        what="completed (sendInfo confirmed with Document info)",
    )

    return_path = urls["return_url"].removeprefix(PUBLIC_URL)
    with httpx.Client(base_url=stack.proxy, timeout=30, follow_redirects=False) as browser:
        done = browser.get(f"{return_path}?result=success&ts=1760000000001")
        closed = browser.get(f"{return_path}?result=close&ts=1760000000002")
        unknown = browser.get("/return/" + "x" * 43)
    assert (done.status_code, done.headers["location"]) == (303, "https://shop.example/thanks")
    assert (closed.status_code, closed.headers["location"]) == (
        303,
        "https://shop.example/try-again",
    )
    assert unknown.status_code == 404
    assert "text/html" in unknown.headers["content-type"]
    timeline = stack.show(registered["id"])["timeline"]
    assert [e["channel"] for e in timeline].count("return") == 3  # the emulator's + 2 more
