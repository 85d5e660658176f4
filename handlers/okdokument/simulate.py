"""``signback simulate okdokument``: the sendInfo POST OKdokument makes, and the signer's
browser coming back, for a registered request, sent to any base URL (the local server, or
the tunnel's public address)."""

from __future__ import annotations

import time
from urllib.parse import urlencode

import httpx

from receiver.context import AppContext
from receiver.providers.simulation import Sent, load_request, redacted


async def send(
    ctx: AppContext,
    request_id: int,
    *,
    state: str | None = "signed",
    browser: str | None = None,
    base_url: str | None = None,
) -> list[Sent]:
    """The sendInfo POST OKdokument makes, and/or the signer's browser coming back."""
    row = await load_request(ctx, request_id, "okdokument")
    nonce = str(row["token_nonce"])
    base = (base_url or ctx.settings.public_url).rstrip("/")
    document_id = row["document_id"] or "simulated-document"
    sent: list[Sent] = []
    async with httpx.AsyncClient(timeout=10.0, follow_redirects=False) as client:
        if state:
            token = ctx.hook_token(nonce)
            url = f"{base}/hooks/okdokument/{token}"
            body = {"state": state, "id": document_id, "signatureRequestId": row["external_id"]}
            response = await client.post(url, json=body)
            sent.append(
                Sent(
                    f"sendInfo {state}",
                    "POST",
                    redacted(url, token),
                    response.status_code,
                    response.text[:300],
                )
            )
        if browser:
            query = urlencode(
                {
                    "name": "document",
                    "docid": document_id,
                    "lang": "en",
                    "result": browser,
                    "ts": int(time.time() * 1000),
                }
            )
            token = ctx.return_token(nonce)
            url = f"{base}/return/{token}?{query}"
            response = await client.get(url)
            answer = response.headers.get("location", response.text[:120])
            sent.append(
                Sent(
                    f"browser return {browser}",
                    "GET",
                    redacted(url, token),
                    response.status_code,
                    answer,
                )
            )
    return sent
