"""The outbox: actions decided by rules, sent by the dispatcher, with every attempt logged."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from receiver.jsonutil import dumps
from receiver.model import Action
from receiver.store.db.base import (
    BatchedWrite,
    Database,
    Later,
    Params,
    Row,
    Transaction,
    in_list,
    json_rows,
)
from receiver.store.newest import newest_first
from receiver.store.requests import COLUMNS as REQUEST_COLUMNS
from receiver.store.statuses import ActionStatus, AttemptOutcome
from receiver.store.storable import storable_or_none

OUTBOX_CHANNEL = "outbox"

# The head-of-line rule: an action is claimable only when no earlier action of the same
# request is still pending or in flight. So one request's actions go out one at a time and in
# order, across every worker process, while different requests go in parallel.
#
# It is written as "this action is its request's first active one" (a scalar subquery, one
# probe of the partial index ix_outbox_active per candidate), not as NOT EXISTS (an earlier
# active one): PostgreSQL turns NOT EXISTS into an anti join whose plan depends on the
# table's statistics, and with statistics taken while the backlog was near empty it picked
# a plan that scanned the whole active index for every candidate, so a backlog made each
# claim slow (docs/performance.md; tests/integration/test_outbox_claim.py).
#
# Lanes (migration 0007): the rule holds per (request, lane). ``provider`` is the lane of the
# provider calls; ``endpoint:<id>`` that of the deliveries to one downstream endpoint
# (receiver/outbox/downstream/). So one request's deliveries to one endpoint go out in order,
# and never wait behind its PATCHes or another endpoint. An action of no request (a
# ``signback.test`` event) has nothing to wait for: always its own head.
PROVIDER_LANE = "provider"
# The lane of the reconciler's reads (``<provider>.reconcile``, receiver/reconcile/): apart
# from the provider calls, so that a request's read waiting for a slot of the read budget
# never holds up its PATCHes (the head-of-line rule) nor takes their concurrency
# (receiver/outbox/lanes.py: ReconcileLanes).
RECONCILE_LANE = "reconcile"
HEAD_OF_LINE = """(o.request_id IS NULL OR o.id = (
          SELECT p.id FROM outbox p
          WHERE p.request_id = o.request_id AND p.lane = o.lane
            AND p.status IN ('pending', 'in_flight')
          ORDER BY p.id LIMIT 1))"""

CLAIM_SQL = f"""
UPDATE outbox SET status = 'in_flight', attempts = attempts + 1, lease_expires_at = :lease,
       claimed_by = :worker, updated_at = :now
WHERE id IN (
    SELECT o.id FROM outbox o
    WHERE o.lane = :lane AND o.status = 'pending' AND o.due_at <= :now
      AND {HEAD_OF_LINE}
    ORDER BY o.due_at, o.id
    LIMIT :limit
    {{skip_locked}})
RETURNING id, request_id, action_key, operation, payload, attempts, created_at, due_at,
          lease_expires_at, lane
