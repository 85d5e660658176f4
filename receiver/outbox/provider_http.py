"""What every provider client shares: calls to the configured base URL only.

Redirects are never followed (following one would hand the API key to another host), and
the key lives only inside the HTTP client's headers, never on the object, so neither
``repr()`` nor ``vars()`` of a client shows it.

Calls go through :class:`receiver.outbox.lean_http.LeanHttpClient`, through the proxy the
environment sets for the provider's host if any. The answer is an :class:`HttpAnswer`, and
a failure raises one of httpx's exceptions.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, Self

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


class ProviderHttpClient:
    def __init__(self, base_url: str, auth_headers: Auth, *, timeout: float) -> None:
        self._base_url = base_url
        fixed = auth_headers if isinstance(auth_headers, Mapping) else {}
        self._per_call = None if isinstance(auth_headers, Mapping) else auth_headers
        headers = {**fixed, "User-Agent": USER_AGENT, "Accept": "application/json"}
        self._http = LeanHttpClient(
            base_url, headers, timeout=timeout, proxy=proxy_from_environment(base_url)
        )

    async def _request(self, method: str, path: str, *, json: Any = None) -> HttpAnswer:
        """``method`` on ``path`` under the base URL (``json``: the body to send)."""
        extra = await self._per_call() if self._per_call is not None else None
        return await self._http.request(method, path, json=json, extra_headers=extra)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._base_url!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
