"""The console's reads, each bounded so that a page costs the same on a store of millions.

- No ``COUNT(*)`` over a big table: counts go through an index and stop at a bound
  (:func:`bounded_count`, shown as "10,000+"); the total of requests is the largest id.
- Lists page by keyset (``id <`` the last one shown), never by offset.
- Times map to ids: inbox rows and requests get growing ids as time goes on, so "since 10:00"
  is "from the first id received at 10:00 or later", found by a binary search over the
  primary key (:func:`first_id_at`) - a few dozen probes, not a scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from receiver.model import RequestState
from receiver.outbox.downstream import LANE_PREFIX
from receiver.store import outbox, requests
from receiver.store.db.base import Database, Row, in_list
from receiver.store.newest import first_ids_at, number_or_none

COUNT_BOUND = 10_000
TERMINAL = frozenset(
    {
        RequestState.COMPLETED,
        RequestState.DECLINED,
        RequestState.CANCELLED,
        RequestState.EXPIRED,
        RequestState.DELETED,
    }
)
OPEN_STATES = tuple(s for s in RequestState if s not in TERMINAL)
STALE_AFTER_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class Count:
    value: int
    more: bool  # the count stopped at its bound: there are more

    def __str__(self) -> str:
        return f"{self.value:,}+" if self.more else f"{self.value:,}"


async def bounded_count(
    db: Database, source: str, params: dict[str, Any], bound: int = COUNT_BOUND
) -> Count:
    """Rows of ``source`` (``table WHERE …``, served by an index), counted up to ``bound``."""
    row = await db.fetch_one(
        f"SELECT COUNT(*) AS n FROM (SELECT 1 AS x FROM {source} LIMIT :bound) AS b",
        {**params, "bound": bound + 1},
    )
    n = 0 if row is None else int(row["n"])
    return Count(min(n, bound), n > bound)


async def largest_id(db: Database, table: str) -> int:
    row = await db.fetch_one(f"SELECT MAX(id) AS id FROM {table}")
    return 0 if row is None or row["id"] is None else int(row["id"])


# --- overview ---------------------------------------------------------------------------


def _bounded(source: str) -> str:
    """A scalar subquery: the rows of ``source`` (``table WHERE …``) counted up to
    ``:bound`` (the caller passes COUNT_BOUND + 1)."""
    return f"(SELECT COUNT(*) FROM (SELECT 1 AS x FROM {source} LIMIT :bound) AS b)"


@dataclass(frozen=True)
class Numbers:
    total_requests: int  # the largest id: about the number of requests
    by_state: list[tuple[str, Count]]
    inbox_pending: Count
    inbox_processing: Count
    inbox_failed: Count
    oldest_pending: float | None
    refused_last_hour: int


def _count(value: object) -> Count:
    n = int(value or 0)  # type: ignore[call-overload]
    return Count(min(n, COUNT_BOUND), n > COUNT_BOUND)


async def overview_numbers(db: Database, *, now: float) -> Numbers:
    """Every count of the overview in one statement (one round trip): each through an
    index, each bounded; the rejection log is bounded itself."""
    states = list(RequestState)
    columns = [
        f"{_bounded(f'signature_requests WHERE state = :s{i}')} AS s{i}" for i in range(len(states))
    ]
    columns += [
        "(SELECT MAX(id) FROM signature_requests) AS total",
        _bounded("inbox WHERE status = 'pending'") + " AS pending",
        _bounded("inbox WHERE status = 'processing'") + " AS processing",
        _bounded("inbox WHERE status = 'failed'") + " AS failed",
        "(SELECT received_at FROM inbox WHERE status = 'pending' ORDER BY id LIMIT 1) AS oldest",
        "(SELECT COUNT(*) FROM rejections WHERE received_at >= :hour) AS refused",
    ]
    params: dict[str, Any] = {f"s{i}": state.value for i, state in enumerate(states)}
    params.update(bound=COUNT_BOUND + 1, hour=now - 3600)
    row = await db.fetch_one("SELECT " + ", ".join(columns), params) or {}
    return Numbers(
        total_requests=int(row.get("total") or 0),
        by_state=[(state.value, _count(row.get(f"s{i}"))) for i, state in enumerate(states)],
        inbox_pending=_count(row.get("pending")),
        inbox_processing=_count(row.get("processing")),
        inbox_failed=_count(row.get("failed")),
        oldest_pending=number_or_none(row.get("oldest")),
        refused_last_hour=int(row.get("refused") or 0),
    )


async def callbacks_per_minute(
    db: Database, *, now: float, hours: int = 3, bucket_minutes: int = 5
) -> list[tuple[float, float]]:
    """(bucket start, inbox rows per minute in it) over the last ``hours``: the difference
    of the first ids at the bucket edges (an estimate: ids skipped by a refused insert count
    too)."""
    step = bucket_minutes * 60
    end = (now // step + 1) * step
    edges = [end - step * k for k in range(hours * 60 // bucket_minutes, -1, -1)]
    ids = await first_ids_at(db, "inbox", "received_at", edges)
    return [(edges[k], max(0, ids[k + 1] - ids[k]) / bucket_minutes) for k in range(len(edges) - 1)]


async def lanes(db: Database) -> list[tuple[str, str]]:
    """Every outbox lane (name, label): the provider calls and each endpoint's deliveries."""
    rows = await db.fetch_all("SELECT id FROM endpoints WHERE status <> 'deleted' ORDER BY id")
    return [("provider", "provider calls")] + [
        (f"{LANE_PREFIX}{r['id']}", f"deliveries to endpoint {r['id']}") for r in rows
    ]


