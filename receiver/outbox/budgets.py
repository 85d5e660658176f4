"""Rate budgets shared by every process on the same database.

A :class:`Budget` is "at most N calls per window" for one kind of call to one provider with
one API key (e.g. 200 reads and 120 writes a minute per key). Each call reserves the next
free slot of the budget's schedule with one atomic UPDATE of a row in ``kv`` (holding when
the next slot starts). Slots are ``window / N`` apart, so any number of worker processes
together never exceed the rate, without talking to each other.

A caller whose slot would be far away reserves nothing and does not sleep holding its work:
it gets a :class:`Deferral` saying when to come back (an outbox action is then put back
without counting an attempt). A slot near enough is reserved and slept for.

The one entry point is :func:`take_slot`. Whatever calls a provider under a limit takes a
slot of the same budget first, so the outbox's operations and any later feature that reads
or downloads from the provider (a reconciler, an archiver) share one limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
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
class Budget:
    """At most ``per_window`` calls every ``window`` seconds, shared through ``kv``."""

    key: str  # the schedule's name, e.g. "acme-reads:<hash of the API key>"; never a secret
    per_window: float  # calls allowed per window (a provider's "per minute" figure)
    # The window's length in seconds: a minute. Tests that run against a time-scaled
    # emulator shorten it by the emulator's factor; nothing else should.
    window: float = 60.0

    @property
    def interval(self) -> float:
        return self.window / self.per_window

    @property
    def max_wait(self) -> float:
        """The longest a caller sleeps for a slot while holding its work: a twelfth of the
        window (5 s of a minute). A farther slot defers the caller instead."""
        return self.window / 12


@dataclass(frozen=True, slots=True)
class Slot:
    starts_at: float | None  # when the reserved slot starts; None: nothing was reserved
    wait: float  # seconds until it starts, or until one may be free (when not reserved)


@dataclass(frozen=True, slots=True)
class Deferral:
    """No slot was free soon enough; nothing was reserved. Come back after ``seconds``."""

    budget: str  # the budget's key, for logs
    seconds: float


async def reserve(
    db: Database, key: str, *, interval: float, now: float, max_wait: float = 1e12
) -> Slot:
    """Reserve the next slot of ``key`` (slots ``interval`` seconds apart) if it starts
    within ``max_wait`` seconds."""
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


async def take_slot(
    db: Database,
    budget: Budget,
    *,
    clock: Clock,
    max_wait: float | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Deferral | None:
    """Take the next slot of ``budget`` and sleep until it starts: None means "call now".

    When the next free slot is more than ``max_wait`` (default: ``budget.max_wait``) away,
    nothing is reserved and the answer is a :class:`Deferral` until about then.
    """
    return await take_slots(db, budget, clock=clock, max_wait=max_wait, sleep=sleep)


async def take_slots(
    db: Database,
    *budgets: Budget,
    clock: Clock,
    max_wait: float | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Deferral | None:
    """One slot of each budget, in the order given, for calls made one right after the
    other (e.g. a write slot, then a read slot for the GET before the PATCH). Then sleep
    until the latest one starts: None means "make the calls now".

    The first budget without a slot soon enough ends it with a :class:`Deferral`: later
    budgets are not touched, and the slots already taken are left unused. Reserving them all
    before the one sleep keeps database round trips out of the moment between a slot's
    start and the calls, which keeps the calls close to their slots.

    Slots found long past on waking (the process stalled: more than a twelfth of the window
    late) are not used either: the answer is a :class:`Deferral` of zero seconds, and the
    caller comes back for fresh slots. The calls of a stalled process, all made at once when
    it wakes, would otherwise crowd into one window. (``sleep``: for tests that move
    ``clock`` themselves.)
    """
    latest = 0.0
    for budget in budgets:
        limit = budget.max_wait if max_wait is None else max_wait
        slot = await reserve(db, budget.key, interval=budget.interval, now=clock(), max_wait=limit)
        if slot.starts_at is None:
            return Deferral(budget.key, slot.wait)
        latest = max(latest, slot.starts_at)
    wait = latest - clock()
    if wait > 0:
        await sleep(wait)
    if clock() - latest > min(budget.max_wait for budget in budgets):
        return Deferral(budgets[0].key, 0.0)
    return None
