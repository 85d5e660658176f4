"""Archived documents, as the console shows them: a panel on a request's page whenever the
store has a ``documents`` table (the archive's), and a download.

The console only reads: the rows (name, kind, media type, size, SHA-256, when archived,
whether purged) and, for a download, the file, streamed from the archive's storage (local
directory or S3 bucket) by the same code as the admin API's download.
"""

from __future__ import annotations

from starlette.responses import Response

from receiver.context import AppContext
from receiver.store import documents as documents_store
from receiver.store.db.base import Database, Row

COLUMNS = (
    "id, request_id, name, kind, media_type, size, sha256, storage_key, archived_at, purged_at"
)
RECHECK_SECONDS = 30.0


class DocumentTable:
    """Whether the store has the archive's table: once seen it stays; not seen, asked
    again after RECHECK_SECONDS (a migration may add it while the service runs)."""

    def __init__(self) -> None:
        self._present = False
        self._checked_at = float("-inf")

    async def present(self, db: Database, now: float) -> bool:
        if self._present or now - self._checked_at < RECHECK_SECONDS:
            return self._present
        self._checked_at = now
        if db.dialect == "sqlite":
            sql = "SELECT 1 AS x FROM sqlite_master WHERE type = 'table' AND name = 'documents'"
        else:
            sql = "SELECT 1 AS x WHERE to_regclass('documents') IS NOT NULL"
        self._present = await db.fetch_one(sql) is not None
        return self._present


async def for_request(db: Database, request_id: int) -> list[Row]:
    return await db.fetch_all(
        f"SELECT {COLUMNS} FROM documents WHERE request_id = :id ORDER BY id LIMIT 100",
        {"id": request_id},
    )


async def get(db: Database, document_id: int) -> Row | None:
    return await db.fetch_one(
        f"SELECT {COLUMNS} FROM documents WHERE id = :id", {"id": document_id}
    )


async def download(ctx: AppContext, row: Row) -> Response:
    """The file, streamed from the archive's own storage (its directory or its bucket), as
    the admin API serves it: 410 once purged, 404 when the storage has lost it."""
    from receiver.archive.access import stream_document  # the archive loads boto3 lazily

    return await stream_document(ctx, documents_store.from_row(row))
