"""`signback simulate`: realistic, correctly signed sample callbacks for a registered request,
sent to any base URL (the local server, or the tunnel's public address), so the whole path
can be tried without a real signer."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx

from receiver.context import AppContext
from receiver.errors import SignbackError
from receiver.store import requests


@dataclass(frozen=True)
class Sent:
    what: str
    method: str
    url: str  # with the token cut out: printed to a terminal
    status: int
    answer: str


def _redacted(url: str, token: str) -> str:
    return url.replace(token, "[token]")


async def _load(ctx: AppContext, request_id: int, provider: str) -> Any:
    row = await requests.get(ctx.db, request_id)
    if row is None:
        raise SignbackError(f"no request with id {request_id}")
    if row["provider"] != provider:
        raise SignbackError(f"request {request_id} is a {row['provider']} request")
    return row


async def okdokument(
    ctx: AppContext,
    request_id: int,
    *,
    state: str | None = "signed",
    browser: str | None = None,
    base_url: str | None = None,
) -> list[Sent]:
    """The sendInfo POST OKdokument makes, and/or the signer's browser coming back."""
    row = await _load(ctx, request_id, "okdokument")
    nonce = str(row["token_nonce"])
    base = (base_url or ctx.settings.public_url).rstrip("/")
    document_id = row["document_id"] or "simulated-document"
    sent: list[Sent] = []
    async with httpx.AsyncClient(timeout=10.0, follow_redirects=False) as client:
        if state:
            token = ctx.sendinfo_token(nonce)
            url = f"{base}/hooks/okdokument/{token}"
            body = {"state": state, "id": document_id, "signatureRequestId": row["external_id"]}
            response = await client.post(url, json=body)
            sent.append(
                Sent(
                    f"sendInfo {state}",
                    "POST",
                    _redacted(url, token),
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
                    _redacted(url, token),
                    response.status_code,
                    answer,
                )
            )
    return sent


def firma_envelope(
    event_type: str, signing_request_id: str, *, envelope: str = "current", now: float
) -> dict[str, Any]:
    event_id = f"evt_sim_{uuid.uuid4().hex[:16]}"
    stamp = dt.datetime.fromtimestamp(now, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if envelope == "old":
        return {
            "event_id": event_id,
            "event_type": event_type,
            "timestamp": stamp,
            "company_id": "comp_simulated",
            "workspace_id": "ws_simulated",
            "data": {"signing_request_id": signing_request_id},
        }
    return {
        "id": event_id,
        "type": event_type,
        "created_at": stamp,
        "company_id": "comp_simulated",
        "workspace_id": "ws_simulated",
        "data": {
            "signing_request": {
                "id": signing_request_id,
                "name": "Simulated request",
                "workspace_id": "ws_simulated",
                "created_at": stamp,
            },
            "recipients": [
                {
                    "id": "rec_simulated",
                    "email": "signer@example.com",
                    "name": "Simulated Signer",
                    "order": 1,
                    "designation": "Signer",
                    "signed_at": stamp
                    if "signed" in event_type or event_type.endswith("completed")
                    else None,
                }
            ],
            "workspace": {"id": "ws_simulated", "name": "Simulated"},
        },
    }


async def firma(
    ctx: AppContext,
    request_id: int,
    *,
    event_type: str,
    envelope: str = "current",
    workspace: str | None = None,
    base_url: str | None = None,
) -> list[Sent]:
    """A Firma webhook delivery, signed with the configured secret exactly as Firma signs."""
    from handlers.firma.signature import sign

    row = await _load(ctx, request_id, "firma")
    settings = ctx.settings
    secrets = (
        settings.firma_workspace_secrets.get(workspace, [])
        if workspace
        else settings.firma_webhook_secrets
    )
    if not secrets:
        raise SignbackError(
            "no Firma secret is configured to sign with (SIGNBACK_FIRMA_WEBHOOK_SECRETS"
            + (" / SIGNBACK_FIRMA_WORKSPACE_SECRETS" if workspace else "")
            + ")"
        )
    now = ctx.clock()
    body = json.dumps(
        firma_envelope(event_type, str(row["external_id"]), envelope=envelope, now=now)
    ).encode()
    base = (base_url or settings.public_url).rstrip("/")
    url = f"{base}/hooks/firma" + (f"/{workspace}" if workspace else "")
    headers = {
        "content-type": "application/json",
        "x-firma-event": event_type,
        "x-firma-delivery": f"dlv_sim_{uuid.uuid4().hex[:16]}",
        "x-firma-signature": sign(secrets[0].get_secret_value(), body, int(now)),
    }
    async with httpx.AsyncClient(timeout=10.0, follow_redirects=False) as client:
        response = await client.post(url, content=body, headers=headers)
    return [Sent(f"webhook {event_type}", "POST", url, response.status_code, response.text[:300])]
