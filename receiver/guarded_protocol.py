"""uvicorn's httptools protocol with the connection limits of receiver/connguard.py.

uvicorn closes a connection that stays idle after an answer (its keep-alive timeout), but
not one that sends nothing at all, sends its request head a byte at a time, or stops in
the middle of a body: each of those held a descriptor for as long as the client liked. And
it accepts connections until the process runs out of descriptors, after which nothing is
answered, health checks included. This protocol adds, per connection:

- a **deadline** for whatever the connection is waiting on the client for: the first
  request head (``header_timeout`` from the opening), a head once begun (``header_timeout``
  from its first byte), a body (``body_timeout`` from the end of the head). Past it the
  connection is closed, with a ``408`` when a request had begun. One ``TimerHandle`` per
  connection is re-armed only when it fires, so a request costs a clock read and two
  attribute writes, not a timer of its own;
- a **size bound** on the request head (``max_head_bytes``, then ``431``);
- a place in the server's :class:`~receiver.connguard.ConnectionRegistry`, which keeps the
  number of connections under the cap by closing the longest-waiting idle connection, or
  refusing the newcomer with a ``503`` when every connection is busy with a request.

``HookHttpProtocol`` (receiver/hook_protocol.py) builds its short path for callbacks on top
of this; receiver/uvicorn_compat.py chooses which protocol ``signback serve`` can use with
the installed uvicorn.
"""

from __future__ import annotations

import asyncio
import http
import weakref
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from receiver import jsonutil
from receiver.connguard import ConnectionLimits, ConnectionRegistry, ThrottledLog
from receiver.intake import HookRouter

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
    """What the connections of one uvicorn server share: limits, registry, log throttle."""

    def __init__(self, limits: ConnectionLimits, router: HookRouter | None) -> None:
        self.limits = limits
        self.registry = ConnectionRegistry(limits.max_connections)
        self.router = router
        self.log = ThrottledLog(asyncio.get_running_loop().time)
        self.head_408 = _refusal(
            408, f"request head not received within {limits.header_timeout:g} s"
        )
        self.body_408 = _refusal(408, f"request body not received within {limits.body_timeout:g} s")
        self.head_431 = _refusal(431, f"request head larger than {limits.max_head_bytes} bytes")
        # The watchdog never sleeps longer than the shortest wait: a deadline set later is
        # at least that far from when it is set, so it is never missed.
        self.period = min(limits.header_timeout, limits.body_timeout)

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


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's ``HttpToolsProtocol`` with deadlines, a head size bound and the cap."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.router = find_router(self.app)
        self.guard = guard_for(self.server_state, self.router)
        self._in_head = False  # between a request's first byte and the end of its head
        self._head_bytes = 0  # bytes received while a head was incomplete
        self._deadline = 0.0  # loop time by which the current wait on the client must end
        self._watchdog: asyncio.TimerHandle | None = None

    # --- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.registry.admit(self):
            self.guard.closed("refused_at_capacity", self.client)
            transport.write(_AT_CAPACITY)
            transport.close()
            return
        self._wait_until(self.loop.time() + self.guard.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.registry.leave(self)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:  # an earlier packet left a head unfinished
            self._head_bytes += len(data)
            if self._head_bytes > self.guard.limits.max_head_bytes:
                self._close("head_too_large", self.guard.head_431)
                return
        super().data_received(data)

    # --- httptools callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._wait_until(self.loop.time() + self.guard.limits.header_timeout)

    def on_headers_complete(self) -> None:
        self._head_done()
        super().on_headers_complete()

    def _head_done(self) -> None:
        """The head is complete: from now on the body is what the client owes."""
        self._in_head = False
        self._deadline = self.loop.time() + self.guard.limits.body_timeout

    # --- what the registry asks ----------------------------------------------------------

    def waiting_for_request(self) -> bool:
        """Idle: nothing sent yet, or the last answer is out and no new request begun."""
        if self._in_head:
            return False
        cycle = self.cycle
        return cycle is None or (cycle.response_complete and not self.pipeline)

    def receiving_head(self) -> bool:
        return self._in_head

    def evict(self) -> None:
        """Make room for a new connection (the registry has already counted this out)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.guard.closed("idle_closed_at_capacity", self.client)
        self.transport.close()

    # --- the deadline ---------------------------------------------------------------------

    def _wait_until(self, deadline: float) -> None:
        self._deadline = deadline
        if self._watchdog is None:
            self._watch(self.loop.time())

    def _watch(self, now: float) -> None:
        """Wake the watchdog at the deadline, or sooner (see ``ServerGuard.period``)."""
        self._watchdog = self.loop.call_at(
            min(self._deadline, now + self.guard.period), self._check
        )

    def _check(self) -> None:
        """The watchdog: close the connection if what it waits on the client for is late;
        otherwise look again at the next deadline."""
        self._watchdog = None
        transport = self.transport
        if transport.is_closing() or transport.get_protocol() is not self:
            return
        now = self.loop.time()
        if now < self._deadline:  # the connection moved on since the watchdog was set
            self._watch(now)
            return
        cycle = self.cycle
        if self._in_head:
            self._close("header_timeout", self.guard.head_408)
        elif cycle is None:
            self._close("silent_connection_timeout", b"")
        elif cycle.more_body and not cycle.disconnected:
            if self.flow.read_paused:
                # Reading is paused while the app catches up or a pipelined request waits:
                # the wait is on this side, not the client's.
                self._deadline = now + self.guard.limits.body_timeout
                self._watch(now)
            else:
                started = cycle.response_complete or getattr(cycle, "response_started", False)
                self._close("body_timeout", b"" if started else self.guard.body_408)
        elif cycle.response_complete and not self.pipeline and self.timeout_keep_alive_task is None:
            # Idle without uvicorn's keep-alive timer: bytes came that began no request.
            self._close("header_timeout", b"")
        else:
            # The app is answering, or uvicorn's keep-alive timer watches the idle
            # connection: look again later, in case bytes that begin no request stop it.
            self._deadline = now + self.guard.period
            self._watch(now)

    def _close(self, reason: str, answer: bytes) -> None:
        self.guard.closed(reason, self.client)
        if answer:
            self.transport.write(answer)
        self.transport.close()
