"""uvicorn's httptools protocol with the connection limits of receiver/intake/connguard.py.

uvicorn closes a connection that stays idle after an answer (its keep-alive timeout), but
not one that sends nothing at all, sends its request head a byte at a time, or stops in
the middle of a body: each of those held a descriptor for as long as the client liked. And
it accepts connections until the process runs out of descriptors, after which nothing is
answered, health checks included. This protocol adds, per connection:

- a **time limit** on whatever the connection is waiting on the client for: a first request
  (``header_timeout`` from the opening), a head once begun (``header_timeout``), a body
  (``body_timeout`` from the end of the head), or a request after bytes that began none
  (``header_timeout``; uvicorn's keep-alive timer stops at any byte). Past it the
  connection is closed, with a ``408`` when a request had begun. The limits are kept by one
  sweep per server, every fifth of the shorter limit, that looks at what each connection is
  doing and since when; so a connection is closed between its limit and two fifths of the
  shorter limit after it (one fifth for one that sends nothing), and a request costs
  nothing for it: no clock read, no timer;
- a **size bound** on the request head (``max_head_bytes``, then ``431``), counted over the
  packets that arrive while a head is unfinished (a head that arrives whole costs a few
  comparisons);
- a place in the server's :class:`~receiver.intake.connguard.ConnectionRegistry`, which keeps the
  number of connections under the cap by closing the longest-waiting idle connection, or
  refusing the newcomer with a ``503`` when every connection is busy with a request.

``HookHttpProtocol`` (receiver/intake/protocol.py) builds its short path for callbacks on top
of this; receiver/intake/uvicorn_compat.py chooses which protocol ``signback serve`` can use with
the installed uvicorn.
"""

from __future__ import annotations

import asyncio
import http
import weakref
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from receiver import jsonutil
from receiver.intake.connguard import ConnectionLimits, ConnectionRegistry, ThrottledLog
from receiver.intake.router import HookRouter

if TYPE_CHECKING:
    from uvicorn.server import ServerState

_DEFAULT_LIMITS = ConnectionLimits()


def _refusal(status: int, reason: str, retry_after: int | None = None) -> bytes:
    """A complete answer that ends the connection."""
    body = jsonutil.dumps_bytes({"error": reason})
    head = [
        b"HTTP/1.1 %d %s\r\n" % (status, http.HTTPStatus(status).phrase.encode()),
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
    ]
    if retry_after is not None:
        head.append(b"retry-after: %d\r\n" % retry_after)
    head.append(b"connection: close\r\n\r\n")
    return b"".join(head) + body


_AT_CAPACITY = _refusal(503, "too many connections; retry shortly", retry_after=1)


def find_router(app: Any) -> HookRouter | None:
    """The :class:`HookRouter` inside uvicorn's middleware wrappers (proxy headers, and
    message logging at trace level), each of which keeps the app it wraps as ``.app``."""
    for _ in range(8):
        if isinstance(app, HookRouter):
            return app
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


class ServerGuard:
    """What the connections of one uvicorn server share: limits, registry, the sweep."""

    def __init__(self, limits: ConnectionLimits, router: HookRouter | None) -> None:
        self.limits = limits
        self.registry = ConnectionRegistry(limits.max_connections)
        self.router = router
        self.loop = asyncio.get_running_loop()
        self.log = ThrottledLog(self.loop.time)
        self.head_408 = _refusal(
            408, f"request head not received within {limits.header_timeout:g} s"
        )
        self.body_408 = _refusal(408, f"request body not received within {limits.body_timeout:g} s")
        self.head_431 = _refusal(431, f"request head larger than {limits.max_head_bytes} bytes")
        self.interval = min(limits.header_timeout, limits.body_timeout) / 5
        self._sweeper: asyncio.TimerHandle | None = None

    def watch(self) -> None:
        """Make sure the sweep runs (it stops while there are no connections)."""
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.interval, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = self.loop.time()
        for conn in list(self.registry.open):
            if isinstance(conn, GuardedHttpProtocol):
                conn.check(now)
        if self.registry.open:
            self.watch()

    def closed(self, reason: str, client: object) -> None:
        """Count and log (throttled) a connection this guard closed."""
        if self.router is not None:
            self.router.metrics.connections_closed.inc(reason)
        self.log.warn(f"connection closed: {reason.replace('_', ' ')}", client=client)


# One guard per uvicorn server (tests run several in one process).
_guards: weakref.WeakKeyDictionary[ServerState, ServerGuard] = weakref.WeakKeyDictionary()


def guard_for(server_state: ServerState, router: HookRouter | None) -> ServerGuard:
    guard = _guards.get(server_state)
    if guard is None:
        limits = router.limits if router is not None else _DEFAULT_LIMITS
        guard = _guards[server_state] = ServerGuard(limits, router)
    return guard