"""

# When the next action of a lane comes due, after ``now``: the dispatcher's sleep. Only
# actions due later count: one due already is claimable (the claim takes it) or waits behind
# an action in flight or one due later, whose settle or due time wakes the dispatcher. So the
# statement reads one index entry however long the lane's backlog. (An action due soon
# behind a head due later costs one wake-up that claims nothing, not a spin: the next
# answer is the head's due time.)
NEXT_DUE_IN_LANE_SQL = (
    "SELECT MIN(due_at) AS due FROM outbox"
    " WHERE lane = :lane AND status = 'pending' AND due_at > :now"
)

# PostgreSQL: the claim, the lane's next due time and (for the provider calls) the claimed
# actions' requests, which the dispatcher needs to run them, in one statement: one round trip
# per claim. A claim and a separate read had been a round trip each for nearly every event on
# the end-to-end path, and the dispatcher's sleep two more. The row of ``soon`` always comes
# back, so an empty claim still says when to look again (its action columns are NULL); the
# requests' columns come back under ``request__<column>`` (NULL when the action has no
# request, or it is gone). ``soon`` reads the table as it was before the UPDATE, which
# changes only actions due already. SQLite cannot put an UPDATE in a WITH; there the claim
# and the next due time are two statements in one transaction (calls on the loop, not round
# trips).
CLAIMED_REQUEST = "request__"
CLAIMED_NEXT_DUE = "claim__next_due"
_REQUEST_OF_CLAIMED = ", ".join(
    f"r.{column} AS {CLAIMED_REQUEST}{column}"
    for column in (name.strip() for name in REQUEST_COLUMNS.split(","))
)
CLAIM_WITH_NEXT_DUE_SQL = (
    f"WITH claimed AS ({CLAIM_SQL}), soon AS ({NEXT_DUE_IN_LANE_SQL})"
    f" SELECT claimed.*, soon.due AS {CLAIMED_NEXT_DUE} FROM soon LEFT JOIN claimed ON true"
)
CLAIM_WITH_REQUESTS_SQL = (
    f"WITH claimed AS ({CLAIM_SQL}), soon AS ({NEXT_DUE_IN_LANE_SQL})"
    f" SELECT claimed.*, {_REQUEST_OF_CLAIMED}, soon.due AS {CLAIMED_NEXT_DUE}"
    " FROM soon LEFT JOIN (claimed LEFT JOIN signature_requests r"
    " ON r.id = claimed.request_id) ON true"
)


@dataclass(frozen=True)
class Claim:
    """Actions claimed (in claim order), and when the next action of the lanes asked comes
    due after the claim's ``now`` (None: none is waiting)."""

    rows: list[Row]
    next_due: float | None


def earliest(a: float | None, b: float | None) -> float | None:
    """The earlier of two due times, either of which may be unknown (None)."""
    if a is None:
        return b
    return a if b is None else min(a, b)


def _with_next_due(rows: list[Row]) -> Claim:
    """A PostgreSQL claim's rows apart from the lane's next due time they carry."""
    if not rows:
        return Claim([], None)
    due = rows[0][CLAIMED_NEXT_DUE]
    claimed = []
    for row in rows:
        del row[CLAIMED_NEXT_DUE]
        if row["id"] is not None:
            claimed.append(row)
    return Claim(claimed, None if due is None else float(due))


def split_claimed(rows: list[Row]) -> tuple[list[Row], dict[int, Row] | None]:
    """Claimed rows without their requests' columns, and those requests by id (None: the
    claim did not read them, see ``CLAIM_WITH_REQUESTS_SQL``)."""
    if not rows or f"{CLAIMED_REQUEST}id" not in rows[0]:
        return rows, None
    cut = len(CLAIMED_REQUEST)
    actions: list[Row] = []
    found: dict[int, Row] = {}
    for row in rows:
        action: Row = {}
        request: Row = {}
        for name, value in row.items():
            if name.startswith(CLAIMED_REQUEST):
                request[name[cut:]] = value
            else:
                action[name] = value
        actions.append(action)
        if request["id"] is not None:
            found[int(request["id"])] = request
    return actions, found


_INSERT_ACTION_SQL = (
    "INSERT INTO outbox (request_id, action_key, operation, payload, status, due_at,"
    " attempts, source_inbox_id, created_at, updated_at) VALUES (:request_id, :key,"
    " :operation, :payload, 'pending', :due, 0, :source, :now, :now)"
    " ON CONFLICT (request_id, action_key) DO NOTHING"
)


def _action_params(
    request_id: int, action: Action, *, now: float, source_inbox_id: int | None
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "key": action.key,
        "operation": action.operation,
        "payload": dumps(dict(action.payload)),
        "due": now + action.delay_seconds,
        "source": source_inbox_id,
        "now": now,
    }


