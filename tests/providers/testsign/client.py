"""Testsign's API client. Calls carry an OAuth access token, fetched with the client
credentials and fetched again once it has expired: the per-call auth of the contract."""

from __future__ import annotations

import time
from collections.abc import Mapping
from urllib.parse import quote

from receiver.outbox.provider_http import HttpAnswer, ProviderHttpClient


class AccessTokens:
    """``await tokens()`` → ``{"Authorization": "Bearer …"}``, fetched when none is valid."""

    def __init__(self, base_url: str, client_id: str, client_secret: str, timeout: float) -> None:
        self._api = ProviderHttpClient(base_url, {}, timeout=timeout)
        self._credentials = {"client_id": client_id, "client_secret": client_secret}
        self._token = ""
        self._expires_at = 0.0
        self.fetched = 0

    async def __call__(self) -> Mapping[str, str]:
        if time.monotonic() >= self._expires_at:
            answer = await self._api._request("POST", "/oauth/token", json=self._credentials)
            if answer.status_code != 200:
                raise RuntimeError(f"no access token: {answer.status_code}")
            grant = answer.json()
            self._token = str(grant["access_token"])
            self._expires_at = time.monotonic() + float(grant["expires_in"])
            self.fetched += 1
        return {"Authorization": f"Bearer {self._token}"}

    async def aclose(self) -> None:
        await self._api.aclose()


class TestsignClient(ProviderHttpClient):
    __test__ = False

    def __init__(self, base_url: str, tokens: AccessTokens, *, timeout: float) -> None:
        super().__init__(base_url, tokens, timeout=timeout)
        self.tokens = tokens

    async def archive(self, envelope_id: str, callback_url: str) -> HttpAnswer:
        path = f"/v1/envelopes/{quote(envelope_id, safe='')}/archive"
        return await self._request("POST", path, json={"notify": callback_url})

    async def aclose(self) -> None:
        await super().aclose()
        await self.tokens.aclose()
