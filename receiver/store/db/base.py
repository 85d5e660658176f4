"""The database interface the rest of signback uses."""

from __future__ import annotations

import abc
import functools
import operator
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

Row = dict[str, Any]
Params = Mapping[str, Any]
T = TypeVar("T")


@dataclass(frozen=True)
class NewRowInsert:
    """``INSERT INTO table (columns) … ON CONFLICT (key) DO NOTHING``: store a row unless
    one with the same key exists. Drivers may send many such rows as one statement."""

    table: str
    columns: tuple[str, ...]
    key: tuple[str, ...]  # the unique key whose conflict means "already stored"
    # Each column's PostgreSQL type: many rows go as one JSON document (see postgres.py).
    pg_types: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.pg_types) != len(self.columns):
            raise ValueError("NewRowInsert needs one PostgreSQL type per column")

    def key_of(self, row: Params) -> tuple[Any, ...]:
        return tuple(row[name] for name in self.key)

    @functools.cached_property
    def one_row_sql(self) -> str:
        """With ``:name`` placeholders, for :meth:`Transaction.execute`."""
        return (
            f"INSERT INTO {self.table} ({', '.join(self.columns)})"
            f" VALUES ({', '.join(':' + c for c in self.columns)})"
            f" ON CONFLICT ({', '.join(self.key)}) DO NOTHING"
        )

    @functools.cached_property
    def values_of(self) -> Callable[[Params], tuple[Any, ...]]:
        """A row's values in column order (``operator.itemgetter``: no Python loop)."""
        getter = operator.itemgetter(*self.columns)
        if len(self.columns) == 1:
            return lambda row: (getter(row),)
        return getter

    @functools.lru_cache(maxsize=64)  # noqa: B019 (a few module-level instances, kept for good)
    def many_rows_sql(self, count: int) -> str:
        """``count`` rows in one statement, ``?`` placeholders (a key already stored is
        skipped, as in :attr:`one_row_sql`)."""
        one = "(" + ", ".join(["?"] * len(self.columns)) + ")"
        return (
            f"INSERT INTO {self.table} ({', '.join(self.columns)})"
            f" VALUES {', '.join([one] * count)}"
            f" ON CONFLICT ({', '.join(self.key)}) DO NOTHING"
        )


def in_list(values: Iterable[Any], prefix: str = "in_") -> tuple[str, dict[str, Any]]:
    """``(:in_0, :in_1, …)`` and its parameters, for ``column IN …`` with ``:name``
    placeholders (``prefix`` keeps the names apart from a statement's other parameters)."""
    params = {f"{prefix}{i}": value for i, value in enumerate(values)}
    return "(" + ", ".join(":" + name for name in params) + ")", params


@dataclass(frozen=True)
class BatchedWrite:
    """A write that each of several callers in one transaction makes for one row of its
    own, which a driver may send as one statement for all of them
    (:meth:`Transaction.execute_batched_later`).

    ``postgres_sql`` is that statement: its one parameter (``%(rows)s``, as often as it
    needs it) is a JSON array of the rows' parameters (for ``json_to_recordset``, in their
    order: :func:`json_rows`), and it returns the ``key`` columns (parameters of the same
    names) of each row it changed; of several rows with one key, the first counts (an
    insert that skips a key already stored stores the first).
    ``one`` does the same for one row with plain statements (other drivers) and returns how
    many rows it changed (0 or 1).

    ``independent``: its rows touch no row that another write of the same transaction
    reads or changes (a table no other held write uses), so a driver may send every row of
    it held in the transaction as one statement, at the place of the first one, even with
    other writes held between them. Otherwise only rows held one after another share a
    statement."""

    postgres_sql: str
    key: tuple[str, ...]
    one: Callable[[Transaction, Params], Awaitable[int]]
    independent: bool = False


def json_rows(columns: str) -> str:
    """The rows of a :class:`BatchedWrite`'s JSON document as a PostgreSQL FROM item ``r``
    with these columns (``"name type, …"``, as ``json_to_recordset`` takes them), in the
    document's order (an ``ORDER BY n`` keeps it: serial ids are then given in that order)."""
    names = ", ".join(part.split()[0] for part in columns.split(","))
    return (
        f"ROWS FROM (json_to_recordset(%(rows)s::json) AS ({columns}))"
        f" WITH ORDINALITY AS r({names}, n)"
    )


# ``ANY (…)`` over the ``id`` of every row of a BatchedWrite's JSON document, for a statement
# that updates the rows the document names (``t.id = r.id AND t.id = {JSON_IDS}``).
# PostgreSQL estimates a function's rows at 100 whatever the document holds, and against
# that a sequential scan of a small table (a few thousand rows) looks cheaper than as many
# index lookups: a plain join scanned the whole table for every batch until it had grown.
# An array of ids is looked up by the primary key at any size.
JSON_IDS = "ANY (ARRAY(SELECT (e ->> 'id')::bigint FROM json_array_elements(%(rows)s::json) e))"


