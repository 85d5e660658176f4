"""Lane classes: groups of outbox lanes that the dispatcher fills from capacities of their own.

Every outbox action waits in a lane (``outbox.lane``; the head-of-line rule holds per
request and lane). The dispatcher claims each class of lanes separately, up to that class's
own number of actions in flight, so that one class can never take another's room: provider
calls (``ProviderLanes``, ``SIGNBACK_OUTBOX_CONCURRENCY``) never wait behind deliveries to a
slow downstream endpoint, whose lanes (``receiver/outbox/downstream/lanes.py``) have their
own total and per-endpoint limits, nor behind the reconciler's reads (``ReconcileLanes``,
``SIGNBACK_RECONCILE_CONCURRENCY``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from receiver.outbox.outcomes import Outcome
from receiver.outbox.retry import Decision, DecisionStatus, RetryPolicy
from receiver.store import outbox
from receiver.store.db.base import Row

if TYPE_CHECKING:
    from receiver.context import AppContext


class LaneClass(Protocol):
    # Whether every wake-up of the dispatcher claims this class. One that is not (the
    # reconciler's reads) is claimed on a wake-up only while its last claim took something,
    # once its next action is due, or a poll interval after it last found nothing: new and
    # settled actions of every lane wake the dispatcher alike, and under load a claim that
    # finds nothing on each would be a round trip per wake-up for nothing.
    eager: bool

    # How many claimed actions this process may hold ready beyond the class's free slots: a
    # slot given back starts one at once, with no claim's round trip between the calls, and
    # the claims come fewer and larger. 0: claim for free slots only (a class whose claim
    # weighs per-lane limits, or a budget, at the moment of the claim).
    @property
    def ahead(self) -> int: ...

    def owns(self, lane: str) -> bool: ...

    def free(self, busy: Mapping[str, int]) -> int:
        """How many more actions of this class may be in flight now (``busy``: this
        process's actions in flight, by lane)."""
        ...

    def at_limit(self, lane: str, busy: Mapping[str, int]) -> bool:
        """Whether ``lane``'s actions in flight keep its next action from being claimed
        (this class's, or the lane's own, number reached)."""
        ...

    async def claim(self, free: int, busy: Mapping[str, int], *, now: float) -> outbox.Claim:
        """Claim up to ``free`` due actions; the claim also says when this class's next
        action not due yet comes due (its sleep, when it took all that was due)."""
        ...

    def policy(self) -> RetryPolicy: ...

    async def settled(self, row: Row, decision: Decision, outcome: Outcome) -> None:
        """Told after an action of this class was recorded (metrics); never raises."""
        ...


class ProviderLanes:
    """The provider calls: one lane, ``SIGNBACK_OUTBOX_CONCURRENCY`` in flight."""

    lane = outbox.PROVIDER_LANE
    eager = True

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    @property
    def ahead(self) -> int:
        # As many as can be in flight: under load each slot's next action is ready when the
        # call before it is over.
        return self.ctx.settings.outbox_concurrency

    def owns(self, lane: str) -> bool:
        return lane == self.lane

    def free(self, busy: Mapping[str, int]) -> int:
        return self.ctx.settings.outbox_concurrency - busy.get(outbox.PROVIDER_LANE, 0)

    def at_limit(self, lane: str, busy: Mapping[str, int]) -> bool:
        return self.free(busy) <= 0

    async def claim(self, free: int, busy: Mapping[str, int], *, now: float) -> outbox.Claim:
        ctx = self.ctx
        return await outbox.claim(
            ctx.db,
            limit=free,
            now=now,
            lease_seconds=ctx.settings.lease_seconds,
            worker=ctx.worker_id,
            lane=self.lane,
            with_requests=True,  # their actions run with their requests
        )

    def policy(self) -> RetryPolicy:
        return self.ctx.retry_policy

    async def settled(self, row: Row, decision: Decision, outcome: Outcome) -> None:
        return None


class ReconcileLanes(ProviderLanes):
    """The reconciler's reads (``<provider>.reconcile``): one lane of their own,
    ``SIGNBACK_RECONCILE_CONCURRENCY`` in flight.

    In the provider calls' lane, a read waiting for a slot of its provider's read budget
    (hundreds of requests come due at once after a downtime, the budget serves two a second)
    held up the request's PATCHes behind it (the head-of-line rule holds per request and
    lane), and each read sleeping for its slot, or claimed only to be deferred again, took
    one of the provider calls' places. Here a read waits only for other reads; and with few
    in flight, few slots of the budget are reserved ahead, so the provider's operations that
    share the budget find one soon. Same retry policy as the provider calls.

    Only as many reads are claimed as the budget can serve: after a read was put back for
    want of a slot (the budget is spent, by reads or by the operations sharing it), one read
    at a time until it was due back; a whole batch claimed then would only be put back
    again, each claim a transaction and an attempt's bookkeeping."""

    lane = outbox.RECONCILE_LANE
    # Reads wait for their budget anyway: one queued by another process goes within a poll
    # interval.
    eager = False

    def __init__(self, ctx: AppContext) -> None:
        super().__init__(ctx)
        self._spent_until = 0.0  # when the budget a read found spent may serve again

    @property
    def ahead(self) -> int:
        return 0  # only as many as the budget can serve (see above)

    def free(self, busy: Mapping[str, int]) -> int:
        cap = self.ctx.settings.reconcile_concurrency
        if self.ctx.clock() < self._spent_until:
            cap = 1
        return cap - busy.get(outbox.RECONCILE_LANE, 0)

    async def settled(self, row: Row, decision: Decision, outcome: Outcome) -> None:
        if decision.status is DecisionStatus.DEFERRED and decision.retry_at is not None:
            self._spent_until = max(self._spent_until, decision.retry_at)
