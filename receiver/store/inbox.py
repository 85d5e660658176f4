"""The inbox: every accepted callback, raw, before anything trusts it (and its timeline)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

from receiver.jsonutil import dumps
from receiver.store.db.base import (
    JSON_IDS,
    BatchedWrite,
    Database,
    NewRowInsert,
    Params,
    Row,
    Transaction,
    in_list,
    json_rows,
)
from receiver.store.statuses import InboxStatus
from receiver.store.storable import storable, storable_or_none, text_problem

INBOX_CHANNEL = "inbox"

# A new row's status as a plain str: the intake's insert goes through orjson, which encodes
# an exact str faster than an enum member.
_PENDING: str = InboxStatus.PENDING.value

# Sizes of what the intake stores (migration 0001): a hook must keep within them.
DEDUPE_KEY_CHARS = 200
EXTERNAL_ID_CHARS = 200


def intake_problem(*, dedupe_key: str, query: str, external_id: str | None) -> str | None:
    """Why a callback's values cannot be stored as they are, or None. Checked before the
    acknowledgement: a callback is refused (4xx) rather than acknowledged and then lost."""
    if len(dedupe_key) > DEDUPE_KEY_CHARS or text_problem(dedupe_key):
        return "callback cannot be stored: its deduplication key is too long or not text"
    if external_id is not None and (
        len(external_id) > EXTERNAL_ID_CHARS or text_problem(external_id)
    ):
        return f"request id must be text of at most {EXTERNAL_ID_CHARS} characters"
    if problem := text_problem(query):
        return f"query string {problem}"
    return None


# A callback is new unless the same provider already sent its dedupe key.
NEW_CALLBACK = NewRowInsert(
    table="inbox",
    columns=(
        "provider",
        "channel",
        "dedupe_key",
        "received_at",
        "body",
        "headers",
        "query",
        "request_id",
        "external_id",
        "status",
        "attempts",
    ),
    key=("provider", "dedupe_key"),
    pg_types=(
        "text",
        "text",
        "text",
        "float8",
        "bytea",
        "text",
        "text",
        "int8",
        "text",
        "text",
        "int4",
    ),
)
INSERT_SQL = NEW_CALLBACK.one_row_sql


def insert_params(
    *,
    provider: str,
    channel: str,
    dedupe_key: str,
    received_at: float,
    body: bytes,
    headers: Mapping[str, str],
    query: str,
    request_id: int | None,
    external_id: str | None,
) -> dict[str, Any]:
    return {
        "provider": provider,
        "channel": channel,
        "dedupe_key": dedupe_key,
        "received_at": received_at,
        "body": body,
        "headers": dumps(dict(headers)),
        "query": query,
        "request_id": request_id,
        "external_id": external_id,
        "status": _PENDING,
        "attempts": 0,
    }


async def insert(tx: Transaction, params: Mapping[str, Any]) -> bool:
    """Store one callback; False when its dedupe key was already stored (a duplicate)."""
    changed = await tx.execute(INSERT_SQL, params)
    if changed:
        tx.notify_on_commit(INBOX_CHANNEL)
    return changed > 0


class FedBack(Protocol):
    """What an outbound call learned and feeds back to the inbox (an operation's
    ``FollowUpEvent``): stored like a callback, without headers or query."""

    @property
    def provider(self) -> str: ...
    @property
    def channel(self) -> str: ...
    @property
    def body(self) -> bytes: ...
    @property
    def dedupe_key(self) -> str: ...
    @property
    def request_id(self) -> int | None: ...


async def insert_fed_back(tx: Transaction, event: FedBack, *, now: float) -> bool:
    """Store ``event``; False when its dedupe key was already stored."""
    return await insert(
        tx,
        insert_params(
            provider=event.provider,
            channel=event.channel,
            dedupe_key=event.dedupe_key,
            received_at=now,
            body=event.body,
            headers={},
            query="",
            request_id=event.request_id,
            external_id=None,
        ),
    )


CLAIMED_COLUMNS = (
    "id, provider, channel, body, headers, query, request_id, external_id, received_at, attempts"
)


# What claiming a row writes: it is in processing, under a lease, and the try is counted.
_CLAIM = (
    "UPDATE inbox SET status = 'processing', attempts = attempts + 1, lease_expires_at = :lease"
)


async def claim(db: Database, *, limit: int, now: float, lease_seconds: float) -> list[Row]:
    """Take pending rows for processing under a lease (several workers may share them), in
    id order. One statement, committed on its own (one round trip on PostgreSQL)."""
    rows = await db.write_returning(
        db.render(
            f"{_CLAIM} WHERE id IN (SELECT id FROM inbox"
            " WHERE status = 'pending' ORDER BY id LIMIT :limit {skip_locked})"
            f" RETURNING {CLAIMED_COLUMNS}"
        ),
        {"lease": now + lease_seconds, "limit": limit},
    )
    return sorted(rows, key=lambda r: int(r["id"]))


async def claim_ids(
    db: Database, inbox_ids: list[int], *, now: float, lease_seconds: float
) -> list[Row]:
    """:func:`claim` for the given rows, those of them still pending, in id order."""
    ids, params = in_list(inbox_ids)
    async with db.transaction() as tx:
        rows = await tx.fetch_all(
            f"{_CLAIM} WHERE status = 'pending' AND id IN {ids} RETURNING {CLAIMED_COLUMNS}",
            {"lease": now + lease_seconds, **params},
        )
    return sorted(rows, key=lambda r: int(r["id"]))


async def take_pending(tx: Transaction, *, limit: int, after_id: int = 0) -> list[Row]:
    """The oldest pending rows after ``after_id``, for processing within ``tx`` itself: on a
    database with one writer at a time nobody else can take them before ``tx`` ends, so no
    claim (status, lease) is written; a rollback leaves them pending. Counts the attempt, as
    a claim does."""
    rows = await tx.fetch_all(
        "UPDATE inbox SET attempts = attempts + 1 WHERE id IN (SELECT id FROM inbox"
        " WHERE status = 'pending' AND id > :after ORDER BY id LIMIT :limit)"
        f" RETURNING {CLAIMED_COLUMNS}",
        {"limit": limit, "after": after_id},
    )
    return sorted(rows, key=lambda r: int(r["id"]))


# The sizes of the inbox's String(n) columns (migration 0001) that finish() writes.
FACT_COLUMN_CHARS = {
    "external_id": EXTERNAL_ID_CHARS,
    "kind": 40,
    "provider_type": 120,
    "event_id": 200,
    "state_before": 32,
    "state_after": 32,
}
TEXT_FACTS = ("note", "error")  # Text columns: no size, but the same encoding rules


def storable_facts(facts: Mapping[str, Any]) -> dict[str, Any]:
    """The normalized facts of a callback as the schema can hold them: every text escaped
    and cut to its column (receiver/store/storable.py), a time that is no number as None.

    The one place where what a provider sent meets the inbox's columns after the ack: a
    provider's type of 500 characters, or a state with a lone surrogate, is recorded cut or
    escaped (the raw body keeps the original), so that the callback is processed instead of
    failing every try."""
    kept = dict(facts)
    for name, value in facts.items():
        if name in FACT_COLUMN_CHARS or name in TEXT_FACTS:
            kept[name] = storable_or_none(value, FACT_COLUMN_CHARS.get(name))
    if "occurred_at" in facts:
        kept["occurred_at"] = _finite_or_none(facts["occurred_at"])
    return kept


def _finite_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


FINISH_SQL = (
    "UPDATE inbox SET status = :status, processed_at = :now, lease_expires_at = NULL,"
    " request_id = COALESCE(:request_id, request_id),"
    " external_id = COALESCE(:external_id, external_id), kind = :kind,"
    " provider_type = :provider_type, event_id = :event_id, occurred_at = :occurred_at,"
    " state_before = :state_before, state_after = :state_after, note = :note, error = :error"
    " WHERE id = :id"
)


async def finish(tx: Transaction, inbox_id: int, **settlement: Any) -> None:
    """Record how a row was settled (the arguments of :func:`finish_params`)."""
    await tx.execute(FINISH_SQL, finish_params(inbox_id, **settlement))


# Settlements of a pipeline chunk's rows in one statement on PostgreSQL (executemany had
# been a statement per row, each a send of its own in psycopg's pipeline), the rows found
# by their ids first (JSON_IDS).
_FINISH_MANY_SQL = (
    "UPDATE inbox i SET status = r.status, processed_at = r.now, lease_expires_at = NULL,"
    " request_id = COALESCE(r.request_id, i.request_id),"
    " external_id = COALESCE(r.external_id, i.external_id), kind = r.kind,"
    " provider_type = r.provider_type, event_id = r.event_id, occurred_at = r.occurred_at,"
    " state_before = r.state_before, state_after = r.state_after, note = r.note,"
    " error = r.error FROM "
    + json_rows(
        "id bigint, status text, now double precision, request_id bigint, external_id text,"
        " kind text, provider_type text, event_id text, occurred_at double precision,"
        " state_before text, state_after text, note text, error text"
    )
    + f" WHERE i.id = r.id AND i.id = {JSON_IDS} RETURNING i.id"
)


async def _finish_one(tx: Transaction, params: Params) -> int:
    return await tx.execute(FINISH_SQL, params)


_FINISH = BatchedWrite(_FINISH_MANY_SQL, ("id",), _finish_one)


async def finish_many(tx: Transaction, settlements: list[dict[str, Any]]) -> None:
    """Several rows' :func:`finish_params` in one go. Nothing reads them back before the
    commit: on PostgreSQL they go with it (and NOTIFY), in the same round trip and one
    statement."""
    for settlement in settlements:
        await tx.execute_batched_later(_FINISH, settlement)


def finish_params(
    inbox_id: int,
    *,
    status: InboxStatus,
    now: float,
    request_id: int | None = None,
    external_id: str | None = None,
    kind: str | None = None,
    provider_type: str | None = None,
    event_id: str | None = None,
    occurred_at: float | None = None,
    state_before: str | None = None,
    state_after: str | None = None,
    note: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    facts = storable_facts(
        {
            "external_id": external_id,
            "kind": kind,
            "provider_type": provider_type,
            "event_id": event_id,
            "occurred_at": occurred_at,
            "state_before": state_before,
            "state_after": state_after,
            "note": note,
            "error": error,
        }
    )
    return {"status": status, "now": now, "request_id": request_id, "id": inbox_id, **facts}


async def release_for_retry(db: Database, inbox_id: int, *, error: str, max_attempts: int) -> None:
    """Processing crashed: try again later, or park it as failed after too many tries."""
    async with db.transaction() as tx:
        await mark_for_retry(tx, inbox_id, error=error, max_attempts=max_attempts)


async def mark_for_retry(tx: Transaction, inbox_id: int, *, error: str, max_attempts: int) -> None:
    await tx.execute(
        "UPDATE inbox SET error = :error, lease_expires_at = NULL,"
        " status = CASE WHEN attempts >= :max THEN 'failed' ELSE 'pending' END"
        " WHERE id = :id AND status = 'processing'",
        {"error": storable(error), "max": max_attempts, "id": inbox_id},
    )


async def release(db: Database, inbox_ids: list[int]) -> None:
    """Give claimed rows back unprocessed (their claim is not counted as an attempt)."""
    async with db.transaction() as tx:
        for inbox_id in inbox_ids:
            await tx.execute(
                "UPDATE inbox SET status = 'pending', lease_expires_at = NULL,"
                " attempts = attempts - 1 WHERE id = :id AND status = 'processing'",
                {"id": inbox_id},
            )
        tx.notify_on_commit(INBOX_CHANNEL)


async def requeue_unmatched(tx: Transaction, *, provider: str, external_id: str) -> int:
    """A request was registered: its earlier, unmatched events go through the pipeline again."""
    changed = await tx.execute(
        "UPDATE inbox SET status = 'pending', attempts = 0 WHERE provider = :provider"
        " AND external_id = :external_id AND status = 'unmatched'",
        {"provider": provider, "external_id": external_id},
    )
    if changed:
        tx.notify_on_commit(INBOX_CHANNEL)
    return changed


async def recover_expired(db: Database, *, now: float) -> int:
    """Rows claimed by a worker that died come back once their lease has run out."""
    async with db.transaction() as tx:
        changed = await tx.execute(
            "UPDATE inbox SET status = 'pending', lease_expires_at = NULL"
            " WHERE status = 'processing' AND lease_expires_at < :now",
            {"now": now},
        )
        if changed:
            tx.notify_on_commit(INBOX_CHANNEL)
        return changed


async def retry(db: Database, inbox_id: int) -> bool:
    async with db.transaction() as tx:
        changed = await tx.execute(
            "UPDATE inbox SET status = 'pending', attempts = 0, error = NULL"
            " WHERE id = :id AND status IN ('failed', 'unmatched')",
            {"id": inbox_id},
        )
        if changed:
            tx.notify_on_commit(INBOX_CHANNEL)
        return changed > 0


TIMELINE_COLUMNS = (
    "id, provider, channel, received_at, status, kind, provider_type, event_id, occurred_at,"
    " state_before, state_after, note, error, external_id, request_id"
)


async def timeline(db: Database, request_id: int, *, limit: int = 500) -> list[Row]:
    """A request's callbacks, oldest first. Settled rows come from the partial index on
    (request_id, id); rows still waiting for the pipeline from the status index (migration
    0003: the intake does not touch the request index, the pipeline does)."""
    return await db.fetch_all(
        f"SELECT {TIMELINE_COLUMNS} FROM ("
        f" SELECT {TIMELINE_COLUMNS} FROM inbox WHERE request_id = :id"
        " AND status NOT IN ('pending', 'processing')"
        f" UNION ALL SELECT {TIMELINE_COLUMNS} FROM inbox WHERE request_id = :id"
        " AND status IN ('pending', 'processing')"
        ") AS rows ORDER BY id LIMIT :limit",
        {"id": request_id, "limit": limit},
    )


# How many of the newest callbacks (of the status asked for) a search by provider looks
# through before it turns to the provider's own rows: a provider with at least 1 % of the
# traffic fills a page of 100 from there.
PROVIDER_WINDOW = 10_000


async def search(
    db: Database, *, status: str | None, provider: str | None, limit: int = 100
) -> list[Row]:
    """Newest first. A status has its index, ``(status, id)``; a provider has none of its
    own, on purpose: the intake writes every callback, and one index more is one B-tree
    insert more on each. See :func:`_provider_ids` for how a provider is found instead."""
    params: dict[str, Any] = {"limit": limit}
    where = "1 = 1"
    if status:
        where = "status = :status"
        params["status"] = status
    if not provider:
        return await db.fetch_all(
            f"SELECT {TIMELINE_COLUMNS} FROM inbox WHERE {where} ORDER BY id DESC LIMIT :limit",
            params,
        )
    ids = await _provider_ids(db, where, {**params, "provider": provider}, limit)
    if not ids:
        return []
    marks, values = in_list(ids)
    return await db.fetch_all(
        f"SELECT {TIMELINE_COLUMNS} FROM inbox WHERE id IN {marks} ORDER BY id DESC", values
    )


async def _provider_ids(db: Database, where: str, params: dict[str, Any], limit: int) -> list[int]:
    """The ids of a provider's newest callbacks (``where``: the status's condition). Left to
    themselves, SQLite sorted all of a busy provider's rows and PostgreSQL walked the table
    for a quiet one (seconds, on five million callbacks). So: a provider with fewer than
    ``PROVIDER_WINDOW`` rows (counted through the unique key ``(provider, dedupe_key)``,
    stopping there) is read through that key, its ids sorted. A busier one is looked for
    among the newest ``PROVIDER_WINDOW`` rows first, along the primary key or the status
    index, where it is found at once; below them, through the key again."""
    few = await db.fetch_one(
        "SELECT COUNT(*) AS n FROM (SELECT id FROM inbox WHERE provider = :provider"
        f" LIMIT {PROVIDER_WINDOW}) AS p",
        params,
    )
    if few is not None and int(few["n"]) < PROVIDER_WINDOW:
        return await _sorted_ids(db, params, below=None, limit=limit)
    edge = await db.fetch_one(
        f"SELECT MIN(id) AS edge, COUNT(*) AS n FROM (SELECT id FROM inbox WHERE {where}"
        f" ORDER BY id DESC LIMIT {PROVIDER_WINDOW}) AS w",
        params,
    )
    if edge is None or edge["edge"] is None:
        return []
    # ``|| ''`` keeps the planners off the provider's key, which the window is to spare.
    rows = await db.fetch_all(
        f"SELECT id FROM inbox WHERE {where} AND id >= :edge AND provider || '' = :provider"
        " ORDER BY id DESC LIMIT :limit",
        {**params, "edge": int(edge["edge"])},
    )
    ids = [int(r["id"]) for r in rows]
    if len(ids) >= limit or int(edge["n"]) < PROVIDER_WINDOW:
        return ids  # a page, or the window held every row there is
    return ids + await _sorted_ids(db, params, below=int(edge["edge"]), limit=limit - len(ids))


async def _sorted_ids(
    db: Database, params: dict[str, Any], *, below: int | None, limit: int
) -> list[int]:
    """A provider's newest ids (below ``below``) through its unique key, sorted: ``id + 0``
    and ``status || ''`` keep the planners off the primary key and the status index."""
    sql = "SELECT id FROM inbox WHERE provider = :provider"
    if below is not None:
        sql += " AND id < :below"
    if "status" in params:
        sql += " AND status || '' = :status"
    rows = await db.fetch_all(
        sql + " ORDER BY id + 0 DESC LIMIT :rest", {**params, "below": below, "rest": limit}
    )
    return [int(r["id"]) for r in rows]


# The statuses a callback waits or is stuck in: few rows, whatever the store's size. The
# processed ones are all the others and grow without end: counting them read the whole
# status index (a second at five million rows, on the event loop with SQLite).
WORKING_STATUSES = (
    InboxStatus.PENDING,
    InboxStatus.PROCESSING,
    InboxStatus.UNMATCHED,
    InboxStatus.FAILED,
)


async def counts(db: Database) -> dict[str, int]:
    """Callbacks in each working status, every one present (0 when none), each counted
    from its own range of the ``(status, id)`` index."""
    # The statuses are this module's constants, spelled out as the labels of the rows.
    branches = " UNION ALL ".join(
        f"SELECT '{status}' AS status, COUNT(*) AS n FROM inbox WHERE status = '{status}'"
        for status in WORKING_STATUSES
    )
    rows = await db.fetch_all(branches)
    return {str(r["status"]): int(r["n"]) for r in rows}
