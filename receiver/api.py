"""The admin API under /api: register requests, inspect state, timelines and the outbox.

Every route needs ``Authorization: Bearer <SIGNBACK_ADMIN_TOKEN>`` (compared in constant time).
Errors are JSON ``{"error": "...", ...}``; bad input is a 422 listing each field's problem.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, HttpUrl, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from receiver.context import AppContext
from receiver.db.base import Row
from receiver.errors import InvalidAction
from receiver.metrics import CONTENT_TYPE
from receiver.model import RequestState, SignatureRequest
from receiver.providers import Provider
from receiver.registration import Registration, register
from receiver.store import inbox, outbox, requests

Endpoint = Callable[[Request], Awaitable[Response]]
MAX_API_BODY = 256 * 1024


class RegisterBody(BaseModel):
    """``POST /api/requests``. Field names in either style (``signatureRequestId`` or
    ``signature_request_id``)."""

    model_config = ConfigDict(extra="forbid")

    provider: str = Field(min_length=1, max_length=32)
    signature_request_id: str = Field(
        min_length=1,
        max_length=200,
        validation_alias=AliasChoices(
            "signature_request_id", "signatureRequestId", "signing_request_id", "external_id"
        ),
    )
    document_id: str | None = Field(
        default=None, max_length=200, validation_alias=AliasChoices("document_id", "documentId")
    )
    reference: str | None = Field(default=None, max_length=200)
    return_url: HttpUrl | None = None
    retry_url: HttpUrl | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    defaults: dict[str, Any] = Field(default_factory=dict)


def registration_problems(
    data: Any, providers: Mapping[str, Provider]
) -> tuple[RegisterBody | None, list[dict[str, str]]]:
    """A registration body, or every problem with it at once (the API's 422 and the CLI):
    the fields' own, an unknown provider, and each of ``defaults`` the provider refuses."""
    problems: list[dict[str, str]] = []
    body: RegisterBody | None = None
    try:
        body = RegisterBody.model_validate(data)
    except ValidationError as exc:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
    raw = data if isinstance(data, dict) else {}
    name = raw.get("provider")
    provider = providers.get(name) if isinstance(name, str) else None
    if isinstance(name, str) and name and provider is None:
        problems.append({"field": "provider", "message": f"must be one of {sorted(providers)}"})
    defaults = raw.get("defaults")
    validate = provider.validate_defaults if provider is not None else None
    if validate is not None and defaults and isinstance(defaults, dict):
        refused = []
        for key, value in defaults.items():  # one at a time, to report each
            try:
                validate({key: value})
            except InvalidAction as exc:
                refused.append({"field": f"defaults.{key}", "message": exc.message})
        if not refused:  # and together, for what only the whole can show
            try:
                validate(defaults)
            except InvalidAction as exc:
                refused.append({"field": "defaults", "message": exc.message})
        problems += refused
    return (None, problems) if problems else (body, [])


def iso(value: float | None) -> str | None:
    if value is None:
        return None
    return dt.datetime.fromtimestamp(float(value), tz=dt.UTC).isoformat().replace("+00:00", "Z")


def request_json(request: SignatureRequest, urls: dict[str, str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": request.id,
        "provider": request.provider,
        "signature_request_id": request.external_id,
        "document_id": request.document_id,
        "reference": request.reference,
        "state": request.state.value,
        "provider_status": request.provider_status,
        "return_url": request.return_url,
        "retry_url": request.retry_url,
        "metadata": dict(request.metadata),
        "defaults": dict(request.defaults),
        "created_at": iso(request.created_at),
        "updated_at": iso(request.updated_at),
    }
    if urls is not None:
        body["callback_urls"] = urls
    return body


def event_json(row: Row) -> dict[str, Any]:
    return {
        "inbox_id": int(row["id"]),
        "channel": row["channel"],
        "kind": row["kind"],
        "provider_type": row["provider_type"],
        "event_id": row["event_id"],
        "status": row["status"],
        "received_at": iso(row["received_at"]),
        "occurred_at": iso(row["occurred_at"]),
        "state_before": row["state_before"],
        "state_after": row["state_after"],
        "note": row["note"],
        "error": row["error"],
        "request_id": row["request_id"],
        "external_id": row["external_id"],
        "provider": row["provider"],
    }


def action_json(row: Row, attempts: list[Row] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": int(row["id"]),
        "request_id": int(row["request_id"]),
        "key": row["action_key"],
        "operation": row["operation"],
        "payload": json.loads(row["payload"]),
        "status": row["status"],
        "attempts": int(row["attempts"]),
        "due_at": iso(row["due_at"]),
        "last_status_code": row["last_status_code"],
        "last_error": row["last_error"],
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }
    if attempts is not None:
        body["attempt_log"] = [
            {
                "attempt": a["attempt"],
                "started_at": iso(a["started_at"]),
                "duration_ms": a["duration_ms"],
                "status_code": a["status_code"],
                "outcome": a["outcome"],
                "error": a["error"],
                "response_excerpt": a["response_excerpt"],
            }
            for a in attempts
        ]
    return body


async def request_detail(ctx: AppContext, request_id: int) -> dict[str, Any] | None:
    """A request with its callback URLs, timeline and actions (API and CLI alike)."""
    row = await requests.get(ctx.db, request_id)
    if row is None:
        return None
    req = requests.from_row(row)
    urls = ctx.callback_urls(req.provider, str(row["token_nonce"])).as_dict()
    actions = await outbox.for_request(ctx.db, req.id)
    attempts = await outbox.attempts_for(ctx.db, [int(a["id"]) for a in actions])
    return {
        **request_json(req, urls),
        "timeline": [event_json(e) for e in await inbox.timeline(ctx.db, req.id)],
        "actions": [action_json(a, attempts.get(int(a["id"]), [])) for a in actions],
    }


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _int_param(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise ValueError(f"{name} must be a whole number")
    return max(low, min(high, int(raw)))


def routes(ctx: AppContext) -> list[BaseRoute]:
    admin_token = ctx.settings.admin_token.get_secret_value().encode()

    def admin(endpoint: Endpoint) -> Endpoint:
        async def guarded(request: Request) -> Response:
            scheme, _, presented = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                presented.strip().encode(), admin_token
            ):
                return JSONResponse(
                    {"error": "missing or wrong admin token (Authorization: Bearer …)"},
                    status_code=401,
                    headers={"www-authenticate": 'Bearer realm="signback"'},
                )
            try:
                return await endpoint(request)
            except ValueError as exc:
                return error(422, str(exc))

        return guarded

    async def create_request(request: Request) -> Response:
        raw = await request.body()
        if len(raw) > MAX_API_BODY:
            return error(413, f"body larger than {MAX_API_BODY} bytes")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return error(400, f"body is not valid JSON: {exc}")
        body, problems = registration_problems(data, ctx.providers)
        if body is None:
            return error(422, "invalid request", fields=problems)
        registered = await register(
            ctx,
            Registration(
                provider=body.provider,
                external_id=body.signature_request_id,
                document_id=body.document_id,
                reference=body.reference,
                return_url=str(body.return_url) if body.return_url else None,
                retry_url=str(body.retry_url) if body.retry_url else None,
                metadata=body.metadata,
                defaults=body.defaults,
            ),
        )
        answer = request_json(registered.request, registered.urls.as_dict())
        if not registered.created:
            return JSONResponse({"error": "already registered", "request": answer}, status_code=409)
        answer["requeued_events"] = registered.requeued_events
        return JSONResponse(answer, status_code=201)

    async def list_requests(request: Request) -> Response:
        q = request.query_params
        state = q.get("state")
        if state is not None and state not in {s.value for s in RequestState}:
            return error(422, f"unknown state {state!r}", allowed=[s.value for s in RequestState])
        before = q.get("before_id")
        if before is not None and not before.isdigit():
            return error(422, "before_id must be a whole number")
        rows = await requests.search(
            ctx.db,
            state=state,
            provider=q.get("provider"),
            reference=q.get("reference"),
            before_id=int(before) if before else None,
            limit=_int_param(request, "limit", 50, low=1, high=500),
        )
        items = [request_json(requests.from_row(r)) for r in rows]
        return JSONResponse({"items": items, "next_before_id": items[-1]["id"] if items else None})

    async def show_request(request: Request) -> Response:
        detail = await request_detail(ctx, request.path_params["id"])
        if detail is None:
            return error(404, "no such request")
        return JSONResponse(detail)

    async def list_actions(request: Request) -> Response:
        rows = await outbox.search(
            ctx.db,
            status=request.query_params.get("status"),
            limit=_int_param(request, "limit", 100, low=1, high=1000),
        )
        attempts = await outbox.attempts_for(ctx.db, [int(a["id"]) for a in rows])
        return JSONResponse(
            {"items": [action_json(a, attempts.get(int(a["id"]), [])) for a in rows]}
        )

    async def retry_action(request: Request) -> Response:
        action_id = request.path_params["id"]
        if await outbox.retry(ctx.db, action_id, now=ctx.clock()):
            row = await outbox.get(ctx.db, action_id)
            assert row is not None
            return JSONResponse(action_json(row))
        row = await outbox.get(ctx.db, action_id)
        if row is None:
            return error(404, "no such action")
        return error(409, f"action is {row['status']}; only dead or skipped actions can be retried")

    async def list_inbox(request: Request) -> Response:
        rows = await inbox.search(
            ctx.db,
            status=request.query_params.get("status"),
            provider=request.query_params.get("provider"),
            limit=_int_param(request, "limit", 100, low=1, high=1000),
        )
        return JSONResponse({"items": [event_json(r) for r in rows]})

    async def retry_inbox(request: Request) -> Response:
        if await inbox.retry(ctx.db, request.path_params["id"]):
            return JSONResponse({"status": "pending"})
        return error(409, "only failed or unmatched events can be re-processed (or no such event)")

    async def metrics(_: Request) -> Response:
        ctx.metrics.set_queue_counts(await inbox.counts(ctx.db), await outbox.counts(ctx.db))
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)

    async def stats(_: Request) -> Response:
        return JSONResponse(
            {
                "inbox": await inbox.counts(ctx.db),
                "outbox": await outbox.counts(ctx.db),
            }
        )

    return [
        Route("/api/requests", admin(create_request), methods=["POST"]),
        Route("/api/requests", admin(list_requests), methods=["GET"]),
        Route("/api/requests/{id:int}", admin(show_request), methods=["GET"]),
        Route("/api/outbox", admin(list_actions), methods=["GET"]),
        Route("/api/outbox/{id:int}/retry", admin(retry_action), methods=["POST"]),
        Route("/api/inbox", admin(list_inbox), methods=["GET"]),
        Route("/api/inbox/{id:int}/retry", admin(retry_inbox), methods=["POST"]),
        Route("/api/stats", admin(stats), methods=["GET"]),
        Route("/metrics", admin(metrics), methods=["GET"]),
    ]
