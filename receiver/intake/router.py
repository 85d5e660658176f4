"""The callback fast path: ``/hooks/*`` answered straight from ASGI.

Every provider callback comes through here, so it is the one path whose cost decides how
many callbacks a process can take. Starlette's router, its ``Request``/``Response`` objects
and the middleware stack cost more per callback than the database insert itself
(docs/performance.md), so hook routes skip them: the request is read from ``receive``, the
provider's handler gets a small :class:`Callback`, and the answer is sent as preformatted
bytes. Everything else (health, admin API, browser returns) goes on to the Starlette app.

What the middleware does for other routes is done here too: a request id (taken from a
well-formed ``X-Request-ID`` or made up), bound to every log line of the request and sent
back; the metrics by route group; an access line for refusals; an unhandled error becomes a
logged 500 with a JSON body, never a dropped connection.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from receiver import jsonutil
from receiver.errors import CallbackRejected
from receiver.intake.connguard import BodyBudget, BodyHold, ConnectionLimits
from receiver.intake.middleware import (
    RouteGroups,
    finish_request,
    loggable_path,
    request_id_for,
)
from receiver.loadshare import IntakeLoad
from receiver.logs import get_logger, set_request_id
from receiver.metrics import Metrics

log = get_logger("signback.http")

HOOKS_PREFIX = "/hooks/"


class ClientGone(Exception):
    """The client disconnected before its request body arrived: nobody is left to answer."""


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer with its body already encoded (JSON unless ``content_type`` says)."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    content_type: bytes = b"application/json"
    # What goes on the wire before the request id: content type, length, ``headers``.
    wire_headers: tuple[tuple[bytes, bytes], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        wire = (
            (b"content-type", self.content_type),
            (b"content-length", str(len(self.body)).encode()),
            *self.headers,
        )
        object.__setattr__(self, "wire_headers", wire)

    @classmethod
    def text(
        cls, status: int, text: str, content_type: str = "text/plain; charset=utf-8"
    ) -> Answer:
        """A plain answer: some providers want an exact acknowledgement body."""
        return cls(status, text.encode(), content_type=content_type.encode("latin-1"))

    @classmethod
    def json(
        cls, status: int, payload: Any, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> Answer:
        return cls(status, jsonutil.dumps_bytes(payload), headers)

    @classmethod
    def error(cls, status: int, reason: str) -> Answer:
        # 503s tell the provider when to come back; every refusal carries its reason.
        headers = ((b"retry-after", b"5"),) if status == 503 else ()
        return cls.json(status, {"error": reason}, headers)


def decode_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Header names and values as text (uvicorn has lower-cased the names); the last of
    repeated headers wins."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in raw}


def length_exceeds(declared: str, limit: int) -> bool:
    """Whether a Content-Length of digits only is over ``limit``. Leading zeros are legal,
    and int() refuses numbers of over 4,300 digits."""
    digits = declared.lstrip("0")
    return len(digits) > len(str(limit)) or int(digits or "0") > limit


class Callback:
    """One callback request as a hook handler sees it. The body is read on demand, so a
    handler can refuse (404 unknown URL, 415 wrong type) before reading it. On the short
    path (receiver/intake/protocol.py) the body has already arrived and comes as ``body``."""

    __slots__ = (
        "_body",
        "_hold",
        "_receive",
        "client",
        "headers",
        "method",
        "param",
        "path",
        "query",
    )

    def __init__(
        self,
        *,
        method: str,
        path: str,
        param: str | None,
        headers: dict[str, str],
        query: str,
        receive: Receive | None = None,
        body: bytes | None = None,
        hold: BodyHold | None = None,
        client: str | None = None,
    ) -> None:
        if (receive is None) == (body is None):
            raise ValueError("a Callback reads its body from receive or is given it, not both")
        self.method = method
        self.path = path
        self.param = param  # the route's one ``{…}`` segment, if it has one
        self.headers = headers  # lower-case names; the last of repeated headers wins
        self.query = query
        # The peer's address (uvicorn's, which --forwarded-allow-ips lets a trusted proxy's
        # X-Forwarded-For set): for the rejection log only.
        self.client = client
        self._receive = receive
        self._body = body
        # The bytes of the body budget this callback holds (its declared length, reserved
        # before it was read); a chunked body reserves itself as it comes.
        self._hold = hold

    async def read_body(self, limit: int) -> bytes:
        """The raw body, refusing (413) anything over ``limit`` without reading it all."""
        declared = self.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise CallbackRejected("invalid Content-Length header", 400)
            if length_exceeds(declared, limit):
                raise CallbackRejected(f"body larger than {limit} bytes", 413)
        if self._body is not None:
            if len(self._body) > limit:
                raise CallbackRejected(f"body larger than {limit} bytes", 413)
            return self._body
        assert self._receive is not None
        message = await self._receive()
        if message["type"] != "http.request":
            raise ClientGone
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):  # the usual case: one message holds it all
            if len(body) > limit:
                raise CallbackRejected(f"body larger than {limit} bytes", 413)
            return body
        chunks = [body]
        size = len(body)
        while True:
            message = await self._receive()
            if message["type"] != "http.request":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:  # chunked uploads declare no length: stop at the limit
                raise CallbackRejected(f"body larger than {limit} bytes", 413)
            if self._hold is not None and not self._hold.hold(size):
                raise CallbackRejected(BUSY_REASON, 503)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


HookHandler = Callable[[Callback], Awaitable[Answer]]


@dataclass(frozen=True, slots=True)
class Hook:
    """A callback route: ``/hooks/<provider>`` with at most one ``{name}`` segment at the
    end (``/hooks/<provider>/{hook_token}``). Only POST is accepted."""

    path: str
    handle: HookHandler

    def __post_init__(self) -> None:
        head, _, last = self.path.rpartition("/")
        if not self.path.startswith(HOOKS_PREFIX) or "{" in head or "}" in head:
            raise ValueError(f"hook paths look like /hooks/<provider>[/{{name}}]: {self.path}")
        if ("{" in last) != last.startswith("{") or ("{" in last and not last.endswith("}")):
            raise ValueError(f"a hook path's parameter is a whole last segment: {self.path}")

    @property
    def has_param(self) -> bool:
        return self.path.endswith("}")

    @property
    def fixed_part(self) -> str:
        """``/hooks/<provider>/`` for a parameterized route, the whole path otherwise."""
        return self.path.rpartition("/")[0] + "/" if self.has_param else self.path


SERVER_ERROR = Answer.error(500, "internal error; see the server log")
BUSY_REASON = "too many callback bytes being received at once; retry shortly"
# The body budget is spent: refused before the body is read, and the connection closed so
# that the rest of the body is not read either.
BUSY = Answer.json(503, {"error": BUSY_REASON}, ((b"retry-after", b"5"), (b"connection", b"close")))
# The same answer for the short path (receiver/intake/protocol.py), which adds
# ``connection: close`` itself.
BUSY_SHORT = Answer.json(503, {"error": BUSY_REASON}, ((b"retry-after", b"5"),))
_NOT_ALLOWED = Answer.json(405, {"error": "Method Not Allowed"}, ((b"allow", b"POST"),))


def peer_address(scope: Mapping[str, Any]) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


class HookRouter:
    """ASGI app in front of the Starlette app: serves hook routes, passes on the rest."""

    def __init__(
        self,
        fallback: ASGIApp,
        hooks: Sequence[Hook],
        metrics: Metrics,
        load: IntakeLoad | None = None,
        *,
        limits: ConnectionLimits | None = None,
        budget: BodyBudget | None = None,
        max_body_bytes: int = 1024 * 1024,
        groups: RouteGroups | None = None,
    ) -> None:
        self.fallback = fallback
        self.metrics = metrics
        self.load = load or IntakeLoad()
        # For the HTTP protocol (receiver/intake/guarded_protocol.py) and the body budget.
        self.limits = limits or ConnectionLimits()
        self.budget = budget or BodyBudget(64 * 1024 * 1024)
        self.max_body_bytes = max_body_bytes
        # A route's metrics label (its route group) is worked out once, not per request;
        # by default each hook's /hooks/<provider>.
        groups = groups or RouteGroups({"/".join(h.path.split("/")[:3]) for h in hooks})
        self._exact: dict[str, tuple[HookHandler, str]] = {}
        self._by_prefix: dict[str, tuple[HookHandler, str]] = {}
        for hook in hooks:
            table = self._by_prefix if hook.has_param else self._exact
            if hook.fixed_part in table:
                raise ValueError(f"two hooks for {hook.path}")
            table[hook.fixed_part] = (hook.handle, groups(hook.fixed_part.rstrip("/")))

    def match(self, path: str) -> tuple[HookHandler | None, str | None, str]:
        """The handler for ``path``, its ``{…}`` segment and its route group."""
        found = self._exact.get(path)
        if found is not None:
            return found[0], None, found[1]
        head, _, last = path.rpartition("/")
        if last:
            found = self._by_prefix.get(head + "/")
            if found is not None:
                return found[0], last, found[1]
        return None, None, ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(HOOKS_PREFIX):
            handler, param, route = self.match(scope["path"])
            if handler is not None:
                await self._serve(handler, param, route, scope, receive, send)
                return
        await self.fallback(scope, receive, send)

    async def respond(
        self,
        handler: HookHandler,
        param: str | None,
        route: str,
        *,
        method: str,
        path: str,
        headers: dict[str, str],
        query: str,
        receive: Receive | None = None,
        body: bytes | None = None,
        hold: BodyHold | None = None,
        client: str | None = None,
    ) -> tuple[Answer, str]:
        """The answer to one callback and its request id, which is bound to the log lines
        until :meth:`finished`. Raises :class:`ClientGone` when the client left before its
        body arrived. Shared by the ASGI path below and receiver/intake/protocol.py. ``hold``
        is what the body holds of the budget (the caller gives it back)."""
        request_id = request_id_for(headers.get("x-request-id", ""))
        set_request_id(request_id)
        self.load.arrived()
        try:
            if method != "POST":
                return _NOT_ALLOWED, request_id
            call = Callback(
                method=method,
                path=path,
                param=param,
                headers=headers,
                query=query,
                receive=receive,
                body=body,
                hold=hold,
                client=client,
            )
            return await handler(call), request_id
        except ClientGone:
            log.info("client disconnected before sending its body", path=loggable_path(path))
            set_request_id(None)
            raise
        except Exception:
            log.exception("unhandled error", path=loggable_path(path))
            return SERVER_ERROR, request_id
        finally:
            self.load.answered()

    def refuse(self, answer: Answer, path: str, headers: dict[str, str]) -> tuple[Answer, str]:
        """A body-budget refusal given before the body is read, with the request id and the
        log line :meth:`respond` gives its answers (both paths)."""
        request_id = request_id_for(headers.get("x-request-id", ""))
        set_request_id(request_id)
        log.warning(BUSY_REASON, path=loggable_path(path), status=answer.status)
        return answer, request_id

    def reserve(self, hold: BodyHold, declared: str | None) -> bool:
        """Hold a declared body length in the budget before the body is read; False when
        it does not fit. No length, or one over the limit (which the handler refuses
        unread, 413), holds nothing."""
        if declared is None or not declared.isdigit():
            return True
        if length_exceeds(declared, self.max_body_bytes):
            return True
        return hold.hold(int(declared.lstrip("0") or "0"))

    def finished(self, method: str, path: str, status: int, started: float, route: str) -> None:
        # Accepted callbacks get no access line: the pipeline logs each one as processed.
        finish_request(
            self.metrics, method, path, status, started, logged=status != 200, route=route
        )

    async def _serve(
        self,
        handler: HookHandler,
        param: str | None,
        route: str,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        started = time.perf_counter()
        headers = decode_headers(scope["headers"])
        path: str = scope["path"]
        method: str = scope["method"]
        hold = BodyHold(self.budget)
        try:
            if method == "POST" and not self.reserve(hold, headers.get("content-length")):
                answer, request_id = self.refuse(BUSY, path, headers)
            else:
                try:
                    answer, request_id = await self.respond(
                        handler,
                        param,
                        route,
                        method=method,
                        path=path,
                        headers=headers,
                        query=scope["query_string"].decode("latin-1"),
                        receive=receive,
                        hold=hold,
                        client=peer_address(scope),
                    )
                except ClientGone:
                    return
        finally:
            hold.release()
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [*answer.wire_headers, (b"x-request-id", request_id.encode())],
            }
        )
        await send({"type": "http.response.body", "body": answer.body})
        self.finished(method, path, answer.status, started, route)