# The actions of every event of a pipeline chunk in one statement on PostgreSQL (one per
# action had been a statement per event). Independent: nothing else a chunk writes or
# reads back touches the outbox.
_INSERT_ACTIONS_SQL = (
    "INSERT INTO outbox (request_id, action_key, operation, payload, status, due_at,"
    " attempts, source_inbox_id, created_at, updated_at) SELECT request_id, key, operation,"
    " payload, 'pending', due, 0, source, now, now FROM "
    + json_rows(
        "request_id bigint, key text, operation text, payload text, due double precision,"
        " source bigint, now double precision"
    )
    + " ORDER BY n ON CONFLICT (request_id, action_key) DO NOTHING"
    " RETURNING request_id, action_key AS key"
)


async def _insert_one_action(tx: Transaction, params: Params) -> int:
    return await tx.execute(_INSERT_ACTION_SQL, params)


_INSERT_ACTION = BatchedWrite(
    _INSERT_ACTIONS_SQL, ("request_id", "key"), _insert_one_action, independent=True
)


async def insert_actions_later(
    tx: Transaction,
    request_id: int,
    actions: Sequence[Action],
    *,
    now: float,
    source_inbox_id: int | None,
) -> list[Later]:
    """:func:`insert_actions` without waiting (``tx.execute_batched_later``): how many were
    stored is known once they were sent; then :func:`stored` counts them and wakes the
    dispatcher."""
    return [
        await tx.execute_batched_later(
            _INSERT_ACTION,
            _action_params(request_id, action, now=now, source_inbox_id=source_inbox_id),
        )
        for action in actions
    ]


def stored(tx: Transaction, inserted: Sequence[Later]) -> int:
    """How many of :func:`insert_actions_later`'s actions were new (they have been sent);
    if any, the dispatcher is woken once ``tx`` commits."""
    count = sum(later.rowcount for later in inserted)
    if count:
        tx.notify_on_commit(OUTBOX_CHANNEL)
    return count


async def insert_actions(
    tx: Transaction,
    request_id: int,
    actions: Sequence[Action],
    *,
    now: float,
    source_inbox_id: int | None,
) -> int:
    """Store actions; an action whose key this request already has is ignored (idempotent)."""
    stored = 0
    for action in actions:
        stored += await tx.execute(
            _INSERT_ACTION_SQL,
            _action_params(request_id, action, now=now, source_inbox_id=source_inbox_id),
        )
    if stored:
        tx.notify_on_commit(OUTBOX_CHANNEL)
    return stored


async def claim(
    db: Database,
    *,
    limit: int,
    now: float,
    lease_seconds: float,
    worker: str,
    lane: str = PROVIDER_LANE,
    with_requests: bool = False,
) -> Claim:
    """:func:`claim_lanes` for one lane. ``with_requests``: on PostgreSQL the rows also carry
    their requests (:func:`split_claimed` takes them apart)."""
    return await claim_lanes(
        db,
        {lane: limit},
        now=now,
        lease_seconds=lease_seconds,
        worker=worker,
        with_requests=with_requests,
    )


