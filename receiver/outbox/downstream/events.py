"""The ``events`` table: each downstream event stored once, as the document endpoints get.

The document (docs/events.md):

    {"type": "signature_request.completed", "id": "evt_…", "timestamp": "…Z", "version": 1,
     "data": {"request": {…}, "event": {…}}}

is stored as the exact JSON text that is sent (sorted keys, compact), so that every
attempt and every replay sends the same bytes. The provider's raw payload is kept apart
(``raw``) and added as ``data.raw`` only for the endpoints that ask for it.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from receiver import jsonutil
from receiver.outbox.downstream.catalogue import SCHEMA_VERSION
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
from receiver.store.storable import renderable

COLUMNS = (
    "id, public_id, type, request_id, provider, timestamp, payload, raw, dedupe_key,"
    " source_inbox_id, created_at"
)


def new_public_id() -> str:
    return "evt_" + secrets.token_hex(12)


def iso(seconds: float | None) -> str | None:
    """Unix seconds as RFC 3339 UTC with microseconds (``…Z``), or None."""
    if seconds is None:
        return None
    try:
        moment = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def document(event_type: str, public_id: str, timestamp: float, data: Mapping[str, Any]) -> str:
    """The event's JSON text, as every endpoint receives it (without ``raw``). Values are
    made encodable first (a provider's text may hold what JSON cannot carry as is)."""
    return jsonutil.dumps(
        renderable(
            {
                "type": event_type,
                "id": public_id,
                "timestamp": iso(timestamp),
                "version": SCHEMA_VERSION,
                "data": dict(data),
            }
        )
    )


def body_for(payload: str, raw: str | None, *, include_raw: bool) -> bytes:
    """The bytes one endpoint is sent: the stored document, with ``data.raw`` added when the
    endpoint asked for the provider's payload (an event without one gets ``null``)."""
    if not include_raw:
        return payload.encode()
    doc = jsonutil.loads(payload)
    doc["data"]["raw"] = None if raw is None else jsonutil.loads(raw)
    return jsonutil.dumps(doc).encode()


_INSERT_SQL = (
    "INSERT INTO events (public_id, type, request_id, provider, timestamp, payload, raw,"
    " dedupe_key, source_inbox_id, created_at) VALUES (:public_id, :type, :request_id,"
    " :provider, :timestamp, :payload, :raw, :dedupe_key, :source, :now)"
    " ON CONFLICT DO NOTHING"
)


def row_params(
    *,
    public_id: str,
    event_type: str,
    request_id: int | None,
    provider: str | None,
    timestamp: float,
    payload: str,
    raw: Mapping[str, Any] | None,
    dedupe_key: str,
    source_inbox_id: int | None,
    now: float,
) -> dict[str, Any]:
    return {
        "public_id": public_id,
        "type": event_type,
        "request_id": request_id,
        "provider": provider,
        "timestamp": timestamp,
        "payload": payload,
        "raw": None if raw is None else jsonutil.dumps(renderable(dict(raw))),
        "dedupe_key": dedupe_key,
        "source": source_inbox_id,
        "now": now,
    }


async def insert(tx: Transaction, row: Mapping[str, Any]) -> int | None:
    """Store an event (its :func:`row_params`); its id, or None if one with this dedupe key
    is stored already."""
    found = await tx.fetch_one(f"{_INSERT_SQL} RETURNING id", row)
    return None if found is None else int(found["id"])


# Batched inserts of events (PostgreSQL): the columns of row_params in a JSON document, and
# the insert of its rows ``r`` (json_rows) in their order, skipping those stored before.
# emit.py adds the deliveries of events that go to endpoints to the same insert.
ROW_COLUMNS = (
    "public_id text, type text, request_id bigint, provider text,"
    " timestamp double precision, payload text, raw text, dedupe_key text,"
    " source bigint, now double precision"
)
INSERT_ROWS_SQL = (
    "INSERT INTO events (public_id, type, request_id, provider, timestamp, payload, raw,"
    " dedupe_key, source_inbox_id, created_at) SELECT public_id, type, request_id,"
    " provider, timestamp, payload, raw, dedupe_key, source, now FROM r"
    " ORDER BY n ON CONFLICT DO NOTHING"
)

# The events of a pipeline chunk that go to no endpoint, in one statement on PostgreSQL.
# Independent: the chunk's other writes do not touch the events table (an event that goes to
# an endpoint is inserted on its own, its id read back at once).
_INSERT_MANY_SQL = (
    f"WITH r AS (SELECT * FROM {json_rows(ROW_COLUMNS)}) {INSERT_ROWS_SQL} RETURNING dedupe_key"
)


async def _insert_one(tx: Transaction, row: Params) -> int:
    return await tx.execute(_INSERT_SQL, row)


_INSERT = BatchedWrite(_INSERT_MANY_SQL, ("dedupe_key",), _insert_one, independent=True)


async def insert_later(tx: Transaction, row: Mapping[str, Any]) -> Later:
    """:func:`insert` held back with the transaction's other writes, no id read back (an
    event that goes to no endpoint needs none): on PostgreSQL no round trip of its own, and
    one statement for the chunk's events. Whether it was new is known once it was sent."""
    return await tx.execute_batched_later(_INSERT, dict(row))


async def get_many(db: Database, ids: Sequence[int]) -> dict[int, Row]:
    if not ids:
        return {}
    marks, params = in_list(ids)
    rows = await db.fetch_all(f"SELECT {COLUMNS} FROM events WHERE id IN {marks}", params)
    return {int(r["id"]): r for r in rows}


async def get(db: Database, event_id: int) -> Row | None:
    return await db.fetch_one(f"SELECT {COLUMNS} FROM events WHERE id = :id", {"id": event_id})


async def search(
    db: Database,
    *,
    since: float | None = None,
    until: float | None = None,
    request_id: int | None = None,
    event_type: str | None = None,
    after_id: int = 0,
    limit: int = 100,
) -> list[Row]:
    """Events in the order they were stored (replays, listings)."""
    where = ["id > :after"]
    params: dict[str, Any] = {"after": after_id, "limit": limit}
    if since is not None:
        where.append("created_at >= :since")
        params["since"] = since
    if until is not None:
        where.append("created_at < :until")
        params["until"] = until
    if request_id is not None:
        where.append("request_id = :request_id")
        params["request_id"] = request_id
    if event_type is not None:
        where.append("type = :type")
        params["type"] = event_type
    # The page's ids first, from an index alone (a type's through (type, id), migration
    # 0012), then their rows: asked for whole rows at once, PostgreSQL walked the primary
    # key and filtered the type (0.1-0.3 s a page at 500,000 events).
    return await db.fetch_all(
        f"SELECT {COLUMNS} FROM events WHERE id IN (SELECT id FROM events WHERE"
        f" {' AND '.join(where)} ORDER BY id LIMIT :limit) ORDER BY id",
        params,
    )
