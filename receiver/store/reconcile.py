"""The reconciler's columns of ``signature_requests`` (migration 0009): each open request's
next read at its provider, the current step of its backoff, and the state it was last
reported stale in. See receiver/reconcile/."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from receiver.store.db.base import Database, Row, Transaction, in_list
from receiver.store.newest import first_ids_at
from receiver.store.outbox import OUTBOX_CHANNEL, PROVIDER_LANE, RECONCILE_LANE
from receiver.store.requests import COLUMNS

OPEN_STATES = ("registered", "draft", "sent", "viewed", "partially_signed")
_OPEN = "('registered', 'draft', 'sent', 'viewed', 'partially_signed')"
# The outbox actions that read a request's state at its provider ("<provider>.reconcile").
RECONCILE_SUFFIX = ".reconcile"
# A request with a read of its own, or a provider call, waiting in the outbox or running:
# no read is queued for it now. A second read would only repeat the first; and a provider
# call's answer (a check of a callback's claim, a PATCH's follow-up) may settle the request,
# while a read queued behind it would be spent on a request that has ended. (Only the
# active rows are looked at: PostgreSQL reads them once per scan, from the due index.)
_BUSY = (
    "EXISTS (SELECT 1 FROM outbox o WHERE o.request_id = r.id"
    " AND o.status IN ('pending', 'in_flight')"
    f" AND o.lane IN ('{PROVIDER_LANE}', '{RECONCILE_LANE}'))"
)
# Rows per statement when a look's reads and schedules are written: well under SQLite's
# 32,766 parameters and PostgreSQL's 65,535.
CHUNK = 500


async def due(tx: Transaction, *, provider: str, now: float, limit: int, lock: str) -> list[Row]:
    """The provider's requests whose next read is due, earliest first (the partial index
    ix_requests_next_reconcile walked in order), with whether they have work waiting in the
    outbox already (``queued``: a read, or a provider call). ``lock``: ``{skip_locked}``
    rendered, so that two workers looking at once share the rows out."""
    return await tx.fetch_all(
        "SELECT r.id, r.created_at, r.updated_at, r.next_reconcile_at,"
        f" r.reconcile_interval, {_BUSY} AS queued FROM signature_requests r"
        " WHERE r.next_reconcile_at IS NOT NULL AND r.next_reconcile_at <= :now"
        " AND r.provider = :provider ORDER BY r.next_reconcile_at, r.id LIMIT :limit"
        f" {lock}",
        {"provider": provider, "now": now, "limit": limit},
    )


async def queued_reads(db: Database | Transaction, operation: str) -> int:
    """How many reads of this operation wait in the outbox or are running."""
    # The lane and the statuses lead the outbox's due index: the done rows are not walked.
    row = await db.fetch_one(
        f"SELECT COUNT(*) AS n FROM outbox WHERE lane = '{RECONCILE_LANE}'"
        " AND status IN ('pending', 'in_flight') AND operation = :operation",
        {"operation": operation},
    )
    return 0 if row is None else int(row["n"])


@dataclass(frozen=True, slots=True)
class Read:
    """A read to queue: the request, and the key that makes it once (its due time)."""

    request_id: int
    key: str


async def insert_reads(
    tx: Transaction, operation: str, reads: Sequence[Read], *, payload: str, now: float
) -> int:
    """Queue reads in the reconciler's outbox lane, a chunk of rows per statement; a key
    the request already has is skipped (another worker queued it). How many were queued."""
    stored = 0
    for start in range(0, len(reads), CHUNK):
        chunk = reads[start : start + CHUNK]
        rows: list[str] = []
        params: dict[str, Any] = {"operation": operation, "payload": payload, "now": now}
        for i, read in enumerate(chunk):
            rows.append(
                f"(:r_{i}, '{RECONCILE_LANE}', :k_{i}, :operation, :payload, 'pending', :now, 0,"
                " NULL, :now, :now)"
            )
            params[f"r_{i}"], params[f"k_{i}"] = read.request_id, read.key
        stored += await tx.execute(
            "INSERT INTO outbox (request_id, lane, action_key, operation, payload, status,"
            " due_at, attempts, source_inbox_id, created_at, updated_at)"
            f" VALUES {', '.join(rows)} ON CONFLICT (request_id, action_key) DO NOTHING",
            params,
        )
    if stored:
        tx.notify_on_commit(OUTBOX_CHANNEL)
    return stored


@dataclass(frozen=True, slots=True)
class Schedule:
    """A request's next read (None: none, the schedule is over) and its backoff's step."""

    request_id: int
    at: float | None
    interval: float | None


async def reschedule(tx: Transaction, schedules: Sequence[Schedule]) -> None:
    """Write the schedules of a look, a chunk of rows per statement (one round trip each,
    rather than one per request)."""
    for start in range(0, len(schedules), CHUNK):
        chunk = schedules[start : start + CHUNK]
        rows: list[str] = []
        params: dict[str, Any] = {}
        for i, one in enumerate(chunk):
            rows.append(f"(:i_{i}, :a_{i}, :s_{i})")
            params[f"i_{i}"], params[f"a_{i}"], params[f"s_{i}"] = (
                one.request_id,
                one.at,
                one.interval,
            )
        # The casts: a column of VALUES whose every row is NULL has no type on PostgreSQL.
        await tx.execute(
            f"WITH v (id, at, step) AS (VALUES {', '.join(rows)})"
            " UPDATE signature_requests SET"
            " next_reconcile_at = CAST(v.at AS DOUBLE PRECISION),"
            " reconcile_interval = CAST(v.step AS DOUBLE PRECISION)"
            " FROM v WHERE signature_requests.id = v.id",
            params,
        )


async def read_soon(
    db: Database | Transaction, request_id: int, *, at: float, interval: float
) -> bool:
    """Bring an open request's next read forward to ``at`` (never later than it was), and
    start its backoff over at ``interval``. False: the request has ended."""
    changed = await db.execute(
        "UPDATE signature_requests SET next_reconcile_at = CASE WHEN next_reconcile_at IS NULL"
        " OR next_reconcile_at > :at THEN :at ELSE next_reconcile_at END,"
        f" reconcile_interval = :interval WHERE id = :id AND state IN {_OPEN}",
        {"at": at, "interval": interval, "id": request_id},
    )
    return changed > 0


async def all_due(
    tx: Transaction, *, providers: Sequence[str], now: float, created_after: float
) -> int:
    """Every open request of these providers (younger than the schedule's maximum age) is
    due now: after a downtime, when callbacks may have been lost."""
    if not providers:
        return 0
    names, params = in_list(providers, prefix="p_")
    return await tx.execute(
        "UPDATE signature_requests SET next_reconcile_at = :now"
        f" WHERE state IN {_OPEN} AND provider IN {names} AND created_at > :after"
        " AND (next_reconcile_at IS NULL OR next_reconcile_at > :now)",
        {**params, "now": now, "after": created_after},
    )


def _stale_clause(thresholds: Mapping[str, float], now: float) -> tuple[str, dict[str, Any]]:
    """``(state = s AND updated_at < now - t) OR …`` over the open states."""
    clauses: list[str] = []
    params: dict[str, Any] = {}
    for index, state in enumerate(OPEN_STATES):
        if state not in thresholds:
            continue
        clauses.append(f"(state = :st_{index} AND updated_at < :cut_{index})")
        params[f"st_{index}"] = state
        params[f"cut_{index}"] = now - thresholds[state]
    return ("(" + " OR ".join(clauses) + ")") if clauses else "(1 = 0)", params


async def newly_stale(
    tx: Transaction, *, state: str, cutoff: float, limit: int, lock: str
) -> list[Row]:
    """Requests silent in ``state`` since before ``cutoff`` and not yet reported in it."""
    return await tx.fetch_all(
        f"SELECT {COLUMNS} FROM signature_requests WHERE state = :state"
        " AND updated_at < :cutoff AND (stale_state IS NULL OR stale_state <> :state)"
        f" ORDER BY id LIMIT :limit {lock}",
        {"state": state, "cutoff": cutoff, "limit": limit},
    )


async def mark_stale(tx: Transaction, request_id: int, state: str) -> None:
    await tx.execute(
        "UPDATE signature_requests SET stale_state = :state WHERE id = :id",
        {"state": state, "id": request_id},
    )


# The first look at a state's newest requests for stale ones, doubled at each further look.
STALE_CHUNK = 500
STALE_CHUNK_MAX = 32_000


async def stale(
    db: Database,
    *,
    thresholds: Mapping[str, float],
    now: float,
    provider: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[Row]:
    """Open requests silent longer than their state's threshold, newest first: each open
    state's newest ids from its index alone (:func:`_stale_in_state`), merged, then their
    rows. As one ``OR`` along the primary key, a page past the last open request (the most
    finished ones are the oldest) read the whole table."""
    states = [s for s in OPEN_STATES if s in thresholds]
    cutoffs = [now - thresholds[s] for s in states]
    # A request created after its state's cutoff cannot have been silent since: each state
    # is read from below the first id created then (ids grow with the creation time), so
    # that the newest requests, rarely stale, are not read only to be left out.
    created = await first_ids_at(db, "signature_requests", "created_at", cutoffs)
    ids: list[int] = []
    for state, cutoff, first in zip(states, cutoffs, created, strict=True):
        below = first if before_id is None else min(first, before_id)
        ids += await _stale_in_state(db, state, cutoff, provider, below, limit)
    if not ids:
        return []
    marks, params = in_list(sorted(ids, reverse=True)[:limit])
    return await db.fetch_all(
        f"SELECT {COLUMNS} FROM signature_requests WHERE id IN {marks} ORDER BY id DESC", params
    )


async def _stale_in_state(
    db: Database,
    state: str,
    cutoff: float,
    provider: str | None,
    before_id: int | None,
    limit: int,
) -> list[int]:
    """The newest ``limit`` requests in ``state`` not updated since ``cutoff``. Their ids are
    read a chunk at a time from ``(state, id)`` or ``(provider, state, id)`` alone, and the
    chunk's rows then checked: asked for the stale ones at once, PostgreSQL walked the primary
    key (guessing a state's rows spread over the table: they are the newest, or none past a
    point), 0.2-0.6 s a page on a million requests. What this costs grows with the state's
    requests that are not stale (updated within the threshold), which are read first."""
    where = "state = :state" + (" AND provider = :provider" if provider is not None else "")
    params: dict[str, Any] = {"state": state, "provider": provider, "cutoff": cutoff}
    found: list[int] = []
    edge, chunk = before_id, STALE_CHUNK
    while len(found) < limit:
        bound = "" if edge is None else " AND id < :edge"
        rows = await db.fetch_all(
            f"SELECT id FROM signature_requests WHERE {where}{bound} ORDER BY id DESC LIMIT :chunk",
            {**params, "edge": edge, "chunk": chunk},
        )
        if not rows:
            break
        # The chunk's rows, by its range of ids, both ends given: whichever index the
        # planner takes, it reads the chunk's span only.
        stale = await db.fetch_all(
            f"SELECT id FROM signature_requests WHERE {where} AND id <= :high AND id >= :low"
            " AND updated_at < :cutoff ORDER BY id DESC LIMIT :rest",
            {
                **params,
                "high": int(rows[0]["id"]),
                "low": int(rows[-1]["id"]),
                "rest": limit - len(found),
            },
        )
        found += [int(r["id"]) for r in stale]
        if len(rows) < chunk:
            break
        edge, chunk = int(rows[-1]["id"]), min(chunk * 2, STALE_CHUNK_MAX)
    return found


async def stale_counts(
    db: Database, *, thresholds: Mapping[str, float], now: float
) -> dict[tuple[str, str], int]:
    """Stale requests by (provider, state), for the gauge."""
    clause, params = _stale_clause(thresholds, now)
    rows = await db.fetch_all(
        f"SELECT provider, state, COUNT(*) AS n FROM signature_requests WHERE {clause}"
        " GROUP BY provider, state",
        params,
    )
    return {(str(r["provider"]), str(r["state"])): int(r["n"]) for r in rows}


async def open_requests(
    db: Database,
    *,
    providers: Iterable[str],
    request_id: int | None = None,
    after_id: int = 0,
    limit: int = 100,
) -> list[Row]:
    """Open requests of these providers (or the one asked for, whatever its state), oldest
    first: what ``signback reconcile`` reads."""
    names, params = in_list(sorted(providers), prefix="p_")
    if not params:
        return []
    if request_id is not None:
        return await db.fetch_all(
            f"SELECT {COLUMNS} FROM signature_requests WHERE id = :id AND provider IN {names}",
            {**params, "id": request_id},
        )
    return await db.fetch_all(
        f"SELECT {COLUMNS} FROM signature_requests WHERE state IN {_OPEN}"
        f" AND provider IN {names} AND id > :after ORDER BY id LIMIT :limit",
        {**params, "after": after_id, "limit": limit},
    )