async def claim_lanes(
    db: Database,
    limits: Mapping[str, int],
    *,
    now: float,
    lease_seconds: float,
    worker: str,
    total: int | None = None,
    with_requests: bool = False,
) -> Claim:
    """Claim up to ``limits[lane]`` due head-of-line actions of each lane, in one transaction.
    One statement per lane: each walks its own lane's part of the due index in claim order.

    ``total`` caps the claim as a whole: the lanes are asked in their order, each for at most
    what is left of it, and what a lane does not take stays for the next ones (a lane with
    nothing due never holds back the lanes after it). The claim's ``next_due`` is the
    earliest of the lanes asked."""
    postgres = db.dialect == "postgresql"
    if postgres:
        sql = db.render(CLAIM_WITH_REQUESTS_SQL if with_requests else CLAIM_WITH_NEXT_DUE_SQL)
    else:
        sql = db.render(CLAIM_SQL)

    def params(lane: str, limit: int) -> dict[str, Any]:
        return {
            "lease": now + lease_seconds,
            "worker": worker,
            "now": now,
            "limit": limit,
            "lane": lane,
        }

    asked = [(lane, room) for lane, room in limits.items() if room > 0]
    if postgres and len(asked) == 1:
        # One lane (the provider calls' claim): one statement, committed on its own: one
        # round trip instead of a transaction's two.
        ((lane, room),) = asked
        limit = room if total is None else min(room, total)
        if limit <= 0:
            return Claim([], None)
        claim = _with_next_due(await db.write_returning(sql, params(lane, limit)))
        return Claim(_in_claim_order(claim.rows), claim.next_due)
    rows: list[Row] = []
    due: float | None = None
    left = total
    async with db.transaction() as tx:
        for lane, room in asked:
            limit = room if left is None else min(room, left)
            if limit <= 0:
                break
            if postgres:
                claim = _with_next_due(await tx.fetch_all(sql, params(lane, limit)))
            else:
                claimed = await tx.fetch_all(sql, params(lane, limit))
                soon = await tx.fetch_one(NEXT_DUE_IN_LANE_SQL, {"lane": lane, "now": now})
                next_due = None if soon is None or soon["due"] is None else float(soon["due"])
                claim = Claim(claimed, next_due)
            rows += claim.rows
            due = earliest(due, claim.next_due)
            if left is not None:
                left -= len(claim.rows)
    return Claim(_in_claim_order(rows), due)


def _in_claim_order(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: (float(r["due_at"]), int(r["id"])))


async def record_attempt(
    tx: Transaction,
    *,
    action_id: int,
    attempt: int,
    started_at: float,
    duration_ms: float | None,
    status_code: int | None,
    outcome: AttemptOutcome,
    error: str | None,
    response_excerpt: str | None,
) -> None:
    # Nothing reads it back before the commit: on PostgreSQL it goes with the next statement.
    await tx.execute_later(
        _ATTEMPT_SQL,
        _attempt_params(
            action_id,
            attempt=attempt,
            started_at=started_at,
            duration_ms=duration_ms,
            status_code=status_code,
            outcome=outcome,
            error=error,
            response_excerpt=response_excerpt,
        ),
    )


_ATTEMPT_SQL = (
    "INSERT INTO outbox_attempts (action_id, attempt, started_at, duration_ms, status_code,"
    " outcome, error, response_excerpt) VALUES (:id, :attempt, :started_at,"
    " :duration_ms, :code, :outcome, :error, :excerpt)"
)


def _attempt_params(
    action_id: int,
    *,
    attempt: int,
    started_at: float,
    duration_ms: float | None,
    status_code: int | None,
    outcome: AttemptOutcome,
    error: str | None,
    response_excerpt: str | None,
) -> dict[str, Any]:
    return {
        "id": action_id,
        "attempt": attempt,
        "started_at": started_at,
        "duration_ms": duration_ms,
        "code": status_code,
        "outcome": str(outcome),
        # A provider's answer is outside text: it may hold a NUL (PostgreSQL refuses).
        "error": storable_or_none(error),
        "excerpt": storable_or_none(response_excerpt),
    }


SETTLE_SQL = (
    "UPDATE outbox SET status = :status, due_at = COALESCE(:due, due_at),"
    " attempts = attempts - :uncount,"
    " lease_expires_at = NULL, claimed_by = NULL,"
    " last_status_code = CASE WHEN :keep = 1 THEN last_status_code ELSE :code END,"
    " last_error = CASE WHEN :keep = 1 THEN last_error ELSE :error END,"
    " updated_at = :now"
    " WHERE id = :id AND status = 'in_flight' AND claimed_by = :worker"
)


