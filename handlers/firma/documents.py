"""Firma's final documents, for the archive (receiver/archive/).

- ``signed.pdf``: the final signed PDF with its completion certificate. Firma hands out a
  pre-signed link to it: ``GET /signing-requests/{id}/download`` answers
  ``{download_url, expires_at}``, a fresh link on every call, or ``503`` with
  ``Retry-After`` while the PDF is still being generated (waited out: the archive action is
  ``Throttled``, not failed). Where that endpoint does not exist (``404``), the signing
  request's own ``final_document_download_url`` (``GET /signing-requests/{id}``, a link
  that "expires after 1 hour") serves instead. A link that has expired (or is refused with a 403) is
  replaced by a fresh one once per attempt. The link is its own credential: the API key
  is never sent with it, and it is followed only to the API's host or
  SIGNBACK_FIRMA_DOWNLOAD_HOSTS.
- ``audit-trail.json``: ``GET /signing-requests/{id}/audit`` (SIGNBACK_FIRMA_ARCHIVE_AUDIT_TRAIL).

Every API call takes a slot of the shared read budget first (handlers/firma/budgets.py),
like the outbox's other Firma calls; following the pre-signed link is not an API call.
docs/archive.md has the sources of these calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx

from handlers.firma import budgets
from handlers.firma.client import FirmaClient, provider_message, retry_after_seconds
from handlers.firma.settings import FirmaSettings
from receiver.context import AppContext
from receiver.errors import InvalidAction
from receiver.model import SignatureRequest
from receiver.outbox.budgets import take_slot
from receiver.outbox.outcomes import Failed, GiveUp, deferred, excerpt, from_response
from receiver.outbox.provider_http import host_allowed
from receiver.providers.contract import (
    DocumentMissing,
    DocumentNotReady,
    DocumentRef,
    DocumentSource,
)

CHUNK_BYTES = 64 * 1024
SIGNED = DocumentRef("signed.pdf", "signed", "application/pdf", "download")
AUDIT_TRAIL = DocumentRef("audit-trail.json", "audit_trail", "application/json", "audit")
# How long to wait for a final document link Firma does not have yet.
FINAL_LINK_WAIT_SECONDS = 30.0
# What a storage service answers for a pre-signed link that expired or was revoked.
EXPIRED_LINK_STATUSES = frozenset({400, 401, 403, 410})


def _client(ctx: AppContext) -> FirmaClient:
    client = ctx.clients.get("firma")
    if not isinstance(client, FirmaClient):
        raise InvalidAction("SIGNBACK_FIRMA_API_KEY is not set: cannot download from Firma")
    return client


async def _read_slot(ctx: AppContext) -> None:
    waiting = await take_slot(ctx.db, budgets.reads(ctx), clock=ctx.clock)
    if waiting is not None:
        raise DocumentNotReady(deferred(waiting, "waiting for a slot under Firma's read limit"))


def _link_of(answer: httpx.Response | Any, field: str) -> str | None:
    try:
        body = answer.json()
    except ValueError:
        return None
    url = body.get(field) if isinstance(body, dict) else None
    return url if isinstance(url, str) and url else None


def _refused(answer: Any, ctx: AppContext) -> DocumentNotReady:
    """An answer that gave no file or link, as the archive action's outcome: a 404 is final
    (no such request or file), a 429 or a 503 with Retry-After waits as asked, the rest is
    retried or final by the retry policy's rules."""
    now = ctx.clock()
    if answer.status_code == 404:
        return DocumentNotReady(
            GiveUp(
                f"Firma: {provider_message(answer)}",
                status_code=404,
                response_excerpt=excerpt(answer),
            )
        )
    return DocumentNotReady(
        from_response(
            answer,
            now=now,
            message=provider_message,
            retry_after=retry_after_seconds(answer, now=now),
        )
    )


async def _fresh_link(ctx: AppContext, client: FirmaClient, request: SignatureRequest) -> str:
    """A fresh pre-signed link to the final PDF: from the download endpoint, or, where the
    API has none (404), from the signing request's ``final_document_download_url``."""
    await _read_slot(ctx)
    answer = await client.download_link(request.external_id)
    if answer.status_code == 200:
        url = _link_of(answer, "download_url")
        if url is None:
            raise DocumentNotReady(
                Failed("Firma's download answer has no download_url", status_code=200)
            )
        return url
    if answer.status_code != 404:
        raise _refused(answer, ctx)
    await _read_slot(ctx)
    current = await client.get_signing_request(request.external_id)
    if current.status_code != 200:
        raise _refused(current, ctx)
    url = _link_of(current, "final_document_download_url")
    if url is None:
        # "Only available when the signing request is finished and the certificate has
        # been generated": not yet.
        raise DocumentNotReady(
            Failed(
                "Firma has no final document link yet (the certificate is not generated)",
                status_code=200,
                retry_after=FINAL_LINK_WAIT_SECONDS,
            )
        )
    return url


@contextlib.asynccontextmanager
async def fetch(
    ctx: AppContext, request: SignatureRequest, ref: DocumentRef
) -> AsyncIterator[AsyncIterator[bytes]]:
    client = _client(ctx)
    if ref.locator == AUDIT_TRAIL.locator:
        await _read_slot(ctx)
        async with client.stream_audit(request.external_id) as answer:
            if answer.status_code in (403, 404):
                # Evidence this key may not read, or an API without the audit trail: the
                # signed PDF is what matters; archive it without.
                await answer.aread()
                raise DocumentMissing(f"HTTP {answer.status_code}: {provider_message(answer)}")
            if answer.status_code != 200:
                await answer.aread()
                raise _refused(answer, ctx)
            yield answer.aiter_bytes(CHUNK_BYTES)
        return
    refused: int | None = None
    for _ in range(2):  # a link refused as expired is replaced once per attempt
        url = await _fresh_link(ctx, client, request)
        if not host_allowed(url, [client.base_host, *client.download_hosts]):
            host = urlsplit(url).hostname
            raise DocumentNotReady(
                GiveUp(
                    f"Firma's download link points to {host!r}: not in "
                    "SIGNBACK_FIRMA_DOWNLOAD_HOSTS"
                )
            )
        async with client.stream_link(url) as answer:
            if answer.status_code in EXPIRED_LINK_STATUSES:
                refused = answer.status_code
                continue  # an expired link: ask for a fresh one
            if answer.status_code != 200:
                await answer.aread()
                raise _refused(answer, ctx)
            yield answer.aiter_bytes(CHUNK_BYTES)
            return
    raise DocumentNotReady(
        Failed(
            f"Firma's download link was refused ({refused}) even when fresh; trying again later",
            status_code=refused,
        )
    )


def source(settings: FirmaSettings) -> DocumentSource:
    def documents(ctx: AppContext, request: SignatureRequest) -> list[DocumentRef]:
        return [SIGNED, AUDIT_TRAIL] if settings.archive_audit_trail else [SIGNED]

    return DocumentSource(documents=documents, fetch=fetch)
