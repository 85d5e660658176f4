"""Reading the archive over HTTP.

- ``GET /api/requests/{id}/documents``: the request's archived files (name, kind, size,
  SHA-256, when archived) with a fresh signed download link each (admin token);
- ``GET /api/requests/{id}/documents/{name}``: one file, streamed (admin token);
- ``GET /archive/{id}/{name}?expires=…&sig=…``: the same file through a signed link
  (receiver/archive/links.py), without the admin token: 403 for a link signback did not
  make, 410 for one that expired (or a file retention purged).

Files are streamed from the storage a chunk at a time, with their size, checksum and a
download file name in the headers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from receiver.admin.api import ApiJSON, error, row_id
from receiver.archive import links
from receiver.archive.step import storage_of
from receiver.archive.views import document_json
from receiver.context import AppContext
from receiver.logs import get_logger
from receiver.store import documents, requests
from receiver.store.documents import Document

log = get_logger("signback.archive")

Endpoint = Callable[[Request], Awaitable[Response]]
RETRY_AFTER_SECONDS = "5"


async def stream_document(ctx: AppContext, document: Document) -> Response:
    """The file as a streamed answer; 410 when retention purged it, 404 when the storage
    has lost it (checked before the answer starts: the first chunk is read first)."""
    if document.purged_at is not None:
        return error(410, f"{document.name} was purged from the archive by retention")
    chunks = storage_of(ctx).read(document.storage_key)
    try:
        first = await anext(chunks, b"")
    except FileNotFoundError:
        log.error("archived file missing from the storage", key=document.storage_key)
        return error(404, f"{document.name} is recorded but missing from the archive's storage")

    async def body() -> AsyncIterator[bytes]:
        if first:
            yield first
        async for chunk in chunks:
            yield chunk

    return StreamingResponse(
        body(),
        media_type=document.media_type,
        headers={
            "content-length": str(document.size),
            "content-disposition": f'attachment; filename="{document.name}"',
            "x-checksum-sha256": document.sha256,
            "cache-control": "private, no-store",
        },
    )


def routes(ctx: AppContext, admin: Callable[[Endpoint], Endpoint]) -> list[BaseRoute]:
    key = links.link_key(ctx.settings)

    async def list_documents(request: Request) -> Response:
        request_id = row_id(request.path_params["id"])
        if request_id is None or await requests.get(ctx.db, request_id) is None:
            return error(404, "no such request")
        now = ctx.clock()
        found = await documents.for_request(ctx.db, request_id)
        return ApiJSON({"items": [document_json(ctx.settings, d, now=now) for d in found]})

    async def get_document(request: Request) -> Response:
        request_id = row_id(request.path_params["id"])
        name = request.path_params["name"]
        document = None if request_id is None else await documents.get(ctx.db, request_id, name)
        if document is None:
            return error(404, "no such document for this request")
        return await stream_document(ctx, document)

    async def follow_link(request: Request) -> Response:
        request_id = row_id(request.path_params["id"])
        name = request.path_params["name"]
        if request_id is None:
            return error(403, "not a download link signback made")
        refusal = links.check(
            key,
            request_id,
            name,
            request.query_params.get("expires"),
            request.query_params.get("sig"),
            now=ctx.clock(),
        )
        if refusal is not None:
            return error(refusal.status, refusal.reason)
        try:
            document = await documents.get(ctx.db, request_id, name)
        except Exception as exc:
            if not ctx.db.is_unavailable(exc):
                raise
            return ApiJSON(
                {"error": "the database is unavailable; please retry"},
                status_code=503,
                headers={"retry-after": RETRY_AFTER_SECONDS},
            )
        if document is None:
            return error(404, "no such document")
        return await stream_document(ctx, document)

    return [
        Route("/api/requests/{id}/documents", admin(list_documents), methods=["GET"]),
        Route("/api/requests/{id}/documents/{name}", admin(get_document), methods=["GET"]),
        Route("/archive/{id}/{name}", follow_link, methods=["GET"]),
    ]
