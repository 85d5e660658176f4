"""What the admin API and the CLI do with endpoints (both call these, with the same rules).

Input is checked field by field (:func:`endpoint_problems`): a problem is reported with its
field and reason, never stored. The signing secret is returned in full only by
:func:`create` and :func:`rotate`.
"""

from __future__ import annotations

import datetime as dt
import math
import secrets as random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError

from receiver.context import AppContext
from receiver.logs import get_logger, shown
from receiver.outbox.downstream import catalogue, delivery_of, emit, lane_of, signing
from receiver.outbox.downstream import endpoints as endpoint_store
from receiver.outbox.downstream import events as event_store
from receiver.outbox.downstream.endpoints import Endpoint, EndpointStatus
from receiver.outbox.downstream.runtime import downstream
from receiver.outbox.downstream.secrets import new_secret
from receiver.store import outbox
from receiver.store import requests as request_store
from receiver.store.db.base import Row
from receiver.store.statuses import ActionStatus
from receiver.store.storable import text_problem

log = get_logger("signback.downstream")

REPLAY_LIMIT = 10_000  # events one replay call queues at most
_REPLAY_CHUNK = 500  # events per transaction while queueing a replay
DELIVERY_STATUSES: tuple[str, ...] = tuple(ActionStatus)


class EndpointBody(BaseModel):
    """``POST /api/endpoints`` (and ``signback endpoints add``)."""

    model_config = ConfigDict(extra="forbid")

    url: StrictStr = Field(min_length=1)
    description: StrictStr = Field(default="", max_length=500)
    kinds: list[StrictStr] = Field(default_factory=list, max_length=64)
    providers: list[StrictStr] = Field(default_factory=list, max_length=16)
    include_raw: StrictBool = False


class EndpointPatch(BaseModel):
    """``PATCH /api/endpoints/{id}``: any of the fields, and ``status``."""

    model_config = ConfigDict(extra="forbid")

    url: StrictStr | None = Field(default=None, min_length=1)
    description: StrictStr | None = Field(default=None, max_length=500)
    kinds: list[StrictStr] | None = Field(default=None, max_length=64)
    providers: list[StrictStr] | None = Field(default=None, max_length=16)
    include_raw: StrictBool | None = None
    status: StrictStr | None = None


Problems = list[dict[str, str]]


