"""The database interface the rest of signback uses."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

Row = dict[str, Any]
Params = Mapping[str, Any]


class Transaction(abc.ABC):
    """Statements inside one transaction (committed when the ``async with`` exits cleanly)."""

    def __init__(self) -> None:
        self.pending_notifications: set[str] = set()  # channels to wake after the commit

    @abc.abstractmethod
    async def execute(self, sql: str, params: Params | None = None) -> int:
        """Run a statement; return the number of rows it changed."""

    @abc.abstractmethod
    async def executemany(self, sql: str, params: Sequence[Params]) -> None: ...

    @abc.abstractmethod
    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]: ...

    async def fetch_one(self, sql: str, params: Params | None = None) -> Row | None:
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None

    async def lock_key(self, key: str) -> None:
        """Hold a lock on ``key`` until this transaction ends (serializes work on one item).

        SQLite needs nothing: its write transactions are serialized already."""
        return None

    def notify_on_commit(self, channel: str) -> None:
        """Wake the workers waiting on ``channel`` once this transaction has committed."""
        self.pending_notifications.add(channel)


class Database(abc.ABC):
    """A connection (pool) to the store. Built by :func:`open_database`, closed by ``close``."""

    dialect: str
    url: str

    @abc.abstractmethod
    async def connect(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A write transaction. On SQLite it takes the write lock at once (BEGIN IMMEDIATE)."""

    @abc.abstractmethod
    def render(self, sql: str) -> str:
        """Fill the dialect placeholders (``{skip_locked}``, ``{for_update}``) of a query."""

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        async with self.transaction() as tx:
            return await tx.fetch_all(sql, params)

    async def fetch_one(self, sql: str, params: Params | None = None) -> Row | None:
        async with self.transaction() as tx:
            return await tx.fetch_one(sql, params)

    async def execute(self, sql: str, params: Params | None = None) -> int:
        async with self.transaction() as tx:
            return await tx.execute(sql, params)

    async def execute_notify(self, sql: str, params: Params, channel: str) -> int:
        """One statement committed on its own; wake ``channel`` if it changed a row.

        The intake's hot path: drivers override it to avoid a BEGIN/COMMIT round trip.
        """
        async with self.transaction() as tx:
            changed = await tx.execute(sql, params)
            if changed:
                tx.notify_on_commit(channel)
            return changed

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise if the database cannot be reached."""

    @abc.abstractmethod
    async def notify(self, channel: str) -> None:
        """Wake workers waiting on ``channel`` (in this process, and others where supported)."""

    @abc.abstractmethod
    async def wait(self, channel: str, timeout: float) -> bool:
        """Wait until ``channel`` is notified (True) or ``timeout`` seconds pass (False)."""


def open_database(
    url: str, *, pool_min: int = 1, pool_max: int = 10, sqlite_busy_timeout_ms: int = 5000
) -> Database:
    """Pick the driver from the URL scheme (``sqlite:///path`` or ``postgresql://…``)."""
    if url.startswith("sqlite"):
        from receiver.db.sqlite import SqliteDatabase

        return SqliteDatabase(url, busy_timeout_ms=sqlite_busy_timeout_ms)
    if url.startswith(("postgresql", "postgres")):
        from receiver.db.postgres import PostgresDatabase

        return PostgresDatabase(url, pool_min=pool_min, pool_max=pool_max)
    raise ValueError(f"unsupported database URL scheme: {url.split(':', 1)[0]!r}")
