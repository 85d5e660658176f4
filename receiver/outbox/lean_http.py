"""Keep-alive HTTP/1.1 to one provider base URL, for the outbox's calls.

Why not httpx here: the outbox makes one provider call per action, and httpx with its
httpcore pool cost 1.1 ms of CPU per call at 1 to 4 calls in flight and 2.2 to 2.8 ms at
16. Most of that goes to the pool checking every connection against every waiting request.
At 1,500 actions a second that would need about two cores for HTTP alone. This module does
the same calls for about 0.05 ms (measurements in docs/performance.md). It is deliberately
small:

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
  content, text, reason, ``json()``: :class:`receiver.outbox.provider_http.HttpAnswer`); building
  an ``httpx.Response`` cost more than the rest of the call.

What it does not do: HTTP/2, proxies, redirects (never followed for providers anyway),
compression (it asks for none), streaming. :class:`receiver.outbox.provider_http.ProviderHttpClient`
uses httpx whenever the environment configures a proxy for the provider's host, and
whenever a test hands in an httpx transport.
"""

from __future__ import annotations

import asyncio
import http
import json as jsonlib
import ssl
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import httpx

from receiver import jsonutil

# An idle connection older than this is closed, not reused: under common server keep-alive
# timeouts (uvicorn 5 s, nginx 75 s), so a call rarely meets a connection being closed.
KEEPALIVE_SECONDS = 4.0


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


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; one request at a time."""

    def __init__(self) -> None:
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

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

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
        self._body.append(body)

    def on_message_complete(self) -> None:
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
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"an http(s) base URL is needed: {base_url!r}")
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        default_port = self._port == (443 if self._tls else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._authority = host if default_port else f"{host}:{self._port}"
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._ssl = (ssl_context or httpx.create_ssl_context()) if self._tls else None
        fixed = {"Host": self._authority, **headers}
        self._fixed_headers = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
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
        """``extra_headers``: this call's own, besides the client's (a fresh access token)."""
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
                status, headers, answer = await conn.exchange(head + body, self._timeout)
                ok = conn.keep_alive and not conn.closed
            finally:
                if ok and not self._closed:
                    conn.idle_since = time.monotonic()
                    self._idle.append(conn)
                else:
                    conn.close()  # cancelled, failed or not keep-alive: never reused
        finally:
            self._slots.release()
        return LeanResponse(status, LeanHeaders(headers), answer)

    async def _checkout(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the likeliest to be alive
            if conn.reusable(now):
                return conn
            conn.close()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                _, conn = await loop.create_connection(
                    _Connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"could not connect within {self._timeout:g} s") from None
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake (ssl.SSLError)
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        self.connections_opened += 1
        return conn

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
