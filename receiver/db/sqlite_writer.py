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
import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from receiver.db.base import NewRowInsert, Params
from receiver.db.sqlite_wal import RESET_LULL_SECONDS, Checkpointer

# A queued row: its insert, values, wake-up channel, and the caller's future.
Queued = tuple[NewRowInsert, Params, str, "asyncio.Future[bool]"]
# For each row: new (True), already stored (False), or the error that kept it out.
Outcome = bool | Exception


def write_rows(conn: sqlite3.Connection, rows: Sequence[Queued]) -> list[Outcome]:
    """Insert ``rows``: one multi-row statement per kind of insert, each committed on its
    own (autocommit: one step, no BEGIN and COMMIT around it). If a statement fails, its
    rows go one by one, so that only the failing rows fail. Runs on whichever one thread
    owns ``conn``."""
    groups: dict[NewRowInsert, list[int]] = {}
    for index, queued in enumerate(rows):
        groups.setdefault(queued[0], []).append(index)
    outcomes: list[Outcome] = [False] * len(rows)
    for insert, indexes in groups.items():
        try:
            new: list[Outcome] = list(_insert_group(conn, insert, [rows[i][1] for i in indexes]))
        except Exception:
            new = [_insert_one(conn, insert, rows[i][1]) for i in indexes]
        for index, outcome in zip(indexes, new, strict=True):
            outcomes[index] = outcome
    return outcomes


def _insert_group(
    conn: sqlite3.Connection, insert: NewRowInsert, rows: Sequence[Params]
) -> list[bool]:
    """One multi-row ``INSERT … ON CONFLICT DO NOTHING``, and which rows it stored.

    Usually every row is new, and the statement's row count says so. When it stored fewer
    rows than it was given, the keys that were stored already are found by their ids: the
    rows one statement inserts get the highest ids of the table at that moment, so of the
    batch's keys, the ``count`` with the highest ids are this statement's. (Asking SQLite
    with ``RETURNING`` instead hands back one row per step, and each step lets go of the
    GIL and must win it back from the busy event loop: that was most of this thread's
    time.) A key that comes twice in the batch (a provider's immediate retry) is new only
    the first time, as if the rows had gone in one by one."""
    first: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    keys = []
    for row in rows:
        key = insert.key_of(row)
        keys.append(key)
        if key not in first:
            first[key] = insert.values_of(row)
    values = [value for row_values in first.values() for value in row_values]
    stored = conn.execute(insert.many_rows_sql(len(first)), values).rowcount
    if stored == len(first):
        fresh = set(first)
    else:
        by_id = conn.execute(
            _ids_sql(insert, len(first)), [v for key in first for v in key]
        ).fetchall()
        by_id.sort(key=lambda r: r[-1], reverse=True)
        fresh = {tuple(r[:-1]) for r in by_id[:stored]}
    new: list[bool] = []
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
        self._thread = threading.Thread(target=self._run, name="sqlite-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, queued: Queued) -> None:
        with self._cond:
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
        the event loop is busy, on every transaction."""
        with self._cond:
            if not self._busy:
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
        """Write what is queued, then end the thread (blocks: call it from a thread)."""
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
        conn = self._connect()
        checkpointer = self._checkpointer
        try:
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
                            try:
                                self._loop.call_soon_threadsafe(self._parked_now, future)
                            except RuntimeError:  # the loop is closed
                                return
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
                try:
                    outcomes = write_rows(conn, batch)
                except Exception as exc:  # the connection itself failed
                    outcomes = [exc] * len(batch)
                try:
                    self._loop.call_soon_threadsafe(self._deliver, batch, outcomes)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    return
        finally:
            conn.close()
