"""uvicorn's httptools protocol, with a shorter path for provider callbacks.

Why: at one uvicorn worker the callback intake is CPU-bound, and uvicorn's ASGI machinery
is a large part of each callback's cost. For every request it builds a
``RequestResponseCycle``, runs the app through ``receive``/``send`` coroutines, checks
every response header against two regular expressions and writes the head and the body
separately. This path skips that machinery and costs the server markedly less CPU per
callback (``python -m bench.asgi_cost`` measures it; docs/performance.md has the figures).

What changes: a request is answered here, without ASGI, when it is a ``POST`` to a
registered ``/hooks/...`` route with a ``Content-Length`` of at most 64 KiB (uvicorn's own
read buffer limit) and no ``Expect: 100-continue``. Its body is collected by uvicorn's
parser callbacks exactly as before, the same handler as on the ASGI path
(:meth:`receiver.intake.router.HookRouter.respond`) decides the answer, and the answer goes out as
one write. Nothing about *what* is answered changes: the same checks, the same commit
before the acknowledgement, the same request id, metrics and log lines.

Everything else — other paths and methods, chunked or larger bodies, upgrades, a
configured concurrency limit or root path — goes through uvicorn's ASGI path untouched, and
``uvicorn receiver.app:create_app_from_env`` without this protocol serves the same
answers, only slower.

How it fits in uvicorn: :class:`CallbackCycle` stands in for uvicorn's
``RequestResponseCycle`` in the protocol's ``cycle`` slot and pipeline queue, with the
attributes the protocol reads and writes there (``body``, ``more_body``,
``message_event``, ``disconnected``, ``keep_alive``, ``response_complete``) and a
``run_asgi`` coroutine that uvicorn runs as the request's task. So keep-alive timers,
pipelined requests, disconnects and graceful shutdown work as they do for ASGI requests.
It also keeps the request's ``scope``, by which the connection guard it inherits
(:class:`receiver.intake.guarded_protocol.GuardedHttpProtocol`) tells a head under way from a
request being answered, and a body that has not arrived whole with its head holds its
declared length of the router's body budget while it arrives (receiver/intake/connguard.py).
tests/integration/test_hook_protocol.py runs the same wire-level cases through both paths,
and through the guarded protocol without this short path; receiver/intake/uvicorn_compat.py
checks at start that the installed uvicorn still has what this module uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
import urllib.parse
from collections.abc import Iterable

import httptools
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from receiver.intake.guarded_protocol import GuardedHttpProtocol, find_router
from receiver.intake.middleware import loggable_path
from receiver.intake.router import (
    BUSY_SHORT,
    HOOKS_PREFIX,
    SERVER_ERROR,
    Answer,
    HookHandler,
    HookRouter,
    decode_headers,
    length_exceeds,
    peer_address,
)
from receiver.logs import get_logger

log = get_logger("signback.http")

_HOOKS_PREFIX = HOOKS_PREFIX.encode()
# Larger bodies take uvicorn's path, which pauses reading while the app catches up.
LEAN_BODY_LIMIT = HIGH_WATER_LIMIT


def encode_answer(
    status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes, *, close: bool
) -> bytes:
    """An HTTP/1.1 answer on the wire: status line, headers, ``connection: close`` when the
    connection ends with it, body."""
    wire = [STATUS_LINE[status]]
    for name, value in headers:
        wire += (name, b": ", value, b"\r\n")
    if close:
        wire.append(b"connection: close\r\n")
    wire += (b"\r\n", body)
    return b"".join(wire)


_SERVER_ERROR_CLOSE = encode_answer(500, SERVER_ERROR.wire_headers, SERVER_ERROR.body, close=True)


__all__ = ["CallbackCycle", "HookHttpProtocol", "encode_answer", "find_router"]


class CallbackCycle:
    """One callback request answered without ASGI (see the module docstring)."""

    __slots__ = (
        "body",
        "disconnected",
        "flow",
        "handler",
        "headers",
        "keep_alive",
        "length",
        "message_event",
        "more_body",
        "on_response",
        "param",
        "path",
        "protocol",
        "query",
        "reserved",
        "response_complete",
        "route",
        "router",
        "scope",
        "transport",
    )

    def __init__(
        self,
        protocol: HookHttpProtocol,
        router: HookRouter,
        handler: HookHandler,
        param: str | None,
        route: str,
        path: str,
        query: str,
        keep_alive: bool,
        length: bytes,
    ) -> None:
        self.protocol = protocol
        self.router = router
        self.handler = handler
        self.param = param
        self.route = route
        self.path = path
        self.query = query
        self.headers = decode_headers(protocol.headers)
        # The request's uvicorn scope, which the connection guard tells requests apart by.
        self.scope = protocol.scope
        self.transport = protocol.transport
        self.flow: FlowControl = protocol.flow
        self.on_response = protocol.on_response_complete
        # What uvicorn's protocol touches on its current cycle:
        self.body = b""
        self.more_body = True
        self.message_event = asyncio.Event()
        self.disconnected = False
        self.keep_alive = keep_alive
        self.response_complete = False
        self.length = length  # the declared Content-Length, as sent
        self.reserved = 0  # bytes held in the router's body budget

    async def run_asgi(self, app: object) -> None:
        """uvicorn's name for "answer this request"; ``app`` is not used."""
        try:
            await self._answer()
        except BaseException as exc:
            # respond() turns handler errors into a 500, so this is a failed write, or the
            # task cancelled when a graceful shutdown runs out of time. As uvicorn does for
            # its own cycles: a 500 if nothing was sent yet, and the connection closed. (The
            # callback may or may not be stored; the provider retries, and a retry of a
            # stored one is answered as a duplicate.)
            if not isinstance(exc, asyncio.CancelledError):
                log.exception("could not answer a callback", path=loggable_path(self.path))
            if not self.response_complete:
                if not self.disconnected:
                    with contextlib.suppress(Exception):
                        self.transport.write(_SERVER_ERROR_CLOSE)
                self.transport.close()
            if not isinstance(exc, Exception):
                raise
        finally:
            self.on_response = _nothing  # as uvicorn does: a late call must not re-arm timers
            if self.reserved:
                self.router.budget.give_back(self.reserved)
                self.reserved = 0

    async def _answer(self) -> None:
        refusal: tuple[Answer, str] | None = None
        if self.more_body and not self.disconnected:
            # The body is still arriving: while it does, it holds its declared length of the
            # router's body budget (given back in run_asgi, however the task ends). When
            # that does not fit, the answer is a 503 before the body is read, and the
            # connection ends with it, so that the rest is not read either. A body that came
            # whole with its head (the usual case) is not waited for and holds nothing.
            size = int(self.length.lstrip(b"0") or b"0")
            if self.router.budget.take(size):
                self.reserved = size
                while self.more_body and not self.disconnected:
                    await self.message_event.wait()
                    self.message_event.clear()
                if self.disconnected:
                    log.info(
                        "client disconnected before sending its body",
                        path=loggable_path(self.path),
                    )
                    return
            else:
                self.keep_alive = False
                refusal = self.router.refuse(BUSY_SHORT, self.path, self.headers)
        started = time.perf_counter()
        if refusal is None:
            answer, request_id = await self.router.respond(
                self.handler,
                self.param,
                self.route,
                method="POST",
                path=self.path,
                headers=self.headers,
                query=self.query,
                body=self.body,
                client=peer_address(self.scope),
            )
        else:
            answer, request_id = refusal
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if not self.disconnected:
            headers = (
                *self.protocol.server_state.default_headers,
                *answer.wire_headers,
                (b"x-request-id", request_id.encode()),
            )
            self.transport.write(
                encode_answer(answer.status, headers, answer.body, close=not self.keep_alive)
            )
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                # Gently when the body was not read (the budget's 503): see GuardedHttpProtocol.
                self.protocol.close_after_answer(self)
            self.on_response()
        # A callback stored for a client that left is still stored: metrics count it.
        self.router.finished("POST", self.path, answer.status, started, self.route)


