"""bench.asgi_cost serves the same trivial hook on both of uvicorn's paths (the comparison
is only fair if both answer the same), and reads the server's CPU per request."""

from __future__ import annotations

import asyncio
from typing import Literal

import httpx
import pytest

from bench import asgi_cost
from receiver.intake.protocol import HookHttpProtocol
from tests.servers import running_server


@pytest.mark.parametrize("http", [HookHttpProtocol, "httptools"])
def test_both_modes_accept_the_benchs_callbacks(
    http: type[asyncio.Protocol] | Literal["httptools"],
) -> None:
    with (
        running_server(asgi_cost.create_app(), http=http) as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        for _ in range(3):
            answer = client.post("/hooks/bench", content=b"x" * 800)
            assert (answer.status_code, answer.json()) == (200, {"status": "accepted"})
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.post("/hooks/other", content=b"{}").status_code == 404
