"""SQLite driver: the embedded default.

Statements run synchronously on the event loop thread. That sounds wrong but is the fast
choice here: an indexed insert plus a WAL commit takes tens of microseconds, far less than a
hop to a thread pool (the design notes measured ~19,000 inserts/s this way against ~900/s
through an async wrapper). The intake's callbacks are stored in group commits, the rows of
one loop turn in one statement (:mod:`receiver.store.db.sqlite_group`); the WAL checkpoints run
on a thread of their own (:mod:`receiver.store.db.sqlite_wal`), and so does the last copy of a WAL
reset, with the write lock held meanwhile.
``synchronous=NORMAL`` in WAL mode keeps every committed transaction across a process crash
(``kill -9``); only a power cut can lose the last ones.

What can make a call slow is another process holding the write lock (a CLI command, a
second process on the file): a call then waits at most ``LOOP_BUSY_TIMEOUT_MS`` on the loop,
and the rest of the configured busy timeout is waited asynchronously between tries.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from receiver.logs import get_logger
from receiver.store.db import sqlite_wal
from receiver.store.db.base import Database, NewRowInsert, Params, Row, T, Transaction
from receiver.store.db.sqlite_group import DatabaseClosing, Outcome, Queued, write_rows
from receiver.store.db.sqlite_wal import Checkpointer
from receiver.store.db.wakeup import Wakeups

log = get_logger("signback.sqlite")

# How long one SQLite call on the event loop may wait for another process's write lock
# (a CLI command, a second process on the same file). The loop stops for as long as a call
# waits, and with it every callback, health check and answer of this process; so the
# serving connection waits at most this long per call, and the wait the settings allow
# (SIGNBACK_SQLITE_BUSY_TIMEOUT_MS) is made of such tries with asynchronous pauses between
# them (see _write_lock and _flush).
LOOP_BUSY_TIMEOUT_MS = 5
# The pause between two tries for a write lock held by another process.
BUSY_RETRY_SECONDS = 0.025


def is_busy(exc: object) -> bool:
    """Whether ``exc`` is SQLite saying another connection holds the lock it needs."""
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


# A shared transaction (in_shared_transaction) waits this many event-loop turns for more
# pieces before it starts: outbox results that arrive a few turns apart then share a commit
# (five turns cost the least CPU per action: docs/performance.md, "Figures behind choices").
SHARED_GATHER_TURNS = 5


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
    # How long a write waits for another process's write lock. On the serving connection it
    # blocks the event loop meanwhile, so keep it short: a timed-out callback gets a 503 and
    # is retried.
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    conn.execute("PRAGMA foreign_keys=ON")
    # 32 MiB of page cache (the default is 2 MiB): with a million requests the unique
    # indexes no longer fit in 2 MiB, and every lookup would go through the OS.
    conn.execute("PRAGMA cache_size=-32768")
    # Statement journals and RETURNING's scratch tables in memory: a temporary file was
    # being created and deleted dozens of times a second under load.
    conn.execute("PRAGMA temp_store=MEMORY")
    return conn


def connect_resetter(url: str, *, busy_timeout_ms: int) -> sqlite3.Connection:
    """The connection that copies the last pages of a WAL reset, on a thread (it only
    checkpoints: a small page cache does)."""
    conn = connect(url, busy_timeout_ms=busy_timeout_ms)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("PRAGMA cache_size=-1024")
    return conn


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


class SqliteDatabase(Database):
    dialect = "sqlite"
    single_writer = True
    statements_on_loop = True

    def __init__(self, url: str, *, busy_timeout_ms: int = 5000) -> None:
        self.url = url
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None
        self._checkpointer: Checkpointer | None = None  # None for :memory:
        self._resetter_conn: sqlite3.Connection | None = None
        self._resetter: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Held by each transaction of the serving connection, each group commit and a WAL
        # reset's last copy: one writer at a time.
        self._lock = asyncio.Lock()
        self._wakeups = Wakeups()
        self._batch: list[Queued] = []  # rows queued for the next group commit
        self._flusher: asyncio.Task[None] | None = None
        self._last_write = 0.0  # time.monotonic() of the last group commit
        self._shared: list[tuple[Callable[[Transaction], Awaitable[Any]], asyncio.Future[Any]]] = []
        self._shared_tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._sync_fd: int | None = None

    def is_unavailable(self, exc: BaseException) -> bool:
        # Another process holds the write lock past the busy timeout (a CLI command), or the
        # file cannot be reached or grow: not a bug. Other OperationalErrors (SQL errors)
        # are bugs.
        return isinstance(exc, sqlite3.OperationalError) and any(
            word in str(exc) for word in ("locked", "busy", "unable to open", "disk I/O", "full")
        )

    def is_schema_missing(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and any(
            word in str(exc) for word in ("no such table", "no such column", "has no column")
        )

    async def connect(self) -> None:
        if self._conn is not None:
            return
        self._conn = connect(
            self.url, busy_timeout_ms=min(self._busy_timeout_ms, LOOP_BUSY_TIMEOUT_MS)
        )
        path = sqlite_path(self.url)
        if path == ":memory:":
            return
        # Checkpoints are the Checkpointer's, never a side effect of a commit here.
        self._conn.execute("PRAGMA wal_autocheckpoint=0")
        # Opened before, and closed after, every connection of the process: see Checkpointer.
        self._sync_fd = os.open(path, os.O_RDONLY)
        self._resetter_conn = connect_resetter(self.url, busy_timeout_ms=self._busy_timeout_ms)
        self._loop = asyncio.get_running_loop()
        self._checkpointer = Checkpointer(path, self._checkpoint_wanted, sync_fd=self._sync_fd)
        self._checkpointer.start()

    def _checkpoint_wanted(self) -> None:
        """The checkpointer wants a WAL reset finished (called from its thread)."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to reset
                loop.call_soon_threadsafe(self._watch_for_reset)

    def _watch_for_reset(self) -> None:
        if self._resetter is None and not self._closing:
            self._resetter = asyncio.get_running_loop().create_task(self._reset_at_lull())

    async def _reset_at_lull(self) -> None:
        """Finish the WAL resets the checkpointer asks for (see :mod:`sqlite_wal`): at the
        next lull in the callbacks (``RESET_LULL_SECONDS`` without a group commit), or at
        once past the hard limit. The last pages are copied, and synced, by a thread with
        the write lock held, so nothing writes meanwhile while the event loop goes on
        reading requests."""
        checkpointer = self._checkpointer
        try:
            while checkpointer is not None and checkpointer.reset_wanted and not self._closing:
                if not await self._finish_reset():
                    idle = time.monotonic() - self._last_write
                    await asyncio.sleep(max(sqlite_wal.RESET_LULL_SECONDS - idle, 0.01))
        except Exception:
            log.exception("finishing a WAL reset failed; trying again at the next lull")
            await asyncio.sleep(sqlite_wal.RESET_LULL_SECONDS)
        finally:
            self._resetter = None
            # Asked again while this task was ending (the checkpointer asks only when it
            # raises the flag): a request must not go unwatched until the hard limit.
            if checkpointer is not None and checkpointer.reset_wanted and not self._closing:
                self._watch_for_reset()

    async def _finish_reset(self) -> bool:
        """Finish a due reset (whether it is due is decided with the write lock held: a
        resetter that waited for the lock may find the lull over). True if one ran."""
        checkpointer, conn = self._checkpointer, self._resetter_conn
        if checkpointer is None or conn is None:
            return False
        async with self._lock:
            started = time.monotonic()
            idle = started - self._last_write
            if not checkpointer.reset_due(idle):
                return False
            pages, resets = checkpointer.wal_pages, checkpointer.resets
            copy = asyncio.ensure_future(asyncio.to_thread(checkpointer.finish_reset, conn))
            try:
                await asyncio.shield(copy)
            finally:
                # Cancelled meanwhile: the copy goes on on its thread; the write lock stays
                # held until it ends, or a group commit would write during the copy.
                if not copy.done():
                    await asyncio.wait({copy})
                # Writes waited this long: worth seeing when a forced one (no lull) is long.
                log.info(
                    "WAL restart",
                    restarted=checkpointer.resets > resets,
                    wal_pages=pages,
                    writes_held_ms=round((time.monotonic() - started) * 1000, 1),
                    at_lull=idle >= sqlite_wal.RESET_LULL_SECONDS,
                )
            return True

    async def close(self) -> None:
        self._closing = True
        if self._flusher is not None:  # queued rows are written first
            with contextlib.suppress(Exception):
                await self._flusher
        resetter = self._resetter
        if resetter is not None:
            async with self._lock:  # a reset's copy under way on its thread ends first
                resetter.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await resetter
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.stop)
            self._checkpointer = None
        if self._resetter_conn is not None:
            self._resetter_conn.close()
            self._resetter_conn = None
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):  # leave a small WAL behind
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
            self._conn = None
        if self._sync_fd is not None:
            os.close(self._sync_fd)
            self._sync_fd = None

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
        # should a transaction body ever await something that really suspends. It is let go
        # while another process's write lock is waited for (_write_lock), so that the group
        # commits and other transactions try meanwhile too.
        await self._write_lock(conn)
        try:
            tx = _SqliteTransaction(conn)
            try:
                yield tx
                conn.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT (busy, disk full): SQLite may leave the
                # transaction open, and with it the write lock.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        finally:
            self._lock.release()
        for channel in tx.pending_notifications:
            self._wakeups.set(channel)

    async def _write_lock(self, conn: sqlite3.Connection) -> None:
        """Take ``self._lock`` and ``BEGIN IMMEDIATE`` (SQLite's write lock); the caller
        releases ``self._lock``. While another process holds the write lock, each try waits
        at most ``LOOP_BUSY_TIMEOUT_MS`` on the loop, and between tries ``self._lock`` is let
        go and the pause is asynchronous, up to the configured busy timeout in all; then the
        busy error is raised (a callback answered 503 with Retry-After, a worker loop backing
        off, the admin API's 503)."""
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        while True:
            await self._lock.acquire()
            try:
                conn.execute("BEGIN IMMEDIATE")
                return  # holding self._lock
            except BaseException as exc:
                self._lock.release()
                if not is_busy(exc) or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(BUSY_RETRY_SECONDS)

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        # Plain reads need no write lock: autocommit mode reads a consistent snapshot. Only
        # an open transaction of this connection (suspended mid-way) must be waited for, or
        # the read would see its uncommitted rows.
        conn = self.conn
        if conn.in_transaction:
            async with self._lock:
                return [dict(row) for row in conn.execute(sql, params or {}).fetchall()]
        return [dict(row) for row in conn.execute(sql, params or {}).fetchall()]

    async def in_shared_transaction(self, work: Callable[[Transaction], Awaitable[T]]) -> T:
        """Pieces of work queued within a few event-loop turns share one transaction; every
        caller gets its own result (or exception) after the commit. Should a piece fail, the
        shared transaction is rolled back and each piece runs again in a transaction of its
        own, so that the failure is only its own (cheaper than a savepoint around every
        piece, for a failure that almost never comes)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._shared.append((work, future))
        if len(self._shared) == 1:
            task = asyncio.get_running_loop().create_task(self._run_shared())
            self._shared_tasks.add(task)
            task.add_done_callback(self._shared_tasks.discard)
        return await future

    async def _run_shared(self) -> None:
        try:
            for _ in range(SHARED_GATHER_TURNS):
                await asyncio.sleep(0)  # let the pieces of the next few loop turns join
        except BaseException:  # cancelled (shutdown): nobody may wait for ever
            queued, self._shared = self._shared, []
            for _, future in queued:
                future.cancel()
            raise
        queued, self._shared = self._shared, []
        try:
            try:
                async with self.transaction() as tx:
                    results = [await work(tx) for work, _ in queued]
            except Exception:
                if len(queued) == 1:
                    raise
                for work, future in queued:  # one at a time: only the failing piece fails
                    try:
                        async with self.transaction() as tx:
                            result = await work(tx)
                    except Exception as exc:
                        if not future.done():
                            future.set_exception(exc)
                    else:
                        if not future.done():
                            future.set_result(result)
                return
        except BaseException as exc:
            for _, future in queued:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(queued, results, strict=True):
            if not future.done():
                future.set_result(result)

    # --- group commit (see receiver.store.db.sqlite_group) ---------------------------

    async def insert_new(self, insert: NewRowInsert, row: Params, channel: str) -> bool:
        """Group commit: the rows that arrive while one commit is under way share the next.

        Under load, 32 callbacks arriving together cost one statement and one commit instead
        of 32 of each; each caller still gets its own answer only after the commit (so an
        ack is never early). The rows of one loop turn go together; those that come while a
        transaction holds the write lock join them.
        """
        if self._closing:
            raise DatabaseClosing("the database is closing")
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._batch.append((insert, row, channel, future))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return await future

    def _delivered(self, batch: list[Queued], outcomes: list[Outcome]) -> None:
        """A batch's answers."""
        for (_, _, channel, future), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Exception):
                if not future.done():
                    future.set_exception(outcome)
                continue
            if outcome:
                self._wakeups.set(channel)
            if not future.done():
                future.set_result(outcome)

    async def _flush(self) -> None:
        """Group commits, batch after batch, until no row is queued."""
        busy_since: float | None = None  # another process has held the lock since then
        try:
            await asyncio.sleep(0)  # let the rows of this loop turn join the first batch
            while self._batch:
                checkpointer = self._checkpointer
                if checkpointer is not None and checkpointer.reset_due(0.0):
                    # Past the hard limit, with no lull in sight: now, between two batches.
                    await self._finish_reset()
                async with self._lock:
                    batch, self._batch = self._batch, []
                    self._last_write = time.monotonic()
                    try:
                        outcomes = write_rows(self.conn, batch)
                    except Exception as exc:  # the connection is gone (closed)
                        outcomes = [exc] * len(batch)
                    waiting = [i for i, outcome in enumerate(outcomes) if is_busy(outcome)]
                    now = time.monotonic()
                    if not waiting:
                        busy_since = None
                    elif busy_since is None:
                        busy_since = now
                    waited = 0.0 if busy_since is None else now - busy_since
                    if waiting and waited < self._busy_timeout_ms / 1000:
                        # Locked by another process: these rows try again after a pause
                        # that lets the loop go on (each try waits at most
                        # LOOP_BUSY_TIMEOUT_MS), ahead of the rows queued meanwhile.
                        kept = set(waiting)
                        self._delivered(
                            [q for i, q in enumerate(batch) if i not in kept],
                            [o for i, o in enumerate(outcomes) if i not in kept],
                        )
                        self._batch[:0] = [batch[i] for i in waiting]
                    else:
                        self._delivered(batch, outcomes)
                        waiting = []
                if waiting:
                    await asyncio.sleep(BUSY_RETRY_SECONDS)
        finally:
            self._flusher = None
            queued, self._batch = self._batch, []
            for *_, future in queued:  # only when cancelled (shutdown) before their turn
                if not future.done():
                    future.set_exception(DatabaseClosing("the database is closing"))

    async def ping(self) -> None:
        self.conn.execute("SELECT 1").fetchone()

    async def notify(self, channel: str) -> None:
        self._wakeups.set(channel)

    def wake(self, channel: str) -> None:
        self._wakeups.set(channel)

    async def wait(self, channel: str, timeout: float) -> bool:
        return await self._wakeups.wait(channel, timeout)
