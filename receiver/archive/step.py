"""The ``signback.archive`` action: every file of a completed request into the archive.

For each file the provider lists (:class:`~receiver.providers.contract.DocumentRef`) that
the request does not have yet: stream it to the spool (bounded buffer, SHA-256, size, the
``%PDF-`` check), put it in the storage under a key holding its checksum, then record it
and emit ``signature_request.document_archived`` in one transaction. The order is what
makes it safe: a row exists only for a file already whole in the storage, so a crash at
any point leaves at most an unrecorded temporary file, and the action (back after its
lease) downloads again. Files recorded before are skipped, so a retry downloads only what
is missing. Once every file is in, the provider's follow-up actions are queued (keyed:
once).

What the provider says goes through as the outcome: a ``503`` with ``Retry-After`` while
the PDF is generated is ``Throttled`` (waited out, not counted as an attempt), no slot in
its rate budget is ``Deferred``, a document that is gone is ``GiveUp``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from receiver.archive.spool import NotAcceptable, spool
from receiver.archive.storage import Storage, object_key, storage_from_settings
from receiver.archive.views import document_json
from receiver.context import AppContext
from receiver.logs import get_logger
from receiver.model import SignatureRequest
from receiver.outbox.downstream import emit as downstream_emit
from receiver.outbox.outcomes import Done, Failed, GiveUp, Outcome, Skipped
from receiver.providers.contract import (
    DocumentMissing,
    DocumentNotReady,
    DocumentRef,
    DocumentSource,
)
from receiver.store import documents, outbox

log = get_logger("signback.archive")

# Where the storage built from the settings is kept, per context (built on first use).
_STORAGE = "signback.archive.storage"


def storage_of(ctx: AppContext) -> Storage:
    """The archive's storage for this context, built from its settings on first use."""
    found = ctx.clients.get(_STORAGE)
    if found is None:
        found = storage_from_settings(ctx.settings)
        ctx.clients[_STORAGE] = found
    storage: Storage = found
    return storage


async def archive_request(
    ctx: AppContext, request: SignatureRequest, payload: Mapping[str, Any]
) -> Outcome:
    provider = ctx.providers.get(request.provider)
    source = None if provider is None else provider.documents
    if source is None:
        return Skipped(f"{request.provider} has no documents signback can fetch")
    refs = list(source.documents(ctx, request))
    if not refs:
        return Skipped("the provider has no document to archive for this request")
    storage = storage_of(ctx)
    have = {d.name for d in await documents.for_request(ctx.db, request.id)}
    archived: list[str] = []
    missing: list[str] = []
    for ref in refs:
        if ref.name in have:
            continue
        try:
            stored = await _archive_one(ctx, request, source, ref, storage)
        except DocumentNotReady as exc:
            return exc.outcome
        except DocumentMissing as exc:
            log.warning("document not available", request=request.id, name=ref.name, why=str(exc))
            missing.append(f"{ref.name}: not available ({exc})")
            continue
        except NotAcceptable as exc:
            # Not a PDF may be an error page served with a 200: worth another try later.
            # Too large stays too large.
            return (Failed if exc.may_pass else GiveUp)(f"{ref.name}: {exc}")
        if stored:
            archived.append(ref.name)
        have.add(ref.name)
    await _after_archive(ctx, request, source)
    what = ", ".join(archived) if archived else "nothing new"
    return Done(response_excerpt="; ".join([f"archived {what} ({storage.description})", *missing]))


async def _archive_one(
    ctx: AppContext,
    request: SignatureRequest,
    source: DocumentSource,
    ref: DocumentRef,
    storage: Storage,
) -> bool:
    """Download, store and record one file; False when another run recorded it first."""
    async with source.fetch(ctx, request, ref) as chunks:
        spooled = await spool(
            chunks,
            storage.spool_dir,
            media_type=ref.media_type,
            max_bytes=ctx.settings.archive_max_bytes,
            pace=ctx.governor.turn,
        )
    key = object_key(request.provider, request.id, spooled.sha256, ref.name)
    await storage.put(spooled, key, media_type=ref.media_type)
    now = ctx.clock()
    async with ctx.db.transaction() as tx:
        document = await documents.insert(
            tx,
            request_id=request.id,
            name=ref.name,
            kind=ref.kind,
            media_type=ref.media_type,
            size=spooled.size,
            sha256=spooled.sha256,
            storage_key=key,
            now=now,
        )
        if document is not None:
            view = document_json(ctx.settings, document, now=now)
            await downstream_emit.document_archived(
                tx, request=request, document=view, document_id=document.id, now=now
            )
    if document is None:
        return False
    ctx.metrics.archived.inc(request.provider, ref.kind)
    ctx.metrics.archived_bytes.inc(request.provider, amount=spooled.size)
    log.info(
        "document archived",
        request=request.id,
        name=ref.name,
        size=spooled.size,
        sha256=spooled.sha256,
        key=key,
    )
    return True


async def _after_archive(
    ctx: AppContext, request: SignatureRequest, source: DocumentSource
) -> None:
    if source.after_archive is None:
        return
    actions = list(source.after_archive(ctx, request))
    if not actions:
        return
    async with ctx.db.transaction() as tx:
        await outbox.insert_actions(tx, request.id, actions, now=ctx.clock(), source_inbox_id=None)