def endpoint_problems(
    ctx: AppContext, data: Any, *, patch: bool = False
) -> tuple[dict[str, Any], Problems]:
    """The checked fields (only those given, for a patch), or every problem at once."""
    model: type[BaseModel] = EndpointPatch if patch else EndpointBody
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        return {}, [
            {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
    fields = parsed.model_dump(exclude_unset=patch)
    problems: Problems = []
    if patch:
        # null is no value: it used to leave the field unchanged without a word, so that
        # {"kinds": null} looked like going back to the default and was not.
        for name in sorted(k for k, v in fields.items() if v is None):
            hint = " (an empty list means the default)" if name in ("kinds", "providers") else ""
            problems.append(
                {"field": name, "message": f"must not be null: leave it out to keep it{hint}"}
            )
        fields = {k: v for k, v in fields.items() if v is not None}
    if "url" in fields:
        problem = downstream(ctx).policy.url_problem(fields["url"])
        if problem is not None:
            problems.append({"field": "url", "message": problem})
    if "description" in fields and (problem := text_problem(fields["description"])):
        problems.append({"field": "description", "message": problem})
    if "kinds" in fields and (problem := catalogue.filter_problem(fields["kinds"])):
        problems.append({"field": "kinds", "message": problem})
    if "providers" in fields:
        unknown = sorted(set(fields["providers"]) - set(ctx.providers))
        if unknown:
            problems.append(
                {
                    "field": "providers",
                    "message": f"unknown provider(s) {', '.join(unknown)};"
                    f" installed: {', '.join(sorted(ctx.providers))}",
                }
            )
    if "status" in fields and fields["status"] not in endpoint_store.STATUSES:
        problems.append(
            {"field": "status", "message": f"must be one of {', '.join(endpoint_store.STATUSES)}"}
        )
    for name in ("kinds", "providers"):
        if name in fields:
            fields[name] = list(dict.fromkeys(fields[name]))
    return fields, problems


async def resolved_problems(ctx: AppContext, url: str) -> Problems:
    """The URL's host checked on its resolved addresses (refused: a clear 422 at creation;
    the same check guards every connection)."""
    problem = await downstream(ctx).policy.resolved_problem(url)
    return [] if problem is None else [{"field": "url", "message": problem}]


def endpoint_json(
    endpoint: Endpoint, *, secret: str | None = None, counts: Mapping[str, int] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": endpoint.id,
        "url": endpoint.url,
        "description": endpoint.description,
        "kinds": list(endpoint.kinds),
        "providers": list(endpoint.providers),
        "include_raw": endpoint.include_raw,
        "status": endpoint.status,
        "disabled_reason": endpoint.disabled_reason,
        "disabled_at": event_store.iso(endpoint.disabled_at),
        "created_at": event_store.iso(endpoint.created_at),
        "updated_at": event_store.iso(endpoint.updated_at),
        "last_success_at": event_store.iso(endpoint.last_success_at),
        "last_failure_at": event_store.iso(endpoint.last_failure_at),
        "last_failure": shown(endpoint.last_failure),
        "failing_since": event_store.iso(endpoint.failing_since),
        "previous_secret_valid_until": event_store.iso(endpoint.previous_secret_until),
    }
    if secret is not None:
        body["secret"] = secret
    if counts is not None:
        body["deliveries"] = dict(counts)
    return body


async def create(ctx: AppContext, fields: Mapping[str, Any]) -> tuple[Endpoint, str]:
    secret = new_secret()
    runtime = downstream(ctx)
    async with ctx.db.transaction() as tx:
        endpoint = await endpoint_store.insert(
            tx,
            url=fields["url"],
            description=fields.get("description", ""),
            kinds=fields.get("kinds", []),
            providers=fields.get("providers", []),
            include_raw=bool(fields.get("include_raw", False)),
            sealed_secret=runtime.box.seal(secret),
            now=ctx.clock(),
        )
    runtime.invalidate()
    log.info("endpoint created", endpoint=endpoint.id, url=endpoint.url)
    return endpoint, secret


async def update(ctx: AppContext, endpoint_id: int, fields: Mapping[str, Any]) -> Endpoint | None:
    changes = {k: v for k, v in fields.items() if k in endpoint_store.UPDATABLE}
    status = fields.get("status")
    now = ctx.clock()
    async with ctx.db.transaction() as tx:
        endpoint = await endpoint_store.update(tx, endpoint_id, changes, now=now)
    if endpoint is not None and status is not None:
        endpoint = await set_status(ctx, endpoint_id, status)
    downstream(ctx).invalidate()
    return endpoint


async def set_status(ctx: AppContext, endpoint_id: int, status: str) -> Endpoint | None:
    """Enable (its held deliveries go at once) or disable (by hand: no event)."""
    now = ctx.clock()
    async with ctx.db.transaction() as tx:
        changed = await endpoint_store.set_status(
            tx, endpoint_id, status, reason="disabled by hand", now=now
        )
        if changed and status == EndpointStatus.ENABLED:
            woken = await tx.execute(
                "UPDATE outbox SET due_at = :now, updated_at = :now WHERE lane = :lane"
                " AND status = 'pending' AND due_at > :now",
                {"lane": lane_of(endpoint_id), "now": now},
            )
            if woken:
                tx.notify_on_commit(outbox.OUTBOX_CHANNEL)
        endpoint = await endpoint_store.get(tx, endpoint_id)
    downstream(ctx).invalidate()
    if changed:
        log.info("endpoint " + status, endpoint=endpoint_id)
    return endpoint


async def disable(ctx: AppContext, endpoint_id: int, *, reason: str, cause: str) -> bool:
    """Disabled by signback itself (``cause``: ``gone`` or ``failing``): a
    ``signback.endpoint.disabled`` event for the endpoints that asked for it, and a metric.
    False if it was not enabled (another delivery disabled it first)."""
    now = ctx.clock()
    runtime = downstream(ctx)
    async with ctx.db.transaction() as tx:
        changed = await endpoint_store.set_status(
            tx, endpoint_id, EndpointStatus.DISABLED, reason=reason, now=now
        )
        endpoint = await endpoint_store.get(tx, endpoint_id) if changed else None
        if endpoint is not None:
            await emit.endpoint_disabled(tx, endpoint=endpoint, reason=reason, now=now)
    runtime.invalidate()
    if changed:
        runtime.disabled.inc(cause)
        log.warning("endpoint disabled", endpoint=endpoint_id, cause=cause, reason=reason)
    return changed


async def delete(ctx: AppContext, endpoint_id: int) -> bool:
    """Deleted: its waiting deliveries are skipped (those in flight finish)."""
    now = ctx.clock()
    async with ctx.db.transaction() as tx:
        deleted = await endpoint_store.mark_deleted(tx, endpoint_id, now=now)
        if deleted:
            await tx.execute(
                "UPDATE outbox SET status = 'skipped', last_error = 'the endpoint was deleted',"
                " updated_at = :now WHERE lane = :lane AND status = 'pending'",
                {"lane": lane_of(endpoint_id), "now": now},
            )
    downstream(ctx).invalidate()
    if deleted:
        log.info("endpoint deleted", endpoint=endpoint_id)
    return deleted


async def rotate(ctx: AppContext, endpoint_id: int) -> tuple[Endpoint, str] | None:
    """A new secret; the current one keeps signing too (a second signature) for
    ``SIGNBACK_ENDPOINT_SECRET_OVERLAP_SECONDS``. A secret rotated out earlier stops."""
    runtime = downstream(ctx)
    secret = new_secret()
    now = ctx.clock()
    async with ctx.db.transaction() as tx:
        current = await endpoint_store.get(tx, endpoint_id)
        if current is None:
            return None
        # A current secret this key cannot open (SIGNBACK_SECRET_KEY changed) is not kept to
        # sign during the overlap: it could not, and the rotation is how to recover.
        keep = runtime.box.readable(current.sealed_secret)
        endpoint = await endpoint_store.rotate(
            tx,
            endpoint_id,
            sealed_secret=runtime.box.seal(secret),
            sealed_previous=current.sealed_secret if keep else None,
            previous_until=now + ctx.settings.endpoint_secret_overlap_seconds if keep else None,
            now=now,
        )
    runtime.invalidate()
    if endpoint is None:
        return None
    log.info("endpoint secret rotated", endpoint=endpoint_id)
    return endpoint, secret


async def send_test(ctx: AppContext, endpoint: Endpoint) -> emit.Emitted | None:
    async with ctx.db.transaction() as tx:
        return await emit.test_event(tx, endpoint=endpoint, now=ctx.clock())


@dataclass(frozen=True)
class Replay:
    queued: int  # deliveries queued
    events: int  # events looked at
    truncated: bool  # more events matched than one replay queues (REPLAY_LIMIT)


async def unknown_request(ctx: AppContext, done: Replay, request_id: int | None) -> Problems:
    """A replay of a request signback has neither a row nor any event of is a mistake in
    the id (a 422), not an empty window."""
    if request_id is None or done.events or await request_store.get(ctx.db, request_id):
        return []
    return [{"field": "request_id", "message": f"no request with id {request_id}"}]


async def replay(
    ctx: AppContext,
    endpoint: Endpoint,
    *,
    since: float | None,
    until: float | None,
    request_id: int | None,
) -> Replay:
    """Queue the stored events of that window (and request) that the endpoint's filters
    take, again, in their order: each with the ``webhook-id`` of its first delivery."""
    suffix = f":replay:{random.token_hex(6)}"
    queued = seen = 0
    after = 0
    truncated = False
    while seen < REPLAY_LIMIT:
        rows = await event_store.search(
            ctx.db,
            since=since,
            until=until,
            request_id=request_id,
            after_id=after,
            limit=min(_REPLAY_CHUNK, REPLAY_LIMIT - seen),
        )
        if not rows:
            break
        seen += len(rows)
        after = int(rows[-1]["id"])
        async with ctx.db.transaction() as tx:
            for row in rows:
                if not _takes(endpoint, row):
                    continue
                queued += await emit.queue_deliveries(
                    tx,
                    event_id=int(row["id"]),
                    request_id=None if row["request_id"] is None else int(row["request_id"]),
                    endpoint_ids=[endpoint.id],
                    key_suffix=suffix,
                    source_inbox_id=None,
                    now=ctx.clock(),
                )
    else:
        truncated = bool(
            await event_store.search(
                ctx.db, since=since, until=until, request_id=request_id, after_id=after, limit=1
            )
        )
    log.info("events replayed", endpoint=endpoint.id, queued=queued, truncated=truncated)
    return Replay(queued=queued, events=seen, truncated=truncated)


def _takes(endpoint: Endpoint, event: Row) -> bool:
    if not catalogue.wanted(str(event["type"]), endpoint.kinds):
        return False
    provider = event["provider"]
    return provider is None or not endpoint.providers or provider in endpoint.providers


async def retry_dead(ctx: AppContext, endpoint_id: int) -> int:
    """Re-queue every dead delivery of the endpoint (one more attempt each, as
    ``signback outbox retry`` gives an action)."""
    now = ctx.clock()
    async with ctx.db.transaction() as tx:
        requeued = await tx.execute(
            "UPDATE outbox SET status = 'pending', due_at = :now, updated_at = :now"
            " WHERE lane = :lane AND status = 'dead'",
            {"lane": lane_of(endpoint_id), "now": now},
        )
        if requeued:
            tx.notify_on_commit(outbox.OUTBOX_CHANNEL)
    log.info("dead deliveries re-queued", endpoint=endpoint_id, count=requeued)
    return requeued


async def delivery_counts(ctx: AppContext, endpoint_id: int) -> dict[str, int]:
    rows = await ctx.db.fetch_all(
        "SELECT status, COUNT(*) AS n FROM outbox WHERE lane = :lane GROUP BY status",
        {"lane": lane_of(endpoint_id)},
    )
    return {str(r["status"]): int(r["n"]) for r in rows}


async def deliveries(
    ctx: AppContext,
    endpoint_id: int,
    *,
    status: str | None,
    before_id: int | None,
    limit: int,
) -> list[dict[str, Any]]:
    """The endpoint's deliveries, newest first, each with its event and attempts."""
    rows = await outbox.in_lane(
        ctx.db, lane_of(endpoint_id), status=status, before_id=before_id, limit=limit
    )
    attempts = await outbox.attempts_for(ctx.db, [int(r["id"]) for r in rows])
    ids = {int(r["id"]): delivery_of(str(r["payload"])) for r in rows}
    found = await event_store.get_many(ctx.db, [d[0] for d in ids.values() if d])
    items = []
    for row in rows:
        delivery = ids.get(int(row["id"]))
        event = found.get(delivery[0]) if delivery else None
        items.append(
            {
                "id": int(row["id"]),
                "request_id": None if row["request_id"] is None else int(row["request_id"]),
                "event": None
                if event is None
                else {"id": event["public_id"], "type": event["type"]},
                "webhook_id": None
                if event is None
                else signing.message_id(str(event["public_id"]), endpoint_id),
                "status": row["status"],
                "attempts": int(row["attempts"]),
                "due_at": event_store.iso(_float(row["due_at"])),
                "last_status_code": row["last_status_code"],
                "last_error": shown(row["last_error"]),
                "created_at": event_store.iso(_float(row["created_at"])),
                "updated_at": event_store.iso(_float(row["updated_at"])),
                "attempt_log": [
                    {
                        "attempt": a["attempt"],
                        "started_at": event_store.iso(_float(a["started_at"])),
                        "duration_ms": a["duration_ms"],
                        "status_code": a["status_code"],
                        "outcome": a["outcome"],
                        "error": shown(a["error"]),
                        "response_excerpt": shown(a["response_excerpt"]),
                    }
                    for a in attempts.get(int(row["id"]), [])
                ],
            }
        )
    return items


def _float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def parse_time(value: Any, name: str) -> float | None:
    """A replay bound: RFC 3339 (``2026-12-01T10:00:00Z``) or unix seconds; raises
    ValueError with the reason."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a time (RFC 3339) or unix seconds")
    if isinstance(value, int | float):
        if not math.isfinite(value) or not 0 <= value < 4_102_444_800:
            raise ValueError(f"{name} is out of range")
        return float(value)
    if isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{name} must be a time such as 2026-12-01T10:00:00Z") from None
        if moment.tzinfo is None:
            raise ValueError(f"{name} needs a time zone (Z or +01:00)")
        return moment.timestamp()
    raise ValueError(f"{name} must be a time (RFC 3339) or unix seconds")


def replay_window(data: Any) -> tuple[dict[str, Any], Problems]:
    """``{"since", "until", "request_id"}`` of a replay, checked."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return {}, [{"field": "body", "message": "must be a JSON object"}]
    problems: Problems = []
    unknown = sorted(set(data) - {"since", "until", "request_id"})
    for name in unknown:
        problems.append({"field": name, "message": "unknown field"})
    window: dict[str, Any] = {}
    for name in ("since", "until"):
        try:
            window[name] = parse_time(data.get(name), name)
        except ValueError as exc:
            problems.append({"field": name, "message": str(exc)})
    request_id = data.get("request_id")
    if request_id is not None and (
        isinstance(request_id, bool)
        or not isinstance(request_id, int)
        or not 0 < request_id < 2**63
    ):
        problems.append({"field": "request_id", "message": "must be a request id (a number)"})
    window["request_id"] = request_id
    if (
        not problems
        and window["since"] is not None
        and window["until"] is not None
        and window["since"] >= window["until"]
    ):
        problems.append({"field": "until", "message": "must be after since"})
    return window, problems


def summary(endpoints: Sequence[Endpoint]) -> list[dict[str, Any]]:
    return [endpoint_json(e) for e in endpoints]