async def settle(
    tx: Transaction,
    action_id: int,
    *,
    status: ActionStatus,
    now: float,
    due_at: float | None,
    status_code: int | None,
    error: str | None,
    worker: str,
    uncount: bool = False,
    keep_last: bool = False,
) -> Later:
    """Close a claimed action. Its row count, once sent (after the commit, or
    ``tx.flush()``), is 0 if this worker no longer held it (the lease was lost).

    ``uncount``: the claim does not count as an attempt (deferred by our own budget, or
    throttled by the provider): give the attempt back. ``keep_last``: nothing was sent, so
    the last status code and error stay those of the last answer."""
    settled = await tx.execute_later(
        SETTLE_SQL,
        _settle_params(
            action_id,
            status=status,
            now=now,
            due_at=due_at,
            status_code=status_code,
            error=error,
            worker=worker,
            uncount=uncount,
            keep_last=keep_last,
        ),
    )
    # A settled action may unblock the next one of the same request.
    tx.notify_on_commit(OUTBOX_CHANNEL)
    return settled


def _settle_params(
    action_id: int,
    *,
    status: ActionStatus,
    now: float,
    due_at: float | None,
    status_code: int | None,
    error: str | None,
    worker: str,
    uncount: bool,
    keep_last: bool,
) -> dict[str, Any]:
    return {
        "status": str(status),
        "due": due_at,
        "code": status_code,
        "error": storable_or_none(error),
        "now": now,
        "id": action_id,
        "worker": worker,
        "uncount": 1 if uncount else 0,
        "keep": 1 if keep_last else 0,
    }


# The result of an attempt (its attempt log row and its action's settlement) for many
# actions in one statement on PostgreSQL: the dispatcher's results that share a transaction
# (in_shared_transaction) had been two statements each, the bulk of the transaction's cost
# in psycopg. Returns the ids of the actions settled, i.e. still claimed by that worker.
_RESULT_FIELDS = (
    "id bigint, worker text, attempt integer, started_at double precision,"
    " duration_ms double precision, code integer, outcome text, error text, excerpt text,"
    " status text, due double precision, uncount integer, keep integer, now double precision"
)
_RECORD_RESULTS_SQL = (
    f"WITH r AS (SELECT * FROM json_to_recordset(%(rows)s::json) AS r({_RESULT_FIELDS})),"
    " logged AS (INSERT INTO outbox_attempts (action_id, attempt, started_at, duration_ms,"
    " status_code, outcome, error, response_excerpt) SELECT id, attempt, started_at,"
    " duration_ms, code, outcome, error, excerpt FROM r)"
    " UPDATE outbox o SET status = r.status, due_at = COALESCE(r.due, o.due_at),"
    " attempts = o.attempts - r.uncount, lease_expires_at = NULL, claimed_by = NULL,"
    " last_status_code = CASE WHEN r.keep = 1 THEN o.last_status_code ELSE r.code END,"
    " last_error = CASE WHEN r.keep = 1 THEN o.last_error ELSE r.error END,"
    " updated_at = r.now"
    " FROM r WHERE o.id = r.id AND o.status = 'in_flight' AND o.claimed_by = r.worker"
    " RETURNING o.id"
)


async def _record_one_result(tx: Transaction, result: Params) -> int:
    """One result by plain statements (its parameters serve both)."""
    await tx.execute(_ATTEMPT_SQL, result)
    return await tx.execute(SETTLE_SQL, result)


_RECORD_RESULT = BatchedWrite(_RECORD_RESULTS_SQL, ("id",), _record_one_result)


async def record_result(
    tx: Transaction,
    action_id: int,
    *,
    attempt: int,
    started_at: float,
    duration_ms: float | None,
    outcome: AttemptOutcome,
    response_excerpt: str | None,
    status: ActionStatus,
    now: float,
    due_at: float | None,
    status_code: int | None,
    error: str | None,
    worker: str,
    uncount: bool = False,
) -> Later:
    """:func:`record_attempt` and :func:`settle` of one attempt's result, as one write that
    the results sharing a transaction send as one statement (PostgreSQL). Its row count,
    once sent, is 0 if this worker no longer held the action."""
    # One set of parameters serves the attempt and the settlement (the same names for the
    # same facts), in the batched statement and in the plain ones alike.
    later = await tx.execute_batched_later(
        _RECORD_RESULT,
        _attempt_params(
            action_id,
            attempt=attempt,
            started_at=started_at,
            duration_ms=duration_ms,
            status_code=status_code,
            outcome=outcome,
            error=error,
            response_excerpt=response_excerpt,
        )
        | _settle_params(
            action_id,
            status=status,
            now=now,
            due_at=due_at,
            status_code=status_code,
            error=error,
            worker=worker,
            uncount=uncount,
            keep_last=False,
        ),
    )
    tx.notify_on_commit(OUTBOX_CHANNEL)  # a settled action may unblock the next one
    return later


