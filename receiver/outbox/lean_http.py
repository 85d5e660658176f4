"""Keep-alive HTTP/1.1 to one base URL: the outbox's only way to call providers and endpoints.

Why not httpx: the outbox makes one provider call per action, and httpx with its httpcore
pool spends many times this client's CPU per call, mostly on the pool checking every
connection against every waiting request (figures in docs/performance.md). This client is
deliberately small:

- It uses asyncio protocols with httptools' response parser. httptools is already
  installed as uvicorn's parser.
- It keeps a keep-alive pool per client, capped in size. An idle connection is used for at
  most 4 s, and one the server closed is noticed when the close arrives.
- Bodies are JSON or bytes, sent with a Content-Length.
- Responses may carry a Content-Length, be chunked, or end with the connection.
- The httpx timeout rules apply: connect, pool wait and response each get ``timeout``
  seconds.
- Errors raise httpx's own exception types. Answers come back as :class:`LeanResponse`,
  which has what the provider clients read of an ``httpx.Response`` (status, headers,
  content, text, reason, ``json()``: :class:`receiver.outbox.provider_http.HttpAnswer`).
- It goes through an HTTP proxy when given one (:func:`proxy_from_environment` reads
  ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` as httpx does): a tunnel
  opened with ``CONNECT`` for an https base URL, the absolute-form request target for an
  http one. Proxy credentials in the proxy's URL go to the proxy only. A client given a
  ``resolver`` (the downstream deliveries' address check) cannot have a proxy: the proxy
  would resolve the name itself.

What it does not do: HTTP/2, redirects (never followed for providers anyway), compression
(it asks for none), streaming, proxies spoken to over TLS or SOCKS.
"""

from __future__ import annotations

import asyncio
import base64
import http
import json as jsonlib
import ssl
import time
import urllib.request
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import httptools
import httpx

from receiver import jsonutil
from receiver.errors import ConfigurationError

# An idle connection older than this is closed, not reused: under common server keep-alive
# timeouts (uvicorn 5 s, nginx 75 s), so a call rarely meets a connection being closed.
KEEPALIVE_SECONDS = 4.0
# With ``max_answer_bytes``: the most an answer's head may take (a server sending headers
# for ever must not fill the memory).
MAX_HEAD_BYTES = 64 * 1024

# Resolves a host name to the addresses to connect to, in order (raising to refuse it).
Resolver = Callable[[str, int], Awaitable[list[str]]]

# The longest answer head a proxy may give to CONNECT.
MAX_PROXY_HEAD = 16 * 1024


