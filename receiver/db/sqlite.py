"""SQLite driver: the embedded default.

Statements run synchronously on the event loop thread. That sounds wrong but is the fast
choice here: an indexed insert plus a WAL commit takes tens of microseconds, far less than a
hop to a thread pool (the design notes measured ~19,000 inserts/s this way against ~900/s
through an async wrapper). ``synchronous=NORMAL`` in WAL mode keeps every committed
transaction across a process crash (``kill -9``); only a power cut can lose the last ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from receiver.db.base import Database, NewRowInsert, Params, Row, T, Transaction
from receiver.db.wakeup import Wakeups


def sqlite_path(url: str) -> str:
    """``sqlite:///./x.db`` → ``./x.db``; ``sqlite:////abs/x.db`` → ``/abs/x.db``."""
    if url in ("sqlite://", "sqlite:///:memory:"):
        return ":memory:"
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise ValueError("SQLite URLs look like sqlite:///relative/path.db or sqlite:////abs.db")
    return url[len(prefix) :]


def connect(url: str, *, busy_timeout_ms: int = 5000) -> sqlite3.Connection:
    path = sqlite_path(url)
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    # How long a write waits for another process's write lock. It blocks the event loop
    # meanwhile, so keep it short: a timed-out callback gets a 503 and is retried.
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    conn.execute("PRAGMA foreign_keys=ON")
    # 32 MiB of page cache (the default is 2 MiB): with a million requests the unique
    # indexes no longer fit in 2 MiB, and every lookup would go through the OS.
    conn.execute("PRAGMA cache_size=-32768")
    return conn


CHECKPOINT_INTERVAL = 0.1  # seconds between the background thread's checkpoints
# Once the WAL holds this many pages (16 MiB), the serving connection finishes a checkpoint
# itself so that its next write can start the WAL file over.
WAL_RESET_PAGES = 4096
RESET_CHECK_COMMITS = 32  # how often (in commits) the serving connection looks at the WAL