async def release(db: Database, action_ids: Sequence[int], *, worker: str, now: float) -> int:
    """Give claimed actions back (shutdown): they are due again at once, attempt not counted."""
    released = 0
    async with db.transaction() as tx:
        for action_id in action_ids:
            released += await tx.execute(
                "UPDATE outbox SET status = 'pending', attempts = attempts - 1,"
                " lease_expires_at = NULL, claimed_by = NULL, due_at = :now, updated_at = :now"
                " WHERE id = :id AND status = 'in_flight' AND claimed_by = :worker",
                {"id": action_id, "worker": worker, "now": now},
            )
        if released:
            tx.notify_on_commit(OUTBOX_CHANNEL)
    return released


async def extend_lease(
    db: Database, action_id: int, *, worker: str, lease_seconds: float, now: float
) -> bool:
    """Keep a claim for another lease (an action still working, e.g. a long download);
    False when the claim is no longer this worker's."""
    changed = await db.execute(
        "UPDATE outbox SET lease_expires_at = :lease, updated_at = :now"
        " WHERE id = :id AND status = 'in_flight' AND claimed_by = :worker",
        {"id": action_id, "worker": worker, "lease": now + lease_seconds, "now": now},
    )
    return changed == 1


async def recover_expired(db: Database, *, now: float) -> int:
    """A crashed worker's claims come back after their lease; the attempt it may have made
    is logged as ``interrupted`` (the call may or may not have reached the provider)."""
    async with db.transaction() as tx:
        expired = await tx.fetch_all(
            db.render(
                "SELECT id, attempts FROM outbox WHERE status = 'in_flight'"
                " AND lease_expires_at < :now {skip_locked}"
            ),
            {"now": now},
        )
        for row in expired:
            await record_attempt(
                tx,
                action_id=int(row["id"]),
                attempt=int(row["attempts"]),
                started_at=now,
                duration_ms=None,
                status_code=None,
                outcome=AttemptOutcome.INTERRUPTED,
                error="the worker holding this action stopped (lease expired)",
                response_excerpt=None,
            )
            await tx.execute(
                "UPDATE outbox SET status = 'pending', lease_expires_at = NULL, claimed_by = NULL,"
                " due_at = :now, updated_at = :now WHERE id = :id",
                {"id": row["id"], "now": now},
            )
        if expired:
            tx.notify_on_commit(OUTBOX_CHANNEL)
        return len(expired)


async def retry(db: Database, action_id: int, *, now: float) -> bool:
    """Re-queue a dead (or skipped) action: ``signback outbox retry ID``."""
    async with db.transaction() as tx:
        changed = await tx.execute(
            "UPDATE outbox SET status = 'pending', due_at = :now, updated_at = :now"
            " WHERE id = :id AND status IN ('dead', 'skipped')",
            {"id": action_id, "now": now},
        )
        if changed:
            tx.notify_on_commit(OUTBOX_CHANNEL)
        return changed > 0


ACTION_COLUMNS = (
    "id, request_id, action_key, operation, payload, status, due_at, attempts,"
    " last_status_code, last_error, source_inbox_id, created_at, updated_at, lane"
)


async def for_request(db: Database, request_id: int) -> list[Row]:
    return await db.fetch_all(
        f"SELECT {ACTION_COLUMNS} FROM outbox WHERE request_id = :id ORDER BY id",
        {"id": request_id},
    )


async def get(db: Database, action_id: int) -> Row | None:
    return await db.fetch_one(
        f"SELECT {ACTION_COLUMNS} FROM outbox WHERE id = :id", {"id": action_id}
    )


