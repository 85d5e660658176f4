"""Routes every deployment has: health, readiness and the signer's browser return."""

from __future__ import annotations

import urllib.parse

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from receiver.context import AppContext
from receiver.errors import CallbackRejected
from receiver.intake import pages
from receiver.intake.ack import body_key, store
from receiver.intake.credentials import find_by_return_token
from receiver.logs import get_logger
from receiver.store.migrate import current_revision, head_revision

log = get_logger("signback.web")

MAX_QUERY = 4096


def routes(ctx: AppContext) -> list[BaseRoute]:
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        problems: list[str] = []
        try:
            await ctx.db.ping()
        except Exception as exc:
            problems.append(f"database unreachable: {type(exc).__name__}")
        else:
            try:
                current = await current_revision(ctx.db)
            except Exception as exc:  # gone between the ping and this query
                current = f"unknown: {type(exc).__name__}"
            if current != head_revision():
                problems.append(
                    f"migrations not current (database at {current}, code at {head_revision()});"
                    " run `signback migrate`"
                )
        if problems:
            return JSONResponse({"status": "not ready", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ready", "migration": head_revision()})

    async def signer_return(request: Request) -> Response:
        """OKdokument's resulturl (and Firma's completion redirect): a person's browser."""
        try:
            row = await find_by_return_token(ctx, request.path_params["token"])
        except CallbackRejected:
            return pages.page(
                "Please try again in a moment",
                "We could not record your return just now. Your signature itself is safe.",
                503,
            )
        if row is None:
            log.warning("browser return with an unknown token", status=404)
            return pages.not_found()
        query = request.url.query[:MAX_QUERY]
        params = dict(urllib.parse.parse_qsl(query))
        result = params.get("result")
        try:
            new = await store(
                ctx,
                provider=str(row["provider"]),
                channel="return",
                dedupe_key="return:" + body_key(int(row["id"]), query),
                body=b"",
                headers=dict(request.headers),
                query=query,
                request_id=int(row["id"]),
                external_id=str(row["external_id"]),
            )
            log.info("browser return recorded", request=int(row["id"]), result=result, new=new)
        except Exception as exc:
            # A signer must never see our outage; the provider's own callback carries the
            # authoritative state, this return is informational.
            log.error("could not record a browser return", request=int(row["id"]), error=str(exc))
        target = row["retry_url"] if result == "close" and row["retry_url"] else row["return_url"]
        if target:
            return RedirectResponse(str(target), status_code=303)
        return pages.recorded(result)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/return/{token}", signer_return, methods=["GET"]),
    ]
