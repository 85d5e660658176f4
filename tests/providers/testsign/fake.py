"""A Testsign emulator: the OAuth token endpoint and the archive call, recording what it got."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

CLIENT_ID = "testsign-client"
CLIENT_SECRET = "testsign-client-secret"


@dataclass
class Archived:
    envelope_id: str
    authorization: str
    body: dict[str, Any]


@dataclass
class FakeTestsign:
    token_lifetime: float = 0.0  # seconds; 0: every call fetches a new token
    tokens: list[str] = field(default_factory=list)
    archived: list[Archived] = field(default_factory=list)
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


def create_app(fake: FakeTestsign) -> Starlette:
    async def token(request: Request) -> JSONResponse:
        body = await request.json()
        if body != {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        issued = f"tok-{next(fake._numbers)}"
        fake.tokens.append(issued)
        return JSONResponse({"access_token": issued, "expires_in": fake.token_lifetime})

    async def archive(request: Request) -> JSONResponse:
        authorization = request.headers.get("authorization", "")
        if authorization.removeprefix("Bearer ") not in fake.tokens:
            return JSONResponse({"error": "invalid_token"}, status_code=401)
        fake.archived.append(
            Archived(request.path_params["envelope_id"], authorization, await request.json())
        )
        return JSONResponse({"archived": True})

    return Starlette(
        routes=[
            Route("/oauth/token", token, methods=["POST"]),
            Route("/v1/envelopes/{envelope_id}/archive", archive, methods=["POST"]),
        ]
    )


def serve(*, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(create_app(FakeTestsign()), host=host, port=port, log_level="warning")
