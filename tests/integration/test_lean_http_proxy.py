"""The outbox's HTTP client through an HTTP proxy (receiver/outbox/lean_http.py).

The proxy is written here, on asyncio streams, small enough to read: a ``CONNECT`` opens a
tunnel that it pipes both ways (https targets), and an absolute-form request is forwarded in
origin form (http targets). It records every request head it gets, so the tests see what the
client told the proxy, and the target server (the echo app) shows what reached it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import pytest

from handlers.okdokument.client import OkdokumentClient
from receiver.errors import ConfigurationError
from receiver.outbox.lean_http import LeanHttpClient, proxy_from_environment
from tests.integration.test_lean_http import CERT, KEY, LOOPS, app, run
from tests.servers import running_server

PROXY_ENV = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


@dataclass
class TinyProxy:
    """An HTTP proxy on loopback. ``refuse``: answer every CONNECT with this status line."""

    refuse: bytes = b""
    heads: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    port: int = 0
    _streams: list[asyncio.StreamWriter] = field(default_factory=list)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._streams.append(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = dict(line.split(": ", 1) for line in lines)
        self.heads.append((request_line, {k.lower(): v for k, v in headers.items()}))
        method, target, version = request_line.split(" ")
        if method == "CONNECT":
            if self.refuse:
                writer.write(self.refuse + b"\r\n\r\n")
                writer.close()
                return
            host, port = target.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            self._streams.append(up_writer)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            # One request per connection: forwarded in origin form, closed after.
            parts = urlsplit(target)
            assert parts.hostname is not None
            assert parts.port is not None
            up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port)
            self._streams.append(up_writer)
            kept = {k: v for k, v in headers.items() if k.lower() != "proxy-authorization"}
            kept["Connection"] = "close"
            origin = parts.path + (f"?{parts.query}" if parts.query else "")
            lines = [f"{method} {origin} {version}", *(f"{k}: {v}" for k, v in kept.items())]
            up_writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[TinyProxy]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            async with server:
                yield self
        finally:
            for task in self._handlers:
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            for stream in self._streams:
                stream.close()
                with contextlib.suppress(Exception):
                    await stream.wait_closed()

    def url(self, userinfo: str = "") -> str:
        return f"http://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


@pytest.mark.parametrize("loop", LOOPS)
def test_https_goes_through_a_connect_tunnel(loop: str) -> None:
    """TLS with the provider inside the tunnel, its certificate verified; the proxy's
    credentials go to the proxy only, and the tunnel is kept alive between calls."""
    with running_server(app(), tls=(CERT, KEY)) as base:
        authority = base.removeprefix("https://")

        async def main() -> None:
            async with TinyProxy().serving() as proxy:
                client = LeanHttpClient(
                    f"{base}/api",
                    {"x-api-key": "k"},
                    timeout=5,
                    ssl_context=ssl.create_default_context(cafile=CERT),
                    proxy=proxy.url("user:p%40ss"),
                )
                try:
                    for n in range(3):
                        answer = await client.request("PATCH", "items/1", json={"n": n})
                        seen = answer.json()
                        assert (seen["path"], seen["body"]) == ("/api/items/1", f'{{"n":{n}}}')
                        assert seen["headers"]["host"] == authority
                        assert seen["headers"]["x-api-key"] == "k"
                        assert "proxy-authorization" not in seen["headers"]
                finally:
                    await client.aclose()
                assert client.connections_opened == 1
                [(request_line, headers)] = proxy.heads
                assert request_line == f"CONNECT {authority} HTTP/1.1"
                assert headers["host"] == authority
                assert headers["proxy-authorization"] == basic("user:p@ss")

        run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_refused_tunnel_is_a_proxy_error(loop: str) -> None:
    async def main() -> None:
        async with TinyProxy(refuse=b"HTTP/1.1 407 Proxy Authentication Required").serving() as p:
            client = LeanHttpClient("https://provider.example", {}, timeout=5, proxy=p.url())
            with pytest.raises(httpx.ProxyError, match="407"):
                await client.request("GET", "x")
            await client.aclose()
            assert p.heads[0][0] == "CONNECT provider.example:443 HTTP/1.1"

    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_http_goes_to_the_proxy_in_absolute_form(loop: str) -> None:
    with running_server(app()) as base:
        authority = base.removeprefix("http://")

        async def main() -> None:
            async with TinyProxy().serving() as proxy:
                client = LeanHttpClient(f"{base}/api", {}, timeout=5, proxy=proxy.url("me:secret"))
                try:
                    answer = await client.request("GET", "items?x=1")
                    seen = answer.json()
                    assert (seen["path"], seen["query"]) == ("/api/items", "x=1")
                    assert seen["headers"]["host"] == authority
                finally:
                    await client.aclose()
                [(request_line, headers)] = proxy.heads
                assert request_line == f"GET http://{authority}/api/items?x=1 HTTP/1.1"
                assert headers["proxy-authorization"] == basic("me:secret")

        run(loop, main)


def test_provider_clients_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY routes a provider client through the proxy; NO_PROXY exempts a host."""
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    with running_server(app()) as base:

        async def main() -> None:
            async with TinyProxy().serving() as proxy:
                monkeypatch.setenv("HTTP_PROXY", proxy.url())
                async with OkdokumentClient(base, "key") as client:
                    answer = await client.document_metadata("doc-1")
                assert answer.json()["path"] == "/JSON/document/metadata/doc-1"
                assert [line for line, _ in proxy.heads] == [
                    f"GET {base}/JSON/document/metadata/doc-1 HTTP/1.1"
                ]
                monkeypatch.setenv("NO_PROXY", "127.0.0.1")
                async with OkdokumentClient(base, "key") as client:
                    assert (await client.document_metadata("doc-2")).status_code == 200
                assert len(proxy.heads) == 1  # straight to the server this time

        asyncio.run(main())


