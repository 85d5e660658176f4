"""A rate limit shared by every process on the same database.

Each call reserves the next free slot of a named schedule with one atomic UPDATE (a row in
``kv`` holding when the next slot starts), then sleeps until its slot. So N worker processes
together never exceed the rate, without talking to each other. A crash wastes one slot.
"""

from __future__ import annotations

import asyncio

from receiver.clock import Clock
from receiver.db.base import Database

RESERVE_SQL = """
INSERT INTO kv (key, value, updated_at) VALUES (:key, CAST(:after_first AS TEXT), :now)
ON CONFLICT (key) DO UPDATE SET
    value = CAST(
        (CASE WHEN CAST(kv.value AS DOUBLE PRECISION) > :now
              THEN CAST(kv.value AS DOUBLE PRECISION) ELSE :now END) + :interval AS TEXT),
    updated_at = :now
RETURNING value
"""


async def reserve(db: Database, key: str, *, per_minute: float, now: float) -> float:
    """Reserve the next slot of ``key``; return when it starts (unix seconds)."""
    interval = 60.0 / per_minute
    async with db.transaction() as tx:
        row = await tx.fetch_one(
            RESERVE_SQL,
            {
                "key": f"ratelimit:{key}",
                "now": now,
                "interval": interval,
                "after_first": now + interval,
            },
        )
    assert row is not None
    return float(row["value"]) - interval


async def wait_for_slot(db: Database, key: str, *, per_minute: float, clock: Clock) -> float:
    """Wait until this caller may go; return how long it waited."""
    start = await reserve(db, key, per_minute=per_minute, now=clock())
    delay = max(0.0, start - clock())
    if delay:
        await asyncio.sleep(delay)
    return delay
