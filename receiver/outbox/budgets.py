"""A rate limit shared by every process on the same database.

Each call reserves the next free slot of a named schedule with one atomic UPDATE (a row in
``kv`` holding when the next slot starts). So N worker processes together never exceed the
rate, without talking to each other. A caller whose slot would be far away does not reserve
it (and does not sleep holding its work): it is told how long to wait and comes back later.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from receiver.clock import Clock
from receiver.store.db.base import Database

ENSURE_SQL = (
    "INSERT INTO kv (key, value, updated_at) VALUES (:key, CAST(:now AS TEXT), :now)"
    " ON CONFLICT (key) DO NOTHING"
)
# Slots start at max(next free, now); taken only when that is within :max_wait.
RESERVE_SQL = """
UPDATE kv SET
    value = CAST(
        (CASE WHEN CAST(value AS DOUBLE PRECISION) > :now
              THEN CAST(value AS DOUBLE PRECISION) ELSE :now END) + :interval AS TEXT),
    updated_at = :now
WHERE key = :key AND CAST(value AS DOUBLE PRECISION) <= :now + :max_wait
RETURNING value
"""


@dataclass(frozen=True, slots=True)
class Slot:
    starts_at: float | None  # when the reserved slot starts; None: nothing was reserved
    wait: float  # seconds until it starts, or until one may be free (when not reserved)


async def reserve(
    db: Database, key: str, *, per_minute: float, now: float, max_wait: float = 1e12
) -> Slot:
    """Reserve the next slot of ``key`` if it starts within ``max_wait`` seconds."""
    interval = 60.0 / per_minute
    name = f"ratelimit:{key}"
    async with db.transaction() as tx:
        await tx.execute(ENSURE_SQL, {"key": name, "now": now})
        row = await tx.fetch_one(
            RESERVE_SQL,
            {"key": name, "now": now, "interval": interval, "max_wait": max_wait},
        )
        if row is None:
            current = await tx.fetch_one("SELECT value FROM kv WHERE key = :key", {"key": name})
            assert current is not None
            return Slot(None, max(0.0, float(current["value"]) - now))
    starts_at = float(row["value"]) - interval
    return Slot(starts_at, max(0.0, starts_at - now))


async def wait_for_slot(
    db: Database, key: str, *, per_minute: float, clock: Clock, max_wait: float
) -> float | None:
    """Take a slot and sleep until it starts (at most ``max_wait``); return the seconds
    slept, or None when no slot was free soon enough (then nothing was reserved)."""
    slot = await reserve(db, key, per_minute=per_minute, now=clock(), max_wait=max_wait)
    if slot.starts_at is None:
        return None
    if slot.wait:
        await asyncio.sleep(slot.wait)
    return slot.wait


async def next_free_in(db: Database, key: str, *, now: float) -> float:
    row = await db.fetch_one("SELECT value FROM kv WHERE key = :key", {"key": f"ratelimit:{key}"})
    return 0.0 if row is None else max(0.0, float(row["value"]) - now)
