"""The inbox: every accepted callback, raw, before anything trusts it (and its timeline)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

from receiver.jsonutil import dumps
from receiver.store.db.base import Database, NewRowInsert, Row, Transaction, in_list
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


async def finish_many(tx: Transaction, settlements: list[dict[str, Any]]) -> None:
    """Several rows' :func:`finish_params` in one go. Nothing reads them back before the
    commit: on PostgreSQL they go with it (and NOTIFY), in the same round trip."""
    await tx.executemany_later(FINISH_SQL, settlements)


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


async def search(
    db: Database, *, status: str | None, provider: str | None, limit: int = 100
) -> list[Row]:
    clauses: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    if status:
        clauses.append("status = :status")
        params["status"] = status
    if provider:
        clauses.append("provider = :provider")
        params["provider"] = provider
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return await db.fetch_all(
        f"SELECT {TIMELINE_COLUMNS} FROM inbox {where} ORDER BY id DESC LIMIT :limit", params
    )


async def counts(db: Database) -> dict[str, int]:
    rows = await db.fetch_all("SELECT status, COUNT(*) AS n FROM inbox GROUP BY status")
    return {str(r["status"]): int(r["n"]) for r in rows}
