"""What the console's pages share: security headers, rendering (times, stored values),
the template environment, and the checks of query and form parameters (each bad one is a
:class:`BadInput`, a 400 page that names it)."""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jinja2
from markupsafe import Markup
from starlette.responses import Response

from receiver.console.session import Session
from receiver.store.storable import renderable, text_problem

HERE = Path(__file__).parent
MAX_ID = 2**63 - 1

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


class BadInput(Exception):
    """A parameter the page cannot take: a 400 page with the reason."""


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# --- rendering helpers --------------------------------------------------------------------


def iso(value: object) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        moment = dt.datetime.fromtimestamp(float(value), tz=dt.UTC)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):
        return None
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def when(value: object) -> Markup:
    """A stored time as ``<time>``: UTC in the text (the script shows it in the viewer's
    zone) and on hover."""
    stamp = iso(value)
    if stamp is None:
        return Markup("<span class='none'>-</span>")
    utc = stamp.replace("T", " ").replace("Z", " UTC")
    return Markup('<time datetime="{0}" title="{1}">{1}</time>').format(stamp, utc)


def ago(value: object, now: float) -> str:
    try:
        seconds = now - float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "-"
    if not math.isfinite(seconds):
        return "-"
    late = seconds >= 0
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            text = f"{seconds / size:.0f} {unit}"
            break
    else:
        text = f"{seconds:.0f} s"
    return f"{text} ago" if late else f"in {text}"


def shown(value: object) -> object:
    """Any stored value as a page can show it (lone surrogates, NaN …); yes/no for a flag."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return renderable(value)


@functools.cache
def make_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["shown"] = shown
    env.globals["ago"] = ago
    return env


@dataclass
class View:
    """What every page's template gets besides its own values."""

    session: Session
    csrf: str
    path: str


# --- parameters ---------------------------------------------------------------------------


def row_id(raw: str | None) -> int | None:
    if raw is None or not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        return None
    value = int(raw)
    return value if 0 < value <= MAX_ID else None


def text_param(params: Mapping[str, str], name: str, limit: int = 200) -> str | None:
    value = params.get(name, "").strip()
    if not value:
        return None
    if len(value) > limit:
        raise BadInput(f"{name} must be at most {limit} characters")
    if problem := text_problem(value):
        raise BadInput(f"{name} {problem}")
    return value


def choice_param(params: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    value = params.get(name, "")
    if not value:
        return None
    if value not in allowed:
        raise BadInput(f"{name} must be one of {', '.join(allowed)}")
    return value


def date_param(params: Mapping[str, str], name: str, *, end: bool = False) -> float | None:
    """``YYYY-MM-DD`` (UTC): its start, or with ``end`` the start of the next day."""
    value = params.get(name, "").strip()
    if not value:
        return None
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise BadInput(f"{name} must be a date such as 2026-12-01") from None
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()
    return start + 86400 if end else start


def before_param(params: Mapping[str, str], name: str = "before") -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    value = row_id(raw)
    if value is None:
        raise BadInput(f"{name} must be an id")
    return value


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a console path only (no open redirect)."""
    if value and value.startswith("/console") and "//" not in value and "\\" not in value:
        return value
    return "/console"


def page_bytes(name: str, **values: object) -> bytes:
    """A template rendered; a stored lone surrogate must not turn a page into a 500."""
    return (
        make_environment().get_template(name).render(**values).encode("utf-8", "backslashreplace")
    )


def problem_page(status: int, message: str) -> Response:
    """A page for a refusal outside any console route (an unknown path, a wrong method)."""
    return Response(
        page_bytes("problem.html", view=None, code=status, message=message),
        status_code=status,
        media_type="text/html; charset=utf-8",
        headers=SECURITY_HEADERS,
    )
