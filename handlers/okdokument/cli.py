"""OKdokument's commands: ``signback fake okdokument`` and ``signback simulate okdokument``."""

from __future__ import annotations

from typing import Any

import click

from receiver.cli import handles_config_errors, print_sent, run_simulation
from receiver.cli_types import PORT, ROW_ID


@click.command("okdokument")
@click.option("--port", type=PORT, default=8081, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--api-key", default="fake-okdokument-key", show_default=True)
@click.option(
    "--time-factor",
    type=click.FloatRange(min=0.0001),
    default=1.0,
    show_default=True,
    help="Scales failure windows and delays (0.05 = 20 times faster).",
)
@click.option(
    "--drop-callbacks",
    type=click.FloatRange(0, 100),
    default=0.0,
    show_default=True,
    help="Percent of sendInfo callbacks lost on the way (OKdokument believes them delivered).",
)
@click.option(
    "--info-lag",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds Document info answers the previous state after a change.",
)
def fake(
    port: int, host: str, api_key: str, time_factor: float, drop_callbacks: float, info_lag: float
) -> None:
    """An OKdokument emulator: the API, failure injection, and sign/cancel that call back."""
    from handlers.okdokument.fake import serve as serve_fake

    serve_fake(
        port=port,
        host=host,
        api_key=api_key,
        time_factor=time_factor,
        drop_callbacks_percent=drop_callbacks,
        info_lag_seconds=info_lag,
    )


@click.command("okdokument")
@click.argument("request_id", type=ROW_ID)
@click.option(
    "--state",
    default="signed",
    show_default=True,
    type=click.Choice(["signed", "canceled", "none"]),
    help="The sendInfo state to post ('none': no sendInfo).",
)
@click.option(
    "--browser",
    default=None,
    type=click.Choice(["success", "close", "mobile"]),
    help="Also bring the signer's browser back to the result URL.",
)
@click.option(
    "--to",
    "base_url",
    default=None,
    help="Base URL to send to (default SIGNBACK_PUBLIC_URL, e.g. your tunnel).",
)
@handles_config_errors
def simulate(request_id: int, state: str, browser: str | None, base_url: str | None) -> None:
    """OKdokument's sendInfo callback (and optionally the browser return) for REQUEST_ID.

    With confirmation on (the default), signback checks a 'signed' claim with OKdokument's
    Document info: in a sandbox where nobody signed, the claim is recorded but not acted on.
    """
    from handlers.okdokument.simulate import send

    async def run(ctx: Any) -> list[Any]:
        return await send(
            ctx,
            request_id,
            state=None if state == "none" else state,
            browser=browser,
            base_url=base_url,
        )

    print_sent(run_simulation(run))
