"""The few HTML pages a person (a signer's browser) may see. Never JSON for a browser."""

from __future__ import annotations

import html

from starlette.responses import HTMLResponse

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:34rem;margin:15vh auto;padding:0 1rem;
color:#222}}h1{{font-size:1.4rem}}p{{line-height:1.5}}</style></head>
<body><h1>{title}</h1><p>{message}</p></body></html>
"""


def page(title: str, message: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(
        _PAGE.format(title=html.escape(title), message=html.escape(message)),
        status_code=status_code,
        headers={"cache-control": "no-store", "referrer-policy": "no-referrer"},
    )


def not_found() -> HTMLResponse:
    return page(
        "Link not recognised",
        "This signing link is not known here. If you just signed a document, your signature "
        "was recorded by the signing service; you can close this window.",
        404,
    )


def recorded(result: str | None) -> HTMLResponse:
    if result == "close":
        return page("Signing not completed", "You closed the document without signing it.")
    return page("Thank you", "Your signing was recorded. You can close this window.")
