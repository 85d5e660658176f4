"""PostgreSQL driver (psycopg 3, async pool).

Several web and worker processes share one database: claims use ``FOR UPDATE SKIP LOCKED``,
and workers sleep on ``LISTEN`` instead of polling fast; ``notify`` sends a ``NOTIFY`` that
every other process's listener turns into a local wake-up (the sender wakes its own waiters
when it commits, and its listener passes over the NOTIFY when it hears it back).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from receiver import jsonutil
from receiver.backoff import MAX_LOOP_DELAY, Backoff
from receiver.logs import get_logger
from receiver.store.db.base import (
    BatchedWrite,
    Database,
    Later,
    NewRowInsert,
    Params,
    Row,
    Transaction,
)
from receiver.store.db.wakeup import Wakeups

log = get_logger(__name__)
T = TypeVar("T")

_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
CHANNEL_PREFIX = "signback_"
RECENTLY_USED_SECONDS = 2.0
CHECKOUT_TIMEOUT = 4.0  # seconds a transaction waits for a pooled connection
# The same wait while the server is known to refuse connections (the pool's last attempt to
# open one failed, none has opened since): an outage answers 503 at once instead of after
# CHECKOUT_TIMEOUT, yet a checkout still gives a server that is back time to be reached
# (each waiting checkout makes the pool try to connect).
OUTAGE_CHECKOUT_TIMEOUT = 0.5
# How soon a channel first waited on after the listener started is LISTENed too.
LISTEN_CHECK_SECONDS = 1.0
# Group commit of new rows (the intake): at most this many rows per statement, and this
# many statements in flight at once (each on its own pooled connection).
GROUP_MAX_ROWS = 128
GROUP_MAX_IN_FLIGHT = 2
# Shared transactions (in_shared_transaction): at most this many pieces of work per
# transaction, and this many such transactions at once. One: under load the pieces queue
# while a transaction is out and go together in the next, so there are fewer, larger
# transactions, each a round trip whose sends cost the process far more than its rows;
# a second one in flight halved the batches and gained nothing at light load, where
# pieces come one at a time anyway (docs/performance.md, sixth part).
SHARED_MAX_PIECES = 64
SHARED_MAX_IN_FLIGHT = 1


@lru_cache(maxsize=512)
def to_psycopg(sql: str) -> str:
    """``:name`` → ``%(name)s``; literal ``%`` doubled; ``::casts`` left alone."""
    return _PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))


def conninfo(url: str) -> str:
    """psycopg takes libpq URLs; drop a SQLAlchemy driver suffix if one was given."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


# A statement held back: its text, the parameters of each time it is to run (consecutive
# runs of one text, none of them counted, share an entry: one executemany), and where its
# row count goes (for one run only).
_Statement = tuple[str, list[Params], Later | None]


class _Batch:
    """Rows of one BatchedWrite held back (consecutive ones share an entry, and all of an
    independent write's): one statement for all of them, and where each row's count goes."""

    __slots__ = ("laters", "rows", "write")

    def __init__(self, write: BatchedWrite) -> None:
        self.write = write
        self.rows: list[Params] = []
        self.laters: list[Later] = []

    def document(self) -> str:
        return jsonutil.dumps_bytes(self.rows).decode()

    def sent(self, changed: list[Row]) -> None:
        names = self.write.key
        keys = {tuple(row[name] for name in names) for row in changed}
        for row, later in zip(self.rows, self.laters, strict=True):
            key = tuple(row[name] for name in names)
            if key in keys:
                keys.discard(key)  # several rows with one key: the first one changed it
                later.sent(1)
            else:
                later.sent(0)


_Held = _Statement | _Batch


