"""The rejection log (migration 0011): refused callbacks, the newest ``cap`` rows kept.

Written in batches by :class:`receiver.intake.rejections.RejectionLog`, never on the
intake's hot path. Reads page by id (newest first), through the primary key or
``(provider, id)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from receiver.store.db.base import Database, Row

COLUMNS = (
    "id, received_at, route, provider, status, reason, details, remote, headers, body_length,"
    " body_head"
)
INSERT_SQL = (
    "INSERT INTO rejections (received_at, route, provider, status, reason, details, remote,"
    " headers, body_length, body_head) VALUES (:received_at, :route, :provider, :status,"
    " :reason, :details, :remote, :headers, :body_length, :body_head)"
)


async def write(db: Database, rows: Sequence[dict[str, Any]], *, cap: int) -> int:
    """Store ``rows`` and trim the log to its newest ``cap`` rows, in one transaction.
    Returns how many older rows were trimmed."""
    if not rows:
        return 0
    async with db.transaction() as tx:
        await tx.executemany(INSERT_SQL, rows)
        newest = await tx.fetch_one("SELECT MAX(id) AS id FROM rejections")
        if newest is None or newest["id"] is None:
            return 0
        # Ids only grow, so "older than the cap" is one range of the primary key.
        return await tx.execute(
            "DELETE FROM rejections WHERE id <= :edge", {"edge": int(newest["id"]) - cap}
        )


async def search(
    db: Database,
    *,
    provider: str | None = None,
    status: int | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[Row]:
    """Newest first. ``status`` filters the page read through the index (the log is
    bounded, so a filter that matches little costs at most the whole log)."""
    clauses: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    if provider is not None:
        clauses.append("provider = :provider")
        params["provider"] = provider
    if status is not None:
        clauses.append("status = :status")
        params["status"] = status
    if before_id is not None:
        clauses.append("id < :before")
        params["before"] = before_id
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return await db.fetch_all(
        f"SELECT {COLUMNS} FROM rejections {where} ORDER BY id DESC LIMIT :limit", params
    )


async def since(db: Database, *, after: float) -> int:
    """How many refusals since ``after`` (the log is bounded: at most its size to count)."""
    row = await db.fetch_one(
        "SELECT COUNT(*) AS n FROM rejections WHERE received_at >= :after", {"after": after}
    )
    return 0 if row is None else int(row["n"])
