"""``POST /hooks/firma`` and ``POST /hooks/firma/{workspace}``: Firma's signed webhooks.

One URL per set of secrets. ``/hooks/firma`` verifies with SIGNBACK_FIRMA_WEBHOOK_SECRETS
(company-level webhooks, or a single workspace). A company whose workspaces have their own
webhook secrets registers ``/hooks/firma/<workspace id>`` in each workspace and lists the
secrets in SIGNBACK_FIRMA_WORKSPACE_SECRETS; an unknown workspace is a 404.

Only verification and the commit happen before the 2xx (Firma allows 5 seconds); the core
does the shared steps (receiver/intake/hooks.py). Answers: 200 stored (or duplicate), 400
malformed, 401 signature missing/malformed/wrong/stale or no secret configured, 404 unknown
workspace, 405 wrong method, 413 too large, 415 not JSON, 503 store unavailable (Firma
retries).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from handlers.firma import signature
from handlers.firma.events import parse_envelope
from handlers.firma.settings import FirmaSettings
from receiver.context import AppContext
from receiver.errors import CallbackRejected, SignatureInvalid
from receiver.intake.router import Callback
from receiver.providers.contract import Accepted, HookSpec, SecretHeader
from receiver.store.inbox import DEDUPE_KEY_CHARS


def dedupe_key(event_id: str) -> str:
    """``event:<id>``; for an id too long for the key's column (ids of up to 200 characters
    are accepted), its SHA-256 instead, so that the callback can be stored."""
    key = "event:" + event_id
    if len(key) <= DEDUPE_KEY_CHARS:
        return key
    return "event-sha256:" + hashlib.sha256(event_id.encode()).hexdigest()


def keep_timestamp(value: str) -> str:
    """A signature header as stored: its timestamp (when it was signed) and no digest."""
    stamp = [p.strip() for p in value.split(",") if p.strip().startswith("t=")]
    return ",".join([*stamp[:1], "v1=[redacted]"])


SECRET_HEADERS = (
    SecretHeader(signature.SIGNATURE_HEADER, keep_timestamp),
    SecretHeader(signature.OLD_SIGNATURE_HEADER, keep_timestamp),
)


def refusal_facts(call: Callback) -> Mapping[str, Any]:
    # The type a refused delivery claims (unsigned, so for the log only) and its workspace.
    return {"event_type": call.headers.get("x-firma-event"), "workspace": call.param}


def hooks(settings: FirmaSettings, ctx: AppContext) -> tuple[HookSpec, ...]:
    """The company hook and the workspace hook (the app's clock checks the signature's
    timestamp)."""
    clock = ctx.clock
    default_secrets = [s.get_secret_value() for s in settings.webhook_secrets]
    workspace_secrets = {
        ws: [s.get_secret_value() for s in secrets]
        for ws, secrets in settings.workspace_secrets.items()
    }
    insecure = settings.insecure_skip_verification
    tolerance = settings.signature_tolerance_seconds

    def check(
        call: Callback, body: bytes, secrets: Sequence[str], workspace: str | None
    ) -> Accepted:
        if secrets:
            signature.verify(call.headers, body, secrets, now=clock(), tolerance=tolerance)
        elif not insecure:
            raise SignatureInvalid(
                "no Firma signing secret is configured on this receiver"
                + (f" for workspace {workspace!r}" if workspace else ""),
                details={"secrets_tried": 0, "workspace": workspace},
            )
        envelope = parse_envelope(body)
        return Accepted(
            # The event id, not X-Firma-Delivery (which changes with every retry).
            dedupe_key=dedupe_key(envelope.event_id),
            external_id=envelope.signing_request_id,
            log_facts={
                "workspace": workspace,
                "event_type": envelope.event_type,
                "event_id": envelope.event_id,
                "signing_request": envelope.signing_request_id,
                "verified": bool(secrets),
            },
        )

    def company(call: Callback, body: bytes, _: None) -> Accepted:
        return check(call, body, default_secrets, None)

    def known_workspace(workspace: str) -> tuple[str, Sequence[str]]:
        secrets = workspace_secrets.get(workspace)
        if secrets is None:
            raise CallbackRejected(
                f"no secrets configured for workspace {workspace[:64]!r}",
                404,
                details={"configured_workspaces": len(workspace_secrets)},
            )
        return workspace, secrets

    def workspace(call: Callback, body: bytes, found: tuple[str, Sequence[str]]) -> Accepted:
        return check(call, body, found[1], found[0])

    return (
        HookSpec(
            "/hooks/firma",
            channel="webhook",
            verify=company,
            keep_query=False,
            refusal_facts=refusal_facts,
        ),
        HookSpec(
            "/hooks/firma/{workspace}",
            channel="webhook",
            verify=workspace,
            resolve=known_workspace,
            keep_query=False,
            refusal_facts=refusal_facts,
        ),
    )
