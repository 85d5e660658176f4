"""The console's routes under /console (see docs/console.md).

Every page needs a session (receiver/console/session.py); a GET without one goes to the
sign-in page, anything else is a 401. Every POST carries the session's CSRF token (else
403, with the reason) and needs the admin role (a viewer gets 403). Bad input is a 400 page
that says which field; a database that cannot answer is a 503 page. Every answer has a
strict Content-Security-Policy (scripts and styles from /console/static only), is never
cached and never framed.
"""

from __future__ import annotations

import json
import math
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from receiver import jsonutil
from receiver.console import documents, queries, timeline
from receiver.console.session import (
    COOKIE,
    SIGNIN_COOKIE,
    Sessions,
    signin_ok,
    signin_token,
)
from receiver.console.web import (
    SECURITY_HEADERS,
    BadInput,
    Refused,
    View,
    before_param,
    choice_param,
    date_param,
    page_bytes,
    row_id,
    safe_next,
    text_param,
)
from receiver.context import AppContext
from receiver.logs import get_logger
from receiver.model import RequestState
from receiver.outbox.downstream import LANE_PREFIX, manage
from receiver.outbox.downstream import endpoints as endpoint_store
from receiver.store import inbox, outbox, rejections
from receiver.store import requests as request_store
from receiver.store.newest import number_or_none
from receiver.store.storable import renderable

log = get_logger("signback.console")

HERE = Path(__file__).parent
STATIC = HERE / "static"
STATIC_FILES = {p.name: p for p in STATIC.iterdir() if p.is_file()} if STATIC.is_dir() else {}
MAX_FORM_BYTES = 64 * 1024
PAGE = 50
BODY_VIEW_BYTES = 256 * 1024

# --- the routes ---------------------------------------------------------------------------

Handler = Callable[[Request, View, dict[str, str]], Awaitable[Response]]