@pytest.mark.parametrize(
    ("env", "base_url", "expected"),
    [
        pytest.param({}, "https://api.example/v1", None, id="none"),
        pytest.param({"HTTPS_PROXY": "http://p:3128"}, "https://api.example", "http://p:3128"),
        pytest.param({"ALL_PROXY": "http://p:3128"}, "https://api.example", "http://p:3128"),
        pytest.param({"HTTP_PROXY": "http://p:3128"}, "https://api.example", None, id="http-only"),
        pytest.param({"HTTP_PROXY": "http://p:3128"}, "http://api.example", "http://p:3128"),
        pytest.param(
            {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "api.example"},
            "https://api.example",
            None,
            id="no-proxy-covers-host",
        ),
        pytest.param(
            {"https_proxy": "http://p:3128", "no_proxy": "other.example"},
            "https://api.example",
            "http://p:3128",
            id="lower-case",
        ),
    ],
)
def test_which_proxy_the_environment_sets(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], base_url: str, expected: str | None
) -> None:
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert proxy_from_environment(base_url) == expected


@pytest.mark.parametrize("proxy", ["socks5://p:1080", "https://p:3128"])
def test_proxies_it_cannot_speak_to_are_refused_at_start(proxy: str) -> None:
    with pytest.raises(ConfigurationError, match="must be an http:// URL"):
        LeanHttpClient("https://api.example", {}, timeout=5, proxy=proxy)


def test_an_unreachable_proxy_is_a_connect_error() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]

    async def main() -> None:
        client = LeanHttpClient(
            "https://api.example", {}, timeout=5, proxy=f"http://127.0.0.1:{port}"
        )
        with pytest.raises(httpx.ConnectError):
            await client.request("GET", "x")
        await client.aclose()

    asyncio.run(main())


def test_proxy_credentials_never_show_in_repr() -> None:
    client = LeanHttpClient("https://api.example", {}, timeout=5, proxy="http://u:hunter2@p:1")
    assert "hunter2" not in repr(vars(client))


def test_a_client_with_a_resolver_refuses_a_proxy() -> None:
    """The downstream deliveries' clients check the addresses they connect to (a resolver);
    a proxy would resolve the name itself, so the two cannot go together."""

    async def resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    with pytest.raises(ValueError, match="proxy"):
        LeanHttpClient(
            "https://hooks.example", {}, timeout=5, resolver=resolve, proxy="http://p:3128"
        )
    LeanHttpClient("https://hooks.example", {}, timeout=5, resolver=resolve, proxy=None)
