"""What every provider client shares: one httpx client on the configured base URL only.

Redirects are never followed (following one would hand the API key to another host), and
the key lives only inside the httpx client's headers, never on the object, so neither
``repr()`` nor ``vars()`` of a client shows it.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from typing import Self

import httpx


def _version() -> str:
    try:
        return importlib.metadata.version("signback")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


USER_AGENT = f"signback/{_version()}"


class ProviderHttpClient:
    def __init__(
        self,
        base_url: str,
        auth_headers: Mapping[str, str],
        *,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self._base_url = base_url
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={**auth_headers, "User-Agent": USER_AGENT, "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._base_url!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
