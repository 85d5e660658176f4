"""What keeps connections from starving the service: limits, the body budget, the cap.

A process has a fixed number of file descriptors and a finite memory, and every client
connection holds one of the first and some of the second for as long as it stays open. So
that slow, silent or half-sent requests cannot use them all up:

- **Time.** A connection must finish its request head within ``header_timeout`` seconds of
  its first byte (or of its opening, when it sends nothing), and its body within
  ``body_timeout`` seconds of the head; otherwise it is closed (at most two fifths of the
  shorter of the two later). A head may take at most ``max_head_bytes``.
- **Count.** At most ``max_connections`` connections are open per process, below the
  descriptor limit (raised at start as far as the hard limit allows), which leaves room for
  the database pool, files and the outbound clients. A connection beyond the cap makes room
  by closing the connection that has waited longest for a request (idle keep-alive or silent
  first), then one still trickling its head; only when every connection is busy with a
  request is the new one refused with a quick 503. So a platform's health check, which opens
  a new connection and sends its request at once, still gets through a flood of idle or slow
  connections.
- **Memory.** Callback bodies still arriving hold their declared length of a per-process
  ``BodyBudget`` until they are answered; a callback whose body does not fit gets a 503
  with ``Retry-After`` (and the connection closed) before any more of it is read. A small
  body that arrives whole with its head, the usual callback, is not waited for and holds
  nothing.

The protocol side of this is receiver/intake/guarded_protocol.py; the ASGI side of the budget is
:meth:`receiver.intake.router.HookRouter.respond`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from receiver.logs import get_logger
from receiver.settings import Settings

log = get_logger("signback.connections")

# A request head larger than this is refused (431). Provider callbacks send a few hundred
# bytes; a browser with every cookie of a shared domain a few KiB. Heads are buffered whole
# by uvicorn, so without a bound a client could make one grow for as long as it may send.
MAX_HEAD_BYTES = 32 * 1024
# Without a configured cap, at most this many connections per process: far more than
# providers and health checks use, while a flood of idle ones stays within a small
# process's memory (a few KiB each).
DEFAULT_MAX_CONNECTIONS = 4096
# Descriptors kept free beside the cap: listening sockets, standard streams, log files,
# SQLite's database, WAL and shared-memory files, the event loop's own, and connections the
# event loop accepts in one go before they are counted (they are closed at once when over).
FIXED_DESCRIPTORS = 128
# The soft descriptor limit is raised towards this (never above the hard limit).
WANTED_DESCRIPTORS = 65536


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout: float = 5.0
    body_timeout: float = 10.0
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_head_bytes: int = MAX_HEAD_BYTES


class BodyBudget:
    """The bytes of callback bodies being received at once in this process.

    A callback whose body is still to come reserves its declared length before reading it
    (a chunked one as its chunks come) and gives it back when it has been answered.
    Everything runs on the event loop's thread, so plain integers do."""

    __slots__ = ("in_flight", "limit", "peak", "refused")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self.peak = 0  # the most reserved at once, for tests and diagnostics
        self.refused = 0

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes; False (and nothing reserved) when they do not fit."""
        in_flight = self.in_flight + size
        if in_flight > self.limit:
            self.refused += 1
            return False
        self.in_flight = in_flight
        if in_flight > self.peak:
            self.peak = in_flight
        return True

    def give_back(self, size: int) -> None:
        self.in_flight -= size


class BodyHold:
    """The bytes of a :class:`BodyBudget` one request holds: what it declared, reserved
    before its body is read, and more as a chunked body grows; all given back at the end."""

    __slots__ = ("budget", "held")

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.held = 0

    def hold(self, size: int) -> bool:
        """Hold ``size`` bytes in all; False (holding what it held) when they do not fit."""
        if size <= self.held:
            return True
        if not self.budget.take(size - self.held):
            return False
        self.held = size
        return True

    def release(self) -> None:
        self.budget.give_back(self.held)
        self.held = 0


def raise_descriptor_limit(wanted: int = WANTED_DESCRIPTORS) -> int:
    """Raise this process's soft limit on open files towards ``wanted``, as far as the hard
    limit allows; return the limit now in force (a large number where there is none)."""
    try:
        import resource
    except ImportError:  # not on this platform (Windows): nothing to raise
        return WANTED_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    target = wanted if hard == unlimited else min(wanted, hard)
    if soft != unlimited and soft < target:
        with contextlib.suppress(ValueError, OSError):  # a sandbox may refuse; keep the old one
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return WANTED_DESCRIPTORS if soft == unlimited else int(soft)


def descriptors_reserved(settings: Settings) -> int:
    """Descriptors the process needs besides its client connections: the fixed ones, the
    database pool, and the outbound calls (outbox and follow-up checks, a connection each;
    the reconciler's reads, in a lane of their own)."""
    pool = 0 if settings.is_sqlite else settings.db_pool_max + 2  # + LISTEN and a spare
    calls = 2 * settings.outbox_concurrency + settings.reconcile_concurrency
    return FIXED_DESCRIPTORS + pool + calls + 16


def connection_cap(settings: Settings, descriptors: int) -> tuple[int, str | None]:
    """The connection cap for a process allowed ``descriptors`` open files, and a warning
    when a configured cap had to be lowered to fit."""
    room = max(16, descriptors - descriptors_reserved(settings))
    wanted = settings.max_connections
    if wanted is None:
        return min(DEFAULT_MAX_CONNECTIONS, room), None
    if wanted > room:
        return room, (
            f"SIGNBACK_MAX_CONNECTIONS={wanted} does not fit in this process's limit of "
            f"{descriptors} open files; using {room}"
        )
    return wanted, None


def connection_limits(settings: Settings) -> ConnectionLimits:
    """The limits for this process, from ``settings`` and its descriptor limit (raised)."""
    descriptors = raise_descriptor_limit()
    cap, warning = connection_cap(settings, descriptors)
    if warning:
        log.warning(warning)
    return ConnectionLimits(
        header_timeout=settings.header_timeout_seconds,
        body_timeout=settings.body_timeout_seconds,
        max_connections=cap,
    )


class Guarded(Protocol):
    """What :class:`ConnectionRegistry` asks of a connection."""

    def waiting_for_request(self) -> bool: ...  # idle keep-alive, or nothing sent yet
    def receiving_head(self) -> bool: ...
    def receiving_body(self) -> bool: ...
    def evict(self) -> None: ...


class ConnectionRegistry:
    """The open connections of one server, oldest first, and the cap on their number."""

    __slots__ = ("cap", "evicted", "open", "refused")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open: dict[Guarded, None] = {}  # insertion order: oldest first
        self.evicted = 0
        self.refused = 0

    def admit(self, conn: Guarded) -> bool:
        """Count ``conn`` in, making room when at the cap; False when nothing could give
        way (then ``conn`` is not counted and should be refused)."""
        self.open[conn] = None
        if len(self.open) <= self.cap:
            return True
        victim = self._victim(conn)
        if victim is None:
            del self.open[conn]
            self.refused += 1
            return False
        del self.open[victim]
        self.evicted += 1
        victim.evict()
        return True

    def leave(self, conn: Guarded) -> None:
        self.open.pop(conn, None)

    def _victim(self, newcomer: Guarded) -> Guarded | None:
        """The connection that has waited longest for a request; else the oldest one still
        sending its head; else the oldest one still sending its body (told to retry: a
        callback's body comes whole with its head, so a body still arriving is a slow
        client's, and a flood of them must not keep health checks out); never one whose
        request is being answered."""
        slow_head: Guarded | None = None
        slow_body: Guarded | None = None
        for conn in self.open:
            if conn is newcomer:
                continue
            if conn.waiting_for_request():
                return conn
            if slow_head is None and conn.receiving_head():
                slow_head = conn
            elif slow_body is None and slow_head is None and conn.receiving_body():
                slow_body = conn
        return slow_head or slow_body


class ThrottledLog:
    """One warning line per kind of event at most every ``interval`` seconds, with counts,
    so that a flood of bad connections cannot flood the log too."""

    def __init__(self, clock: Callable[[], float], interval: float = 10.0) -> None:
        self.clock = clock
        self.interval = interval
        self._last: dict[str, float] = {}
        self._pending: dict[str, int] = {}

    def warn(self, event: str, **facts: object) -> None:
        now = self.clock()
        last = self._last.get(event)
        if last is not None and now - last < self.interval:
            self._pending[event] = self._pending.get(event, 0) + 1
            return
        suppressed = self._pending.pop(event, 0)
        self._last[event] = now
        if suppressed:
            facts["similar_since_last_line"] = suppressed
        log.warning(event, **facts)