def _nothing() -> None:
    return None


class HookHttpProtocol(GuardedHttpProtocol):
    """uvicorn's ``HttpToolsProtocol`` with signback's connection limits
    (:class:`GuardedHttpProtocol`); callbacks are answered by :class:`CallbackCycle`."""

    def on_headers_complete(self) -> None:
        cycle = self._callback_cycle()
        if cycle is None:
            super().on_headers_complete()
            return
        # As uvicorn does for its own cycles: answer now, or queue behind a pipelined one.
        existing = self.cycle
        self.cycle = cycle  # type: ignore[assignment]
        if existing is None or existing.response_complete:
            if getattr(self.config, "reset_contextvars", False):  # uvicorn ≥ 0.39's option
                task = self.loop.create_task(
                    cycle.run_asgi(self.app), context=contextvars.Context()
                )
            else:
                task = self.loop.create_task(cycle.run_asgi(self.app))
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)
        else:
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, self.app))  # type: ignore[arg-type]

    def _callback_cycle(self) -> CallbackCycle | None:
        """A :class:`CallbackCycle` when this request can take the short path, else None."""
        router = self.router
        if (
            router is None
            or self.root_path  # the app sees <root path>/hooks/…: let it route that
            or not self.url.startswith(_HOOKS_PREFIX)
            or self.expect_100_continue
            or self.limit_concurrency is not None
            or self.parser.get_method() != b"POST"
            or self.parser.should_upgrade()
        ):
            return None
        length = None
        for name, value in self.headers:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                return None
        if (
            length is None
            or not length.isdigit()
            or length_exceeds(length.decode("ascii"), LEAN_BODY_LIMIT)
        ):
            return None
        parsed = _parse_url(self.url)
        if parsed is None:
            return None
        path, query = parsed
        handler, param, route = router.match(path)
        if handler is None:
            return None
        http_version = self.parser.get_http_version()
        keep_alive = http_version != "1.0" and self.parser.should_keep_alive()
        return CallbackCycle(self, router, handler, param, route, path, query, keep_alive, length)


def _parse_url(url: bytes) -> tuple[str, str] | None:
    """Path (percent-decoded) and query of a request target, as uvicorn works them out;
    None for what uvicorn would refuse, so that uvicorn refuses it."""
    try:
        parsed = httptools.parse_url(url)
        path = parsed.path.decode("ascii")
    except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
        return None
    if "%" in path:
        path = urllib.parse.unquote(path)
    return path, (parsed.query or b"").decode("latin-1")
