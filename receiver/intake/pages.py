"""The few HTML pages a person (a signer's browser) may see. Never JSON for a browser."""

from __future__ import annotations

import html
from collections.abc import Mapping

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


def is_browser_path(path: str) -> bool:
    """Paths a signer's browser is sent to: every answer there is a page, never JSON."""
    return path == "/return" or path.startswith("/return/")


def error(status_code: int, headers: Mapping[str, str] | None = None) -> HTMLResponse:
    """The page for an error status on a browser path (an unknown sub-path, a wrong method,
    a failure)."""
    if status_code == 404:
        response = not_found()
    elif status_code == 405:
        response = page(
            "Not available",
            "This link opens in a browser. If you just signed a document, your signature "
            "was recorded by the signing service; you can close this window.",
            405,
        )
    elif status_code >= 500:
        response = page(
            "Please try again in a moment",
            "Something went wrong on our side. Your signature itself is safe.",
            status_code,
        )
    else:
        response = page("Link not usable", "This link cannot be opened like this.", status_code)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response
