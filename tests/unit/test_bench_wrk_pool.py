"""The bench's wrk script in pool mode (signed Firma events, precomputed by the bench) sends
each pooled request whole, in order, and starts over when the pool runs out.

The pool lives in memory outside LuaJIT's garbage collector (bench/wrk/callbacks.lua says
why); this runs the real wrk against a server that records what arrives.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench import load
from tests.servers import running_server

WRK = load.find_wrk()
pytestmark = pytest.mark.skipif(WRK is None, reason="wrk is not installed (the bench's tool)")


def recording_app(seen: list[tuple[str, str, str, bytes]]) -> Starlette:
    async def hook(request: Request) -> JSONResponse:
        body = await request.body()
        seen.append(
            (
                request.url.path,
                request.headers["x-firma-signature"],
                request.headers["x-firma-event"],
                body,
            )
        )
        return JSONResponse({"status": "accepted"}, status_code=202)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/hooks/firma", hook, methods=["POST"]),
            Route("/healthz", healthz),
        ]
    )


def test_pool_requests_arrive_whole_in_order_and_wrap(tmp_path: Path) -> None:
    assert WRK is not None
    pool = [
        (
            "/hooks/firma",
            f"t=1,v1=sig{n}",
            "signing_request.recipient.signed",
            '{"n":' + str(n) + ',"pad":"' + "x" * (50 * n) + '"}',
        )
        for n in range(5)
    ]
    data = tmp_path / "pool.tsv"
    data.write_text("pool\n" + "".join("\t".join(line) + "\n" for line in pool))
    seen: list[tuple[str, str, str, bytes]] = []
    with running_server(recording_app(seen)) as url:
        result = load.run_wrk(
            load.WrkOptions(WRK, threads=1, connections=1),
            url,
            data,
            duration_s=1,
            seq_base=0,
            limit_total=12,
            log_path=tmp_path / "wrk.log",
        )
    sent = [(path, sig, event, body.decode()) for path, sig, event, body in seen]
    # One connection: the order of arrival is the order of sending, the pool twice and a bit.
    assert sent == [*pool, *pool, *pool[:2]]
    assert (result.sent, result.accepted, result.wrapped, result.pool_size) == (12, 12, 2, 5)
