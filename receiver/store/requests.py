"""Signature requests."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from receiver.jsonutil import dumps, loads_object
from receiver.model import RequestState, SignatureRequest
from receiver.store.db.base import (
    JSON_IDS,
    BatchedWrite,
    Database,
    Params,
    Row,
    Transaction,
    in_list,
    json_rows,
)
from receiver.store.newest import newest_first

COLUMNS = (
    "id, provider, external_id, document_id, reference, state, provider_status, return_url, "
    "retry_url, metadata, defaults, token_nonce, created_at, updated_at, sendinfo_hash, "
    "shared_token_retired_at"
)


TERMINAL_STATES = frozenset(
    {
        RequestState.COMPLETED,
        RequestState.DECLINED,
        RequestState.CANCELLED,
        RequestState.EXPIRED,
        RequestState.DELETED,
    }
)


def match_key(provider: str, external_id: str) -> str:
    """The lock key that serializes matching events with registering the request."""
    return f"match:{provider}:{external_id}"


def from_row(row: Row) -> SignatureRequest:
    return SignatureRequest(
        id=int(row["id"]),
        provider=row["provider"],
        external_id=row["external_id"],
        state=RequestState(row["state"]),
        document_id=row["document_id"],
        reference=row["reference"],
        return_url=row["return_url"],
        retry_url=row["retry_url"],
        metadata=loads_object(row["metadata"]),
        defaults=loads_object(row["defaults"]),
        provider_status=row["provider_status"],
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
    )


async def insert(
    tx: Transaction,
    *,
    provider: str,
    external_id: str,
    document_id: str | None,
    reference: str | None,
    return_url: str | None,
    retry_url: str | None,
    metadata: Mapping[str, Any],
    defaults: Mapping[str, Any],
    token_hash: str,
    hook_hash: str,
    token_nonce: str,
    now: float,
    next_reconcile_at: float | None = None,
    reconcile_interval: float | None = None,
) -> Row | None:
    """Insert; None when (provider, external_id) is already registered.

    ``token_hash`` is the return token's hash, ``hook_hash`` the hook token's (column
    ``sendinfo_hash``, named when one provider had such a route). A new request never had a
    shared token: it is retired from the start."""
    return await tx.fetch_one(
        "INSERT INTO signature_requests (provider, external_id, document_id, reference, state,"
        " return_url, retry_url, metadata, defaults, token_hash, sendinfo_hash,"
        " shared_token_retired_at, token_nonce, created_at, updated_at, next_reconcile_at,"
        " reconcile_interval) VALUES (:provider, :external_id, :document_id, :reference,"
        " :state, :return_url, :retry_url, :metadata, :defaults, :token_hash, :sendinfo_hash,"
        " :now, :token_nonce, :now, :now, :next_reconcile_at, :reconcile_interval)"
        f" ON CONFLICT DO NOTHING RETURNING {COLUMNS}",
        {
            "provider": provider,
            "external_id": external_id,
            "document_id": document_id,
            "reference": reference,
            "state": RequestState.REGISTERED.value,
            "return_url": return_url,
            "retry_url": retry_url,
            "metadata": dumps(dict(metadata)),
            "defaults": dumps(dict(defaults)),
            "token_hash": token_hash,
            "sendinfo_hash": hook_hash,
            "token_nonce": token_nonce,
            "now": now,
            "next_reconcile_at": next_reconcile_at,
            "reconcile_interval": reconcile_interval,
        },
    )


async def get(db: Database | Transaction, request_id: int, *, lock: str = "") -> Row | None:
    return await db.fetch_one(
        f"SELECT {COLUMNS} FROM signature_requests WHERE id = :id {lock}", {"id": request_id}
    )


async def get_many(
    db: Database | Transaction,
    request_ids: set[int],
    *,
    keys: Collection[tuple[str, str]] = (),
    lock: str = "",
) -> dict[int, Row]:
    """Several requests in one query (the ones that exist), by id and by (provider, external
    id). ``lock``: the database's ``{for_update}``; the rows are then locked in id order, so
    two workers that each lock several requests take them in the same order and can never
    wait for each other in a circle."""
    if not request_ids and not keys:
        return {}
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if request_ids:
        ids, params = in_list(sorted(request_ids))
        clauses.append(f"id IN {ids}")
    for i, (provider, external_id) in enumerate(sorted(keys)):
        clauses.append(f"(provider = :p_{i} AND external_id = :x_{i})")
        params[f"p_{i}"], params[f"x_{i}"] = provider, external_id
    rows = await db.fetch_all(
        f"SELECT {COLUMNS} FROM signature_requests WHERE {' OR '.join(clauses)} ORDER BY id {lock}",
        params,
    )
    return {int(row["id"]): row for row in rows}


async def by_external_id(
    db: Database | Transaction, provider: str, external_id: str, *, lock: str = ""
) -> Row | None:
    return await db.fetch_one(
        f"SELECT {COLUMNS} FROM signature_requests"
        f" WHERE provider = :provider AND external_id = :external_id {lock}",
        {"provider": provider, "external_id": external_id},
    )


async def same_document(db: Database | Transaction, provider: str, document_id: str) -> list[Row]:
    """The requests of ``provider`` on ``document_id`` (its signing rounds), oldest first:
    each one's ``id`` and ``document_version`` (migration 0008)."""
    return await db.fetch_all(
        "SELECT id, document_version FROM signature_requests"
        " WHERE provider = :provider AND document_id = :document_id ORDER BY id",
        {"provider": provider, "document_id": document_id},
    )


