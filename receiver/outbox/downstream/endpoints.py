"""The ``endpoints`` table: where downstream events go, and how each endpoint is doing."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from receiver.jsonutil import dumps, loads
from receiver.store.db.base import Database, Row, Transaction
from receiver.store.storable import storable_or_none


class EndpointStatus(enum.StrEnum):
    """An endpoint's status, stored as its value (as the outbox's statuses are:
    ``receiver/store/statuses.py``)."""

    ENABLED = "enabled"  # deliveries go out
    DISABLED = "disabled"  # deliveries wait (by hand, a 410, or failing for too long)
    DELETED = "deleted"  # gone for good; the row stays so that its id is never reused


# What a person may set; DELETED only through delete().
STATUSES: tuple[str, ...] = (EndpointStatus.ENABLED, EndpointStatus.DISABLED)
FAILURE_CHARS = 500  # the last failure kept on the endpoint: status and the answer's start

COLUMNS = (
    "id, url, description, kinds, providers, include_raw, status, disabled_reason,"
    " disabled_at, secret, previous_secret, previous_secret_until, created_at, updated_at,"
    " last_success_at, last_failure_at, last_failure, failing_since"
)
# What a person may change with PATCH (status through its own calls too).
UPDATABLE = ("url", "description", "kinds", "providers", "include_raw")


def strings(text: object) -> tuple[str, ...]:
    try:
        value = loads(str(text or "[]"))
    except (ValueError, RecursionError):
        return ()
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def _time(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: int
    url: str
    description: str
    kinds: tuple[str, ...]  # event types (empty: every signature_request.* type)
    providers: tuple[str, ...]  # empty: every provider
    include_raw: bool
    status: str
    disabled_reason: str | None
    disabled_at: float | None
    created_at: float
    updated_at: float
    last_success_at: float | None
    last_failure_at: float | None
    last_failure: str | None
    failing_since: float | None
    previous_secret_until: float | None
    # Encrypted (secrets.py); never shown, never logged.
    sealed_secret: str = field(repr=False)
    sealed_previous_secret: str | None = field(repr=False)


def from_row(row: Row) -> Endpoint:
    return Endpoint(
        id=int(row["id"]),
        url=str(row["url"]),
        description=str(row["description"] or ""),
        kinds=strings(row["kinds"]),
        providers=strings(row["providers"]),
        include_raw=bool(row["include_raw"]),
        status=str(row["status"]),
        disabled_reason=row["disabled_reason"],
        disabled_at=_time(row["disabled_at"]),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
        last_success_at=_time(row["last_success_at"]),
        last_failure_at=_time(row["last_failure_at"]),
        last_failure=row["last_failure"],
        failing_since=_time(row["failing_since"]),
        previous_secret_until=_time(row["previous_secret_until"]),
        sealed_secret=str(row["secret"]),
        sealed_previous_secret=row["previous_secret"],
    )


async def insert(
    tx: Transaction,
    *,
    url: str,
    description: str,
    kinds: Sequence[str],
    providers: Sequence[str],
    include_raw: bool,
    sealed_secret: str,
    now: float,
) -> Endpoint:
    tx.memo.pop(_FILTERS_MEMO, None)
    row = await tx.fetch_one(
        "INSERT INTO endpoints (url, description, kinds, providers, include_raw, status,"
        " secret, created_at, updated_at) VALUES (:url, :description, :kinds, :providers,"
        f" :include_raw, 'enabled', :secret, :now, :now) RETURNING {COLUMNS}",
        {
            "url": url,
            "description": description,
            "kinds": dumps(list(kinds)),
            "providers": dumps(list(providers)),
            "include_raw": include_raw,
            "secret": sealed_secret,
            "now": now,
        },
    )
    assert row is not None
    return from_row(row)


async def get(db: Database | Transaction, endpoint_id: int) -> Endpoint | None:
    """An endpoint that is not deleted."""
    row = await db.fetch_one(
        f"SELECT {COLUMNS} FROM endpoints WHERE id = :id AND status <> 'deleted'",
        {"id": endpoint_id},
    )
    return None if row is None else from_row(row)


async def listing(db: Database) -> list[Endpoint]:
    rows = await db.fetch_all(
        f"SELECT {COLUMNS} FROM endpoints WHERE status <> 'deleted' ORDER BY id"
    )
    return [from_row(r) for r in rows]


async def enabled_filters(tx: Transaction) -> list[Row]:
    """What fan-out needs of every enabled endpoint, read inside the emitting transaction
    (an endpoint created before it began is seen: no cache across transactions). Read once
    per transaction: the pipeline settles several inbox rows in one, and a read per event
    was a round trip per event on PostgreSQL."""
    memo = tx.memo.get(_FILTERS_MEMO)
    if memo is None:
        memo = tx.memo[_FILTERS_MEMO] = await tx.fetch_all(
            "SELECT id, kinds, providers FROM endpoints WHERE status = 'enabled' ORDER BY id"
        )
    rows: list[Row] = memo
    return rows


_FILTERS_MEMO = "endpoints.enabled_filters"


async def update(
    tx: Transaction, endpoint_id: int, changes: Mapping[str, Any], *, now: float
) -> Endpoint | None:
    tx.memo.pop(_FILTERS_MEMO, None)
    sets: list[str] = []
    params: dict[str, Any] = {"id": endpoint_id, "now": now}
    for name in UPDATABLE:
        if name in changes:
            value = changes[name]
            params[name] = dumps(list(value)) if name in ("kinds", "providers") else value
            sets.append(f"{name} = :{name}")
    row = await tx.fetch_one(
        f"UPDATE endpoints SET {', '.join([*sets, 'updated_at = :now'])}"
        f" WHERE id = :id AND status <> 'deleted' RETURNING {COLUMNS}",
        params,
    )
    return None if row is None else from_row(row)


async def set_status(
    tx: Transaction, endpoint_id: int, status: str, *, reason: str | None, now: float
) -> bool:
    """Enable or disable; True if it changed (disabling a disabled one changes nothing, so
    a second 410 in flight does not disable it twice). Enabling clears the failure streak."""
    tx.memo.pop(_FILTERS_MEMO, None)
    if status == EndpointStatus.DISABLED:
        changed = await tx.execute(
            "UPDATE endpoints SET status = 'disabled', disabled_reason = :reason,"
            " disabled_at = :now, updated_at = :now WHERE id = :id AND status = 'enabled'",
            {"id": endpoint_id, "reason": storable_or_none(reason, FAILURE_CHARS), "now": now},
        )
    else:
        changed = await tx.execute(
            "UPDATE endpoints SET status = 'enabled', disabled_reason = NULL,"
            " disabled_at = NULL, failing_since = NULL, updated_at = :now"
            " WHERE id = :id AND status = 'disabled'",
            {"id": endpoint_id, "now": now},
        )
    return changed > 0


async def mark_deleted(tx: Transaction, endpoint_id: int, *, now: float) -> bool:
    """Deleted for good: the row stays (its id is in every webhook-id it was sent and must
    never be handed out again), its secrets go."""
    tx.memo.pop(_FILTERS_MEMO, None)
    changed = await tx.execute(
        "UPDATE endpoints SET status = 'deleted', secret = '', previous_secret = NULL,"
        " previous_secret_until = NULL, updated_at = :now"
        " WHERE id = :id AND status <> 'deleted'",
        {"id": endpoint_id, "now": now},
    )
    return changed > 0


async def rotate(
    tx: Transaction,
    endpoint_id: int,
    *,
    sealed_secret: str,
    sealed_previous: str | None,
    previous_until: float | None,
    now: float,
) -> Endpoint | None:
    row = await tx.fetch_one(
        "UPDATE endpoints SET secret = :secret, previous_secret = :previous,"
        " previous_secret_until = :until, updated_at = :now"
        f" WHERE id = :id AND status <> 'deleted' RETURNING {COLUMNS}",
        {
            "id": endpoint_id,
            "secret": sealed_secret,
            "previous": sealed_previous,
            "until": previous_until,
            "now": now,
        },
    )
    return None if row is None else from_row(row)


async def mark_success(db: Database, endpoint_id: int, *, now: float) -> None:
    await db.execute(
        "UPDATE endpoints SET last_success_at = :now, failing_since = NULL WHERE id = :id",
        {"id": endpoint_id, "now": now},
    )


async def mark_failure(db: Database, endpoint_id: int, *, text: str, now: float) -> float | None:
    """Record a failed delivery; returns since when the endpoint has been failing."""
    row = await db.fetch_one(
        "UPDATE endpoints SET last_failure_at = :now, last_failure = :text,"
        " failing_since = COALESCE(failing_since, :now) WHERE id = :id"
        " RETURNING failing_since",
        {"id": endpoint_id, "now": now, "text": storable_or_none(text, FAILURE_CHARS)},
    )
    return None if row is None or row["failing_since"] is None else float(row["failing_since"])
