"""Builds OKdokument's provider from its settings: adapter, hook, browser returns,
operations and client."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from handlers.okdokument import adapter, documents, reconcile, routes
from handlers.okdokument.client import OkdokumentClient
from handlers.okdokument.operations import OPERATIONS
from handlers.okdokument.returns import parse_return
from handlers.okdokument.rules import point_hook_url, repoint
from handlers.okdokument.settings import OkdokumentSettings
from receiver.context import AppContext
from receiver.logs import get_logger
from receiver.pipeline.registration import Registration
from receiver.providers.contract import Provider

log = get_logger("signback.okdokument")

# The request's own sendInfo URL, carrying its hook token (see receiver/intake/tokens.py).
URLS = {"sendinfo_url": "/hooks/okdokument/{hook_token}"}


def client_factory(settings: OkdokumentSettings) -> Callable[[AppContext], OkdokumentClient | None]:
    def make(ctx: AppContext) -> OkdokumentClient | None:
        if settings.api_key is None:
            log.warning(
                "SIGNBACK_OKDOKUMENT_API_KEY is not set: OKdokument callbacks are received, "
                "but PATCHes to OKdokument will fail until it is"
            )
            return None
        return OkdokumentClient(
            settings.base_url, settings.api_key.get_secret_value(), timeout=settings.timeout
        )

    return make


def registration_checker(
    settings: OkdokumentSettings,
) -> Callable[[Registration], Sequence[tuple[str, str]]]:
    """A registration needs its documentId while sendInfo claims are confirmed: Document info
    is asked about that document, and OKdokument's documented API has no way to find a
    signature request's document (Document info takes a documentId; the list of documents
    does not name their signature requests)."""

    def check(registration: Registration) -> Sequence[tuple[str, str]]:
        if not settings.confirm_callbacks or registration.document_id:
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


def build(settings: OkdokumentSettings) -> Provider:
    return Provider(
        name=adapter.PROVIDER,
        normalize=functools.partial(adapter.normalize, confirm_claims=settings.confirm_callbacks),
        hooks=routes.HOOKS,
        urls=URLS,
        parse_return=parse_return,
        operations={**OPERATIONS, documents.DELETE_DOCUMENT: documents.delete_document},
        client=client_factory(settings),
        repoint=repoint,
        point_hook_url=point_hook_url,
        check_registration=registration_checker(settings),
        reconcile=reconcile.read,
        documents=documents.source(settings),
    )
