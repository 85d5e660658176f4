"""Archived documents, as the console shows them: a panel on a request's page whenever the
store has a ``documents`` table (the archive's), and a download.

The console only reads: the rows (name, kind, media type, size, SHA-256, when archived,
whether purged) and, for a download, the file. Files are read from the archive's local
directory (SIGNBACK_ARCHIVE_DIR, by default ``archive`` next to the SQLite file), at the
row's ``storage_key`` below it; a key that would leave the directory is refused. An archive
kept elsewhere (a bucket) plugs its own reader in with :func:`set_reader`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from receiver.context import AppContext
from receiver.store.db.base import Database, Row

COLUMNS = (
    "id, request_id, name, kind, media_type, size, sha256, storage_key, archived_at, purged_at"
)
RECHECK_SECONDS = 30.0

Reader = Callable[[AppContext, Row], Awaitable[bytes | None]]


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


def archive_dir(ctx: AppContext) -> Path:
    configured = getattr(ctx.settings, "archive_dir", None)
    if configured:
        return Path(str(configured))
    if ctx.settings.is_sqlite:
        return Path(ctx.settings.database_url.split("///", 1)[-1]).resolve().parent / "archive"
    return Path("archive").resolve()


async def read_local(ctx: AppContext, row: Row) -> bytes | None:
    """The file of a document row in the archive's directory, or None."""
    base = archive_dir(ctx).resolve()
    path = (base / str(row["storage_key"])).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        return None
    return await asyncio.to_thread(path.read_bytes)


_reader: list[Reader] = [read_local]


def set_reader(reader: Reader) -> None:
    """Where downloads come from, for an archive that is not a local directory."""
    _reader[0] = reader


async def read(ctx: AppContext, row: Row) -> bytes | None:
    return await _reader[0](ctx, row)
