"""Testsign's commands: ``signback fake testsign`` and ``signback simulate testsign``."""

from __future__ import annotations

import time
import urllib.parse
import uuid
from typing import Any

import click
import httpx

from receiver.cli import handles_config_errors, print_sent, run_simulation
from receiver.context import AppContext
from receiver.errors import SignbackError
from receiver.providers.simulation import Sent, load_request
from tests.providers.testsign.settings import TestsignSettings
from tests.providers.testsign.signature import headers_for


@click.command("testsign")
@click.option("--port", type=int, default=8083, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
def fake(port: int, host: str) -> None:
    """A Testsign emulator (OAuth tokens and the archive call)."""
    from tests.providers.testsign.fake import serve

    serve(host=host, port=port)


async def send(
    ctx: AppContext, request_id: int, *, status: str, base_url: str | None
) -> list[Sent]:
    row = await load_request(ctx, request_id, "testsign")
    secrets = ctx.settings.section(TestsignSettings).secrets
    if not secrets:
        raise SignbackError("no Testsign secret is configured (SIGNBACK_TESTSIGN_SECRETS)")
    body = urllib.parse.urlencode(
        {
            "event_id": f"evt-{uuid.uuid4().hex[:12]}",
            "envelope_id": str(row["external_id"]),
            "status": status,
            "occurred_at": str(int(time.time())),
        }
    ).encode()
    headers = {
        "content-type": "application/x-www-form-urlencoded",
        **headers_for(body, [s.get_secret_value() for s in secrets], int(ctx.clock())),
    }
    url = (base_url or ctx.settings.public_url).rstrip("/") + "/hooks/testsign"
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.post(url, content=body, headers=headers)
    return [Sent(f"callback {status}", "POST", url, response.status_code, response.text[:300])]


@click.command("testsign")
@click.argument("request_id", type=int)
@click.option("--status", default="completed", show_default=True)
@click.option("--to", "base_url", default=None, help="Base URL (default SIGNBACK_PUBLIC_URL).")
@handles_config_errors
def simulate(request_id: int, status: str, base_url: str | None) -> None:
    """A signed Testsign callback for REQUEST_ID."""

    async def run(ctx: Any) -> list[Any]:
        return await send(ctx, request_id, status=status, base_url=base_url)

    print_sent(run_simulation(run))