async def set_document_version(db: Database, request_id: int, version: str) -> None:
    """Keep the version of its document that ``request_id``'s outcome was confirmed with."""
    async with db.transaction() as tx:
        await tx.execute(
            "UPDATE signature_requests SET document_version = :version WHERE id = :id",
            {"version": version[:64], "id": request_id},
        )


async def by_return_hash(db: Database | Transaction, digest: str) -> Row | None:
    """The request whose return token (``/return/<token>``) hashes to ``digest``."""
    return await db.fetch_one(
        f"SELECT {COLUMNS}, token_hash FROM signature_requests WHERE token_hash = :h",
        {"h": digest},
    )


async def by_hook_hash(db: Database | Transaction, digest: str) -> Row | None:
    """The request whose hook token hashes to ``digest``, or, while its shared token is not
    retired yet, whose return token does (a request registered before the two were split,
    whose provider may still call the old URL). The caller tells the two apart by comparing
    ``sendinfo_hash`` (the hook token's column). One query, one probe of each unique index."""
    return await db.fetch_one(
        f"SELECT {COLUMNS}, token_hash FROM signature_requests WHERE sendinfo_hash = :h"
        " OR (token_hash = :h AND shared_token_retired_at IS NULL)",
        {"h": digest},
    )


async def without_hook_hash(tx: Transaction, *, limit: int, lock: str = "") -> list[Row]:
    """Rows written before the hook token existed, oldest first. ``lock``: the database's
    ``{skip_locked}``, so that processes starting at once share the rows out."""
    return await tx.fetch_all(
        f"SELECT {COLUMNS} FROM signature_requests WHERE sendinfo_hash IS NULL"
        f" ORDER BY id LIMIT :limit {lock}",
        {"limit": limit},
    )


async def set_hook_hash(
    tx: Transaction, request_id: int, digest: str, *, retire_shared_at: float | None
) -> bool:
    """Store a row's hook token hash (once); ``retire_shared_at`` also retires its shared
    token. False if another process was first."""
    changed = await tx.execute(
        "UPDATE signature_requests SET sendinfo_hash = :h, shared_token_retired_at ="
        " COALESCE(shared_token_retired_at, :retired) WHERE id = :id AND sendinfo_hash IS NULL",
        {"h": digest, "retired": retire_shared_at, "id": request_id},
    )
    return changed > 0


async def retire_shared_token(tx: Transaction, request_id: int, *, now: float) -> bool:
    """From now on only the hook token opens this request's hook route."""
    changed = await tx.execute(
        "UPDATE signature_requests SET shared_token_retired_at = :now"
        " WHERE id = :id AND shared_token_retired_at IS NULL",
        {"now": now, "id": request_id},
    )
    return changed > 0


