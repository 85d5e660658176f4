"""Routes every deployment has: health, readiness and the signer's browser return."""

from __future__ import annotations

import urllib.parse

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from receiver import pages
from receiver.callbacks import body_key, store
from receiver.context import AppContext
from receiver.db.base import Row
from receiver.db.migrate import current_revision, head_revision
from receiver.errors import CallbackRejected
from receiver.logs import get_logger
from receiver.store import requests
from receiver.tokens import looks_like_token, same_hash, token_hash

log = get_logger("signback.web")

MAX_QUERY = 4096
# What the callback routes read from a token's request: all fixed at registration.
TOKEN_ROW_FIELDS = ("id", "provider", "external_id", "return_url", "retry_url", "token_hash")


async def find_by_token(ctx: AppContext, token: str) -> Row | None:
    """The request a callback token belongs to, or None. The token itself is never logged.

    Raises CallbackRejected(503) when the database cannot answer, so callers never 500."""
    if not looks_like_token(token):
        return None
    digest = token_hash(token)
    cached = ctx.token_cache.get(digest)
    if cached is not None:
        return cached
    try:
        row = await requests.by_token_hash(ctx.db, digest)
    except Exception as exc:
        log.error("cannot look up a callback token", error=f"{type(exc).__name__}: {exc}")
        raise CallbackRejected("temporarily unable to look up this URL; please retry", 503) from exc
    if row is None or not same_hash(str(row["token_hash"]), digest):
        return None
    # Only fields that never change after registration are kept (no state), and callers get
    # the same shape whether the answer came from the cache or the database.
    fixed = {k: row[k] for k in TOKEN_ROW_FIELDS}
    ctx.token_cache.put(digest, fixed)
    return fixed


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
            row = await find_by_token(ctx, request.path_params["token"])
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
