"""The SQLite driver's group commit: many callbacks stored by one statement and one commit.

Every callback is one ``INSERT … ON CONFLICT DO NOTHING`` (:meth:`Database.insert_new`).
The rows queued during one turn of the event loop go together (:meth:`SqliteDatabase.
insert_new`): one multi-row statement, autocommitted. At light load a row commits alone and
at once; under load tens of them share a commit.

They are written on the event loop thread, by the serving connection, like every other
statement of the driver. A writer thread of its own cost more than it saved: it needed the
GIL for each batch and each SQLite step, so the loop and the thread took turns instead of
working at the same time (docs/performance.md has the measurements).
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Sequence
from typing import Any

from receiver.store.db.base import NewRowInsert, Params

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
    (autocommit: one step, no BEGIN and COMMIT around it).

    If a statement is refused for its data (a constraint), its rows go one by one, so that
    only the bad row fails. If the database itself fails (locked by another process past the
    busy timeout, disk full, I/O error), the statement's rows fail with it: their callers
    answer 503 and the providers retry, rather than each row waiting out the busy timeout
    on its own while every other writer waits too. After a statement that waited out the
    busy timeout, the rest of the rows fail at once, unwritten: each further statement
    would wait as long again, and the event loop waits with it."""
    groups: dict[NewRowInsert, list[int]] = {}
    for index, queued in enumerate(rows):
        groups.setdefault(queued[0], []).append(index)
    outcomes: list[Outcome] = [False] * len(rows)
    busy: sqlite3.OperationalError | None = None
    for insert, indexes in groups.items():
        for start in range(0, len(indexes), MAX_ROWS_PER_STATEMENT):
            part = indexes[start : start + MAX_ROWS_PER_STATEMENT]
            if busy is not None:
                new: list[Outcome] = [busy] * len(part)
            else:
                new = _insert_part(conn, insert, [rows[i][1] for i in part])
                busy = next((o for o in new if isinstance(o, sqlite3.OperationalError)), None)
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
    one), so of the batch's keys, the ``count`` with the highest ids are this statement's.
    (Asking SQLite with ``RETURNING`` instead hands back one row per step, each a round
    through the sqlite3 module, for an answer needed only in the rare mixed batch.) A key
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


class DatabaseClosing(RuntimeError):
    """The database is closing: nothing more can be written."""
