"""Wires Firma's adapter, routes, operations and client into the core."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from handlers.firma import events, routes
from handlers.firma.client import FirmaClient, validate_properties
from handlers.firma.operations import OPERATIONS
from handlers.firma.repoint import repoint
from receiver.context import AppContext
from receiver.logs import get_logger
from receiver.outbox.dispatcher import PLACEHOLDERS
from receiver.providers import Provider
from receiver.settings import Settings

log = get_logger("signback.firma")


def validate_defaults(defaults: Mapping[str, Any]) -> None:
    """Registration-time check of Firma properties; placeholders stand for valid URLs."""
    stand_in = {
        k: ("https://signback.invalid/" if isinstance(v, str) and v in PLACEHOLDERS else v)
        for k, v in defaults.items()
    }
    validate_properties(stand_in)


async def start_client(ctx: AppContext) -> Callable[[], Awaitable[None]]:
    settings = ctx.settings
    if settings.firma_insecure_skip_verification:
        log.warning(
            "INSECURE: SIGNBACK_FIRMA_INSECURE_SKIP_VERIFICATION is on and no secret is set: "
            "unsigned Firma webhooks are accepted. Never run like this in production."
            if not settings.firma_webhook_secrets
            else "SIGNBACK_FIRMA_INSECURE_SKIP_VERIFICATION is on but secrets are set: "
            "signatures are still verified on /hooks/firma."
        )
    elif not settings.firma_webhook_secrets and not settings.firma_workspace_secrets:
        log.warning(
            "no Firma webhook secret is set (SIGNBACK_FIRMA_WEBHOOK_SECRETS): "
            "/hooks/firma refuses every delivery until one is"
        )
    if settings.firma_api_key is None:

        async def nothing() -> None:
            return None

        return nothing
    client = FirmaClient(
        settings.firma_base_url,
        settings.firma_api_key.get_secret_value(),
        timeout=settings.firma_timeout,
    )
    ctx.clients["firma"] = client
    return client.aclose


def build(settings: Settings) -> Provider:
    return Provider(
        name="firma",
        normalize=events.normalize,
        hooks=routes.hooks,
        operations=OPERATIONS,
        validate_defaults=validate_defaults,
        repoint=repoint,
        start=start_client,
    )
