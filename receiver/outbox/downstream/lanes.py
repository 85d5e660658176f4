"""The delivery lanes: one per enabled endpoint, filled up to per-endpoint and total limits.

Each endpoint's lane is claimed by a statement of its own, which walks that lane's part of
the due index in claim order and stops at its limit: one endpoint's backlog of 100,000
deliveries costs another endpoint's claim nothing. An endpoint with
``SIGNBACK_ENDPOINT_CONCURRENCY_PER_ENDPOINT`` deliveries in flight in this process is not
claimed from until one finishes (its settle wakes the dispatcher), and lanes take turns at
the front so that a busy endpoint cannot starve the others of the total
(``SIGNBACK_ENDPOINT_CONCURRENCY``). A disabled endpoint's lane is not claimed at all: its
deliveries wait, and go when it is enabled again.
"""

from __future__ import annotations

from collections.abc import Mapping

from receiver.context import AppContext
from receiver.logs import get_logger
from receiver.outbox.downstream import (
    DELIVER_OPERATION,
    LANE_PREFIX,
    delivery_of,
    endpoint_of_lane,
    lane_of,
)
from receiver.outbox.downstream import events as event_store
from receiver.outbox.downstream.runtime import downstream
from receiver.outbox.outcomes import Outcome
from receiver.outbox.retry import Decision, DecisionStatus, RetryPolicy
from receiver.store import outbox
from receiver.store.db.base import Row
from receiver.store.statuses import AttemptOutcome

log = get_logger("signback.downstream")


class EndpointLanes:
    eager = True  # a delivery goes as soon as it is queued
    ahead = 0  # each claim weighs every endpoint's room at that moment

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self._turn = 0

    def owns(self, lane: str) -> bool:
        return lane.startswith(LANE_PREFIX)

    def _busy_total(self, busy: Mapping[str, int]) -> int:
        return sum(n for lane, n in busy.items() if lane.startswith(LANE_PREFIX))

    def free(self, busy: Mapping[str, int]) -> int:
        return self.ctx.settings.endpoint_concurrency - self._busy_total(busy)

    def at_limit(self, lane: str, busy: Mapping[str, int]) -> bool:
        per_endpoint = self.ctx.settings.endpoint_concurrency_per_endpoint
        return self.free(busy) <= 0 or busy.get(lane, 0) >= per_endpoint

    async def _open_lanes(self, busy: Mapping[str, int]) -> list[tuple[str, int]]:
        """(lane, room) for each enabled endpoint with room left, the front taking turns."""
        per_endpoint = self.ctx.settings.endpoint_concurrency_per_endpoint
        lanes = []
        for endpoint_id in await downstream(self.ctx).enabled_ids():
            lane = lane_of(endpoint_id)
            room = per_endpoint - busy.get(lane, 0)
            if room > 0:
                lanes.append((lane, room))
        if lanes:
            self._turn = (self._turn + 1) % len(lanes)
            lanes = lanes[self._turn :] + lanes[: self._turn]
        return lanes

    async def claim(self, free: int, busy: Mapping[str, int], *, now: float) -> outbox.Claim:
        # Every open lane is asked, in turn order, for at most what is left of ``free``: a
        # lane's room is not set aside before it is known to have anything due. (Set aside,
        # it kept all but the first lanes from being asked at all, so that with more enabled
        # endpoints than SIGNBACK_ENDPOINT_CONCURRENCY / …_PER_ENDPOINT, a delivery to the
        # others waited for its lane's turn at the front: a poll interval per turn.)
        limits = dict(await self._open_lanes(busy))
        if not limits or free <= 0:
            return outbox.Claim([], None)
        ctx = self.ctx
        claim = await outbox.claim_lanes(
            ctx.db,
            limits,
            now=now,
            lease_seconds=ctx.settings.lease_seconds,
            worker=ctx.worker_id,
            total=free,
        )
        rows = claim.rows
        # The events in one query rather than one per delivery. Should it fail, each
        # delivery reads its own (deliver.py).
        ids = {
            row["id"]: delivery_of(str(row["payload"]))
            for row in rows
            if row["operation"] == DELIVER_OPERATION
        }
        try:
            found = await event_store.get_many(ctx.db, [d[0] for d in ids.values() if d])
        except Exception:
            found = {}
        for row in rows:
            delivery = ids.get(row["id"])
            if delivery is not None and delivery[0] in found:
                row["event_row"] = found[delivery[0]]
        return claim

    def policy(self) -> RetryPolicy:
        """Every answer but 2xx is retried (an endpoint answering 404 or 401 is most likely
        being deployed or misconfigured, and will be fixed): only ``410 Gone`` is final
        (deliver.py). The limits are the endpoints' own."""
        s = self.ctx.settings
        return RetryPolicy(
            max_attempts=s.endpoint_max_attempts,
            max_age_seconds=s.endpoint_max_age_seconds,
            base_delay=s.retry_base_delay,
            max_delay=s.endpoint_retry_max_delay,
            final_statuses=frozenset(),
            throttle_delay=min(60.0, s.endpoint_retry_max_delay),
        )

    async def settled(self, row: Row, decision: Decision, outcome: Outcome) -> None:
        endpoint_id = endpoint_of_lane(str(row["lane"]))
        # The attempt log's word for a success ("ok"); the decision's for the rest.
        done = decision.status is DecisionStatus.DONE
        downstream(self.ctx).deliveries.inc(
            str(endpoint_id), AttemptOutcome.OK if done else decision.status
        )