class _PgTransaction(Transaction):
    """Statements whose results are not needed at once (BEGIN, :meth:`execute_later`,
    NOTIFY, COMMIT) are held back and go with the next statement that is awaited, in
    pipeline mode: one round trip for all of them. So BEGIN travels with the first read, the
    writes of an event with the next read, and the last writes with NOTIFY and COMMIT. Each
    round trip through psycopg's async connection costs the process far more CPU than the
    statements in it (docs/performance.md, "What a round trip costs").

    Each statement in a pipeline still costs psycopg a send of its own (it flushes after
    every one), and the server a statement: hence batched writes (one statement for the
    rows of many callers), and no BEGIN or COMMIT for a transaction that goes all at once
    at its commit (:meth:`commit`)."""

    def __init__(self, conn: psycopg.AsyncConnection[Row], db: PostgresDatabase) -> None:
        super().__init__()
        self._conn = conn
        self._db = db
        self._held: list[_Held] = [("BEGIN", [{}], None)]
        self._independent: dict[int, _Batch] = {}  # held batches of independent writes
        self._begun = False  # something has been sent: a failure must roll back

    def _hold(self, sql: str, params: Sequence[Params], later: Later | None = None) -> None:
        if not params:
            return
        last = self._held[-1] if self._held else None
        if later is None and isinstance(last, tuple) and last[0] == sql and last[2] is None:
            last[1].extend(params)
        else:
            self._held.append((sql, list(params), later))

    async def _send(
        self, sql: str | None, params: Params | None = None
    ) -> psycopg.AsyncCursor[Row] | None:
        """``sql`` (if any) after whatever is held, in one round trip; its cursor, results
        in."""
        if sql is None and not self._held:
            return None
        self._db.round_trips += 1
        if not self._held:
            assert sql is not None
            self._db.statements += 1
            return await self._conn.execute(to_psycopg(sql), params or {})
        held, self._held = self._held, []
        self._independent = {}
        self._begun = True
        self._db.statements += sum(
            1 if isinstance(entry, _Batch) else len(entry[1]) for entry in held
        ) + (sql is not None)
        counted: list[tuple[Later, psycopg.AsyncCursor[Row]]] = []
        batches: list[tuple[_Batch, psycopg.AsyncCursor[Row]]] = []
        cur = None
        # Leaving the block sends one Sync and reads every result; an error in any of the
        # statements is raised there (those after it were not run).
        async with self._conn.pipeline():
            for entry in held:
                if isinstance(entry, _Batch):
                    batch = await self._conn.execute(
                        entry.write.postgres_sql, {"rows": entry.document()}
                    )
                    batches.append((entry, batch))
                    continue
                held_sql, runs, later = entry
                if len(runs) > 1:
                    async with self._conn.cursor() as many:
                        await many.executemany(to_psycopg(held_sql), runs)
                    continue
                one = await self._conn.execute(to_psycopg(held_sql), runs[0])
                if later is not None:
                    counted.append((later, one))
            if sql is not None:
                cur = await self._conn.execute(to_psycopg(sql), params or {})
        for later, one in counted:
            later.sent(one.rowcount)
        for entry, batch in batches:
            entry.sent(await batch.fetchall())
        return cur

    async def _awaited(self, sql: str, params: Params | None) -> psycopg.AsyncCursor[Row]:
        cur = await self._send(sql, params)
        assert cur is not None
        return cur

    async def execute(self, sql: str, params: Params | None = None) -> int:
        return (await self._awaited(sql, params)).rowcount

    async def execute_later(self, sql: str, params: Params | None = None) -> Later:
        later = Later()
        self._hold(sql, [params or {}], later)
        return later

    async def execute_batched_later(self, write: BatchedWrite, params: Params) -> Later:
        later = Later()
        if write.independent:
            batch = self._independent.get(id(write))
        else:
            last = self._held[-1] if self._held else None
            batch = last if isinstance(last, _Batch) and last.write is write else None
        if batch is None:
            batch = _Batch(write)
            self._held.append(batch)
            if write.independent:
                self._independent[id(write)] = batch
        batch.rows.append(params)
        batch.laters.append(later)
        return later

    async def flush(self) -> None:
        await self._send(None)

    async def executemany(self, sql: str, params: Sequence[Params]) -> None:
        """Sent in pipeline mode with whatever is held: one round trip for all of them."""
        if not params:
            return
        self._hold(sql, params[:-1])
        await self._send(sql, params[-1])

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        return await (await self._awaited(sql, params)).fetchall()

    async def lock_key(self, key: str) -> None:
        # Taken before any statement sent after it, which is all the lock is for.
        self._hold("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))", [{"key": key}])

    async def commit(self) -> None:
        """What is held, NOTIFY and COMMIT in one round trip (none if nothing was written).

        NOTIFY is transactional: other processes hear it only if we commit. Every channel
        goes in one statement however many there are.

        A transaction that sent nothing before its commit (writes only, such as the
        dispatcher's results) goes without BEGIN and COMMIT: the statements of a pipeline
        up to its Sync are one implicit transaction, committed at the Sync if they all
        succeeded and rolled back otherwise (PostgreSQL's protocol, "Pipelining"). Two
        statements fewer, each a send of its own and a statement for the server."""
        if not self._begun and len(self._held) <= 1 and not self.pending_notifications:
            self._held = []  # BEGIN only: nothing to commit
            return
        if self.pending_notifications:
            self._hold(_notify_sql(frozenset(self.pending_notifications), self._db.origin), [{}])
        if not self._begun:
            del self._held[0]  # BEGIN, held since the start
            await self._send(None)
            return
        await self._send("COMMIT")

    async def rollback(self) -> None:
        """Undo what was sent; nothing to do if nothing was (BEGIN still held)."""
        self._held = []
        self._independent = {}
        if not self._begun or self._conn.broken:
            return
        if self._conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self._db.round_trips += 1
            await self._conn.execute("ROLLBACK")