@dataclass(frozen=True)
class LaneHealth:
    lane: str
    label: str
    pending: Count
    next_due: float | None
    dead: Count


async def lane_health(db: Database) -> list[LaneHealth]:
    """Each lane's pending and dead actions (bounded) and next due time: one statement."""
    found = await lanes(db)
    columns = []
    params: dict[str, Any] = {"bound": COUNT_BOUND + 1}
    for i, (lane, _) in enumerate(found):
        params[f"l{i}"] = lane
        columns += [
            _bounded(f"outbox WHERE lane = :l{i} AND status = 'pending'") + f" AS p{i}",
            _bounded(f"outbox WHERE lane = :l{i} AND status = 'dead'") + f" AS d{i}",
            f"(SELECT due_at FROM outbox WHERE lane = :l{i} AND status = 'pending'"
            f" ORDER BY due_at, id LIMIT 1) AS n{i}",
        ]
    row = await db.fetch_one("SELECT " + ", ".join(columns), params) or {}
    return [
        LaneHealth(
            lane,
            label,
            _count(row.get(f"p{i}")),
            number_or_none(row.get(f"n{i}")),
            _count(row.get(f"d{i}")),
        )
        for i, (lane, label) in enumerate(found)
    ]


async def failing_endpoints(db: Database) -> list[Row]:
    return await db.fetch_all(
        "SELECT id, url, status, disabled_reason, last_failure_at, last_failure, failing_since"
        " FROM endpoints WHERE status <> 'deleted'"
        " AND (failing_since IS NOT NULL OR status = 'disabled') ORDER BY id"
    )


async def stale_requests(db: Database, *, now: float, per_state: int = 5) -> list[Row]:
    """Open requests not updated for a week: the oldest few of each open state (through
    the state index; the oldest ids are the likeliest to be stale), in one statement."""
    parts = [
        f"SELECT * FROM ({_ids_first(f'WHERE state = :s{i}', 'ASC')}) AS o{i}"
        for i in range(len(OPEN_STATES))
    ]
    params: dict[str, Any] = {f"s{i}": state.value for i, state in enumerate(OPEN_STATES)}
    params["limit"] = per_state
    rows = await db.fetch_all(" UNION ALL ".join(parts), params)
    return [r for r in rows if (number_or_none(r["updated_at"]) or now) < now - STALE_AFTER_SECONDS]


# --- requests ---------------------------------------------------------------------------


async def search_requests(
    db: Database,
    *,
    state: str | None,
    provider: str | None,
    reference: str | None,
    external_id: str | None,
    since: float | None,
    until: float | None,
    before_id: int | None,
    limit: int,
    providers: Sequence[str] = (),
) -> list[Row]:
    """Newest first. Each filter has an index (state; reference; provider id with the
    provider); a date range becomes an id range (:func:`first_ids_at`). A provider id
    without a provider is looked up under each of ``providers`` (the installed ones): the
    unique index leads with the provider, and without it the search would scan the table."""
    clauses: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    if external_id is not None and provider is None and providers:
        names, values = in_list(providers, prefix="p_")
        clauses.append(f"provider IN {names}")
        params.update(values)
    for name, value in (
        ("state", state),
        ("provider", provider),
        ("reference", reference),
        ("external_id", external_id),
    ):
        if value is not None:
            clauses.append(f"{name} = :{name}")
            params[name] = value
    if since is not None or until is not None:
        first, after = await first_ids_at(
            db,
            "signature_requests",
            "created_at",
            [since if since is not None else 0.0, until if until is not None else 1e18],
        )
        clauses.append("id >= :first AND id < :after")
        params.update(first=first, after=after)
    if before_id is not None:
        clauses.append("id < :before_id")
        params["before_id"] = before_id
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return await db.fetch_all(_ids_first(where, "DESC"), params)


