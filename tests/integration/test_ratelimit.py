"""The shared rate limit hands out slots one interval apart, across connections."""

from __future__ import annotations

import pytest

from receiver.outbox.budgets import reserve
from receiver.store.db import open_database


@pytest.mark.anyio
async def test_slots_are_spaced_across_two_connections(database_url: str) -> None:
    first, second = open_database(database_url), open_database(database_url)
    await first.connect()
    await second.connect()
    try:
        now = 1_000.0
        starts = []
        for i in range(6):
            db = first if i % 2 else second  # as if two worker processes took turns
            starts.append((await reserve(db, "firma-writes", per_minute=120, now=now)).starts_at)
        assert starts == [1_000.0, 1_000.5, 1_001.0, 1_001.5, 1_002.0, 1_002.5]
        # Too far away: nothing is reserved, the caller learns how long to wait.
        far = await reserve(first, "firma-writes", per_minute=120, now=now, max_wait=2.0)
        assert far.starts_at is None
        assert far.wait == 3.0
        near = await reserve(first, "firma-writes", per_minute=120, now=now, max_wait=3.0)
        assert near.starts_at == 1_003.0
        # Idle time is not saved up: after a pause the next slot starts now.
        later = await reserve(first, "firma-writes", per_minute=120, now=2_000.0)
        assert later.starts_at == 2_000.0
        assert later.wait == 0.0
        other = await reserve(first, "another-key", per_minute=60, now=2_000.0)
        assert other.starts_at == 2_000.0
    finally:
        await first.close()
        await second.close()
