"""A request's story on one timeline, built from a list of sources.

Each source reads one kind of fact about the request and turns it into :class:`Entry`s;
the timeline is all of them, in time order. A stage that adds facts about requests (the
archive's documents, reconciliation's findings) adds a source to :data:`SOURCES` (or
:func:`add_source`) and, if its entries need more than the generic rendering, a template
block keyed by ``Entry.kind``.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from receiver import jsonutil
from receiver.console import documents
from receiver.context import AppContext
from receiver.outbox.downstream import endpoint_of_lane
from receiver.store import inbox, outbox
from receiver.store.db.base import Database, Row

# Inbox channels that are not callbacks from a provider.
RECONCILE_CHANNEL = "reconcile"  # what reconciliation found by asking the provider
SIGNBACK_CHANNEL = "signback"  # signback's own entries (registration, checks with the provider)


@dataclass
class Entry:
    at: float | None  # unix seconds; None sorts first
    kind: str  # callback | state | decision | action | delivery | event | document | finding …
    title: str
    status: str | None = None  # a status word, always shown as text
    order: int = 0  # ties at the same time: the order of the sources' facts
    facts: dict[str, Any] = field(default_factory=dict)  # label → value, shown as a list
    row: Row | None = None  # the row itself, for kinds with their own rendering
    children: list[Row] = field(default_factory=list)  # an action's attempts


Source = Callable[[AppContext, Row], Awaitable[list[Entry]]]


def _time(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


async def callbacks(ctx: AppContext, request: Row) -> list[Entry]:
    """Every inbox row of the request, and each state change one of them made."""
    entries = []
    for row in await inbox.timeline(ctx.db, int(request["id"])):
        at = _time(row["received_at"])
        channel = str(row["channel"])
        kind = {RECONCILE_CHANNEL: "finding", SIGNBACK_CHANNEL: "signback"}.get(channel, "callback")
        label = {"finding": "reconciliation finding", "signback": "signback"}.get(kind, "callback")
        what = row["provider_type"] or row["kind"] or "not processed yet"
        entries.append(
            Entry(
                at,
                kind,
                f"{label}: {what}",
                status=str(row["status"]),
                order=int(row["id"]) * 10,
                facts={
                    "inbox id": row["id"],
                    "channel": channel,
                    "kind": row["kind"],
                    "event id": row["event_id"],
                    "occurred at": row["occurred_at"],
                    "note": row["note"],
                    "error": row["error"],
                },
                row=row,
            )
        )
        before, after = row["state_before"], row["state_after"]
        if after and before != after:
            entries.append(
                Entry(
                    at,
                    "state",
                    f"state changed: {before or '-'} → {after}",
                    status=str(after),
                    order=int(row["id"]) * 10 + 1,
                    facts={"by inbox row": row["id"]},
                )
            )
    return entries


async def actions(ctx: AppContext, request: Row) -> list[Entry]:
    """Every outbox action (the rule decision that queued it, then its attempts): calls to
    the provider and deliveries to endpoints."""
    rows = await outbox.for_request(ctx.db, int(request["id"]))
    attempts = await outbox.attempts_for(ctx.db, [int(r["id"]) for r in rows])
    entries = []
    for row in rows:
        endpoint = endpoint_of_lane(str(row.get("lane") or "provider"))
        kind = "delivery" if endpoint is not None else "action"
        title = (
            f"delivery to endpoint {endpoint}"
            if endpoint is not None
            else f"rule decision: {row['operation']}"
        )
        entries.append(
            Entry(
                _time(row["created_at"]),
                kind,
                title,
                status=str(row["status"]),
                order=int(row["id"]) * 10 + 5,
                facts={
                    "action id": row["id"],
                    "key": row["action_key"],
                    "operation": row["operation"],
                    "caused by inbox row": row["source_inbox_id"],
                    "attempts": row["attempts"],
                    "due at": row["due_at"],
                    "last status code": row["last_status_code"],
                    "last error": row["last_error"],
                    "payload": jsonutil.dumps_view(jsonutil.loads_object(row["payload"])).decode(),
                },
                row=row,
                children=attempts.get(int(row["id"]), []),
            )
        )
    return entries


async def events(ctx: AppContext, request: Row) -> list[Entry]:
    """The downstream events emitted about the request."""
    from receiver.console.queries import events_for

    return [
        Entry(
            _time(row["created_at"]),
            "event",
            f"event emitted: {row['type']}",
            order=int(row["id"]) * 10 + 7,
            facts={"event": row["public_id"], "caused by inbox row": row["source_inbox_id"]},
        )
        for row in await events_for(ctx.db, int(request["id"]))
    ]


# One per database (per app): whether it has the archive's table.
_DOCUMENT_TABLES: weakref.WeakKeyDictionary[Database, documents.DocumentTable] = (
    weakref.WeakKeyDictionary()
)


async def has_documents(ctx: AppContext) -> bool:
    table = _DOCUMENT_TABLES.setdefault(ctx.db, documents.DocumentTable())
    return await table.present(ctx.db, ctx.clock())


async def archived(ctx: AppContext, request: Row) -> list[Entry]:
    """The request's archived documents (when the store has the archive's table)."""
    return [
        Entry(
            _time(row["archived_at"]),
            "document",
            f"document archived: {row['name']}",
            status="purged" if row["purged_at"] is not None else "kept",
            order=int(row["id"]) * 10 + 8,
            facts={"kind": row["kind"], "size": row["size"], "sha256": row["sha256"]},
            row=row,
        )
        for row in await document_rows(ctx, request)
    ]


SOURCES: list[Source] = [callbacks, actions, events, archived]


def add_source(source: Source) -> None:
    if source not in SOURCES:
        SOURCES.append(source)


async def build(ctx: AppContext, request: Row) -> list[Entry]:
    entries: list[Entry] = []
    for source in SOURCES:
        entries += await source(ctx, request)
    entries.sort(key=lambda e: (e.at if e.at is not None else float("-inf"), e.order))
    return entries


async def document_rows(ctx: AppContext, request: Row) -> list[Row]:
    """The request's archived documents, when the store has the archive's table."""
    if not await has_documents(ctx):
        return []
    return await documents.for_request(ctx.db, int(request["id"]))