class Later:
    """The row count of a statement sent with :meth:`Transaction.execute_later`, known once
    it was sent: after the commit, or after :meth:`Transaction.flush`."""

    __slots__ = ("_rowcount",)

    def __init__(self, rowcount: int | None = None) -> None:
        self._rowcount = rowcount

    def sent(self, rowcount: int) -> None:
        self._rowcount = rowcount

    @property
    def rowcount(self) -> int:
        if self._rowcount is None:
            raise RuntimeError("the statement has not been sent yet")
        return self._rowcount


class Transaction(abc.ABC):
    """Statements inside one transaction (committed when the ``async with`` exits cleanly)."""

    def __init__(self) -> None:
        self.pending_notifications: set[str] = set()  # channels to wake after the commit
        # What a caller read once and may reuse for the rest of this transaction (see
        # receiver/outbox/downstream/endpoints.py), by a key of the caller's choosing.
        self.memo: dict[str, Any] = {}

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

    async def execute_later(self, sql: str, params: Params | None = None) -> Later:
        """A write whose result is not needed before the commit. A driver may hold it back
        and send it with the transaction's next statement, or with its commit, in one round
        trip (PostgreSQL); it runs in the same order as if sent now, and should it fail, the
        transaction fails there all the same. Its row count is known once it was sent.
        SQLite runs it at once (its statements are not round trips)."""
        return Later(await self.execute(sql, params))

    async def execute_batched_later(self, write: BatchedWrite, params: Params) -> Later:
        """:meth:`execute_later` for one row of a :class:`BatchedWrite`: a driver may hold
        it back with the rows of the same write that the transaction adds next, and send
        them as one statement (PostgreSQL). Its row count (0 or 1) is known once sent.
        Others run ``write.one`` at once."""
        return Later(await write.one(self, params))

    async def flush(self) -> None:
        """Send what :meth:`execute_later` held back now (its row counts are wanted)."""
        return None

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
    # True when the database runs one write transaction at a time anyway (SQLite): grouping
    # work into fewer, larger transactions then costs no concurrency and saves commits.
    single_writer: bool = False
    # True when statements run on the event loop's thread (SQLite): a callback waiting for
    # its commit then waits for the loop (receiver/loadshare.py).
    statements_on_loop: bool = False

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
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Params | None = None) -> int:
        async with self.transaction() as tx:
            return await tx.execute(sql, params)

    async def write_returning(self, sql: str, params: Params | None = None) -> list[Row]:
        """One statement that writes and returns rows (``UPDATE … RETURNING``), committed on
        its own. Drivers that can send it alone, autocommitted, do so: one round trip, not
        three (BEGIN, the statement, COMMIT)."""
        async with self.transaction() as tx:
            return await tx.fetch_all(sql, params)

    async def in_shared_transaction(self, work: Callable[[Transaction], Awaitable[T]]) -> T:
        """Run ``work`` in a transaction that small pieces of work queued at about the same
        moment may share (should one fail, each runs again in its own transaction, so that
        the failure is only its own).

        Drivers of single-writer databases share (one commit for many); others give each
        piece its own transaction, here. ``work`` must only run statements.
        """
        async with self.transaction() as tx:
            return await work(tx)

    async def insert_new(self, insert: NewRowInsert, row: Params, channel: str) -> bool:
        """Store ``row`` unless its key is already stored, and commit; True if it was new.
        Wakes ``channel`` when it was.

        The intake's hot path (every callback): drivers override it to share one commit
        among the rows that arrive together (group commit). A caller still gets its answer
        only after its row is committed.
        """
        async with self.transaction() as tx:
            changed = await tx.execute(insert.one_row_sql, row)
            if changed:
                tx.notify_on_commit(channel)
            return changed > 0

    def is_unavailable(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the database cannot answer just now (unreachable, busy),
        which a caller answers with a 503 and Retry-After, rather than a bug."""
        return False

    def is_schema_missing(self, exc: BaseException) -> bool:
        """Whether ``exc`` means a table or column the code needs is not in the database:
        it was not migrated (or not to this version). Not a bug in the request: a 503 that
        says to run ``signback migrate``."""
        return False

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise if the database cannot be reached."""

    @abc.abstractmethod
    async def notify(self, channel: str) -> None:
        """Wake workers waiting on ``channel`` (in this process, and others where supported)."""

    @abc.abstractmethod
    def wake(self, channel: str) -> None:
        """Wake this process's waiters on ``channel`` (no other process is told): for
        what only this process knows, such as a slot of its own given back."""

    @abc.abstractmethod
    async def wait(self, channel: str, timeout: float) -> bool:
        """Wait until ``channel`` is notified (True) or ``timeout`` seconds pass (False)."""


def open_database(
    url: str, *, pool_min: int = 1, pool_max: int = 10, sqlite_busy_timeout_ms: int = 5000
) -> Database:
    """Pick the driver from the URL scheme (``sqlite:///path`` or ``postgresql://…``)."""
    if url.startswith("sqlite"):
        from receiver.store.db.sqlite import SqliteDatabase

        return SqliteDatabase(url, busy_timeout_ms=sqlite_busy_timeout_ms)
    if url.startswith(("postgresql", "postgres")):
        from receiver.store.db.postgres import PostgresDatabase

        return PostgresDatabase(url, pool_min=pool_min, pool_max=pool_max)
    raise ValueError(f"unsupported database URL scheme: {url.split(':', 1)[0]!r}")
