"""The SQLite driver's writer thread: the intake's group commits, off the event loop.

Every callback is one ``INSERT … ON CONFLICT DO NOTHING`` (:meth:`Database.insert_new`).
The rows that arrive while one commit is under way wait for the next, which takes them all
in one multi-row statement and one commit: at light load a row commits alone and at once;
under load tens of them share a commit.

Those statements and commits run here, on a connection of this thread's own: the SQLite
work (B-tree inserts, writing the WAL frames: about a third of the cost of taking a
callback) no longer holds the event loop, which meanwhile reads the next requests, and
``sqlite3`` lets go of the GIL while SQLite works. The thread takes the next batch as soon
as it has committed one, without waiting for the event loop, which only gets the answers.
When no callback has come for a moment, it finishes the WAL resets the checkpointer asks
for (:mod:`receiver.db.sqlite_wal`).

SQLite allows one write transaction at a time. The serving connection's own transactions
(pipeline, outbox, API) first *park* this thread (:meth:`WriterThread.park`): it finishes
the batch in hand and waits until :meth:`WriterThread.unpark`, so nothing of this process
ever waits inside SQLite for another of its connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from receiver.db.base import NewRowInsert, Params
from receiver.db.sqlite_wal import RESET_LULL_SECONDS, Checkpointer
from receiver.logs import get_logger

log = get_logger("signback.sqlite")

# A queued row: its insert, values, wake-up channel, and the caller's future.
Queued = tuple[NewRowInsert, Params, str, "asyncio.Future[bool]"]
# For each row: new (True), already stored (False), or the error that kept it out.
Outcome = bool | Exception


# At most this many rows per statement (11 values each: far below SQLite's limit on bound
# values, which was 999 before 3.32), so that a batch grown during a long pause still goes
# in a few statements.
MAX_ROWS_PER_STATEMENT = 64


def write_rows(conn: sqlite3.Connection, rows: Sequence[Queued]) -> list[Outcome]:
    """Insert ``rows``: multi-row statements per kind of insert, each committed on its own
    (autocommit: one step, no BEGIN and COMMIT around it). Runs on whichever one thread
    owns ``conn``.

    If a statement is refused for its data (a constraint), its rows go one by one, so that
    only the bad row fails. If the database itself fails (locked by another process past the
    busy timeout, disk full, I/O error), the statement's rows fail with it: their callers
    answer 503 and the providers retry, rather than each row waiting out the busy timeout
    on its own while every other writer waits too."""
    groups: dict[NewRowInsert, list[int]] = {}
    for index, queued in enumerate(rows):
        groups.setdefault(queued[0], []).append(index)
    outcomes: list[Outcome] = [False] * len(rows)
    for insert, indexes in groups.items():
        for start in range(0, len(indexes), MAX_ROWS_PER_STATEMENT):
            part = indexes[start : start + MAX_ROWS_PER_STATEMENT]
            new = _insert_part(conn, insert, [rows[i][1] for i in part])
            for index, outcome in zip(part, new, strict=True):
                outcomes[index] = outcome
    return outcomes


def _insert_part(
    conn: sqlite3.Connection, insert: NewRowInsert, rows: Sequence[Params]
) -> list[Outcome]:
    """One multi-row ``INSERT … ON CONFLICT DO NOTHING``, and which rows it stored.

    Usually every row is new, and the statement's row count says so. When it stored fewer
    rows than it was given, the keys that were stored already are found by their ids: the
    rows one statement inserts get the highest ids of the table at that moment (the id is
    an ``INTEGER PRIMARY KEY`` without AUTOINCREMENT, so a new row gets the highest id plus
    one, and no other connection of this process writes meanwhile), so of the batch's keys,
    the ``count`` with the highest ids are this statement's. (Asking SQLite with
    ``RETURNING`` instead hands back one row per step, and each step lets go of the GIL and
    must win it back from the busy event loop: that was most of this thread's time.) A key
    that comes twice in the batch (a provider's immediate retry) is new only the first time,
    as if the rows had gone in one by one."""
    first: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    keys = []
    for row in rows:
        key = insert.key_of(row)
        keys.append(key)
        if key not in first:
            first[key] = insert.values_of(row)
    values = [value for row_values in first.values() for value in row_values]
    try:
        stored = conn.execute(insert.many_rows_sql(len(first)), values).rowcount
    except sqlite3.IntegrityError:
        # A row the table refuses (NOT NULL, a foreign key): nothing of the statement was
        # stored; one at a time finds it, and fails only its own caller.
        return [_insert_one(conn, insert, row) for row in rows]
    except sqlite3.Error as exc:
        return [exc] * len(rows)
    if stored == len(first):
        fresh = set(first)
    else:
        try:
            by_id = conn.execute(
                _ids_sql(insert, len(first)), [v for key in first for v in key]
            ).fetchall()
        except sqlite3.Error as exc:
            # Stored, but which rows were new is unknown: no one is told "accepted" or
            # "duplicate" wrongly; they answer 503, and the providers' retries are
            # answered from what is stored.
            return [exc] * len(rows)
        by_id.sort(key=lambda r: r[-1], reverse=True)
        fresh = {tuple(r[:-1]) for r in by_id[:stored]}
    new: list[Outcome] = []
    for key in keys:
        new.append(key in fresh)
        fresh.discard(key)
    return new


@functools.lru_cache(maxsize=256)
def _ids_sql(insert: NewRowInsert, count: int) -> str:
    """The key and id of each of ``count`` keys: a join on the unique index (SQLite does not
    use an index for ``(a, b) IN (VALUES …)``, it scans)."""
    width = len(insert.key)
    one = "(" + ", ".join(["?"] * width) + ")"
    on = " AND ".join(f"t.{name} = v.column{i + 1}" for i, name in enumerate(insert.key))
    return (
        f"SELECT {', '.join('t.' + name for name in insert.key)}, t.rowid"
        f" FROM (VALUES {', '.join([one] * count)}) AS v JOIN {insert.table} AS t ON {on}"
    )


def _insert_one(conn: sqlite3.Connection, insert: NewRowInsert, row: Params) -> Outcome:
    try:
        # Autocommit: the row is its own transaction, so a bad row fails alone.
        return conn.execute(insert.one_row_sql, row).rowcount > 0
    except Exception as exc:
        return exc


Deliver = Callable[[list[Queued], list[Outcome]], None]


class WriterGone(RuntimeError):
    """The writer thread has stopped (shut down, or failed): nothing more can be written."""


class WriterThread:
    """Owns a connection and writes queued rows, batch after batch (see the module doc)."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        loop: asyncio.AbstractEventLoop,
        deliver: Deliver,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self._connect = connect
        self._loop = loop
        self._deliver = deliver  # called on the loop with each batch and its outcomes
        self._checkpointer = checkpointer
        self._cond = threading.Condition()
        # Everything below is guarded by _cond.
        self._queue: list[Queued] = []
        self._busy = True  # until the thread first waits: writing, or about to
        self._last_write = 0.0  # time.monotonic() of the last batch taken
        self._park_wanted = False
        self._parked = False
        self._park_future: asyncio.Future[None] | None = None
        self._stopping = False
        self._gone: BaseException | None = None  # set when the thread has ended
        self._thread = threading.Thread(target=self._run, name="sqlite-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, queued: Queued) -> None:
        with self._cond:
            if self._gone is not None or self._stopping:
                raise WriterGone("the database is closing") from self._gone
            self._queue.append(queued)
            if len(self._queue) == 1:
                self._cond.notify()

    def checkpoint_wanted(self) -> None:
        """The checkpointer wants a WAL reset finished (called from its thread)."""
        with self._cond:
            self._cond.notify()

    async def park(self) -> None:
        """Return once this thread writes nothing and will not until :meth:`unpark`. The
        caller must call :meth:`unpark` afterwards, also if cancelled.

        When the thread is idle (waiting for rows, which it cannot take without the lock held
        here), parking it is immediate. Only a batch in hand is waited for: a round trip
        through the thread would cost the waiting for the GIL, a millisecond or more while
        the event loop is busy, on every transaction. A thread that has ended writes nothing
        any more: parking it is immediate too."""
        with self._cond:
            if not self._busy or self._gone is not None:
                self._parked = True
                return
            future = self._loop.create_future()
            self._park_future = future
            self._park_wanted = True
        await future

    def unpark(self) -> None:
        with self._cond:
            self._park_wanted = False
            self._parked = False
            self._park_future = None
            self._cond.notify()

    def stop(self) -> None:
        """Write what is queued, then end the thread (blocks: call it from a thread). Rows
        submitted from now on are refused (:class:`WriterGone`)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=30)

    def _parked_now(self, future: asyncio.Future[None]) -> None:
        if not future.done():
            future.set_result(None)

    def _reset_due(self) -> bool:
        checkpointer = self._checkpointer
        return checkpointer is not None and checkpointer.reset_due(
            time.monotonic() - self._last_write
        )

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        ended: BaseException = WriterGone("the writer thread has stopped")
        try:
            conn = self._connect()
            self._loop_forever(conn)
        except BaseException as exc:  # whatever ends the thread, nobody may wait for ever
            ended = exc
            log.error(
                "the SQLite writer thread failed; callbacks are refused until a restart",
                error=f"{type(exc).__name__}: {exc}",
            )
        finally:
            with self._cond:
                self._gone = ended
                self._busy = False
                left, self._queue = self._queue, []
                future, self._park_future = self._park_future, None
            if left or future is not None:
                failure = ended if isinstance(ended, Exception) else WriterGone(str(ended))
                failures: list[Outcome] = [failure] * len(left)
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    if left:
                        self._loop.call_soon_threadsafe(self._deliver, left, failures)
                    if future is not None:
                        self._loop.call_soon_threadsafe(self._parked_now, future)
            if conn is not None:
                conn.close()

    def _loop_forever(self, conn: sqlite3.Connection) -> None:
        checkpointer = self._checkpointer
        while True:
            batch: list[Queued] = []
            reset = False
            with self._cond:
                self._busy = False
                while self._parked or not (
                    self._queue or self._park_wanted or self._stopping or self._reset_due()
                ):
                    # A wanted reset waits for a lull: look again when one may have come.
                    wanted = checkpointer is not None and checkpointer.reset_wanted
                    self._cond.wait(RESET_LULL_SECONDS if wanted else None)
                if self._park_wanted:  # asked while busy: now idle, say so
                    self._park_wanted = False
                    self._parked = True
                    future, self._park_future = self._park_future, None
                    if future is not None:
                        self._loop.call_soon_threadsafe(self._parked_now, future)
                    continue
                self._busy = True
                if self._reset_due():
                    reset = True
                elif self._queue:
                    batch, self._queue = self._queue, []
                    self._last_write = time.monotonic()
                elif self._stopping:
                    return
            if reset:
                assert checkpointer is not None
                checkpointer.finish_reset(conn)
                continue
            outcomes = write_rows(conn, batch)
            self._loop.call_soon_threadsafe(self._deliver, batch, outcomes)
