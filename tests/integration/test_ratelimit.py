"""The shared rate limit hands out slots one interval apart, across connections."""

from __future__ import annotations

import pytest

from receiver.clock import FrozenClock
from receiver.outbox.budgets import Budget, Deferral, reserve, take_slot, take_slots
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
            starts.append((await reserve(db, "firma-writes", interval=0.5, now=now)).starts_at)
        assert starts == [1_000.0, 1_000.5, 1_001.0, 1_001.5, 1_002.0, 1_002.5]
        # Too far away: nothing is reserved, the caller learns how long to wait.
        far = await reserve(first, "firma-writes", interval=0.5, now=now, max_wait=2.0)
        assert far.starts_at is None
        assert far.wait == 3.0
        near = await reserve(first, "firma-writes", interval=0.5, now=now, max_wait=3.0)
        assert near.starts_at == 1_003.0
        # Idle time is not saved up: after a pause the next slot starts now.
        later = await reserve(first, "firma-writes", interval=0.5, now=2_000.0)
        assert later.starts_at == 2_000.0
        assert later.wait == 0.0
        other = await reserve(first, "another-key", interval=1.0, now=2_000.0)
        assert other.starts_at == 2_000.0
    finally:
        await first.close()
        await second.close()


@pytest.mark.anyio
async def test_take_slot_sleeps_for_a_near_slot_and_defers_a_far_one(database_url: str) -> None:
    # 100 calls in a 10 s window: one slot every 0.1 s; a slot at most a twelfth of the
    # window (0.83 s) away is slept for. Time passes only when the budget sleeps.
    db = open_database(database_url)
    await db.connect()
    clock = FrozenClock(5_000.0)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    try:
        budget = Budget("firma-reads:abc", 100, window=10.0)
        assert await take_slot(db, budget, clock=clock, sleep=sleep) is None  # 5 000.0: now
        assert slept == []
        assert await take_slot(db, budget, clock=clock, sleep=sleep) is None  # 5 000.1
        assert sum(slept) == pytest.approx(0.1)  # slept until its slot, then went ahead
        clock.now = 5_000.0  # back to before that slot, to see the next ones from here
        deferral = await take_slot(db, budget, clock=clock, max_wait=0.15, sleep=sleep)
        assert isinstance(deferral, Deferral)
        assert deferral.budget == "firma-reads:abc"
        assert deferral.seconds == pytest.approx(0.2)
        # The deferral reserved nothing: 5 000.2 is still the next slot.
        clock.advance(0.2)
        assert await take_slot(db, budget, clock=clock, max_wait=0.001, sleep=sleep) is None
        # Neither the deferral nor a slot that starts now slept (beyond a rounding error).
        assert sum(slept) == pytest.approx(0.1, abs=1e-9)
        # Another budget (another API key, or writes rather than reads) is its own.
        other = Budget("firma-writes:abc", 100, window=10.0)
        assert await take_slot(db, other, clock=clock, max_wait=0.0) is None
    finally:
        await db.close()


@pytest.mark.anyio
async def test_slots_found_long_past_after_a_stall_are_not_used(database_url: str) -> None:
    # The process stalls between taking its slots and waking: the calls would all go at
    # once and crowd one window, so the caller is told to come back for fresh slots.
    db = open_database(database_url)
    await db.connect()
    try:
        readings = iter([5_000.0, 5_000.0, 5_000.0, 5_010.0])  # reserve, reserve, wait, woke
        writes, reads = Budget("w", 100, window=60.0), Budget("r", 150, window=60.0)
        deferral = await take_slots(db, writes, reads, clock=lambda: next(readings))
        assert deferral == Deferral("w", 0.0)
        clock = FrozenClock(5_000.0)  # no stall: the next slots are simply the next ones
        assert await take_slots(db, writes, reads, clock=clock, max_wait=1.0) is None
    finally:
        await db.close()


def test_a_budget_scales_with_its_window() -> None:
    minute = Budget("k", 150)
    scaled = Budget("k", 150, window=6.0)  # a test's time-scaled minute
    assert minute.interval == pytest.approx(0.4)
    assert scaled.interval == pytest.approx(0.04)
    assert scaled.max_wait == pytest.approx(minute.max_wait / 10)
