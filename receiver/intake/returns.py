"""Routes every deployment has: health, readiness and the signer's browser return.

The browser return is the same for every provider: the return token opens it, the visit is
stored (channel ``return``), and the browser is sent on to the request's ``return_url``.
What the query string says (how the visit ended, when) is the provider's to read
(``Provider.parse_return``); with ``retry`` set, the browser goes to ``retry_url`` instead.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from receiver.context import AppContext
from receiver.errors import CallbackRejected
from receiver.intake import pages
from receiver.intake.ack import body_key, store
from receiver.intake.credentials import find_by_return_token
from receiver.logs import get_logger
from receiver.providers.contract import ReturnFacts
from receiver.store.migrate import current_revision, head_revision

log = get_logger("signback.web")

MAX_QUERY = 4096


def query_params(query: str) -> dict[str, str]:
    """A query string's parameters, blank ones kept; the last of repeated ones wins."""
    return dict(urllib.parse.parse_qsl(query, keep_blank_values=True))


def nothing_read(query: str) -> ReturnFacts:
    """A provider that reads nothing from its browser returns: the parameters are kept."""
    return ReturnFacts(raw=query_params(query))


def return_parser(ctx: AppContext, provider: str) -> Callable[[str], ReturnFacts]:
    found = ctx.providers.get(provider)
    if found is None or found.parse_return is None:
        return nothing_read
    return found.parse_return


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
        """A provider's result URL or completion redirect: a person's browser."""
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
        provider = str(row["provider"])
        try:
            facts = return_parser(ctx, provider)(query)
        except Exception as exc:  # a parser's bug must not cost the signer their page
            log.error("could not read a browser return", provider=provider, error=str(exc))
            facts = ReturnFacts()
        result = facts.result
        try:
            new = await store(
                ctx,
                provider=provider,
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
        target = row["retry_url"] if facts.retry and row["retry_url"] else row["return_url"]
        if target:
            return RedirectResponse(str(target), status_code=303)
        return pages.recorded(result)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/return/{token}", signer_return, methods=["GET"]),
    ]
