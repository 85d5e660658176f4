"""Wires OKdokument's adapter, routes, operations and client into the core."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence

from handlers.okdokument import adapter, routes
from handlers.okdokument.client import OkdokumentClient
from handlers.okdokument.operations import OPERATIONS
from handlers.okdokument.rules import point_sendinfo, repoint
from receiver.context import AppContext
from receiver.logs import get_logger
from receiver.pipeline.registration import Registration
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


def registration_checker(
    settings: Settings,
) -> Callable[[Registration], Sequence[tuple[str, str]]]:
    """A registration needs its documentId while sendInfo claims are confirmed: Document info
    is asked about that document, and OKdokument's documented API has no way to find a
    signature request's document (Document info takes a documentId; the list of documents
    does not name their signature requests)."""

    def check(registration: Registration) -> Sequence[tuple[str, str]]:
        if not settings.okdokument_confirm_callbacks or registration.document_id:
            return ()
        return (
            (
                "documentId",
                "required while SIGNBACK_OKDOKUMENT_CONFIRM_CALLBACKS is on: signback confirms "
                "each sendInfo claim with OKdokument's Document info for this document "
                "(OKdokument returns its documentId when the signature request is created). "
                "To act on sendInfo claims unconfirmed instead, set "
                "SIGNBACK_OKDOKUMENT_CONFIRM_CALLBACKS=false",
            ),
        )

    return check


def build(settings: Settings) -> Provider:
    return Provider(
        name=adapter.PROVIDER,
        normalize=functools.partial(
            adapter.normalize, confirm_claims=settings.okdokument_confirm_callbacks
        ),
        hooks=routes.hooks,
        operations=OPERATIONS,
        repoint=repoint,
        point_sendinfo=point_sendinfo,
        check_registration=registration_checker(settings),
        start=start_client,
    )
