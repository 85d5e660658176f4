"""The admin API under /api: register requests, inspect state, timelines and the outbox.

Every route needs ``Authorization: Bearer <SIGNBACK_ADMIN_TOKEN>`` (compared in constant time).
Errors are JSON ``{"error": "...", ...}``; bad input is a 422 listing each field's problem.

No input reaches a 5xx: parameters are checked one by one (a 422 names the parameter; an id
no row can have is a 404), bodies that are not JSON (or nested past the parser's limit) are
a 400, and text the database cannot hold (NUL, lone surrogates) is a 422. A database that
cannot answer is a 503 with ``Retry-After``. Any other exception is a bug, logged with its
traceback and answered 500 by the app's error handler. Stored data always renders: times
that are no time show as null, and text any client can decode (see :func:`iso`,
:class:`ApiJSON`).
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationError,
    field_validator,
)
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from receiver import jsonutil
from receiver.context import AppContext
from receiver.errors import InvalidAction
from receiver.logs import get_logger, shown
from receiver.metrics import CONTENT_TYPE
from receiver.model import RequestState, SignatureRequest
from receiver.outbox.downstream.catalogue import source_of
from receiver.pipeline.registration import Registration, RegistrationRefused, register
from receiver.providers import Provider
from receiver.store import inbox, outbox, requests
from receiver.store import reconcile as reconcile_store
from receiver.store.db.base import Row
from receiver.store.statuses import ActionStatus, InboxStatus
from receiver.store.storable import json_problem, text_problem

log = get_logger("signback.api")

Endpoint = Callable[[Request], Awaitable[Response]]
MAX_API_BODY = 256 * 1024
MAX_ROW_ID = 2**63 - 1  # ids are 64-bit on both databases
OUTBOX_STATUSES: tuple[str, ...] = tuple(ActionStatus)
INBOX_STATUSES: tuple[str, ...] = tuple(InboxStatus)
RETRY_AFTER_SECONDS = "5"
SCHEMA_NOT_CURRENT = "schema is not current: run signback migrate"


class ApiJSON(JSONResponse):
    """JSON that renders whatever a row holds (receiver.jsonutil.dumps_view): Starlette's
    own refuses NaN and fails on a lone surrogate, which turned a stored value into a 500."""

    def render(self, content: Any) -> bytes:
        return jsonutil.dumps_view(content)


class ParameterError(Exception):
    """A query parameter that is not what the route takes: answered 422 with the reason."""


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

    @field_validator("provider", "signature_request_id", "document_id", "reference")
    @classmethod
    def _storable_text(cls, value: str | None) -> str | None:
        problem = None if value is None else text_problem(value)
        if problem is not None:
            raise ValueError(problem)  # pydantic reports it as this field's error
        return value

    @field_validator("metadata", "defaults")
    @classmethod
    def _storable_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        problem = json_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


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
    if provider is not None and provider.check_registration is not None:
        # What the provider itself needs (e.g. a documentId to check claims against).
        document_id = raw.get("document_id", raw.get("documentId"))
        probe = Registration(
            provider=provider.name,
            external_id=str(raw.get("signature_request_id") or raw.get("signatureRequestId") or ""),
            document_id=document_id if isinstance(document_id, str) and document_id else None,
        )
        problems += [
            {"field": field, "message": message}
            for field, message in provider.check_registration(probe)
        ]
    return (None, problems) if problems else (body, [])


def iso(value: object) -> str | None:
    """A stored unix time as ISO 8601 UTC. Whatever the column holds (an absurd float from
    an old row, text on SQLite), the answer is a time or None, never an error."""
    if value is None or isinstance(value, bool):
        return None
    try:
        seconds = float(value)  # type: ignore[arg-type]  # anything: failures are None
        moment = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    except (TypeError, ValueError, OverflowError, OSError):  # text, NaN, ±inf, out of range
        return None
    return moment.isoformat().replace("+00:00", "Z")


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
        # callback | browser | reconcile | signback: as the downstream event says it.
        "source": source_of(str(row["channel"])),
        "kind": row["kind"],
        "provider_type": row["provider_type"],
        "event_id": row["event_id"],
        "status": row["status"],
        "received_at": iso(row["received_at"]),
        "occurred_at": iso(row["occurred_at"]),
        "state_before": row["state_before"],
        "state_after": row["state_after"],
        "note": row["note"],
        "error": shown(row["error"]),
        "request_id": row["request_id"],
        "external_id": row["external_id"],
        "provider": row["provider"],
    }


def action_json(row: Row, attempts: list[Row] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": int(row["id"]),
        "request_id": None if row["request_id"] is None else int(row["request_id"]),
        "lane": row.get("lane", "provider"),
        "key": row["action_key"],
        "operation": row["operation"],
        "payload": jsonutil.loads_object(row["payload"]),
        "status": row["status"],
        "attempts": int(row["attempts"]),
        "due_at": iso(row["due_at"]),
        "last_status_code": row["last_status_code"],
        "last_error": shown(row["last_error"]),
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
                "error": shown(a["error"]),
                "response_excerpt": shown(a["response_excerpt"]),
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
    urls = ctx.callback_urls(req.provider, str(row["token_nonce"]))
    actions = await outbox.for_request(ctx.db, req.id)
    attempts = await outbox.attempts_for(ctx.db, [int(a["id"]) for a in actions])
    return {
        **request_json(req, urls),
        "timeline": [event_json(e) for e in await inbox.timeline(ctx.db, req.id)],
        "actions": [action_json(a, attempts.get(int(a["id"]), [])) for a in actions],
    }


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return ApiJSON({"error": message, **extra}, status_code=status)


def row_id(raw: str) -> int | None:
    """A row id from a path: ASCII digits of a positive 64-bit number; None for anything
    else, which no row has (so the route answers as for an unknown id)."""
    if not (raw.isascii() and raw.isdigit()) or len(raw.lstrip("0")) > len(str(MAX_ROW_ID)):
        return None
    value = int(raw)
    return value if 0 < value <= MAX_ROW_ID else None


def _whole_number(request: Request, name: str) -> int | None:
    """A query parameter of ASCII digits, or None when absent. Digits beyond 64 bits come
    back as MAX_ROW_ID + 1 (every bound the routes apply caps them)."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()):
        raise ParameterError(f"{name} must be a whole number")
    if len(raw.lstrip("0")) > len(str(MAX_ROW_ID)):
        return MAX_ROW_ID + 1
    return min(int(raw), MAX_ROW_ID + 1)


