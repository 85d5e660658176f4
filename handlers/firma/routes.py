"""``POST /hooks/firma`` and ``POST /hooks/firma/{workspace}``: Firma's signed webhooks.

One URL per set of secrets. ``/hooks/firma`` verifies with SIGNBACK_FIRMA_WEBHOOK_SECRETS
(company-level webhooks, or a single workspace). A company whose workspaces have their own
webhook secrets registers ``/hooks/firma/<workspace id>`` in each workspace and lists the
secrets in SIGNBACK_FIRMA_WORKSPACE_SECRETS; an unknown workspace is a 404.

Only verification and the commit happen before the 2xx (Firma allows 5 seconds). Answers:
200 stored (or duplicate), 400 malformed, 401 signature missing/malformed/wrong/stale or no
secret configured, 404 unknown workspace, 405 wrong method, 413 too large, 415 not JSON,
503 store unavailable (Firma retries).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from handlers.firma import signature
from handlers.firma.events import parse_envelope
from receiver.context import AppContext
from receiver.errors import CallbackRejected, SignatureInvalid
from receiver.intake.ack import rejected, store_and_ack
from receiver.intake.router import Answer, Callback, Hook
from receiver.logs import get_logger
from receiver.store.inbox import DEDUPE_KEY_CHARS

log = get_logger("signback.firma")


def check_content_type(call: Callback) -> None:
    media = call.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise CallbackRejected(
            f"content type must be application/json, not {media or 'missing'!r}", 415
        )


def dedupe_key(event_id: str) -> str:
    """``event:<id>``; for an id too long for the key's column (ids of up to 200 characters
    are accepted), its SHA-256 instead, so that the callback can be stored."""
    key = "event:" + event_id
    if len(key) <= DEDUPE_KEY_CHARS:
        return key
    return "event-sha256:" + hashlib.sha256(event_id.encode()).hexdigest()


def hooks(ctx: AppContext) -> list[Hook]:
    settings = ctx.settings
    limit = settings.max_body_bytes
    default_secrets = [s.get_secret_value() for s in settings.firma_webhook_secrets]
    workspace_secrets = {
        ws: [s.get_secret_value() for s in secrets]
        for ws, secrets in settings.firma_workspace_secrets.items()
    }
    insecure = settings.firma_insecure_skip_verification

    async def receive(call: Callback, secrets: Sequence[str], workspace: str | None) -> Answer:
        facts: dict[str, Any] = {"provider": "firma", "channel": "webhook", "workspace": workspace}
        try:
            check_content_type(call)
            body = await call.read_body(limit)
            if secrets:
                signature.verify(
                    call.headers,
                    body,
                    secrets,
                    now=ctx.clock(),
                    tolerance=settings.firma_signature_tolerance_seconds,
                )
            elif not insecure:
                raise SignatureInvalid(
                    "no Firma signing secret is configured on this receiver"
                    + (f" for workspace {workspace!r}" if workspace else "")
                )
            envelope = parse_envelope(body)
        except CallbackRejected as exc:
            return rejected(exc, event_type=call.headers.get("x-firma-event"), **facts)
        return await store_and_ack(
            ctx,
            log_facts={
                **facts,
                "event_type": envelope.event_type,
                "event_id": envelope.event_id,
                "signing_request": envelope.signing_request_id,
                "verified": bool(secrets),
            },
            provider="firma",
            channel="webhook",
            # The event id, not X-Firma-Delivery (which changes with every retry).
            dedupe_key=dedupe_key(envelope.event_id),
            body=body,
            headers=call.headers,
            query="",
            request_id=None,
            external_id=envelope.signing_request_id,
        )

    async def company_hook(call: Callback) -> Answer:
        return await receive(call, default_secrets, None)

    async def workspace_hook(call: Callback) -> Answer:
        workspace = call.param or ""
        secrets = workspace_secrets.get(workspace)
        if secrets is None:
            return rejected(
                CallbackRejected(f"no secrets configured for workspace {workspace[:64]!r}", 404),
                provider="firma",
                channel="webhook",
            )
        return await receive(call, secrets, workspace)

    return [
        Hook("/hooks/firma", company_hook),
        Hook("/hooks/firma/{workspace}", workspace_hook),
    ]
