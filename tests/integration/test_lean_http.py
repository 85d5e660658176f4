"""The outbox's HTTP client (receiver/outbox/lean_http.py) against real servers on loopback.

Each test runs on the plain asyncio loop and on uvloop, which ``signback serve`` uses (uvloop
transports are not ``asyncio.Transport`` subclasses, a difference that once broke
``connection_made``). It checks keep-alive reuse, the framings of an answer, timeouts and
errors as httpx's exception types, and that calls stay under the base URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from receiver.outbox.lean_http import LeanHttpClient
from tests.servers import running_server

LOOPS = ["asyncio", "uvloop"]


def run(loop: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    if loop == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())


def app() -> Starlette:
    async def echo(request: Request) -> Response:
        return JSONResponse(
            {
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "body": (await request.body()).decode(),
                "headers": {k: v for k, v in request.headers.items()},
                "peer": f"{request.client.host}:{request.client.port}" if request.client else "",
            },
            headers={"x-answer": "yes"},
        )

    async def chunked(_: Request) -> Response:
        async def parts() -> Any:
            for piece in (b'{"parts": ', b"[1, 2, ", b"3]}"):
                yield piece

        return StreamingResponse(parts(), media_type="application/json")

    async def closing(_: Request) -> Response:
        return JSONResponse({"closing": True}, headers={"connection": "close"})

    async def slow(_: Request) -> Response:
        await asyncio.sleep(2)
        return JSONResponse({"slow": True})

    return Starlette(
        routes=[
            Route("/chunked", chunked),
            Route("/closing", closing),
            Route("/slow", slow),
            Route("/{path:path}", echo, methods=["GET", "POST", "PATCH", "DELETE"]),
        ]
    )


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with running_server(app()) as url:
        yield url


@pytest.mark.parametrize("loop", LOOPS)
def test_keep_alive_headers_body_and_base_path(base: str, loop: str) -> None:
    async def main() -> None:
        client = LeanHttpClient(f"{base}/api/v1", {"x-api-key": "k"}, timeout=5)
        try:
            answers = await asyncio.gather(
                *(client.request("PATCH", "items/1", json={"n": n, "ü": "ä"}) for n in range(20))
            )
            for n, answer in enumerate(answers):
                assert answer.status_code == 200
                assert answer.headers["x-answer"] == "yes"
                seen = answer.json()
                assert seen["method"] == "PATCH"
                assert seen["path"] == "/api/v1/items/1"  # joined like httpx's base_url
                assert seen["body"] == f'{{"n":{n},"ü":"ä"}}'
                assert seen["headers"]["x-api-key"] == "k"
                assert seen["headers"]["content-type"] == "application/json"
            # A leading slash stays under the base path too, and a query string is kept.
            answer = await client.request("GET", "/items?x=1")
            assert answer.json()["path"] == "/api/v1/items"
            assert answer.json()["query"] == "x=1"
            # Sequential calls reuse one connection.
            peers = {(await client.request("GET", "ping")).json()["peer"] for _ in range(10)}
            assert len(peers) == 1
            assert client.connections_opened <= 20
        finally:
            await client.aclose()

    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_calls_own_headers_go_with_that_call_only(base: str, loop: str) -> None:
    """Per-call headers (a provider's fresh access token, a delivery's signature) are sent
    with their call beside the client's own, not with the next; a line break in one is
    refused before anything is sent."""

    async def main() -> None:
        client = LeanHttpClient(base, {"x-api-key": "k"}, timeout=5)
        try:
            headers = (
                await client.request(
                    "POST", "x", json={}, extra_headers={"authorization": "Bearer tok-1"}
                )
            ).json()["headers"]
            assert headers["authorization"] == "Bearer tok-1"
            assert headers["x-api-key"] == "k"
            assert "authorization" not in (await client.request("GET", "x")).json()["headers"]
            opened = client.connections_opened
            with pytest.raises(ValueError, match="line break"):
                await client.request(
                    "GET", "x", extra_headers={"authorization": "Bearer t\r\nx-injected: 1"}
                )
            assert client.connections_opened == opened
        finally:
            await client.aclose()

    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_chunked_and_connection_close_answers(base: str, loop: str) -> None:
    async def main() -> None:
        client = LeanHttpClient(base, {}, timeout=5)
        try:
            assert (await client.request("GET", "chunked")).json() == {"parts": [1, 2, 3]}
            opened = client.connections_opened
            assert (await client.request("GET", "closing")).json() == {"closing": True}
            assert (await client.request("GET", "closing")).json() == {"closing": True}
            assert client.connections_opened == opened + 1  # "close" is never reused
        finally:
            await client.aclose()

    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_timeouts_and_errors_are_httpx_exceptions(base: str, loop: str) -> None:
    async def main() -> None:
        client = LeanHttpClient(base, {}, timeout=0.3)
        try:
            with pytest.raises(httpx.ReadTimeout):
                await client.request("GET", "slow")
            assert (await client.request("GET", "after")).status_code == 200
        finally:
            await client.aclose()
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]
        refused = LeanHttpClient(f"http://127.0.0.1:{port}", {}, timeout=2)
        with pytest.raises(httpx.ConnectError):
            await refused.request("GET", "x")
        await refused.aclose()

    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_answers_ended_by_close_and_broken_answers(loop: str) -> None:
    """Raw servers: an answer with neither length nor chunking ends with the connection; a
    server that hangs up mid-answer or sends garbage is a RemoteProtocolError."""
    replies = {
        b"/eof": b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end",
        b"/cut": b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort",
        b"/junk": b"NOT HTTP AT ALL\r\n\r\n",
    }
    with raw_server(replies) as base:

        async def main() -> None:
            client = LeanHttpClient(base, {}, timeout=3)
            try:
                answer = await client.request("GET", "eof")
                assert answer.status_code == 200
                assert answer.text == "until the end"
                with pytest.raises(httpx.RemoteProtocolError):
                    await client.request("GET", "cut")
                with pytest.raises(httpx.RemoteProtocolError):
                    await client.request("GET", "junk")
            finally:
                await client.aclose()

        run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_interim_1xx_answers_are_skipped_for_the_final_one(loop: str) -> None:
    """A server (or a proxy in front of an endpoint) may send ``100 Continue`` or ``103 Early
    Hints`` before its answer; the answer is the final one, and a 1xx alone is no answer (the
    call times out). The deliveries used to take the 100 for the answer and retry a delivery
    the endpoint had accepted."""
    replies = {
        b"/continue": b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        b"/hints": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\nconnection: close\r\nx-final: yes\r\n\r\n",
        b"/only": b"HTTP/1.1 100 Continue\r\n\r\n",
    }
    with raw_server(replies, linger=2.0) as base:

        async def main() -> None:
            client = LeanHttpClient(base, {}, timeout=1)
            try:
                answer = await client.request("POST", "continue", json={"a": 1})
                assert (answer.status_code, answer.text) == (200, "ok")
                answer = await client.request("POST", "hints", json={"a": 1})
                assert answer.status_code == 204
                assert answer.headers["x-final"] == "yes"
                assert "link" not in answer.headers  # the interim answer's headers are not kept
                with pytest.raises(httpx.ReadTimeout):
                    await client.request("POST", "only", json={"a": 1})
            finally:
                await client.aclose()

        run(loop, main)


TLS_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "tls"
CERT, KEY = str(TLS_DIR / "localhost.crt"), str(TLS_DIR / "localhost.key")


@pytest.mark.parametrize("loop", LOOPS)
def test_https_verifies_the_server(loop: str) -> None:
    """Providers are called over HTTPS: a certificate we trust works, keep-alive included;
    one we do not trust is a ConnectError (never a silent unverified call)."""
    with running_server(app(), tls=(CERT, KEY)) as base:

        async def main() -> None:
            trusting = LeanHttpClient(
                base, {}, timeout=5, ssl_context=ssl.create_default_context(cafile=CERT)
            )
            try:
                for _ in range(3):
                    answer = await trusting.request("PATCH", "items/1", json={"a": 1})
                    assert answer.json()["body"] == '{"a":1}'
                assert trusting.connections_opened == 1
            finally:
                await trusting.aclose()
            default = LeanHttpClient(base, {}, timeout=5)  # the system's/certifi's CAs only
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await default.request("GET", "x")
            await default.aclose()

        run(loop, main)


@pytest.mark.parametrize(
    "path", ["http://elsewhere.example/x", "//elsewhere.example/x", "a\r\nInjected: 1", "a b"]
)
def test_calls_stay_under_the_base_url(path: str) -> None:
    async def main() -> None:
        client = LeanHttpClient("http://127.0.0.1:9/api", {}, timeout=1)
        with pytest.raises(ValueError, match="under the base URL"):
            await client.request("GET", path)

    asyncio.run(main())


@contextlib.contextmanager
def raw_server(replies: dict[bytes, bytes], linger: float = 0.0) -> Iterator[str]:
    """Answers each connection's first request line with a canned reply, then hangs up
    (after ``linger`` seconds, each connection in a thread of its own: so that a reply that
    is no full answer is not ended by the close)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def answer(conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            target = data.split(b" ", 2)[1] if data.count(b" ") >= 2 else b""
            conn.sendall(replies.get(target, b"HTTP/1.1 404 Not Found\r\n\r\n"))
            if linger:
                stop.wait(linger)

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            if linger:
                threading.Thread(target=answer, args=(conn,), daemon=True).start()
            else:
                answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