def proxy_from_environment(base_url: str) -> str | None:
    """The proxy the environment sets for ``base_url`` (``HTTPS_PROXY`` for https,
    ``HTTP_PROXY`` for http, else ``ALL_PROXY``; none when ``NO_PROXY`` covers its host)."""
    parts = urlsplit(base_url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy: where it listens, and the ``Proxy-Authorization`` its URL implies."""

    host: str
    port: int
    authorization: bytes  # the whole header line, or b""

    @classmethod
    def parse(cls, url: str) -> Proxy:
        if "://" not in url:
            url = f"http://{url}"  # "proxy:3128", as curl and httpx read it
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ConfigurationError(
                f"the outbound proxy must be an http:// URL (TLS and SOCKS proxies are not "
                f"supported): {parts.scheme}://{parts.hostname or ''}"
            )
        authorization = b""
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            token = base64.b64encode(credentials.encode()).decode("ascii")
            authorization = f"Proxy-Authorization: Basic {token}\r\n".encode("latin-1")
        return cls(parts.hostname, parts.port or 80, authorization)

    def __repr__(self) -> str:  # never the credentials
        return f"Proxy({self.host}:{self.port})"


class LeanHeaders(dict[str, str]):
    """Answer headers by lower-case name; a repeated header's values joined with ", ", as
    ``httpx.Headers.get`` joins them. Lookups ignore case."""

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        super().__init__()
        for name, value in raw:
            key, text = name.decode("latin-1").lower(), value.decode("latin-1")
            super().__setitem__(key, f"{self[key]}, {text}" if key in self else text)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


class LeanResponse:
    """An HTTP answer: the parts of ``httpx.Response`` the provider clients use."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: LeanHeaders, content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content

    @property
    def reason_phrase(self) -> str:
        try:
            return http.HTTPStatus(self.status_code).phrase
        except ValueError:
            return ""

    @property
    def encoding(self) -> str:
        """The charset the Content-Type names, else UTF-8 (httpx's default too)."""
        content_type: str = self.headers.get("content-type", "")
        for param in content_type.split(";")[1:]:
            key, _, value = param.strip().partition("=")
            if key.lower() == "charset" and value:
                return value.strip("\"' ")
        return "utf-8"

    @property
    def text(self) -> str:
        try:
            return self.content.decode(self.encoding, "replace")
        except LookupError:  # an unknown charset
            return self.content.decode("utf-8", "replace")

    def json(self, **_: Any) -> Any:
        return jsonutil.loads(self.content)

    def __repr__(self) -> str:
        return f"<LeanResponse [{self.status_code}]>"


def is_interim(status: int) -> bool:
    """A 1xx answer other than 101 (which we never ask for: no Upgrade is sent)."""
    return 100 <= status < 200 and status != 101


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; one request at a time."""

    def __init__(self, max_answer_bytes: int | None = None) -> None:
        self.max_answer_bytes = max_answer_bytes
        self._answer_bytes = 0
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] | None = None
        self.closed = False
        self.keep_alive = False
        self.idle_since = 0.0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._headers_done = False
        self._delimited_by_close = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._headers_done and self._delimited_by_close:
            self._finish()  # no length, not chunked: the body ended with the connection
        else:
            self._fail(
                httpx.RemoteProtocolError("the server closed the connection without a full answer")
            )

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._headers, self._body = [], []
        self._headers_done = self._delimited_by_close = False
        self._answer_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        if self.max_answer_bytes is not None:
            self._answer_bytes += len(name) + len(value)
            if self._answer_bytes > MAX_HEAD_BYTES:
                self._fail(httpx.RemoteProtocolError("the answer's head is too large"))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        names = {name.lower() for name, _ in self._headers}
        status = self.parser.get_status_code()
        self._delimited_by_close = (
            b"content-length" not in names
            and b"transfer-encoding" not in names
            and status >= 200
            and status not in (204, 304)
        )

    def on_body(self, body: bytes) -> None:
        limit = self.max_answer_bytes
        if limit is not None:
            # Only the first bytes are kept (for the attempt log): past them the answer is
            # taken as it is and the connection closed, never read to its end.
            room = limit - sum(len(part) for part in self._body)
            if len(body) > room:
                self._body.append(body[: max(room, 0)])
                self._finish()
                self.close()
                return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if is_interim(self.parser.get_status_code()):
            # A 1xx (100 Continue, 103 Early Hints) is not the answer: the final one follows
            # on the same connection (RFC 9110 15.2: a client must read any number of them).
            return
        self.keep_alive = self.parser.should_keep_alive()
        self._finish()

    # ours

    def _finish(self) -> None:
        answer = self.answer
        if answer is not None and not answer.done():
            answer.set_result((self.parser.get_status_code(), self._headers, b"".join(self._body)))

    def _fail(self, exc: Exception) -> None:
        answer = self.answer
        if answer is not None and not answer.done():
            answer.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def reusable(self, now: float) -> bool:
        return (
            not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
            and now - self.idle_since < KEEPALIVE_SECONDS
        )

    async def exchange(
        self, data: bytes, timeout: float
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        assert self.transport is not None
        self.answer = asyncio.get_running_loop().create_future()
        self.keep_alive = False
        self.transport.write(data)
        try:
            async with asyncio.timeout(timeout):
                return await self.answer
        except TimeoutError:
            raise httpx.ReadTimeout(f"no answer within {timeout:g} s") from None
        finally:
            self.answer = None


class _Tunnel(asyncio.Protocol):
    """A connection to a proxy until it answers our ``CONNECT``; then TLS takes it over."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._received = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._received += data
        if self.head.done():
            return
        end = self._received.find(b"\r\n\r\n")
        if end >= 0:
            self.head.set_result(self._received[:end])
        elif len(self._received) > MAX_PROXY_HEAD:
            self.head.set_exception(httpx.ProxyError("the proxy's answer head is too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(httpx.ProxyError("the proxy closed the connection"))

    async def open(self, target: str, authorization: bytes) -> None:
        """Ask for a tunnel to ``target`` (host:port); raise ``httpx.ProxyError`` unless
        the proxy grants it."""
        assert self.transport is not None
        self.transport.write(
            f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n".encode("latin-1")
            + authorization
            + b"\r\n"
        )
        status_line = (await self.head).split(b"\r\n", 1)[0].decode("latin-1")
        version, _, rest = status_line.partition(" ")
        if not (version.startswith("HTTP/1.") and rest[:1] == "2" and rest[1:3].isdigit()):
            raise httpx.ProxyError(f"the proxy refused the tunnel: {status_line[:200]!r}")


def _call_headers(headers: Mapping[str, str]) -> bytes:
    for name, value in headers.items():
        if any(c in name or c in value for c in "\r\n"):
            raise ValueError(f"header {name!r} holds a line break")
    return "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1")


class LeanHttpClient:
    """Calls under one base URL, e.g. ``https://api.example/v1``; paths are joined to it
    the way httpx joins relative URLs to ``base_url`` (a leading ``/`` stays under it)."""

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        timeout: float,
        max_connections: int = 100,
        ssl_context: ssl.SSLContext | None = None,
        resolver: Resolver | None = None,
        max_answer_bytes: int | None = None,
        proxy: str | None = None,
    ) -> None:
        """``resolver``: connect only to the addresses it returns for the host (the name
        still goes in ``Host`` and TLS), e.g. after checking them. ``max_answer_bytes``:
        keep at most this much of an answer's body (the rest is not read). ``proxy``: an
        http:// proxy URL to call through (see :func:`proxy_from_environment`); None:
        straight to the base URL's host.

        A resolver and a proxy exclude each other: a proxy resolves the name itself, so the
        addresses the resolver checked would not be the ones connected to."""
        if resolver is not None and proxy:
            raise ValueError("a client with a resolver cannot call through a proxy")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"an http(s) base URL is needed: {base_url!r}")
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        default_port = self._port == (443 if self._tls else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._authority = host if default_port else f"{host}:{self._port}"
        self._tunnel_target = f"{host}:{self._port}"  # CONNECT always names the port
        self._proxy = Proxy.parse(proxy) if proxy else None
        # Through a proxy, plain http goes in absolute form (the proxy forwards it); https
        # goes through a CONNECT tunnel, in origin form as usual.
        self._forwarded = self._proxy is not None and not self._tls
        origin = f"http://{self._authority}" if self._forwarded else ""
        self._prefix = origin + parts.path.rstrip("/")
        self._timeout = timeout
        self._ssl = (ssl_context or httpx.create_ssl_context()) if self._tls else None
        fixed = {"Host": self._authority, **headers}
        self._fixed_headers = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        if self._forwarded and self._proxy is not None:
            self._fixed_headers += self._proxy.authorization
        self._resolver = resolver
        self._max_answer_bytes = max_answer_bytes
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: deque[_Connection] = deque()
        self._closed = False
        self.connections_opened = 0  # for tests and diagnostics

    def _target(self, path: str) -> str:
        if "://" in path or path.startswith("//") or any(c in path for c in "\r\n "):
            # Calls go to the configured base URL only, never to a URL from elsewhere.
            raise ValueError(f"a path under the base URL is needed, not {path!r}")
        return f"{self._prefix}/{path.lstrip('/')}"

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> LeanResponse:
        """``extra_headers``: this call's own, besides the client's (a fresh access token,
        a delivery's signature)."""
        if method == "HEAD":
            raise ValueError("HEAD is not supported here (its answer has no body to frame)")
        if json is not None:
            # The same encoding httpx uses for json= (orjson would write NaN as null).
            content = jsonlib.dumps(
                json, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode()
            content_type = b"Content-Type: application/json\r\n"
        else:
            content_type = b""
        body = content or b""
        head = b"".join(
            (
                f"{method} {self._target(path)} HTTP/1.1\r\n".encode("latin-1"),
                self._fixed_headers,
                _call_headers(extra_headers) if extra_headers else b"",
                content_type,
                b"Content-Length: %d\r\n\r\n" % len(body) if body or method != "GET" else b"\r\n",
            )
        )
        try:
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout(f"no free connection within {self._timeout:g} s") from None
        try:
            conn = await self._checkout()
            ok = False
            try:
                status, raw_headers, answer = await conn.exchange(head + body, self._timeout)
                ok = conn.keep_alive and not conn.closed
            finally:
                if ok and not self._closed:
                    conn.idle_since = time.monotonic()
                    self._idle.append(conn)
                else:
                    conn.close()  # cancelled, failed or not keep-alive: never reused
        finally:
            self._slots.release()
        return LeanResponse(status, LeanHeaders(raw_headers), answer)

    async def _checkout(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the likeliest to be alive
            if conn.reusable(now):
                return conn
            conn.close()
        try:
            async with asyncio.timeout(self._timeout):
                conn = await self._connect()
        except TimeoutError:
            raise httpx.ConnectTimeout(f"could not connect within {self._timeout:g} s") from None
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake (ssl.SSLError)
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        self.connections_opened += 1
        return conn

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self._resolver is not None:
            return await self._connect_resolved(loop)
        limit = self._max_answer_bytes
        proxy = self._proxy
        if proxy is None or self._forwarded:
            host, port = (self._host, self._port) if proxy is None else (proxy.host, proxy.port)
            _, conn = await loop.create_connection(
                lambda: _Connection(limit),
                host,
                port,
                ssl=self._ssl,
                server_hostname=self._host if self._ssl else None,
            )
            return conn
        # https through the proxy: a CONNECT tunnel, then TLS with the provider inside it.
        raw, tunnel = await loop.create_connection(_Tunnel, proxy.host, proxy.port)
        try:
            await tunnel.open(self._tunnel_target, proxy.authorization)
            conn = _Connection(limit)
            assert self._ssl is not None
            transport = await loop.start_tls(raw, conn, self._ssl, server_hostname=self._host)
        except BaseException:
            raw.close()
            raise
        if transport is None:  # the loop's way of saying the connection closed meanwhile
            raise httpx.ConnectError("the tunnel closed during the TLS handshake")
        conn.connection_made(transport)
        return conn

    async def _connect_resolved(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        """Connect to the first address the resolver gives that answers; the resolver's
        own refusal propagates as it is (not as a connection error)."""
        assert self._resolver is not None
        addresses = await self._resolver(self._host, self._port)
        failure: OSError | None = None
        for address in addresses:
            try:
                _, conn = await loop.create_connection(
                    lambda: _Connection(self._max_answer_bytes),
                    address,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
                return conn
            except OSError as exc:
                failure = exc
        raise failure or OSError(f"no address to connect to for {self._host}")

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
