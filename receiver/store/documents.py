"""Archived documents (migration 0010): one row per (request, name), written only once the
file is whole in the archive's storage (receiver/archive/)."""

from __future__ import annotations

from dataclasses import dataclass

from receiver.store.db.base import Database, Row, Transaction

COLUMNS = (
    "id, request_id, name, kind, media_type, size, sha256, storage_key, archived_at, purged_at"
)


@dataclass(frozen=True, slots=True)
class Document:
    id: int
    request_id: int
    name: str  # unique per request, e.g. "signed.pdf"
    kind: str  # "signed", "audit_trail", …
    media_type: str
    size: int
    sha256: str  # hex
    storage_key: str
    archived_at: float
    purged_at: float | None  # retention removed the file; the row stays as the record


def from_row(row: Row) -> Document:
    return Document(
        id=int(row["id"]),
        request_id=int(row["request_id"]),
        name=str(row["name"]),
        kind=str(row["kind"]),
        media_type=str(row["media_type"]),
        size=int(row["size"]),
        sha256=str(row["sha256"]),
        storage_key=str(row["storage_key"]),
        archived_at=float(row["archived_at"]),
        purged_at=None if row["purged_at"] is None else float(row["purged_at"]),
    )


async def insert(
    tx: Transaction,
    *,
    request_id: int,
    name: str,
    kind: str,
    media_type: str,
    size: int,
    sha256: str,
    storage_key: str,
    now: float,
) -> Document | None:
    """Record an archived file; None when this request already has a file of this name."""
    row = await tx.fetch_one(
        "INSERT INTO documents (request_id, name, kind, media_type, size, sha256, storage_key,"
        " archived_at) VALUES (:request_id, :name, :kind, :media_type, :size, :sha256, :key,"
        f" :now) ON CONFLICT DO NOTHING RETURNING {COLUMNS}",
        {
            "request_id": request_id,
            "name": name,
            "kind": kind,
            "media_type": media_type,
            "size": size,
            "sha256": sha256,
            "key": storage_key,
            "now": now,
        },
    )
    return None if row is None else from_row(row)


async def for_request(db: Database | Transaction, request_id: int) -> list[Document]:
    rows = await db.fetch_all(
        f"SELECT {COLUMNS} FROM documents WHERE request_id = :request_id ORDER BY id",
        {"request_id": request_id},
    )
    return [from_row(row) for row in rows]


async def get(db: Database, request_id: int, name: str) -> Document | None:
    row = await db.fetch_one(
        f"SELECT {COLUMNS} FROM documents WHERE request_id = :request_id AND name = :name",
        {"request_id": request_id, "name": name},
    )
    return None if row is None else from_row(row)


async def older_than(db: Database, *, cutoff: float, limit: int) -> list[Document]:
    """Live (not yet purged) documents archived before ``cutoff``, oldest first."""
    rows = await db.fetch_all(
        f"SELECT {COLUMNS} FROM documents WHERE purged_at IS NULL AND archived_at < :cutoff"
        " ORDER BY archived_at, id LIMIT :limit",
        {"cutoff": cutoff, "limit": limit},
    )
    return [from_row(row) for row in rows]


async def mark_purged(db: Database, document_id: int, *, now: float) -> None:
    await db.execute(
        "UPDATE documents SET purged_at = :now WHERE id = :id AND purged_at IS NULL",
        {"id": document_id, "now": now},
    )
