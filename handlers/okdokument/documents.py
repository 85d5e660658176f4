"""OKdokument's signed document, for the archive (receiver/archive/).

``GET /JSON/document/{documentId}`` (``x-api-key``) answers the PDF bytes, archived as
``signed.pdf``. OKdokument is no archive: it deletes signed documents after a retention
period, and its documented flow is download, then delete. With
SIGNBACK_OKDOKUMENT_DELETE_AFTER_ARCHIVE the delete follows, as an action of its own once
the archive is recorded, and only after the file reads back intact from the storage
(:func:`delete_document`). OKdokument documents no rate limit: no budget is taken.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from handlers.okdokument.client import OkdokumentClient, provider_message
from handlers.okdokument.settings import OkdokumentSettings
from receiver.archive.verify import archive_problem
from receiver.context import AppContext
from receiver.errors import InvalidAction
from receiver.model import Action, SignatureRequest
from receiver.outbox.outcomes import Done, GiveUp, Outcome, Skipped, excerpt, from_response
from receiver.providers.contract import DocumentNotReady, DocumentRef, DocumentSource

CHUNK_BYTES = 64 * 1024
SIGNED_NAME = "signed.pdf"
DELETE_DOCUMENT = "okdokument.delete_document"


def _client(ctx: AppContext) -> OkdokumentClient:
    client = ctx.clients.get("okdokument")
    if not isinstance(client, OkdokumentClient):
        raise InvalidAction("SIGNBACK_OKDOKUMENT_API_KEY is not set: cannot call OKdokument")
    return client


def documents(ctx: AppContext, request: SignatureRequest) -> list[DocumentRef]:
    if not request.document_id:
        return []  # registered without its documentId: nothing to ask for
    return [DocumentRef(SIGNED_NAME, "signed", "application/pdf", request.document_id)]


@contextlib.asynccontextmanager
async def fetch(
    ctx: AppContext, request: SignatureRequest, ref: DocumentRef
) -> AsyncIterator[AsyncIterator[bytes]]:
    async with _client(ctx).stream_document(ref.locator) as answer:
        if answer.status_code != 200:
            await answer.aread()
            if answer.status_code == 404:
                raise DocumentNotReady(
                    GiveUp(
                        f"OKdokument no longer has the document: {provider_message(answer)}",
                        status_code=404,
                        response_excerpt=excerpt(answer),
                    )
                )
            raise DocumentNotReady(from_response(answer, now=ctx.clock(), message=provider_message))
        yield answer.aiter_bytes(CHUNK_BYTES)


async def delete_document(
    ctx: AppContext, request: SignatureRequest, payload: Mapping[str, Any]
) -> Outcome:
    """Delete the document at OKdokument, but only once its archive reads back intact."""
    if not request.document_id:
        raise InvalidAction("this request has no documentId: there is nothing to delete")
    problem = await archive_problem(ctx, request.id, names={SIGNED_NAME})
    if problem is not None:
        return Skipped(f"not deleted at OKdokument: {problem}")
    response = await _client(ctx).delete_document(request.document_id)
    if response.status_code == 404:
        return Done(status_code=404, response_excerpt=excerpt(response))  # gone already
    return from_response(response, now=ctx.clock(), message=provider_message)


def source(settings: OkdokumentSettings) -> DocumentSource:
    def after_archive(ctx: AppContext, request: SignatureRequest) -> list[Action]:
        if not settings.delete_after_archive:
            return []
        return [Action(DELETE_DOCUMENT, {}, key="delete-after-archive")]

    return DocumentSource(documents=documents, fetch=fetch, after_archive=after_archive)
