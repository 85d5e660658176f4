"""The reconciler's lane claims its own reads, a few at a time, and one at a time while the
read budget is spent (receiver/outbox/lanes.py: ReconcileLanes)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import pytest

from receiver.outbox.lanes import ProviderLanes, ReconcileLanes
from receiver.outbox.outcomes import Deferred, Done
from receiver.outbox.retry import Decision, DecisionStatus
from receiver.store import outbox

if TYPE_CHECKING:
    from receiver.context import AppContext


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lanes(clock: Clock) -> ReconcileLanes:
    ctx = SimpleNamespace(settings=SimpleNamespace(reconcile_concurrency=8), clock=clock)
    return ReconcileLanes(cast("AppContext", ctx))


def test_the_reads_have_a_lane_of_their_own() -> None:
    reads = lanes(Clock())
    assert reads.owns(outbox.RECONCILE_LANE)
    assert not reads.owns(outbox.PROVIDER_LANE)
    provider = ProviderLanes(cast("AppContext", SimpleNamespace()))
    assert not provider.owns(outbox.RECONCILE_LANE)
    # Provider calls in flight take none of the reads' room.
    assert reads.free({outbox.PROVIDER_LANE: 16, outbox.RECONCILE_LANE: 3}) == 5


@pytest.mark.anyio
async def test_a_read_put_back_for_the_budget_leaves_one_read_at_a_time_until_it_is_due() -> None:
    clock = Clock()
    reads = lanes(clock)
    row = {"id": 1, "lane": outbox.RECONCILE_LANE}
    await reads.settled(row, Decision(DecisionStatus.DONE), Done(status_code=200))
    assert reads.free({}) == 8
    back_at = clock.now + 4.0
    await reads.settled(
        row, Decision(DecisionStatus.DEFERRED, retry_at=back_at), Deferred(4.0, "no slot")
    )
    assert reads.free({}) == 1
    assert reads.free({outbox.RECONCILE_LANE: 1}) == 0
    clock.now = back_at
    assert reads.free({}) == 8
