"""The baseline: a bare Starlette handler that reads the body and answers 202.

Served by uvicorn exactly as ``signback serve`` serves signback (one worker, uvicorn's default
event loop and HTTP parser, no access log, no server header), so the ratio between the two
is the price of signback's intake itself: the route, the checks, the commit, the logging.

    python -m bench.baseline --port 8090
"""

from __future__ import annotations

import argparse

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ACCEPTED = b'{"status":"accepted"}'


async def accept(request: Request) -> Response:
    await request.body()
    return Response(ACCEPTED, status_code=202, media_type="application/json")


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


def create_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/{path:path}", accept, methods=["POST"]),
        ]
    )


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # The same uvicorn options as receiver.cli.serve.
    uvicorn.run(
        "bench.baseline:create_app",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        workers=1,
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=3,
        server_header=False,
    )


if __name__ == "__main__":
    main()
