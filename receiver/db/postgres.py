"""PostgreSQL driver (psycopg 3, async pool).

Several web and worker processes share one database: claims use ``FOR UPDATE SKIP LOCKED``,
and workers sleep on ``LISTEN`` instead of polling fast; ``notify`` sends a ``NOTIFY`` that
every process's listener turns into a local wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from receiver.db.base import Database, Params, Row, Transaction
from receiver.db.wakeup import Wakeups
from receiver.logs import get_logger

log = get_logger(__name__)

_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
CHANNEL_PREFIX = "signback_"
CHECKOUT_TIMEOUT = 4.0  # seconds a transaction waits for a pooled connection
# How soon a channel first waited on after the listener started is LISTENed too.
LISTEN_CHECK_SECONDS = 1.0


@lru_cache(maxsize=512)
def to_psycopg(sql: str) -> str:
    """``:name`` → ``%(name)s``; literal ``%`` doubled; ``::casts`` left alone."""
    return _PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))


def conninfo(url: str) -> str:
    """psycopg takes libpq URLs; drop a SQLAlchemy driver suffix if one was given."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


class _PgTransaction(Transaction):
    def __init__(self, conn: psycopg.AsyncConnection[Row]) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params | None = None) -> int:
        cur = await self._conn.execute(to_psycopg(sql), params or {})
        return cur.rowcount

    async def executemany(self, sql: str, params: Sequence[Params]) -> None:
        async with self._conn.cursor() as cur:
            await cur.executemany(to_psycopg(sql), params)

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        cur = await self._conn.execute(to_psycopg(sql), params or {})
        return await cur.fetchall()


class PostgresDatabase(Database):
    dialect = "postgresql"

    def __init__(self, url: str, *, pool_min: int = 1, pool_max: int = 10) -> None:
        self.url = url
        self._conninfo = conninfo(url)
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Row]] | None = None
        self._pool_min, self._pool_max = pool_min, max(pool_min, pool_max)
        self._wakeups = Wakeups()
        self._listened: set[str] = set()
        self._listener: asyncio.Task[None] | None = None
        self._listen_changed = asyncio.Event()

    async def connect(self) -> None:
        if self._pool is not None:
            return
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Row]] = AsyncConnectionPool(
            self._conninfo,
            min_size=self._pool_min,
            max_size=self._pool_max,
            kwargs={"row_factory": dict_row, "autocommit": False},
            open=False,
            # A dead connection is noticed and replaced instead of failing a request.
            check=self._check_connection,
            # A background reconnection gives up at once; the pool grows again on demand
            # (every checkout that waits tries), so it keeps trying while requests come in,
            # and /readyz reports the outage meanwhile.
            reconnect_timeout=0,
            # A checkout that waits longer than this fails. It must stay under the providers'
            # deadlines (Firma: 5 s): during an outage a callback is refused with a 503, which
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
        try:
            await AsyncConnectionPool.check_connection(conn)
        except Exception:
            await self._sweep()
            raise

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
        return sql.replace("{skip_locked}", "FOR UPDATE SKIP LOCKED").replace(
            "{for_update}", "FOR UPDATE"
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self.pool.connection() as conn:
            async with conn.transaction():
                tx = _PgTransaction(conn)
                yield tx
                # NOTIFY is transactional: other processes hear it only if we commit.
                for channel in tx.pending_notifications:
                    await conn.execute(f"NOTIFY {CHANNEL_PREFIX}{_identifier(channel)}")
            for channel in tx.pending_notifications:
                self._wakeups.set(channel)

    async def ping(self) -> None:
        async with self.pool.connection(timeout=3.0) as conn:
            await conn.execute("SELECT 1")

    async def notify(self, channel: str) -> None:
        self._wakeups.set(channel)
        async with self.pool.connection() as conn:
            await conn.execute(f"NOTIFY {CHANNEL_PREFIX}{_identifier(channel)}")
            await conn.commit()

    async def wait(self, channel: str, timeout: float) -> bool:
        if channel not in self._listened:
            self._listened.add(channel)
            self._listen_changed.set()
            if self._listener is None:
                self._listener = asyncio.create_task(self._listen_forever())
        return await self._wakeups.wait(channel, timeout)

    async def _listen_forever(self) -> None:
        """One dedicated connection LISTENs for every channel; reconnect with backoff."""
        delay = 0.5
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                async with conn:
                    delay = 0.5
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
                            self._wakeups.set(note.channel.removeprefix(CHANNEL_PREFIX))
                            if self._listen_changed.is_set():
                                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("database listener lost its connection", error=str(exc), retry_in=delay)
                # Whatever cut this connection most likely cut the pool's too: replace them
                # now rather than on the next request.
                await self._sweep()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)


def _identifier(channel: str) -> str:
    if not re.fullmatch(r"[a-z_]+", channel):
        raise ValueError(f"bad channel name {channel!r}")
    return channel
