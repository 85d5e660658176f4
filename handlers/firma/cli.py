"""Firma's commands: ``signback fake firma`` and ``signback simulate firma``."""

from __future__ import annotations

from typing import Any

import click

from receiver.cli import handles_config_errors, print_sent, run_simulation
from receiver.cli_types import PORT, ROW_ID


@click.command("firma")
@click.option("--port", type=PORT, default=8082, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--api-key", default="fake-firma-key", show_default=True)
@click.option("--secret", default=None, help="Webhook signing secret (default: the fake's own).")
@click.option(
    "--time-factor",
    type=float,
    default=1.0,
    show_default=True,
    help="Scales Firma's webhook retry delays (0.001 = 1000 times faster).",
)
@click.option(
    "--rate-window",
    type=click.FloatRange(min=0.001),
    default=60.0,
    show_default=True,
    help="Seconds Firma's per-minute rate limits apply to (shorter only for time-scaled tests).",
)
@click.option(
    "--drop-webhooks",
    type=click.FloatRange(0, 100),
    default=0.0,
    show_default=True,
    help="Percent of webhook deliveries lost on the way (Firma believes them delivered).",
)
@click.option(
    "--generation-seconds",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="How long after completion the final PDF is 'being generated' (503 + Retry-After).",
)
@click.option(
    "--link-seconds",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    help="How long a pre-signed download link works.",
)
def fake(
    port: int,
    host: str,
    api_key: str,
    secret: str | None,
    time_factor: float,
    rate_window: float,
    drop_webhooks: float,
    generation_seconds: float,
    link_seconds: float,
) -> None:
    """A Firma.dev emulator: signing requests, PATCH rules, rate limits, signed webhooks,
    final PDFs behind expiring links (POST /_fake/downloads changes them while it runs)."""
    from handlers.firma.fake import serve as serve_fake

    kwargs: dict[str, Any] = {
        "port": port,
        "host": host,
        "api_key": api_key,
        "time_factor": time_factor,
        "rate_window_seconds": rate_window,
        "drop_webhooks_percent": drop_webhooks,
        "document_generation_seconds": generation_seconds,
        "download_link_seconds": link_seconds,
    }
    if secret:
        kwargs["secret"] = secret
    serve_fake(**kwargs)


@click.command("firma")
@click.argument("request_id", type=ROW_ID)
@click.option("--event", "event_type", default="signing_request.completed", show_default=True)
@click.option("--envelope", default="current", type=click.Choice(["current", "old"]))
@click.option("--workspace", default=None, help="Send to /hooks/firma/WORKSPACE with its secret.")
@click.option(
    "--to",
    "base_url",
    default=None,
    help="Base URL to send to (default SIGNBACK_PUBLIC_URL, e.g. your tunnel).",
)
@handles_config_errors
def simulate(
    request_id: int, event_type: str, envelope: str, workspace: str | None, base_url: str | None
) -> None:
    """A Firma webhook for REQUEST_ID, signed with your configured secret like Firma does."""
    from handlers.firma.simulate import send

    async def run(ctx: Any) -> list[Any]:
        return await send(
            ctx,
            request_id,
            event_type=event_type,
            envelope=envelope,
            workspace=workspace,
            base_url=base_url,
        )

    print_sent(run_simulation(run))
