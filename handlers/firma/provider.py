"""Builds Firma's provider from its settings: events, hooks, operations and client."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from handlers.firma import documents, events, reconcile, routes
from handlers.firma.client import FirmaClient, validate_properties
from handlers.firma.operations import OPERATIONS
from handlers.firma.repoint import repoint
from handlers.firma.settings import FirmaSettings
from receiver.context import AppContext
from receiver.logs import get_logger
from receiver.providers.contract import Provider, placeholder

log = get_logger("signback.firma")

# Firma calls one webhook URL per company or workspace, the same for every request.
URLS = {"webhook_url": "/hooks/firma"}
# The placeholders a Firma request's payload may hold ({signback.return_url}, …).
PLACEHOLDERS = frozenset(placeholder(name) for name in ("return_url", *URLS))


def validate_defaults(defaults: Mapping[str, Any]) -> None:
    """Registration-time check of Firma properties; placeholders stand for valid URLs."""
    stand_in = {
        k: ("https://signback.invalid/" if isinstance(v, str) and v in PLACEHOLDERS else v)
        for k, v in defaults.items()
    }
    validate_properties(stand_in)


def warnings(settings: FirmaSettings) -> Callable[[AppContext], Any]:
    async def start(_: AppContext) -> None:
        if settings.insecure_skip_verification:
            log.warning(
                "INSECURE: SIGNBACK_FIRMA_INSECURE_SKIP_VERIFICATION is on and no secret is "
                "set: unsigned Firma webhooks are accepted. Never run like this in production."
                if not settings.webhook_secrets
                else "SIGNBACK_FIRMA_INSECURE_SKIP_VERIFICATION is on but secrets are set: "
                "signatures are still verified on /hooks/firma."
            )
        elif not settings.webhook_secrets and not settings.workspace_secrets:
            log.warning(
                "no Firma webhook secret is set (SIGNBACK_FIRMA_WEBHOOK_SECRETS): "
                "/hooks/firma refuses every delivery until one is"
            )

    return start


def client_factory(settings: FirmaSettings) -> Callable[[AppContext], FirmaClient | None]:
    def make(_: AppContext) -> FirmaClient | None:
        if settings.api_key is None:
            return None
        return FirmaClient(
            settings.base_url,
            settings.api_key.get_secret_value(),
            timeout=settings.timeout,
            download_hosts=settings.download_hosts,
        )

    return make


def build(settings: FirmaSettings) -> Provider:
    return Provider(
        name=events.PROVIDER,
        normalize=events.normalize,
        hooks=functools.partial(routes.hooks, settings),
        urls=URLS,
        secret_headers=routes.SECRET_HEADERS,
        operations=OPERATIONS,
        client=client_factory(settings),
        validate_defaults=validate_defaults,
        repoint=repoint,
        start=warnings(settings),
        reconcile=reconcile.read,
        documents=documents.source(settings),
    )
