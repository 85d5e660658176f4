"""``signback simulate firma``: a webhook delivery for a registered request, signed with the
configured secret exactly as Firma signs, sent to any base URL (the local server, or the
tunnel's public address)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import httpx

from handlers.firma.settings import FirmaSettings
from handlers.firma.signature import sign
from receiver.context import AppContext
from receiver.errors import SignbackError
from receiver.providers.simulation import Sent, load_request


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


async def send(
    ctx: AppContext,
    request_id: int,
    *,
    event_type: str,
    envelope: str = "current",
    workspace: str | None = None,
    base_url: str | None = None,
) -> list[Sent]:
    """A Firma webhook delivery, signed with the configured secret exactly as Firma signs."""
    row = await load_request(ctx, request_id, "firma")
    settings = ctx.settings.section(FirmaSettings)
    secrets = (
        settings.workspace_secrets.get(workspace, []) if workspace else settings.webhook_secrets
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
    base = (base_url or ctx.settings.public_url).rstrip("/")
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
