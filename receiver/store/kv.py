"""Small key-value facts signback remembers about itself (e.g. the last public URL)."""

from __future__ import annotations

from receiver.store.db.base import Database, Transaction


async def get(db: Database, key: str) -> str | None:
    row = await db.fetch_one("SELECT value FROM kv WHERE key = :key", {"key": key})
    return None if row is None else str(row["value"])


async def put(tx: Transaction, key: str, value: str, *, now: float) -> None:
    await tx.execute(
        "INSERT INTO kv (key, value, updated_at) VALUES (:key, :value, :now)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        {"key": key, "value": value, "now": now},
    )