# A request that ended is read no more: its reconciliation schedule ends with it.
_SET_STATE_SQL = (
    "UPDATE signature_requests SET state = :state,"
    " provider_status = COALESCE(:provider_status, provider_status), updated_at = :now,"
    " next_reconcile_at = CASE WHEN :ended = 1 THEN NULL ELSE next_reconcile_at END"
    " WHERE id = :id"
)

# The state changes of a pipeline chunk in one statement on PostgreSQL. Several changes of
# one request (two of its events in a chunk) come out as they would one after the other:
# the last state and time, the last provider status given, the schedule ended if any of
# them ended it. Its rows are found by their ids first (JSON_IDS).
# Independent: the chunk's other held writes do not touch the requests (they were read,
# and locked, before any of them).
_SET_STATES_SQL = (
    "WITH r AS (SELECT * FROM "
    + json_rows("id bigint, state text, provider_status text, now double precision, ended integer")
    + "), last AS (SELECT id, (array_agg(state ORDER BY n DESC))[1] AS state,"
    " (array_agg(provider_status ORDER BY n DESC)"
    " FILTER (WHERE provider_status IS NOT NULL))[1] AS provider_status,"
    " (array_agg(now ORDER BY n DESC))[1] AS now, MAX(ended) AS ended FROM r GROUP BY id)"
    " UPDATE signature_requests s SET state = last.state,"
    " provider_status = COALESCE(last.provider_status, s.provider_status),"
    " updated_at = last.now,"
    " next_reconcile_at = CASE WHEN last.ended = 1 THEN NULL ELSE s.next_reconcile_at END"
    f" FROM last WHERE s.id = last.id AND s.id = {JSON_IDS} RETURNING s.id"
)


async def _set_one_state(tx: Transaction, params: Params) -> int:
    return await tx.execute(_SET_STATE_SQL, params)


_SET_STATE = BatchedWrite(_SET_STATES_SQL, ("id",), _set_one_state, independent=True)


async def set_state(
    tx: Transaction,
    request_id: int,
    *,
    state: RequestState,
    provider_status: str | None,
    now: float,
) -> None:
    """Held back (nothing reads its result): on PostgreSQL it goes with the transaction's
    next statement, one statement for the chunk's state changes."""
    await tx.execute_batched_later(
        _SET_STATE,
        {
            "id": request_id,
            "state": state.value,
            "provider_status": provider_status,
            "now": now,
            "ended": 1 if state in TERMINAL_STATES else 0,
        },
    )


async def search(
    db: Database,
    *,
    state: str | None = None,
    provider: str | None = None,
    reference: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[Row]:
    """Newest first, through an index whatever the filters: a provider alone is read as
    one range of ``(provider, state, id)`` per state (receiver/store/newest.py)."""
    clauses: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    for name, value in (("state", state), ("provider", provider), ("reference", reference)):
        if value is not None:
            clauses.append(f"{name} = :{name}")
            params[name] = value
    if before_id is not None:
        clauses.append("id < :before_id")
        params["before_id"] = before_id
    branches = [" AND ".join(clauses) or "1 = 1"]
    if provider is not None and state is None and reference is None:
        branches = [f"state = :st_{i} AND {branches[0]}" for i in range(len(RequestState))]
        params.update({f"st_{i}": s.value for i, s in enumerate(RequestState)})
    return await db.fetch_all(newest_first("signature_requests", COLUMNS, branches), params)


async def open_requests(db: Database, *, after_id: int, limit: int) -> list[Row]:
    """Requests that have not ended, oldest first (for re-pointing callback URLs)."""
    return await db.fetch_all(
        f"SELECT {COLUMNS} FROM signature_requests WHERE id > :after AND state NOT IN"
        " ('completed', 'declined', 'cancelled', 'expired', 'deleted') ORDER BY id LIMIT :limit",
        {"after": after_id, "limit": limit},
    )
