"""What every provider client shares: calls to the configured base URL only.

Redirects are never followed (following one would hand the API key to another host), and
the key lives only inside the HTTP client's headers, never on the object, so neither
``repr()`` nor ``vars()`` of a client shows it.

Calls go through :class:`receiver.outbox.lean_http.LeanHttpClient`, through the proxy the
environment sets for the provider's host if any. The answer is an :class:`HttpAnswer`, and
a failure raises one of httpx's exceptions.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, Self
from urllib.parse import urlsplit

import httpx

from receiver.outbox.lean_http import LeanHttpClient, proxy_from_environment


class HttpAnswer(Protocol):
    """What provider clients read of an answer: ``httpx.Response`` and
    :class:`receiver.outbox.lean_http.LeanResponse` both have it."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> bytes: ...

    @property
    def text(self) -> str: ...

    @property
    def reason_phrase(self) -> str: ...

    def json(self, **kwargs: Any) -> Any: ...


def _version() -> str:
    try:
        return importlib.metadata.version("signback")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


USER_AGENT = f"signback/{_version()}"


# Credentials for every call: fixed headers (an API key), or an async callable that gives
# each call its own (an OAuth access token, refreshed when it expires).
Auth = Mapping[str, str] | Callable[[], Awaitable[Mapping[str, str]]]


def host_allowed(url: str, hosts: Sequence[str]) -> bool:
    """Whether ``url`` is http(s) on one of ``hosts`` (a name, or ``*.example.com`` for
    the names under it)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        return False
    for allowed in hosts:
        allowed = allowed.lower()
        if host == allowed or (allowed.startswith("*.") and host.endswith(allowed[1:])):
            return True
    return False


class ProviderHttpClient:
    def __init__(self, base_url: str, auth_headers: Auth, *, timeout: float) -> None:
        self._base_url = base_url
        fixed = auth_headers if isinstance(auth_headers, Mapping) else {}
        self._per_call = None if isinstance(auth_headers, Mapping) else auth_headers
        headers = {**fixed, "User-Agent": USER_AGENT, "Accept": "application/json"}
        self._http = LeanHttpClient(
            base_url, headers, timeout=timeout, proxy=proxy_from_environment(base_url)
        )
        # Streamed downloads (the archive's documents) go through httpx: the lean client
        # reads whole answers, which a document of many megabytes must not be. Made on first
        # use (by a closure, so the key is in no attribute); proxies come from the
        # environment as for the lean client.
        streaming_headers = {**fixed, "User-Agent": USER_AGENT}

        def streaming(credentials: bool) -> httpx.AsyncClient:
            return httpx.AsyncClient(
                headers=streaming_headers if credentials else {"User-Agent": USER_AGENT},
                follow_redirects=False,  # a redirect could carry the key elsewhere
                timeout=httpx.Timeout(timeout),
                trust_env=True,
            )

        self._new_streaming = streaming
        self._streams: httpx.AsyncClient | None = None
        self._links: httpx.AsyncClient | None = None

    @property
    def base_host(self) -> str:
        return (urlsplit(self._base_url).hostname or "").lower()

    def _streaming(self, *, credentials: bool) -> httpx.AsyncClient:
        current = self._streams if credentials else self._links
        if current is None:
            current = self._new_streaming(credentials)
            if credentials:
                self._streams = current
            else:
                self._links = current
        return current

    @contextlib.asynccontextmanager
    async def _stream(self, path: str) -> AsyncIterator[httpx.Response]:
        """``GET path`` under the base URL, the answer streamed (its body not read yet)."""
        if "://" in path or path.startswith("//") or any(c in path for c in "\r\n "):
            raise ValueError(f"a path under the base URL is needed, not {path!r}")
        extra = dict(await self._per_call()) if self._per_call is not None else {}
        url = f"{self._base_url.rstrip('/')}/{path.lstrip('/')}"
        async with self._streaming(credentials=True).stream("GET", url, headers=extra) as answer:
            yield answer

    @contextlib.asynccontextmanager
    async def _stream_link(self, url: str, hosts: Sequence[str]) -> AsyncIterator[httpx.Response]:
        """``GET`` a link the provider handed out (a pre-signed URL), streamed. The link is
        its own credential: the API key is never sent with it. Only to ``hosts`` (and the
        base URL's host): a link elsewhere raises ValueError."""
        if not host_allowed(url, [self.base_host, *hosts]):
            raise ValueError(f"a download link to a host not allowed: {urlsplit(url).hostname!r}")
        async with self._streaming(credentials=False).stream("GET", url) as answer:
            yield answer

    async def _request(self, method: str, path: str, *, json: Any = None) -> HttpAnswer:
        """``method`` on ``path`` under the base URL (``json``: the body to send)."""
        extra = await self._per_call() if self._per_call is not None else None
        return await self._http.request(method, path, json=json, extra_headers=extra)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._base_url!r})"

    async def aclose(self) -> None:
        await self._http.aclose()
        for streaming in (self._streams, self._links):
            if streaming is not None:
                await streaming.aclose()
        self._streams = self._links = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
