"""Wires OKdokument's adapter, routes, operations and client into the core."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from handlers.okdokument import adapter, routes
from handlers.okdokument.client import OkdokumentClient
from handlers.okdokument.operations import OPERATIONS
from handlers.okdokument.rules import repoint
from receiver.context import AppContext
from receiver.logs import get_logger
from receiver.providers import Provider
from receiver.settings import Settings

log = get_logger("signback.okdokument")


async def start_client(ctx: AppContext) -> Callable[[], Awaitable[None]]:
    settings = ctx.settings
    if settings.okdokument_api_key is None:
        log.warning(
            "SIGNBACK_OKDOKUMENT_API_KEY is not set: OKdokument callbacks are received, but "
            "PATCHes to OKdokument will fail until it is"
        )

        async def nothing() -> None:
            return None

        return nothing
    client = OkdokumentClient(
        settings.okdokument_base_url,
        settings.okdokument_api_key.get_secret_value(),
        timeout=settings.okdokument_timeout,
    )
    ctx.clients["okdokument"] = client
    return client.aclose


def build(settings: Settings) -> Provider:
    return Provider(
        name=adapter.PROVIDER,
        normalize=functools.partial(
            adapter.normalize, confirm_claims=settings.okdokument_confirm_callbacks
        ),
        hooks=routes.hooks,
        operations=OPERATIONS,
        repoint=repoint,
        start=start_client,
    )
