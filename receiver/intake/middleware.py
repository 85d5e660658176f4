"""Request ids and one access-log line per request, with secrets cut out of the path."""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from receiver.logs import get_logger, redact_tokens, set_request_id
from receiver.metrics import Metrics

log = get_logger("signback.http")

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_QUIET_PATHS = frozenset({"/healthz", "/readyz"})


# Paths whose next segment is a request's token (``/return/<t>``, and each provider's
# hook-token route, added by the app: token_routes). Process-wide, like the log set-up.
_token_routes: set[str] = {"/return"}


def _token_path(routes: Iterable[str]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(r.strip("/")) for r in sorted(routes, key=len, reverse=True))
    return re.compile(rf"^/({alternatives})/[^/]+")


_TOKEN_PATH = _token_path(_token_routes)


def token_routes(prefixes: Iterable[str]) -> None:
    """Cut the segment after each of ``prefixes`` (``/hooks/<provider>``) out of logged
    paths too, whatever it looks like. Only ever adds: an app never un-redacts another's."""
    global _TOKEN_PATH
    _token_routes.update(prefixes)
    _TOKEN_PATH = _token_path(_token_routes)


def loggable_path(path: str) -> str:
    """``path`` fit for a log line: the callback routes' token segment cut out whatever it
    looks like, and anything token-shaped anywhere else (``//hooks/<provider>/<t>``,
    ``/Return/<t>``, a token in any segment)."""
    return redact_tokens(_TOKEN_PATH.sub(r"/\1/[token]", path))


_CORE_GROUPS = ("/return", "/api", "/healthz", "/readyz", "/metrics", "/console")


class RouteGroups:
    """A small, fixed label set for metrics (never a token, never unbounded): each
    provider's ``/hooks/<name>`` and the core's routes."""

    def __init__(self, hook_groups: Iterable[str] = ()) -> None:
        self.groups = (*hook_groups, *_CORE_GROUPS)

    def __call__(self, path: str) -> str:
        return next((g for g in self.groups if path == g or path.startswith(g + "/")), "other")


route_group = RouteGroups()  # the core's groups only (an app passes its own)


# New request ids: 16 hex characters, a random per-process prefix and a counter. Unique
# enough to tie log lines together, and without a getrandom() call per request.
_ID_PREFIX = os.urandom(4).hex()
_ID_COUNTER = itertools.count(int.from_bytes(os.urandom(4), "big"))


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFF:08x}"


def request_id_for(incoming: str) -> str:
    """The caller's ``X-Request-ID`` when it is well-formed, otherwise a new one."""
    return incoming if incoming and REQUEST_ID_PATTERN.match(incoming) else new_request_id()


def finish_request(
    metrics: Metrics | None,
    method: str,
    path: str,
    status: int,
    started: float,
    *,
    logged: bool,
    route: str | None = None,
    groups: RouteGroups = route_group,
) -> None:
    """What ends every request, here and on the /hooks fast path (receiver/intake/router.py): the
    metrics, the access line when ``logged``, and the request id unbound. ``route`` is the
    path's route group (``groups``) when the caller already knows it."""
    if metrics is not None:
        metrics.http.inc(route or groups(path), str(status))
    if logged:
        log.info(
            "http",
            method=method,
            path=loggable_path(path),
            status=status,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )
    set_request_id(None)


class RequestContextMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware overhead on the hot path)."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics | None = None, groups: RouteGroups = route_group
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.groups = groups

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = request_id_for(incoming)
        set_request_id(request_id)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            path = scope["path"]
            logged = path not in _QUIET_PATHS or status >= 400
            finish_request(
                self.metrics,
                scope["method"],
                path,
                status,
                started,
                logged=logged,
                groups=self.groups,
            )