class Checkpointer:
    """WAL checkpoints on a thread of their own, off the event loop.

    Left to itself, SQLite checkpoints inside whichever COMMIT pushes the WAL past 1,000
    pages: that commit copies 4 MiB into the database file and syncs it, holding the event
    loop (and every acknowledgement waiting on it) for milliseconds, and the I/O waits were
    a third of the intake's time per callback. So the serving connection does not checkpoint
    on its own (``wal_autocheckpoint=0``); this thread copies the WAL into the database with
    PASSIVE checkpoints (they never block readers or writers) ten times a second. A
    background checkpoint always lags the newest commits a little, and SQLite starts the
    WAL file over only when nothing is left to copy, so :meth:`SqliteDatabase._committed`
    lets the serving connection copy the last few pages itself once the WAL has grown.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self.wal_pages = 0  # the WAL's size at the last background checkpoint

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            while not self._stop.wait(CHECKPOINT_INTERVAL):
                try:
                    row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:
                    continue  # locked by another checkpoint: the next round catches up
                if row is not None:
                    self.wal_pages = int(row[1])
        finally:
            conn.close()


class _SqliteTransaction(Transaction):
    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__()
        self._conn = conn

    async def execute(self, sql: str, params: Params | None = None) -> int:
        return self._conn.execute(sql, params or {}).rowcount

    async def executemany(self, sql: str, params: Sequence[Params]) -> None:
        self._conn.executemany(sql, params)

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        return [dict(row) for row in self._conn.execute(sql, params or {}).fetchall()]


_Queued = tuple[str, Params, str, "asyncio.Future[int]"]


class SqliteDatabase(Database):
    dialect = "sqlite"
    single_writer = True

    def __init__(self, url: str, *, busy_timeout_ms: int = 5000) -> None:
        self.url = url
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None
        self._checkpointer: Checkpointer | None = None
        self._commits = 0
        self._lock = asyncio.Lock()
        self._wakeups = Wakeups()
        self._batch: list[_Queued] = []
        self._flush_scheduled = False
        self._shared: list[tuple[Callable[[Transaction], Awaitable[Any]], asyncio.Future[Any]]] = []
        self._shared_tasks: set[asyncio.Task[None]] = set()

    async def connect(self) -> None:
        if self._conn is None:
            self._conn = connect(self.url, busy_timeout_ms=self._busy_timeout_ms)
            path = sqlite_path(self.url)
            if path != ":memory:":
                self._conn.execute("PRAGMA wal_autocheckpoint=0")
                self._checkpointer = Checkpointer(path)
                self._checkpointer.start()

    async def close(self) -> None:
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.stop)
            self._checkpointer = None
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):  # leave a small WAL behind
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
            self._conn = None

    def _committed(self) -> None:
        """After each commit: keep the WAL from growing without bound (see Checkpointer)."""
        self._commits += 1
        checkpointer = self._checkpointer
        if (
            self._commits % RESET_CHECK_COMMITS == 0
            and checkpointer is not None
            and checkpointer.wal_pages > WAL_RESET_PAGES
        ):
            checkpointer.wal_pages = 0
            with contextlib.suppress(sqlite3.Error):
                # Copies only what the background thread has not yet: a few pages.
                self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("database is not connected")
        return self._conn

    def render(self, sql: str) -> str:
        # SQLite serializes writers, so a claim inside BEGIN IMMEDIATE is already exclusive.
        return sql.replace("{skip_locked}", "").replace("{for_update}", "")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        conn = self.conn
        # The lock keeps two coroutines from interleaving statements on the one connection
        # should a transaction body ever await something that really suspends.
        async with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            tx = _SqliteTransaction(conn)
            try:
                yield tx
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        self._committed()
        for channel in tx.pending_notifications:
            self._wakeups.set(channel)

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        # Plain reads need no write lock: autocommit mode reads a consistent snapshot.
        async with self._lock:
            return [dict(row) for row in self.conn.execute(sql, params or {}).fetchall()]

    async def in_shared_transaction(self, work: Callable[[Transaction], Awaitable[T]]) -> T:
        """Pieces of work queued in the same event-loop turn share one transaction, each in
        a savepoint; every caller gets its own result (or exception) after the commit."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._shared.append((work, future))
        if len(self._shared) == 1:
            task = asyncio.get_running_loop().create_task(self._run_shared())
            self._shared_tasks.add(task)
            task.add_done_callback(self._shared_tasks.discard)
        return await future

    async def _run_shared(self) -> None:
        try:
            await asyncio.sleep(0)  # let this turn's other pieces join
        except BaseException:  # cancelled (shutdown): nobody may wait for ever
            queued, self._shared = self._shared, []
            for _, future in queued:
                future.cancel()
            raise
        queued, self._shared = self._shared, []
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            async with self.transaction() as tx:
                for work, future in queued:
                    try:
                        async with tx.savepoint():
                            results.append((future, await work(tx), None))
                    except Exception as exc:
                        results.append((future, None, exc))
        except BaseException as exc:  # the commit itself failed: nothing of it happened
            for _, future in queued:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for future, result, error in results:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    async def insert_new(self, insert: NewRowInsert, row: Params, channel: str) -> bool:
        """Group commit: rows queued in the same event-loop turn share one transaction.

        Under load, 32 callbacks arriving together cost one commit instead of 32; each caller
        still gets its own answer only after the commit (so an ack is never early).
        """
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._batch.append((insert.one_row_sql, row, channel, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_batch)
        return await future > 0

    def _flush_batch(self) -> None:
        conn = self.conn
        if self._lock.locked() or conn.in_transaction:
            # A transaction is open (it suspended mid-way): try again on the next turn.
            asyncio.get_running_loop().call_soon(self._flush_batch)
            return
        self._flush_scheduled = False
        batch = [item for item in self._batch if not item[3].cancelled()]
        self._batch = []
        if not batch:
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            counts = [conn.execute(sql, params).rowcount for sql, params, _, _ in batch]
            conn.execute("COMMIT")
            self._committed()
        except Exception:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._flush_one_by_one(batch)  # isolate whichever statement failed
            return
        for (_, _, channel, future), count in zip(batch, counts, strict=True):
            if count:
                self._wakeups.set(channel)
            if not future.done():
                future.set_result(count)

    def _flush_one_by_one(self, batch: list[_Queued]) -> None:
        for sql, params, channel, future in batch:
            try:
                count = self.conn.execute(sql, params).rowcount  # autocommit: its own commit
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
                continue
            if count:
                self._wakeups.set(channel)
            if not future.done():
                future.set_result(count)

    async def ping(self) -> None:
        self.conn.execute("SELECT 1").fetchone()

    async def notify(self, channel: str) -> None:
        self._wakeups.set(channel)

    async def wait(self, channel: str, timeout: float) -> bool:
        return await self._wakeups.wait(channel, timeout)