async def attempts_for(db: Database, action_ids: Sequence[int]) -> dict[int, list[Row]]:
    if not action_ids:
        return {}
    ids, params = in_list(action_ids)
    rows = await db.fetch_all(
        "SELECT action_id, attempt, started_at, duration_ms, status_code, outcome, error,"
        f" response_excerpt FROM outbox_attempts WHERE action_id IN {ids} ORDER BY id",
        params,
    )
    grouped: dict[int, list[Row]] = {}
    for row in rows:
        grouped.setdefault(int(row["action_id"]), []).append(row)
    return grouped


# The lanes the outbox holds, each found by one probe of an index that leads with the lane
# (a loose index scan: a handful of lanes among millions of rows).
LANES_SQL = (
    "WITH RECURSIVE lanes(lane) AS (SELECT MIN(lane) FROM outbox UNION ALL"
    " SELECT (SELECT MIN(lane) FROM outbox WHERE lane > lanes.lane) FROM lanes"
    " WHERE lanes.lane IS NOT NULL) SELECT lane FROM lanes WHERE lane IS NOT NULL"
)


async def lanes(db: Database) -> list[str]:
    return [str(r["lane"]) for r in await db.fetch_all(LANES_SQL)]


async def search(db: Database, *, status: str | None, limit: int = 100) -> list[Row]:
    """Newest first. A status is read as one range of ``(lane, status, id)`` per lane
    (migration 0012): along the primary key, a status that is rare (dead, skipped) or
    absent meant reading the whole outbox, which keeps every delivery ever made."""
    params: dict[str, Any] = {"limit": limit}
    if not status:
        return await db.fetch_all(newest_first("outbox", ACTION_COLUMNS, ["1 = 1"]), params)
    found = await lanes(db)
    if not found:
        return []
    params["status"] = status
    params.update({f"lane_{i}": lane for i, lane in enumerate(found)})
    branches = [f"lane = :lane_{i} AND status = :status" for i in range(len(found))]
    return await db.fetch_all(newest_first("outbox", ACTION_COLUMNS, branches), params)


async def in_lane(
    db: Database, lane: str, *, status: str | None, before_id: int | None, limit: int
) -> list[Row]:
    """A lane's actions, newest first: one range of ``(lane, status, id)`` for a status,
    one per status without (each cut at ``limit``)."""
    params: dict[str, Any] = {"lane": lane, "limit": limit}
    shared = "lane = :lane"
    if before_id is not None:
        shared += " AND id < :before"
        params["before"] = before_id
    statuses = [status] if status is not None else list(ActionStatus)
    params.update({f"st_{i}": value for i, value in enumerate(statuses)})
    branches = [f"{shared} AND status = :st_{i}" for i in range(len(statuses))]
    return await db.fetch_all(newest_first("outbox", ACTION_COLUMNS, branches), params)


# The statuses an action waits, runs or is given up in. Done and skipped actions are all the
# others and grow without end (every delivery ever made): counting them read the whole table.
WORKING_STATUSES = (ActionStatus.PENDING, ActionStatus.IN_FLIGHT, ActionStatus.DEAD)


async def counts(db: Database) -> dict[str, int]:
    """Actions in each working status, every one present (0 when none): one range of
    ``(lane, status, id)`` per lane and status (migration 0012)."""
    found = dict.fromkeys((str(status) for status in WORKING_STATUSES), 0)
    lanes_found = await lanes(db)
    if not lanes_found:
        return found
    params: dict[str, Any] = {f"lane_{i}": lane for i, lane in enumerate(lanes_found)}
    # The statuses are this module's constants; the lanes, read from the table, are bound.
    branches = " UNION ALL ".join(
        f"SELECT '{status}' AS status, COUNT(*) AS n FROM outbox WHERE lane = :lane_{i}"
        f" AND status = '{status}'"
        for i in range(len(lanes_found))
        for status in found
    )
    for row in await db.fetch_all(branches, params):
        found[str(row["status"])] += int(row["n"])
    return found