def routes(ctx: AppContext) -> list[BaseRoute]:
    sessions = Sessions(ctx.settings)
    providers = tuple(sorted(ctx.providers))
    states = tuple(s.value for s in RequestState)

    def render(
        name: str, status: int = 200, headers: Mapping[str, str] | None = None, **values: Any
    ) -> Response:
        return Response(
            page_bytes(name, **values),
            status_code=status,
            media_type="text/html; charset=utf-8",
            headers={**SECURITY_HEADERS, **(headers or {})},
        )

    def problem(status: int, message: str, view: View | None = None) -> Response:
        return render("problem.html", status, view=view, code=status, message=message)

    def secure(request: Request) -> bool:
        # uvicorn sets the scheme from X-Forwarded-Proto for a trusted proxy
        # (--forwarded-allow-ips), so this is https behind one that terminates TLS.
        return request.url.scheme == "https"

    def set_cookie(response: Response, request: Request, name: str, value: str, age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=age,
            path="/console",
            httponly=True,
            samesite="strict",
            secure=secure(request),
        )

    async def read_form(request: Request) -> dict[str, str]:
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            raise Refused(413, f"form larger than {MAX_FORM_BYTES} bytes")
        try:
            pairs = urllib.parse.parse_qsl(
                body.decode("utf-8"), keep_blank_values=True, max_num_fields=200
            )
        except (UnicodeDecodeError, ValueError):
            raise Refused(400, "the form could not be read") from None
        return dict(pairs)

    def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            session = sessions.read(request.cookies.get(COOKIE), now=ctx.clock())
            if session is None:
                if request.method == "GET":
                    target = request.url.path + (
                        f"?{request.url.query}" if request.url.query else ""
                    )
                    return RedirectResponse(
                        "/console/signin?" + urllib.parse.urlencode({"next": target}),
                        status_code=303,
                        headers=SECURITY_HEADERS,
                    )
                return problem(401, "You are not signed in (or your session ended): sign in again.")
            view = View(session, sessions.csrf(session), request.url.path)
            try:
                form: dict[str, str] = {}
                if request.method == "POST":
                    form = await read_form(request)
                    if not sessions.csrf_ok(session, form.get("csrf")):
                        return problem(
                            403,
                            "This form was sent without its CSRF token (or with another"
                            " session's): nothing was changed. Reload the page and try again.",
                            view,
                        )
                    if not session.can_act:
                        return problem(
                            403, "You are signed in read-only (viewer): nothing was changed.", view
                        )
                return await handler(request, view, form)
            except BadInput as exc:
                return problem(400, str(exc), view)
            except Refused as exc:
                return problem(exc.status, str(exc), view)
            except Exception as exc:
                if not ctx.db.is_unavailable(exc):
                    raise
                log.error("console: database unavailable", path=request.url.path)
                return problem(503, "The database is unavailable just now; try again.", view)

        return guarded

    # --- sign in / out ---------------------------------------------------------------

    async def signin_form(request: Request) -> Response:
        token = signin_token()
        response = render(
            "signin.html",
            view=None,
            signin=token,
            next=safe_next(request.query_params.get("next")),
            message=None,
            viewer=ctx.settings.viewer_token is not None,
        )
        set_cookie(response, request, SIGNIN_COOKIE, token, 600)
        return response

    async def signin(request: Request) -> Response:
        try:
            form = await read_form(request)
        except Refused as exc:
            return problem(exc.status, str(exc))
        if not signin_ok(request.cookies.get(SIGNIN_COOKIE), form.get("signin")):
            return problem(
                403,
                "The sign-in form was sent without its CSRF token (or it expired): reload the"
                " sign-in page and try again.",
            )
        role = sessions.role_for(form.get("token", ""))
        if role is None:
            log.warning(
                "console sign-in refused", remote=request.client.host if request.client else None
            )
            token = signin_token()
            response = render(
                "signin.html",
                401,
                view=None,
                signin=token,
                next=safe_next(form.get("next")),
                message="That token is not the admin token (nor the viewer token).",
                viewer=ctx.settings.viewer_token is not None,
            )
            set_cookie(response, request, SIGNIN_COOKIE, token, 600)
            return response
        session, cookie = sessions.issue(role, now=ctx.clock())
        log.info("console sign-in", role=role.value)
        response = RedirectResponse(
            safe_next(form.get("next")), status_code=303, headers=SECURITY_HEADERS
        )
        set_cookie(response, request, COOKIE, cookie, session.expires - int(ctx.clock()))
        response.delete_cookie(SIGNIN_COOKIE, path="/console")
        return response

    async def signout(request: Request) -> Response:
        session = sessions.read(request.cookies.get(COOKIE), now=ctx.clock())
        if session is not None:
            try:
                form = await read_form(request)
            except Refused as exc:
                return problem(exc.status, str(exc))
            if not sessions.csrf_ok(session, form.get("csrf")):
                return problem(403, "The sign-out form was sent without its CSRF token.")
        response = RedirectResponse("/console/signin", status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path="/console")
        return response

    async def static(request: Request) -> Response:
        found = STATIC_FILES.get(request.path_params["name"])
        if found is None:
            return Response("not found", status_code=404, headers=SECURITY_HEADERS)
        return FileResponse(
            found,
            headers={"cache-control": "max-age=3600", "x-content-type-options": "nosniff"},
        )

    # --- pages -----------------------------------------------------------------------

    async def overview(request: Request, view: View, _: dict[str, str]) -> Response:
        now = ctx.clock()
        return render(
            "overview.html",
            view=view,
            now=now,
            numbers=await queries.overview_numbers(ctx.db, now=now),
            rate=await queries.callbacks_per_minute(ctx.db, now=now),
            lanes=await queries.lane_health(ctx.db),
            failing=await queries.failing_endpoints(ctx.db),
            stale=await queries.stale_requests(ctx.db, now=now),
            stale_days=queries.STALE_AFTER_SECONDS // 86400,
        )

    async def request_list(request: Request, view: View, _: dict[str, str]) -> Response:
        params = request.query_params
        rows = await queries.search_requests(
            ctx.db,
            state=choice_param(params, "state", states),
            provider=choice_param(params, "provider", providers),
            reference=text_param(params, "reference"),
            external_id=text_param(params, "provider_id"),
            since=date_param(params, "from"),
            until=date_param(params, "to", end=True),
            before_id=before_param(params),
            limit=PAGE,
            providers=providers,
        )
        kept = {k: v for k, v in params.items() if k != "before" and v}
        following = None
        if len(rows) == PAGE:
            following = "?" + urllib.parse.urlencode({**kept, "before": rows[-1]["id"]})
        return render(
            "requests.html",
            view=view,
            rows=rows,
            params=params,
            states=states,
            providers=providers,
            following=following,
            first="?" + urllib.parse.urlencode(kept) if "before" in params else None,
        )

    async def request_page(request: Request, view: View, _: dict[str, str]) -> Response:
        request_id = row_id(request.path_params["id"])
        row = None if request_id is None else await request_store.get(ctx.db, request_id)
        if row is None:
            return problem(404, "No such request.", view)
        entries = await timeline.build(ctx, row)
        return render(
            "request.html",
            view=view,
            req=row,
            metadata=jsonutil.dumps_view(jsonutil.loads_object(row["metadata"])).decode(),
            entries=entries,
            documents=await timeline.document_rows(ctx, row),
            documents_available=await timeline.has_documents(ctx),
            message=request.query_params.get("done"),
        )

    async def callback_page(request: Request, view: View, _: dict[str, str]) -> Response:
        inbox_id = row_id(request.path_params["id"])
        row = None if inbox_id is None else await queries.inbox_row(ctx.db, inbox_id)
        if row is None:
            return problem(404, "No such callback.", view)
        raw = bytes(row["body"] or b"")
        text = raw[:BODY_VIEW_BYTES].decode("utf-8", "backslashreplace")
        pretty: str | None = None
        if raw and len(raw) <= BODY_VIEW_BYTES:
            try:
                value = renderable(jsonutil.loads(raw))
                pretty = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
            except (ValueError, RecursionError):
                pretty = None  # not JSON: the text is shown as it came
        return render(
            "callback.html",
            view=view,
            row=row,
            body=text,
            pretty=pretty,
            cut=len(raw) > BODY_VIEW_BYTES,
            size=len(raw),
            stored_headers=jsonutil.loads_object(row["headers"]),
        )

    async def download(request: Request, view: View, _: dict[str, str]) -> Response:
        document_id = row_id(request.path_params["id"])
        if document_id is None or not await timeline.has_documents(ctx):
            return problem(404, "No such document.", view)
        row = await documents.get(ctx.db, document_id)
        if row is None:
            return problem(404, "No such document.", view)
        return await documents.download(ctx, row)

    async def failures(request: Request, view: View, _: dict[str, str]) -> Response:
        params = request.query_params
        lane_names = await queries.lanes(ctx.db)
        lane = choice_param(params, "lane", tuple(name for name, _ in lane_names)) or "provider"
        before = None
        if params.get("due") and params.get("before"):
            try:
                due = float(params["due"])
            except ValueError:
                raise BadInput("due must be a number") from None
            before_id = before_param(params)
            if not math.isfinite(due) or before_id is None:
                raise BadInput("due must be a number")
            before = (due, before_id)
        dead = await queries.dead_actions(ctx.db, lane=lane, before=before, limit=PAGE)
        following = None
        due_last = number_or_none(dead[-1]["due_at"]) if dead else None
        if len(dead) == PAGE and due_last is not None:
            last = dead[-1]
            following = "?" + urllib.parse.urlencode(
                {"lane": lane, "due": repr(due_last), "before": last["id"]}
            )
        refused = await rejections.search(
            ctx.db, before_id=before_param(params, "refused_before"), limit=PAGE
        )
        refused_next = None
        if len(refused) == PAGE:
            refused_next = "?" + urllib.parse.urlencode(
                {"lane": lane, "refused_before": refused[-1]["id"]}
            )
        return render(
            "failures.html",
            view=view,
            lane=lane,
            lanes=lane_names,
            dead=dead,
            dead_count=await queries.bounded_count(
                ctx.db, "outbox WHERE lane = :lane AND status = 'dead'", {"lane": lane}
            ),
            operations=sorted({str(r["operation"]) for r in dead}),
            following=following,
            refused=[
                {
                    **r,
                    "details": jsonutil.loads_object(r["details"]),
                    "headers": jsonutil.loads_object(r["headers"]),
                }
                for r in refused
            ],
            refused_next=refused_next,
            failed=await queries.failed_callbacks(ctx.db),
            bulk_limit=queries.BULK_RETRY_LIMIT,
            message=params.get("done"),
        )

    async def endpoints_page(request: Request, view: View, _: dict[str, str]) -> Response:
        found = [e for e in await endpoint_store.listing(ctx.db) if e.status != "deleted"]
        health = {h.lane: h for h in await queries.lane_health(ctx.db)}
        return render(
            "endpoints.html",
            view=view,
            endpoints=found,
            health={e.id: health.get(f"{LANE_PREFIX}{e.id}") for e in found},
            message=request.query_params.get("done"),
        )

    # --- forms -----------------------------------------------------------------------

    def back(request: Request, form: Mapping[str, str], fallback: str, done: str) -> Response:
        target = safe_next(form.get("back")) if form.get("back") else fallback
        joiner = "&" if "?" in target else "?"
        return RedirectResponse(
            f"{target}{joiner}{urllib.parse.urlencode({'done': done})}",
            status_code=303,
            headers=SECURITY_HEADERS,
        )

    async def retry_action(request: Request, view: View, form: dict[str, str]) -> Response:
        action_id = row_id(request.path_params["id"])
        if action_id is None:
            return problem(404, "No such action.", view)
        if await outbox.retry(ctx.db, action_id, now=ctx.clock()):
            log.info("console: action re-queued", action=action_id)
            return back(request, form, "/console/failures", f"action {action_id} re-queued")
        row = await outbox.get(ctx.db, action_id)
        if row is None:
            return problem(404, "No such action.", view)
        return problem(
            409,
            f"Action {action_id} is {row['status']}: only dead or skipped actions can be retried.",
            view,
        )

    async def retry_callback(request: Request, view: View, form: dict[str, str]) -> Response:
        inbox_id = row_id(request.path_params["id"])
        if inbox_id is None or not await inbox.retry(ctx.db, inbox_id):
            return problem(409, "Only failed or unmatched callbacks can be processed again.", view)
        return back(request, form, "/console/failures", f"callback {inbox_id} re-queued")

    async def bulk_retry(request: Request, view: View, form: dict[str, str]) -> Response:
        lane_names = tuple(name for name, _ in await queries.lanes(ctx.db))
        lane = choice_param(form, "lane", lane_names)
        if lane is None:
            raise BadInput("lane must be one of " + ", ".join(lane_names))
        operation = text_param(form, "operation", 100)
        count = await queries.retry_dead(ctx.db, lane=lane, operation=operation, now=ctx.clock())
        log.info("console: dead actions re-queued", lane=lane, operation=operation, count=count)
        return back(
            request,
            {"back": f"/console/failures?lane={urllib.parse.quote(lane)}"},
            "/console/failures",
            f"{count} dead actions re-queued",
        )

    async def endpoint_action(request: Request, view: View, form: dict[str, str]) -> Response:
        endpoint_id = row_id(request.path_params["id"])
        endpoint = None if endpoint_id is None else await endpoint_store.get(ctx.db, endpoint_id)
        if endpoint is None or endpoint.status == "deleted":
            return problem(404, "No such endpoint.", view)
        what = request.path_params["action"]
        if what == "test":
            sent = await manage.send_test(ctx, endpoint)
            done = "test event queued" if sent else "the endpoint takes no test event now"
        elif what == "retry":
            done = f"{await manage.retry_dead(ctx, endpoint.id)} dead deliveries re-queued"
        elif what == "replay":
            since = date_param(form, "since")
            until = date_param(form, "until", end=True)
            if since is not None and until is not None and since >= until:
                raise BadInput("until must be after since")
            replayed = await manage.replay(ctx, endpoint, since=since, until=until, request_id=None)
            done = f"{replayed.queued} deliveries queued from {replayed.events} events" + (
                " (more matched: replay a shorter window)" if replayed.truncated else ""
            )
        elif what == "rotate":
            rotated = await manage.rotate(ctx, endpoint.id)
            if rotated is None:
                return problem(404, "No such endpoint.", view)
            # Shown once, as the API's answer does: the receiver needs it. Never stored in
            # the page's URL, never cached (no-store), never shown again.
            return render("rotated.html", view=view, endpoint=rotated[0], secret=rotated[1])
        elif what in ("enable", "disable"):
            changed = await manage.set_status(
                ctx, endpoint.id, "enabled" if what == "enable" else "disabled"
            )
            done = f"endpoint {what}d" if changed else "nothing changed"
        else:
            return problem(404, "No such endpoint action.", view)
        log.info("console: endpoint action", endpoint=endpoint.id, action=what)
        return back(request, {}, "/console/endpoints", f"endpoint {endpoint.id}: {done}")

    return [
        Route("/console", page(overview), methods=["GET"]),
        Route("/console/signin", signin_form, methods=["GET"]),
        Route("/console/signin", signin, methods=["POST"]),
        Route("/console/signout", signout, methods=["POST"]),
        Route("/console/static/{name}", static, methods=["GET"]),
        Route("/console/requests", page(request_list), methods=["GET"]),
        Route("/console/requests/{id}", page(request_page), methods=["GET"]),
        Route("/console/callbacks/{id}", page(callback_page), methods=["GET"]),
        Route("/console/documents/{id}", page(download), methods=["GET"]),
        Route("/console/failures", page(failures), methods=["GET"]),
        Route("/console/failures/retry", page(bulk_retry), methods=["POST"]),
        Route("/console/actions/{id}/retry", page(retry_action), methods=["POST"]),
        Route("/console/callbacks/{id}/retry", page(retry_callback), methods=["POST"]),
        Route("/console/endpoints", page(endpoints_page), methods=["GET"]),
        Route("/console/endpoints/{id}/{action}", page(endpoint_action), methods=["POST"]),
    ]
