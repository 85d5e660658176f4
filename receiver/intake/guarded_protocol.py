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
  number of connections under the cap by closing the longest-waiting idle connection (then
  one still sending its head, then one still sending its body), or refusing the newcomer
  with a ``503`` when every connection is busy with a request being answered;
- a **bound on pipelining**: at most ``MAX_QUEUED`` requests parsed and waiting behind the
  one being answered. uvicorn pauses reading when it queues a pipelined request, but resumes
  it after every answer, so a client that pipelines faster than it is answered made the
  queue (a scope, headers and a cycle per request) grow without end. Here the bytes of a
  read are parsed a slice at a time; once the queue is full the rest is held, unparsed (at
  most one read), with reading paused, and parsed as answers go out. Every request is still
  answered, in order;
- a **gentle end** for every answer that ends a connection while the client may still be
  sending (a ``503`` at capacity or for the body budget, a ``408``, a ``431``): closing a
  socket with unread input makes the kernel send a reset, which can destroy the answer
  before the client reads it. So the answer is written, our side is shut for writing, and
  what still arrives is read and dropped until the client closes or ``LINGER_SECONDS``
  pass (at most ``MAX_LINGERING`` connections at once; beyond that they are closed).

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

# Requests parsed and queued behind the one being answered, per connection (see above).
MAX_QUEUED = 16
# The bytes parsed at once: a read up to this size (every usual callback) goes to the parser
# in one call, as before; a larger one a slice at a time, so that a slice of the smallest
# requests (18 bytes each) adds at most ~228 to the queue before the bound is looked at.
FEED_SLICE = 4096
# Unparsed bytes held while the queue is full: one read (asyncio and uvloop read 256 KiB).
# More can only come from an app that resumes reading itself: the connection is ended.
MAX_HELD = 1024 * 1024
# How long an ended connection's input is read and dropped so that its answer arrives.
LINGER_SECONDS = 2.0
# Connections ended gently at once, per server. They no longer count toward the cap (a
# newcomer took the place of an evicted one), so they live off the descriptors kept free
# beside it (connguard.FIXED_DESCRIPTORS): a few, enough for a burst of refusals.
MAX_LINGERING = 32


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
        self.lingering = 0  # connections ended gently, still reading what the client sends
        self.peak_queued = 0  # the most requests one connection had queued (diagnostics)
        self.evicted_503 = _refusal(503, "server at its connection limit; retry", retry_after=1)

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
        # Bytes not parsed yet because MAX_QUEUED requests wait (see _feed).
        self._held = b""
        # Ended gently (see _end): what arrives is dropped; _lingering while counted.
        self._ending = False
        self._lingering = False
        self._linger_timer: asyncio.TimerHandle | None = None

    # --- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.registry.admit(self):
            self.guard.closed("refused_at_capacity", self.client)
            # The client may have sent its request already: end gently, or the reset that
            # closing over unread input causes can destroy this answer before it is read.
            self._end(_AT_CAPACITY)
            return
        # The clock for a first request starts now (later states are first seen by the
        # sweep, up to one interval after they begin).
        self._seen_state, self._seen_since = SILENT, self.guard.loop.time()
        self.guard.watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.registry.leave(self)
        self._held = b""
        if self._lingering:
            self._lingering = False
            self.guard.lingering -= 1
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._ending:  # the connection's last answer is out: what comes is dropped
            return
        if self._held:  # requests are queued: parsed as answers go out (on_response_complete)
            self._held += data
            if len(self._held) > MAX_HELD:
                self._end(b"")
            else:
                self.flow.pause_reading()
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Parse ``data`` a slice at a time while requests are queued; once ``MAX_QUEUED``
        wait, hold the rest (reading paused) until answers make room."""
        if len(data) <= FEED_SLICE:  # the usual packet: one request or less
            if len(self.pipeline) < MAX_QUEUED:
                self._receive(data)
                self._note_queue()
            else:
                self._held = data
                self.flow.pause_reading()
            return
        offset, size = 0, len(data)
        while offset < size:
            if len(self.pipeline) >= MAX_QUEUED:
                self._held = data[offset:]
                self.flow.pause_reading()
                return
            end = min(offset + FEED_SLICE, size)
            self._receive(data[offset:end])
            offset = end
            if self._ending or self.parser is None or self.transport.is_closing():
                return
            self._note_queue()

    def _note_queue(self) -> None:
        queued = len(self.pipeline)
        if queued > self.guard.peak_queued:
            self.guard.peak_queued = queued

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next queued request, resumes reading
        if self._held and not self._ending and not self.transport.is_closing():
            held, self._held = self._held, b""
            self._feed(held)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        if (
            cycle is not None
            and cycle.scope is self.scope
            and not isinstance(cycle.transport, _EndsGently)
        ):
            # uvicorn's cycle closes the transport after an answer that ends the connection
            # (an app's "connection: close", such as the body budget's 503): gently, if the
            # body it did not read may still be arriving.
            cycle.transport = _EndsGently(self.transport, self, cycle)  # type: ignore[assignment]

    def close_after_answer(self, cycle: Any) -> None:
        """End the connection after ``cycle``'s answer: gently when its body was not read
        whole (the client may still be sending it), else at once."""
        if cycle.more_body and not cycle.disconnected:
            self._end(b"")
        else:
            self.transport.close()

    def _end(self, answer: bytes) -> None:
        """Write ``answer`` (if any) and end the connection so that the client reads it: our
        side is shut for writing, and what the client still sends is read and dropped until
        it closes, or ``LINGER_SECONDS`` pass (module docstring)."""
        if self._ending:
            return
        self._ending = True
        self._held = b""
        for cycle in (self.cycle, *(queued for queued, _ in self.pipeline)):
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True  # nothing more is written for it
                cycle.message_event.set()
        self.pipeline.clear()
        transport = self.transport
        if transport.is_closing():
            return
        if answer:
            transport.write(answer)
        guard = self.guard
        if guard.lingering >= MAX_LINGERING or not transport.can_write_eof():
            transport.close()
            return
        guard.lingering += 1
        self._lingering = True
        transport.write_eof()  # after what is buffered: the client sees the answer, then EOF
        self.flow.resume_reading()
        self._linger_timer = guard.loop.call_later(LINGER_SECONDS, transport.close)

    def _receive(self, data: bytes) -> None:
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

    def receiving_body(self) -> bool:
        return self._state()[0] == BODY

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
        if self._state()[0] == BODY:  # a body still arriving: told to retry, gently
            self.guard.closed("body_closed_at_capacity", self.client)
            self._end(self.guard.evicted_503)
            return
        self.guard.closed("idle_closed_at_capacity", self.client)
        self.transport.close()

    def check(self, now: float) -> None:
        """The sweep: close the connection if what it waits on the client for has lasted
        longer than its limit."""
        transport = self.transport
        if self._ending or transport.is_closing() or transport.get_protocol() is not self:
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
            self._end(answer)
        else:  # nothing to deliver (a silent connection): the descriptor goes back at once
            self.transport.close()


class _EndsGently:
    """The transport as one uvicorn cycle sees it: its ``close()`` ends the connection
    through :meth:`GuardedHttpProtocol.close_after_answer`."""

    __slots__ = ("_cycle", "_protocol", "_transport")

    def __init__(
        self, transport: asyncio.Transport, protocol: GuardedHttpProtocol, cycle: object
    ) -> None:
        self._transport = transport
        self._protocol = protocol
        self._cycle = cycle

    def write(self, data: bytes) -> None:
        self._transport.write(data)

    def close(self) -> None:
        self._protocol.close_after_answer(self._cycle)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