class PostgresDatabase(Database):
    dialect = "postgresql"

    def __init__(self, url: str, *, pool_min: int = 1, pool_max: int = 10) -> None:
        self.url = url
        self._conninfo = conninfo(url)
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Row]] | None = None
        self._pool_min, self._pool_max = pool_min, max(pool_min, pool_max)
        self._wakeups = Wakeups()
        self._last_returned: dict[int, float] = {}
        self._listened: set[str] = set()
        self._listener: asyncio.Task[None] | None = None
        self._listen_changed = asyncio.Event()
        self._group = _GroupInserter(self)
        self._shared = _SharedTransactions(self)
        self._unreachable = False  # see OUTAGE_CHECKOUT_TIMEOUT
        # Exchanges with the server waited for, from this process (a pipelined batch of
        # held statements is one): what the pipeline's cost per event is counted in.
        self.round_trips = 0
        self.statements = 0  # and the statements sent in them (each one a send in psycopg)
        # Every NOTIFY this process sends carries this as its payload: the listener then
        # knows the ones it hears back (hex: safe inside an SQL literal).
        self.origin = secrets.token_hex(8)

    async def connect(self) -> None:
        if self._pool is not None:
            return
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Row]] = AsyncConnectionPool(
            self._conninfo,
            min_size=self._pool_min,
            max_size=self._pool_max,
            # Autocommit: a lone statement (the intake's insert) is one round trip; multi-
            # statement work goes through transaction(), which sends BEGIN/COMMIT itself.
            kwargs={"row_factory": dict_row, "autocommit": True},
            reset=self._returned,
            configure=self._connected,
            reconnect_failed=self._connect_failed,
            open=False,
            # A dead connection is noticed and replaced instead of failing a request.
            check=self._check_connection,
            # A background reconnection gives up at once; the pool grows again on demand
            # (every checkout that waits tries), so it keeps trying while requests come in,
            # and /readyz reports the outage meanwhile.
            reconnect_timeout=0,
            # A checkout that waits longer than this fails. It must stay under the providers'
            # deadlines (5 s for some): during an outage a callback is refused with a 503, which
            # the provider retries, instead of hanging until the provider gives up on us.
            timeout=CHECKOUT_TIMEOUT,
        )
        await pool.open(wait=False)
        self._pool = pool

    async def _check_connection(self, conn: psycopg.AsyncConnection[Row]) -> None:
        """The pool's check before it hands out a connection.

        One dead connection almost always means they all died (a server restart, a failover,
        an idle-connection reaper, ``pg_terminate_backend``). Left alone, the pool would find
        them one per checkout, backing off 1, 2, 4, 8 s in between, so each of the next
        requests would wait out its whole checkout timeout and fail while the database is fine
        again. So the first dead one found sweeps the idle ones out at once (broken ones
        are replaced), and the next checkout gets a fresh connection.
        """
        # A connection back from work a moment ago is alive: checking it would add a round
        # trip to every callback. One that sat idle is checked (servers and proxies reap
        # idle connections); errors on busy ones are caught where they happen.
        if time.monotonic() - self._last_returned.get(id(conn), 0.0) < RECENTLY_USED_SECONDS:
            return
        try:
            await AsyncConnectionPool.check_connection(conn)
        except Exception:
            await self._sweep()
            raise

    async def _connected(self, conn: psycopg.AsyncConnection[Row]) -> None:
        self._unreachable = False

    def _connect_failed(self, pool: object) -> None:
        self._unreachable = True

    @asynccontextmanager
    async def _checkout(self) -> AsyncIterator[psycopg.AsyncConnection[Row]]:
        """A pooled connection; waits CHECKOUT_TIMEOUT, or OUTAGE_CHECKOUT_TIMEOUT while
        the server refuses connections (then raises PoolTimeout, an OperationalError).

        Not the pool's ``connection()``: leaving it calls ``commit()`` (or ``rollback()``)
        on the connection, which on our autocommit connections has nothing to do but still
        takes the connection's lock and a trip through psycopg's wait machinery, on every
        checkout. ``putconn`` rolls back a connection handed back inside a transaction
        (an error in our own rollback) and replaces a broken one all the same."""
        pool = self.pool
        conn = await pool.getconn(
            timeout=OUTAGE_CHECKOUT_TIMEOUT if self._unreachable else CHECKOUT_TIMEOUT
        )
        try:
            yield conn
        finally:
            await pool.putconn(conn)

    def is_unavailable(self, exc: BaseException) -> bool:
        # Lost or refused connections, pool timeouts, a cancelled statement: all pass.
        return isinstance(exc, psycopg.OperationalError)

    def is_schema_missing(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn)

    async def _returned(self, conn: psycopg.AsyncConnection[Row]) -> None:
        if conn.broken:
            self._last_returned.pop(id(conn), None)
        else:
            self._last_returned[id(conn)] = time.monotonic()

    async def _sweep(self) -> None:
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await self._pool.check()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Row]]:
        if self._pool is None:
            raise RuntimeError("database is not connected")
        return self._pool

    def render(self, sql: str) -> str:
        # {for_update}: FOR NO KEY UPDATE, which keeps out other writers and lockers of the
        # row but not a foreign key's check (FOR KEY SHARE). The pipeline locks several
        # requests per transaction; with FOR UPDATE, an intake batch inserting inbox rows
        # that reference two of them (in its own order) could wait for it, and deadlock.
        return sql.replace("{skip_locked}", "FOR UPDATE SKIP LOCKED").replace(
            "{for_update}", "FOR NO KEY UPDATE"
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._checkout() as conn:
            # BEGIN and COMMIT are sent by _PgTransaction, each with other statements, not
            # by psycopg's conn.transaction(), which waits for each of them on its own.
            tx = _PgTransaction(conn, self)
            try:
                yield tx
                await tx.commit()
            except BaseException:
                # A connection lost meanwhile is the pool's to replace; the error that
                # brought us here is the one to report.
                with contextlib.suppress(Exception):
                    await tx.rollback()
                raise
            for channel in tx.pending_notifications:
                self._wakeups.set(channel)

    async def in_shared_transaction(self, work: Callable[[Transaction], Awaitable[T]]) -> T:
        """Group commit of small pieces of work (the dispatcher's results): a transaction
        leaves as soon as the one before it is back (SHARED_MAX_IN_FLIGHT), with every
        piece queued meanwhile. At light load that is one piece per transaction with no
        added delay; under load, tens of results share one statement and NOTIFY. A piece
        that only holds its writes back (``execute_batched_later``, as the dispatcher's
        results do) adds no round trip: the whole transaction is then one, without BEGIN
        and COMMIT (:meth:`_PgTransaction.commit`)."""
        return await self._shared.run(work)

    async def insert_new(self, insert: NewRowInsert, row: Params, channel: str) -> bool:
        """Group commit: the rows that arrive while a statement is on its way go together in
        the next one: one multi-row INSERT with its NOTIFY, autocommitted, one round trip
        for many callbacks. Each caller gets its own answer after the commit."""
        return await self._group.insert(insert, row, channel)

    async def insert_rows(
        self, insert: NewRowInsert, rows: Sequence[Params], channel: str
    ) -> set[tuple[object, ...]]:
        """Insert ``rows`` (distinct keys) in one autocommitted statement; wake ``channel``
        here and in every process if any was new. Returns the keys that were new.

        The rows go as one JSON document (``json_to_recordset``; bytes in base64), so the
        statement's text is the same whatever their number: psycopg parses it once and
        PostgreSQL plans it once (a prepared statement). A ``VALUES`` list per batch size
        had been parsed anew by both, every time (a fifth of the intake's CPU), and arrays,
        one per column, cost psycopg a Python call per value."""
        binary = [i for i, pg_type in enumerate(insert.pg_types) if pg_type == "bytea"]
        records = []
        for row in rows:
            record = dict(zip(insert.columns, insert.values_of(row), strict=True))
            for i in binary:
                name = insert.columns[i]
                if record[name] is not None:
                    record[name] = base64.b64encode(record[name]).decode("ascii")
            records.append(record)
        document = jsonutil.dumps_bytes(records).decode()
        self.round_trips += 1
        try:
            async with self._checkout() as conn:
                cur = await conn.execute(_json_insert_sql(insert, channel, self.origin), [document])
                stored = await cur.fetchall()
        except psycopg.OperationalError:
            await self._sweep()  # the server went away: replace the idle ones now
            raise
        if stored:
            self._wakeups.set(channel)
        return {tuple(r[name] for name in insert.key) for r in stored}

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        """A lone read on an autocommit connection: one round trip, not BEGIN/SELECT/COMMIT
        (a token lookup at intake was three)."""
        self.round_trips += 1
        try:
            async with self._checkout() as conn:
                cur = await conn.execute(to_psycopg(sql), params or {})
                return await cur.fetchall()
        except psycopg.OperationalError:
            await self._sweep()
            raise

    async def write_returning(self, sql: str, params: Params | None = None) -> list[Row]:
        """Alone on an autocommit connection: one round trip (a claim was three)."""
        self.round_trips += 1
        try:
            async with self._checkout() as conn:
                cur = await conn.execute(to_psycopg(sql), params or {})
                return await cur.fetchall()
        except psycopg.OperationalError:
            await self._sweep()
            raise

    async def ping(self) -> None:
        async with self.pool.connection(
            timeout=OUTAGE_CHECKOUT_TIMEOUT if self._unreachable else 3.0
        ) as conn:
            await conn.execute("SELECT 1")

    async def notify(self, channel: str) -> None:
        self._wakeups.set(channel)
        async with self._checkout() as conn:
            await conn.execute(f"NOTIFY {CHANNEL_PREFIX}{_identifier(channel)}, '{self.origin}'")
            await conn.commit()

    def wake(self, channel: str) -> None:
        self._wakeups.set(channel)

    async def wait(self, channel: str, timeout: float) -> bool:
        if channel not in self._listened:
            self._listened.add(channel)
            self._listen_changed.set()
            if self._listener is None:
                self._listener = asyncio.create_task(self._listen_forever())
        return await self._wakeups.wait(channel, timeout)

    async def _listen_forever(self) -> None:
        """One dedicated connection LISTENs for every channel; reconnect with backoff."""
        backoff = Backoff(0.5, MAX_LOOP_DELAY)
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                async with conn:
                    backoff.reset()
                    listening: set[str] = set()
                    while True:
                        for channel in self._listened - listening:
                            await conn.execute(f"LISTEN {CHANNEL_PREFIX}{_identifier(channel)}")
                            listening.add(channel)
                            # Just (re)connected, or a new channel: a NOTIFY may have been
                            # missed before this LISTEN, so its waiters look for work once.
                            self._wakeups.set(channel)
                        self._listen_changed.clear()
                        async for note in conn.notifies(timeout=LISTEN_CHECK_SECONDS):
                            # Our own NOTIFY woke this process's waiters at its commit
                            # already; heard again, it would only send each of them looking
                            # for work a second time (a claim, a round trip, for nothing).
                            if note.payload != self.origin:
                                self._wakeups.set(note.channel.removeprefix(CHANNEL_PREFIX))
                            if self._listen_changed.is_set():
                                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff.next_delay()
                log.warning(
                    "database listener lost its connection",
                    error=str(exc),
                    retry_in=round(delay, 2),
                )
                # Whatever cut this connection most likely cut the pool's too: replace them
                # now rather than on the next request.
                await self._sweep()
                await backoff.sleep(delay)


@lru_cache(maxsize=64)
def _json_insert_sql(insert: NewRowInsert, channel: str, origin: str) -> str:
    columns = ", ".join(insert.columns)
    record = ", ".join(
        f"{name} {'text' if pg_type == 'bytea' else pg_type}"
        for name, pg_type in zip(insert.columns, insert.pg_types, strict=True)
    )
    selected = ", ".join(
        f"decode(r.{name}, 'base64')" if pg_type == "bytea" else f"r.{name}"
        for name, pg_type in zip(insert.columns, insert.pg_types, strict=True)
    )
    returning = ", ".join(insert.key)
    return (
        f"WITH ins AS (INSERT INTO {insert.table} ({columns})"
        f" SELECT {selected} FROM json_to_recordset(%s::json) AS r({record})"
        f" ON CONFLICT ({', '.join(insert.key)}) DO NOTHING RETURNING {returning}),"
        f" note AS (SELECT pg_notify('{CHANNEL_PREFIX}{_identifier(channel)}', '{origin}')"
        " WHERE EXISTS (SELECT 1 FROM ins))"
        f" SELECT {returning}, (SELECT count(*) FROM note) AS notified FROM ins"
    )


@lru_cache(maxsize=16)
def _notify_sql(channels: frozenset[str], origin: str) -> str:
    notes = ", ".join(
        f"pg_notify('{CHANNEL_PREFIX}{_identifier(channel)}', '{origin}')"
        for channel in sorted(channels)
    )
    return f"SELECT {notes}"


def _identifier(channel: str) -> str:
    if not re.fullmatch(r"[a-z_]+", channel):
        raise ValueError(f"bad channel name {channel!r}")
    return channel


_Waiter = tuple[Params, "asyncio.Future[bool]"]


class _GroupInserter:
    """Collects :meth:`PostgresDatabase.insert_new` calls into multi-row statements.

    A statement leaves as soon as a connection slot is free; whatever arrives meanwhile
    waits for the next one. At light load that is one row per statement with no added
    delay; under load, tens of callbacks share a round trip and a commit."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db
        self._queued: dict[tuple[NewRowInsert, str], list[_Waiter]] = {}
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def insert(self, insert: NewRowInsert, row: Params, channel: str) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queued.setdefault((insert, channel), []).append((row, future))
        self._start()
        return await future

    def _start(self) -> None:
        while self._queued and self._in_flight < GROUP_MAX_IN_FLIGHT:
            target = next(iter(self._queued))
            waiters = self._queued[target]
            batch, rest = waiters[:GROUP_MAX_ROWS], waiters[GROUP_MAX_ROWS:]
            if rest:
                self._queued[target] = rest
            else:
                del self._queued[target]
            self._in_flight += 1
            task = asyncio.create_task(self._send(*target, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, insert: NewRowInsert, channel: str, batch: list[_Waiter]) -> None:
        try:
            # A key twice in one batch (a provider's immediate retry): the first row goes in
            # the statement; the others are duplicates of it, whatever happens to it.
            first: dict[tuple[object, ...], Params] = {}
            for row, _ in batch:
                first.setdefault(insert.key_of(row), row)
            outcome: dict[tuple[object, ...], bool | BaseException]
            try:
                new = await self._db.insert_rows(insert, list(first.values()), channel)
                outcome = {key: key in new for key in first}
            except psycopg.OperationalError as exc:
                _fail(batch, exc)  # the database is unreachable: every caller answers 503
                return
            except Exception as exc:
                if len(first) == 1:
                    _fail(batch, exc)
                    return
                outcome = await self._one_by_one(insert, channel, first)
            answered: set[tuple[object, ...]] = set()
            for row, future in batch:
                key = insert.key_of(row)
                result = outcome[key]
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)  # never acknowledged as a duplicate
                else:
                    future.set_result(result and key not in answered)
                answered.add(key)
        except BaseException as exc:
            _fail(batch, exc)
            raise
        finally:
            self._in_flight -= 1
            self._start()

    async def _one_by_one(
        self, insert: NewRowInsert, channel: str, rows: dict[tuple[object, ...], Params]
    ) -> dict[tuple[object, ...], bool | BaseException]:
        """A statement failed on some row's data: find it, so only its own caller fails."""
        outcome: dict[tuple[object, ...], bool | BaseException] = {}
        for key, row in rows.items():
            try:
                outcome[key] = bool(await self._db.insert_rows(insert, [row], channel))
            except Exception as exc:
                outcome[key] = exc
        return outcome


def _fail(batch: list[_Waiter], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)


_Piece = tuple[Callable[[Transaction], Awaitable[Any]], "asyncio.Future[Any]"]


class _SharedTransactions:
    """Runs :meth:`PostgresDatabase.in_shared_transaction` pieces, many per transaction.

    Should a shared transaction fail, each of its pieces runs again in a transaction of its
    own, so that a failure is only its own (as on SQLite, receiver/store/db/sqlite.py)."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db
        self._queued: list[_Piece] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, work: Callable[[Transaction], Awaitable[T]]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queued.append((work, future))
        self._start()
        return await future

    def _start(self) -> None:
        while self._queued and self._in_flight < SHARED_MAX_IN_FLIGHT:
            batch = self._queued[:SHARED_MAX_PIECES]
            del self._queued[:SHARED_MAX_PIECES]
            self._in_flight += 1
            task = asyncio.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[_Piece]) -> None:
        try:
            try:
                async with self._db.transaction() as tx:
                    results = [await work(tx) for work, _ in batch]
            except Exception as exc:
                if len(batch) == 1:
                    _settle(batch[0][1], exc)
                    return
                for work, future in batch:  # one at a time: only the failing piece fails
                    try:
                        async with self._db.transaction() as tx:
                            result = await work(tx)
                    except Exception as one:
                        _settle(future, one)
                    else:
                        _settle(future, result)
                return
            for (_, future), result in zip(batch, results, strict=True):
                _settle(future, result)
        except BaseException as exc:  # cancelled (shutdown): nobody may wait for ever
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            raise
        finally:
            self._in_flight -= 1
            self._start()


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
