"""NOTIFY between processes on PostgreSQL: another process's NOTIFY wakes this one's
waiters; this process's own wakes them once, at its commit, and not a second time when its
listener hears it back (each extra wake-up was a claim, a round trip, that found nothing)."""

from __future__ import annotations

import pytest

from receiver.store.db.postgres import PostgresDatabase

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

CHANNEL = "outbox"


async def drained(db: PostgresDatabase) -> None:
    """Wait until the listener is up and its first wake-up (it may have missed a NOTIFY
    before it listened) is spent."""
    while await db.wait(CHANNEL, 0.5):
        pass


async def test_only_other_processes_notifications_are_heard(postgres_url: str) -> None:
    here, other = PostgresDatabase(postgres_url), PostgresDatabase(postgres_url)
    await here.connect()
    await other.connect()
    try:
        await drained(here)

        # Another process's transaction that wakes the channel: heard here.
        async with other.transaction() as tx:
            await tx.execute("SELECT 1")
            tx.notify_on_commit(CHANNEL)
        assert await here.wait(CHANNEL, 5.0) is True
        assert await here.wait(CHANNEL, 0.5) is False

        # Our own, by a transaction and by notify(): one wake-up each, at once; the echo
        # from the server wakes nothing.
        async with here.transaction() as tx:
            await tx.execute("SELECT 1")
            tx.notify_on_commit(CHANNEL)
        assert await here.wait(CHANNEL, 0) is True
        assert await here.wait(CHANNEL, 0.5) is False
        await here.notify(CHANNEL)
        assert await here.wait(CHANNEL, 0) is True
        assert await here.wait(CHANNEL, 0.5) is False

        # ... while the other process hears ours.
        await drained(other)
        await here.notify(CHANNEL)
        assert await other.wait(CHANNEL, 5.0) is True
    finally:
        await here.close()
        await other.close()