# What a connection is doing, as the sweep sees it.
SILENT = 1  # nothing received yet
HEAD = 2  # a request head begun, not finished
BODY = 3  # a head finished, its body not (or still arriving after the answer)
STRAY = 4  # answered, idle, and bytes came that began no request
BUSY = 5  # the app is answering, or uvicorn's keep-alive timer watches the idle connection


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's ``HttpToolsProtocol`` with time limits, a head size bound and the cap."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.router = find_router(self.app)
        self.guard = guard_for(self.server_state, self.router)
        # What the sweep saw last, and since when (see check()).
        self._seen_state = 0
        self._seen_what: object = None
        self._seen_since = 0.0
        # The unfinished head (its uvicorn scope) the bytes below were counted for.
        self._head_scope: object = None
        self._head_bytes = 0

    # --- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.registry.admit(self):
            self.guard.closed("refused_at_capacity", self.client)
            transport.write(_AT_CAPACITY)
            transport.close()
            return
        # The clock for a first request starts now (later states are first seen by the
        # sweep, up to one interval after they begin).
        self._seen_state, self._seen_since = SILENT, self.guard.loop.time()
        self.guard.watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.registry.leave(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        head = self._head_scope
        if head is not None:  # the last packet ended inside this head: is it still open?
            cycle = self.cycle
            if self.scope is head and (cycle is None or cycle.scope is not head):
                self._head_bytes += len(data)
                if self._head_bytes > self.guard.limits.max_head_bytes:
                    self._close("head_too_large", self.guard.head_431)
                    return
        super().data_received(data)
        # Did this packet end inside a head? (uvicorn makes a new scope when a request
        # begins, and a cycle with it when its head is complete.) Only the packets after
        # this one are counted: this one's share of the head is not known, and it is at
        # most one read.
        cycle = self.cycle
        scope = self.scope
        if scope is not None and (cycle is None or cycle.scope is not scope):
            if scope is not head:
                self._head_scope = scope
                self._head_bytes = 0
        elif head is not None:
            self._head_scope = None

    # --- what the sweep and the registry ask ---------------------------------------------

    def _state(self) -> tuple[int, object]:
        """What the connection is doing, and the object that stands for this instance of it
        (the head's scope, the request's cycle): a new request is a new instance."""
        cycle = self.cycle
        scope = self.scope
        if cycle is None or cycle.scope is not scope:  # uvicorn's scope of the head under way
            return (SILENT, None) if scope is None else (HEAD, scope)
        if cycle.more_body and not cycle.disconnected:
            return BODY, cycle
        if cycle.response_complete and not self.pipeline and self.timeout_keep_alive_task is None:
            return STRAY, cycle
        return BUSY, cycle

    def waiting_for_request(self) -> bool:
        """Idle: nothing sent yet, or the last answer is out and no new request begun."""
        if self._state()[0] in (SILENT, STRAY):
            return True
        cycle = self.cycle
        return cycle is not None and cycle.response_complete and not cycle.more_body

    def receiving_head(self) -> bool:
        return self._state()[0] == HEAD

    def evict(self) -> None:
        """Make room for a new connection (the registry has already counted this out)."""
        self.guard.closed("idle_closed_at_capacity", self.client)
        self.transport.close()

    def check(self, now: float) -> None:
        """The sweep: close the connection if what it waits on the client for has lasted
        longer than its limit."""
        transport = self.transport
        if transport.is_closing() or transport.get_protocol() is not self:
            return
        state, what = self._state()
        if state == BUSY or (state == BODY and self.flow.read_paused):
            # The wait is on this side: the app, a pipelined request, or uvicorn's own
            # keep-alive timer. The clock starts again when it is the client's turn.
            self._seen_state = 0
            return
        if state != self._seen_state or what is not self._seen_what:
            self._seen_state, self._seen_what, self._seen_since = state, what, now
            return
        limits = self.guard.limits
        waited = now - self._seen_since
        if state == BODY:
            if waited >= limits.body_timeout:
                answered = self.cycle.response_complete or getattr(
                    self.cycle, "response_started", False
                )
                self._close("body_timeout", b"" if answered else self.guard.body_408)
        elif waited >= limits.header_timeout:
            if state == HEAD:
                self._close("header_timeout", self.guard.head_408)
            elif state == SILENT:
                self._close("silent_connection_timeout", b"")
            else:
                self._close("header_timeout", b"")

    def _close(self, reason: str, answer: bytes) -> None:
        self.guard.closed(reason, self.client)
        if answer:
            self.transport.write(answer)
        self.transport.close()
