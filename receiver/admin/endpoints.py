"""The admin API for downstream endpoints, under /api/endpoints (and /api/events).

Registered by :func:`receiver.admin.api.routes`, behind the same bearer-token guard and with
the same answers: 400 for a body that is not JSON, 404 for an unknown (or deleted) endpoint,
409 for a call the endpoint's status does not allow, 413 for a body over 256 KiB, 422 with
each field's problem, 503 while the database cannot answer. The signing secret is in the
answer of a creation and of a rotation only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from receiver.admin.api import (
    MAX_API_BODY,
    MAX_ROW_ID,
    ApiJSON,
    Endpoint,
    ParameterError,
    _choice,
    _int_param,
    _whole_number,
    error,
    row_id,
)
from receiver.context import AppContext
from receiver.jsonutil import loads_object
from receiver.outbox.downstream import catalogue, manage
from receiver.outbox.downstream import endpoints as endpoint_store
from receiver.outbox.downstream import events as event_store
from receiver.store.db.base import Row


class BodyError(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


async def _json_body(request: Request, *, optional: bool = False) -> Any:
    raw = await request.body()
    if len(raw) > MAX_API_BODY:
        raise BodyError(error(413, f"body larger than {MAX_API_BODY} bytes"))
    if optional and not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BodyError(error(400, f"body is not valid JSON: {str(exc)[:200]}")) from None


def event_json(row: Row) -> dict[str, Any]:
    return {
        "id": row["public_id"],
        "type": row["type"],
        "request_id": row["request_id"],
        "timestamp": event_store.iso(float(row["timestamp"])),
        "document": loads_object(row["payload"]),
    }


def routes(ctx: AppContext, admin: Callable[[Endpoint], Endpoint]) -> list[BaseRoute]:
    """The routes, each wrapped in the API's ``admin`` guard."""

    def handled(endpoint: Endpoint) -> Endpoint:
        async def run(request: Request) -> Response:
            try:
                return await endpoint(request)
            except BodyError as exc:
                return exc.response

        return admin(run)

    async def found(request: Request) -> endpoint_store.Endpoint | None:
        endpoint_id = row_id(request.path_params["id"])
        return None if endpoint_id is None else await endpoint_store.get(ctx.db, endpoint_id)

    async def create(request: Request) -> Response:
        data = await _json_body(request)
        fields, problems = manage.endpoint_problems(ctx, data)
        if not problems:
            problems = await manage.resolved_problems(ctx, fields["url"])
        if problems:
            return error(422, "invalid endpoint", fields=problems)
        endpoint, secret = await manage.create(ctx, fields)
        return ApiJSON(manage.endpoint_json(endpoint, secret=secret), status_code=201)

    async def list_all(_: Request) -> Response:
        return ApiJSON({"items": manage.summary(await endpoint_store.listing(ctx.db))})

    async def show(request: Request) -> Response:
        endpoint = await found(request)
        if endpoint is None:
            return error(404, "no such endpoint")
        counts = await manage.delivery_counts(ctx, endpoint.id)
        return ApiJSON(manage.endpoint_json(endpoint, counts=counts))

    async def patch(request: Request) -> Response:
        endpoint = await found(request)
        if endpoint is None:
            return error(404, "no such endpoint")
        data = await _json_body(request)
        fields, problems = manage.endpoint_problems(ctx, data, patch=True)
        if not problems and "url" in fields:
            problems = await manage.resolved_problems(ctx, fields["url"])
        if problems:
            return error(422, "invalid endpoint", fields=problems)
        updated = await manage.update(ctx, endpoint.id, fields)
        if updated is None:
            return error(404, "no such endpoint")
        return ApiJSON(manage.endpoint_json(updated))

    async def delete(request: Request) -> Response:
        endpoint = await found(request)
        if endpoint is None or not await manage.delete(ctx, endpoint.id):
            return error(404, "no such endpoint")
        return Response(status_code=204)

    async def rotate(request: Request) -> Response:
        endpoint = await found(request)
        rotated = None if endpoint is None else await manage.rotate(ctx, endpoint.id)
        if rotated is None:
            return error(404, "no such endpoint")
        return ApiJSON(manage.endpoint_json(rotated[0], secret=rotated[1]))

    async def test(request: Request) -> Response:
        endpoint = await found(request)
        if endpoint is None:
            return error(404, "no such endpoint")
        if endpoint.status != endpoint_store.EndpointStatus.ENABLED:
            return error(409, f"the endpoint is {endpoint.status}; enable it first")
        emitted = await manage.send_test(ctx, endpoint)
        assert emitted is not None
        return ApiJSON(
            {"event": emitted.public_id, "type": emitted.event_type, "queued": emitted.deliveries},
            status_code=202,
        )

    async def replay(request: Request) -> Response:
        endpoint = await found(request)
        if endpoint is None:
            return error(404, "no such endpoint")
        window, problems = manage.replay_window(await _json_body(request, optional=True))
        if problems:
            return error(422, "invalid replay", fields=problems)
        done = await manage.replay(ctx, endpoint, **window)
        problems = await manage.unknown_request(ctx, done, window["request_id"])
        if problems:
            return error(422, "invalid replay", fields=problems)
        return ApiJSON(
            {"queued": done.queued, "events": done.events, "truncated": done.truncated},
            status_code=202,
        )

    async def retry_dead(request: Request) -> Response:
        endpoint = await found(request)
        if endpoint is None:
            return error(404, "no such endpoint")
        return ApiJSON({"requeued": await manage.retry_dead(ctx, endpoint.id)})

    async def deliveries(request: Request) -> Response:
        endpoint = await found(request)
        if endpoint is None:
            return error(404, "no such endpoint")
        before = _whole_number(request, "before_id")
        items = await manage.deliveries(
            ctx,
            endpoint.id,
            status=_choice(request, "status", manage.DELIVERY_STATUSES),
            before_id=before if before is not None and before <= MAX_ROW_ID else None,
            limit=_int_param(request, "limit", 50, low=1, high=500),
        )
        return ApiJSON({"items": items, "next_before_id": items[-1]["id"] if items else None})

    async def list_events(request: Request) -> Response:
        event_type = request.query_params.get("type")
        if event_type is not None and event_type not in catalogue.TYPES:
            raise ParameterError(f"type must be one of {', '.join(catalogue.TYPES)}")
        request_id = _whole_number(request, "request_id")
        if request_id is not None and request_id > MAX_ROW_ID:
            return ApiJSON({"items": [], "next_after_id": None})  # no request has that id
        after = _whole_number(request, "after_id")
        rows = await event_store.search(
            ctx.db,
            event_type=event_type,
            request_id=request_id,
            after_id=min(after or 0, MAX_ROW_ID),
            limit=_int_param(request, "limit", 100, low=1, high=500),
        )
        items = [event_json(r) for r in rows]
        return ApiJSON({"items": items, "next_after_id": int(rows[-1]["id"]) if rows else None})

    return [
        Route("/api/endpoints", handled(create), methods=["POST"]),
        Route("/api/endpoints", handled(list_all), methods=["GET"]),
        Route("/api/endpoints/{id}", handled(show), methods=["GET"]),
        Route("/api/endpoints/{id}", handled(patch), methods=["PATCH"]),
        Route("/api/endpoints/{id}", handled(delete), methods=["DELETE"]),
        Route("/api/endpoints/{id}/rotate-secret", handled(rotate), methods=["POST"]),
        Route("/api/endpoints/{id}/test", handled(test), methods=["POST"]),
        Route("/api/endpoints/{id}/replay", handled(replay), methods=["POST"]),
        Route("/api/endpoints/{id}/retry-dead", handled(retry_dead), methods=["POST"]),
        Route("/api/endpoints/{id}/deliveries", handled(deliveries), methods=["GET"]),
        Route("/api/events", handled(list_events), methods=["GET"]),
    ]