def _ids_first(where: str, order: str) -> str:
    """The page's ids first, then their rows. The ids come from an index alone (state;
    provider and state; reference …), which PostgreSQL then prefers: asked for the rows
    at once, it walked the primary key and filtered, which is fast only when matching rows
    are spread evenly (they are not: the newest requests are the open ones), and took
    0.2-0.7 s on a million requests."""
    return (
        f"SELECT {requests.COLUMNS} FROM signature_requests WHERE id IN (SELECT id FROM"
        f" signature_requests {where} ORDER BY id {order} LIMIT :limit) ORDER BY id {order}"
    )


# --- a request's story ------------------------------------------------------------------


async def events_for(db: Database, request_id: int) -> list[Row]:
    return await db.fetch_all(
        "SELECT id, public_id, type, created_at, source_inbox_id FROM events"
        " WHERE request_id = :id ORDER BY id LIMIT 500",
        {"id": request_id},
    )


async def inbox_row(db: Database, inbox_id: int) -> Row | None:
    return await db.fetch_one(
        "SELECT id, provider, channel, received_at, status, kind, provider_type, event_id,"
        " occurred_at, state_before, state_after, note, error, external_id, request_id, body,"
        " headers, query FROM inbox WHERE id = :id",
        {"id": inbox_id},
    )


# --- failures ---------------------------------------------------------------------------


async def dead_actions(
    db: Database, *, lane: str, before: tuple[float, int] | None, limit: int
) -> list[Row]:
    """A lane's dead actions, latest due first, through the due index (lane, status,
    due_at, id); keyset on (due_at, id)."""
    params: dict[str, Any] = {"lane": lane, "limit": limit}
    keyset = ""
    if before is not None:
        keyset = " AND (due_at < :due OR (due_at = :due AND id < :id))"
        params.update(due=before[0], id=before[1])
    return await db.fetch_all(
        f"SELECT {outbox.ACTION_COLUMNS} FROM outbox WHERE lane = :lane AND status = 'dead'"
        f"{keyset} ORDER BY due_at DESC, id DESC LIMIT :limit",
        params,
    )


BULK_RETRY_LIMIT = 1000  # dead actions one bulk retry re-queues at most


async def retry_dead(
    db: Database, *, lane: str, operation: str | None, now: float, limit: int = BULK_RETRY_LIMIT
) -> int:
    """Re-queue a lane's dead actions (of one operation, if given), at most ``limit``."""
    params: dict[str, Any] = {"lane": lane, "now": now, "limit": limit}
    only = ""
    if operation:
        only = " AND operation = :operation"
        params["operation"] = operation
    async with db.transaction() as tx:
        changed = await tx.execute(
            "UPDATE outbox SET status = 'pending', due_at = :now, updated_at = :now"
            " WHERE id IN (SELECT id FROM outbox WHERE lane = :lane AND status = 'dead'"
            f"{only} ORDER BY due_at, id LIMIT :limit)",
            params,
        )
        if changed:
            tx.notify_on_commit(outbox.OUTBOX_CHANNEL)
    return changed


async def failed_callbacks(db: Database, *, limit: int = 50) -> list[Row]:
    return await db.fetch_all(
        "SELECT id, provider, channel, received_at, status, error, request_id, external_id"
        " FROM inbox WHERE status = 'failed' ORDER BY id DESC LIMIT :limit",
        {"limit": limit},
    )


async def requests_by_id(db: Database, ids: set[int]) -> dict[int, Row]:
    if not ids:
        return {}
    names, params = in_list(sorted(ids))
    rows = await db.fetch_all(
        f"SELECT id, provider, external_id, reference FROM signature_requests WHERE id IN {names}",
        params,
    )
    return {int(r["id"]): r for r in rows}
