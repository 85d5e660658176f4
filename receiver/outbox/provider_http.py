"""What every provider client shares: calls to the configured base URL only.

Redirects are never followed (following one would hand the API key to another host), and
the key lives only inside the HTTP clients' headers, never on the object, so neither
``repr()`` nor ``vars()`` of a client shows it.

Calls go through :class:`receiver.outbox.lean_http.LeanHttpClient`, which needs a twentieth of
httpx's CPU per call (the outbox makes one per action). httpx takes over when a test hands in
a transport, and when the environment sets a proxy for the provider's host, because only
httpx speaks to proxies. Either way the answer is an :class:`HttpAnswer` (an
``httpx.Response`` is one), and a failure raises one of httpx's exceptions.
"""

from __future__ import annotations

import importlib.metadata
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, Self
from urllib.parse import urlsplit

import httpx

from receiver.outbox.lean_http import LeanHttpClient


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


class ProviderHttpClient:
    def __init__(
        self,
        base_url: str,
        auth_headers: Auth,
        *,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self._base_url = base_url
        fixed = auth_headers if isinstance(auth_headers, Mapping) else {}
        self._per_call = None if isinstance(auth_headers, Mapping) else auth_headers
        headers = {**fixed, "User-Agent": USER_AGENT, "Accept": "application/json"}
        self._lean: LeanHttpClient | None = None
        if transport is None and not proxied(base_url):
            self._lean = LeanHttpClient(base_url, headers, timeout=timeout)
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )

    async def _request(self, method: str, path: str, *, json: Any = None) -> HttpAnswer:
        """``method`` on ``path`` under the base URL (``json``: the body to send)."""
        extra = await self._per_call() if self._per_call is not None else None
        if self._lean is not None:
            return await self._lean.request(method, path, json=json, extra_headers=extra)
        return await self._http.request(method, path, json=json, headers=extra)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._base_url!r})"

    async def aclose(self) -> None:
        if self._lean is not None:
            await self._lean.aclose()
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def proxied(base_url: str) -> bool:
    """True when the environment (``HTTPS_PROXY`` and the like) routes ``base_url`` through a
    proxy, as httpx would honour it."""
    proxies = urllib.request.getproxies()
    scheme = urlsplit(base_url).scheme
    if not (proxies.get(scheme) or proxies.get("all")):
        return False
    host = urlsplit(base_url).hostname or ""
    return not urllib.request.proxy_bypass(host)