def _int_param(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    value = _whole_number(request, name)
    return default if value is None else max(low, min(high, value))


def _choice(request: Request, name: str, allowed: tuple[str, ...]) -> str | None:
    """A filter that must be one of ``allowed``; absent or empty means no filter."""
    value = request.query_params.get(name)
    if not value:
        return None
    if value not in allowed:
        raise ParameterError(f"{name} must be one of {', '.join(allowed)}")
    return value


def _text_filter(request: Request, name: str, max_chars: int) -> str | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    if len(value) > max_chars:
        raise ParameterError(f"{name} must be at most {max_chars} characters")
    if problem := text_problem(value):
        raise ParameterError(f"{name} {problem}")
    return value


def routes(ctx: AppContext) -> list[BaseRoute]:
    from receiver.admin.endpoints import routes as endpoint_routes
    from receiver.admin.rejections import routes as rejection_routes
    from receiver.archive.access import routes as document_routes

    admin_token = ctx.settings.admin_token.get_secret_value().encode()

    def admin(endpoint: Endpoint) -> Endpoint:
        async def guarded(request: Request) -> Response:
            scheme, _, presented = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                presented.strip().encode(), admin_token
            ):
                return ApiJSON(
                    {"error": "missing or wrong admin token (Authorization: Bearer …)"},
                    status_code=401,
                    headers={"www-authenticate": 'Bearer realm="signback"'},
                )
            try:
                return await endpoint(request)
            except ParameterError as exc:
                return error(422, str(exc))
            except Exception as exc:
                if ctx.db.is_schema_missing(exc):
                    log.error(
                        "admin API: database schema is not current",
                        path=request.url.path,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    return ApiJSON(
                        {"error": SCHEMA_NOT_CURRENT},
                        status_code=503,
                        headers={"retry-after": RETRY_AFTER_SECONDS},
                    )
                if not ctx.db.is_unavailable(exc):
                    raise  # a bug: the app's handler logs it and answers 500
                log.error(
                    "admin API: database unavailable",
                    path=request.url.path,
                    error=f"{type(exc).__name__}: {exc}",
                )
                return ApiJSON(
                    {"error": "the database is unavailable; please retry"},
                    status_code=503,
                    headers={"retry-after": RETRY_AFTER_SECONDS},
                )

        return guarded

    async def create_request(request: Request) -> Response:
        raw = await request.body()
        if len(raw) > MAX_API_BODY:
            return error(413, f"body larger than {MAX_API_BODY} bytes")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, huge ints, nesting
            return error(400, f"body is not valid JSON: {str(exc)[:200]}")
        body, problems = registration_problems(data, ctx.providers)
        if body is None:
            return error(422, "invalid request", fields=problems)
        try:
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
        except RegistrationRefused as exc:
            return error(422, "invalid request", fields=exc.fields)
        answer = request_json(registered.request, registered.urls)
        if not registered.created:
            return ApiJSON({"error": "already registered", "request": answer}, status_code=409)
        answer["requeued_events"] = registered.requeued_events
        return ApiJSON(answer, status_code=201)

    providers = tuple(sorted(ctx.providers))

    async def list_requests(request: Request) -> Response:
        state = request.query_params.get("state")
        if state is not None and state not in {s.value for s in RequestState}:
            return error(422, f"unknown state {state!r}", allowed=[s.value for s in RequestState])
        before = _whole_number(request, "before_id")
        # Past the largest id, every row is before it: no bound at all.
        before_id = before if before is not None and before <= MAX_ROW_ID else None
        provider = _choice(request, "provider", providers)
        limit = _int_param(request, "limit", 50, low=1, high=500)
        if _choice(request, "stale", ("true", "false")) == "true":
            # Silent longer than expected for their state (SIGNBACK_STALE_AFTER).
            if state is not None or request.query_params.get("reference") is not None:
                raise ParameterError("stale=true lists open requests: no state or reference")
            rows = await reconcile_store.stale(
                ctx.db,
                thresholds=ctx.settings.stale_after,
                now=ctx.clock(),
                provider=provider,
                before_id=before_id,
                limit=limit,
            )
        else:
            rows = await requests.search(
                ctx.db,
                state=state,
                provider=provider,
                reference=_text_filter(request, "reference", 200),
                before_id=before_id,
                limit=limit,
            )
        items = [request_json(requests.from_row(r)) for r in rows]
        return ApiJSON({"items": items, "next_before_id": items[-1]["id"] if items else None})

    async def show_request(request: Request) -> Response:
        request_id = row_id(request.path_params["id"])
        detail = None if request_id is None else await request_detail(ctx, request_id)
        if detail is None:
            return error(404, "no such request")
        return ApiJSON(detail)

    async def list_actions(request: Request) -> Response:
        rows = await outbox.search(
            ctx.db,
            status=_choice(request, "status", OUTBOX_STATUSES),
            limit=_int_param(request, "limit", 100, low=1, high=1000),
        )
        attempts = await outbox.attempts_for(ctx.db, [int(a["id"]) for a in rows])
        return ApiJSON({"items": [action_json(a, attempts.get(int(a["id"]), [])) for a in rows]})

    async def retry_action(request: Request) -> Response:
        action_id = row_id(request.path_params["id"])
        if action_id is None:
            return error(404, "no such action")
        if await outbox.retry(ctx.db, action_id, now=ctx.clock()):
            row = await outbox.get(ctx.db, action_id)
            assert row is not None
            return ApiJSON(action_json(row))
        row = await outbox.get(ctx.db, action_id)
        if row is None:
            return error(404, "no such action")
        return error(409, f"action is {row['status']}; only dead or skipped actions can be retried")

    async def list_inbox(request: Request) -> Response:
        rows = await inbox.search(
            ctx.db,
            status=_choice(request, "status", INBOX_STATUSES),
            provider=_choice(request, "provider", providers),
            limit=_int_param(request, "limit", 100, low=1, high=1000),
        )
        return ApiJSON({"items": [event_json(r) for r in rows]})

    async def retry_inbox(request: Request) -> Response:
        inbox_id = row_id(request.path_params["id"])
        if inbox_id is not None and await inbox.retry(ctx.db, inbox_id):
            return ApiJSON({"status": InboxStatus.PENDING})
        return error(409, "only failed or unmatched events can be re-processed (or no such event)")

    async def metrics(_: Request) -> Response:
        ctx.metrics.set_queue_counts(await inbox.counts(ctx.db), await outbox.counts(ctx.db))
        ctx.metrics.set_stale_counts(
            await reconcile_store.stale_counts(
                ctx.db, thresholds=ctx.settings.stale_after, now=ctx.clock()
            )
        )
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)

    async def stats(_: Request) -> Response:
        return ApiJSON(
            {
                "inbox": await inbox.counts(ctx.db),
                "outbox": await outbox.counts(ctx.db),
            }
        )

    return [
        Route("/api/requests", admin(create_request), methods=["POST"]),
        Route("/api/requests", admin(list_requests), methods=["GET"]),
        # Ids are checked by row_id(): Starlette's {id:int} turns 5,000 digits into a 500.
        Route("/api/requests/{id}", admin(show_request), methods=["GET"]),
        Route("/api/outbox", admin(list_actions), methods=["GET"]),
        Route("/api/outbox/{id}/retry", admin(retry_action), methods=["POST"]),
        Route("/api/inbox", admin(list_inbox), methods=["GET"]),
        Route("/api/inbox/{id}/retry", admin(retry_inbox), methods=["POST"]),
        Route("/api/stats", admin(stats), methods=["GET"]),
        Route("/metrics", admin(metrics), methods=["GET"]),
        *endpoint_routes(ctx, admin),  # downstream endpoints (receiver/admin/endpoints.py)
        *document_routes(ctx, admin),  # the archive (receiver/archive/access.py)
        *rejection_routes(ctx, admin),  # the rejection log (receiver/admin/rejections.py)
    ]
