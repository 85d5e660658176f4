"""``GET /api/rejections``: the rejection log (refused callbacks, newest first).

Query: ``provider``, ``status`` (an HTTP status), ``before_id`` (keyset paging: the
answer's ``next_before_id``), ``limit`` (1 to 500, default 50). Headers are stored redacted and
the body only as its length and first bytes, so nothing here is secret.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from receiver import jsonutil
from receiver.admin.api import (
    MAX_ROW_ID,
    ApiJSON,
    Endpoint,
    ParameterError,
    _choice,
    _int_param,
    _whole_number,
    iso,
)
from receiver.context import AppContext
from receiver.store import rejections
from receiver.store.db.base import Row


def rejection_json(row: Row) -> dict[str, Any]:
    body_length = row["body_length"]
    return {
        "id": int(row["id"]),
        "received_at": iso(row["received_at"]),
        "route": row["route"],
        "provider": row["provider"],
        "status": row["status"],
        "reason": row["reason"],
        "details": jsonutil.loads_object(row["details"]),
        "remote": row["remote"],
        "headers": jsonutil.loads_object(row["headers"]),
        "body_length": None if body_length is None else int(body_length),
        "body_head": row["body_head"],
    }


def routes(ctx: AppContext, admin: Callable[[Endpoint], Endpoint]) -> list[BaseRoute]:
    providers = tuple(sorted(ctx.providers))

    async def list_rejections(request: Request) -> Response:
        status = _whole_number(request, "status")
        if status is not None and not 100 <= status <= 599:
            raise ParameterError("status must be an HTTP status (100-599)")
        before = _whole_number(request, "before_id")
        rows = await rejections.search(
            ctx.db,
            provider=_choice(request, "provider", providers),
            status=status,
            before_id=before if before is not None and before <= MAX_ROW_ID else None,
            limit=_int_param(request, "limit", 50, low=1, high=500),
        )
        items = [rejection_json(r) for r in rows]
        return ApiJSON({"items": items, "next_before_id": items[-1]["id"] if items else None})

    return [Route("/api/rejections", admin(list_rejections), methods=["GET"])]
