"""Connections cannot starve signback (receiver/intake/connguard.py, guarded_protocol.py).

Real sockets against signback served as `signback serve` serves it, on loopback, with small
limits so that each case takes about a second: silent connections, request heads sent a
byte at a time, bodies that stop, a flood of connections beyond the cap, and many large
bodies half sent at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from receiver.app import create_app
from receiver.intake.connguard import ConnectionLimits
from receiver.intake.guarded_protocol import FEED_SLICE, MAX_QUEUED, _guards
from receiver.intake.protocol import HookHttpProtocol
from receiver.intake.router import HookRouter
from receiver.metrics import Metrics
from receiver.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.harness import wait_until
from tests.servers import bound_socket, running_server

GET_HEALTH = b"GET /healthz HTTP/1.1\r\nhost: signback\r\n\r\n"


@dataclass
class Served:
    url: str
    port: int
    router: HookRouter

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def metric(self, reason: str) -> float:
        return self.router.metrics.connections_closed.value(reason)


@contextlib.contextmanager
def serving(make_settings: Callable[..., Settings], **overrides: Any) -> Iterator[Served]:
    """signback under uvicorn with the protocol `signback serve` uses, and its router at
    hand (for the body budget's bookkeeping)."""
    sock = bound_socket()
    port = sock.getsockname()[1]
    settings = make_settings(
        public_url=f"http://127.0.0.1:{port}", okdokument_base_url="http://127.0.0.1:9", **overrides
    )
    router = create_app(settings)
    with running_server(router, sock=sock, http=HookHttpProtocol) as url:
        yield Served(url, port, router)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or 10 s pass)."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def read_to_the_end(sock: socket.socket) -> tuple[bytes, bool]:
    """Everything the server sends, and whether the connection ended with a reset (which
    can destroy an answer not read yet) rather than a clean end."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        return received, True
    return received, False


def health_on(sock: socket.socket) -> bytes:
    """Ask for /healthz on ``sock``; the whole answer (its head and body come in two writes)."""
    sock.sendall(GET_HEALTH)
    answer = b""
    while not answer.endswith(b'{"status":"ok"}'):
        chunk = sock.recv(65536)
        assert chunk, answer
        answer += chunk
    return answer


def health(served: Served) -> int:
    with httpx.Client(timeout=5) as client:
        return client.get(served.url + "/healthz").status_code


@pytest.fixture
def sqlite_settings(make_sqlite_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    return make_sqlite_settings


def test_silent_connections_are_closed_after_the_header_timeout(
    sqlite_settings: Callable[..., Settings],
) -> None:
    with serving(sqlite_settings, header_timeout_seconds=0.5) as served:
        started = time.monotonic()
        conns = [served.connect() for _ in range(40)]
        try:
            assert all(read_until_closed(c) == b"" for c in conns)  # closed, nothing said
            elapsed = time.monotonic() - started
        finally:
            for c in conns:
                c.close()
        assert elapsed >= 0.5
        assert served.metric("silent_connection_timeout") == 40
        assert health(served) == 200


def test_a_head_sent_a_byte_at_a_time_gets_408_and_is_closed(
    sqlite_settings: Callable[..., Settings],
) -> None:
    head = b"GET /healthz HTTP/1.1\r\nhost: signback\r\nx-slow: " + b"a" * 200 + b"\r\n\r\n"
    with serving(sqlite_settings, header_timeout_seconds=0.6) as served:
        conns = [served.connect() for _ in range(10)]
        try:
            for c in conns:
                c.setblocking(False)
            answers: dict[int, bytes] = {}
            for byte in range(len(head)):  # one byte to each connection every 20 ms
                for i, c in enumerate(conns):
                    if i in answers:
                        continue
                    try:
                        c.send(head[byte : byte + 1])
                        answers[i] = c.recv(65536)
                    except BlockingIOError:
                        pass  # nothing from the server yet: go on trickling
                    except (BrokenPipeError, ConnectionResetError):
                        answers[i] = b"(reset)"
                if len(answers) == len(conns):
                    break
                time.sleep(0.02)
            sent = byte + 1
        finally:
            for c in conns:
                c.close()
        assert sent < len(head)  # closed long before the head was complete
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers.values()), answers
        assert b"request head not received within 0.6 s" in answers[0]
        assert served.metric("header_timeout") == 10


@pytest.mark.parametrize(
    ("path", "declared"),
    [
        pytest.param("/hooks/firma", 2_000, id="callback-short-path"),
        pytest.param("/hooks/firma", 500_000, id="callback-asgi-path"),
        pytest.param("/api/requests", 2_000, id="admin-api"),
    ],
)
def test_a_body_that_stops_gets_408_and_is_closed(
    sqlite_settings: Callable[..., Settings], path: str, declared: int
) -> None:
    head = (
        f"POST {path} HTTP/1.1\r\nhost: signback\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {ADMIN_TOKEN}\r\ncontent-length: {declared}\r\n\r\n"
    ).encode()
    with serving(sqlite_settings, body_timeout_seconds=0.5) as served:
        with served.connect() as c:
            c.sendall(head + b"{" + b" " * 100)
            started = time.monotonic()
            answer = read_until_closed(c)
        assert time.monotonic() - started >= 0.5
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"request body not received within 0.5 s" in answer
        assert served.metric("body_timeout") == 1
        wait_until(lambda: served.router.budget.in_flight == 0, what="the reservation back")


def test_bytes_that_begin_no_request_do_not_keep_a_connection(
    sqlite_settings: Callable[..., Settings],
) -> None:
    """uvicorn's keep-alive timer stops at any byte, even the empty lines HTTP allows before
    a request: a connection trickling them is still closed."""
    with serving(sqlite_settings, header_timeout_seconds=0.3, body_timeout_seconds=0.3) as served:
        with served.connect() as c:
            assert health_on(c).startswith(b"HTTP/1.1 200 ")
            c.settimeout(0.1)
            closed = False
            for _ in range(100):  # 10 s at most
                try:
                    c.send(b"\r\n")
                    closed = c.recv(1) == b""
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                if closed:
                    break
        assert closed
        assert served.metric("header_timeout") == 1


def test_a_head_over_the_size_bound_gets_431(sqlite_settings: Callable[..., Settings]) -> None:
    with serving(sqlite_settings) as served, served.connect() as c:
        c.sendall(b"GET /healthz HTTP/1.1\r\nhost: signback\r\n")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(20):  # 20 times 4 KiB, in packets of their own
                c.sendall(b"x-filler: " + b"a" * 4096 + b"\r\n")
                time.sleep(0.005)
        answer = read_until_closed(c)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert served.metric("head_too_large") == 1


def test_a_flood_of_idle_connections_beyond_the_cap_leaves_health_checks_answerable(
    sqlite_settings: Callable[..., Settings],
) -> None:
    with serving(sqlite_settings, max_connections=20, header_timeout_seconds=60) as served:
        # Idle keep-alive connections (one answer each, then nothing) and silent ones.
        conns = []
        for i in range(60):
            c = served.connect()
            if i % 2:
                assert health_on(c).startswith(b"HTTP/1.1 200 ")
            conns.append(c)
        try:
            # Each newcomer closed the connection that had waited longest.
            wait_until(lambda: served.metric("idle_closed_at_capacity") >= 40, what="40 evictions")
            leftovers = [read_until_closed(c) for c in conns[:40]]
            assert leftovers == [b""] * 40
            assert health(served) == 200
            with httpx.Client(timeout=5) as client:
                assert client.get(served.url + "/readyz").status_code == 200
        finally:
            for c in conns:
                c.close()


def test_slow_heads_give_way_to_a_health_check(sqlite_settings: Callable[..., Settings]) -> None:
    with serving(sqlite_settings, max_connections=10, header_timeout_seconds=60) as served:
        conns = [served.connect() for _ in range(10)]
        try:
            for c in conns:
                c.sendall(b"GET /healthz HTTP/1.1\r\nhost: sign")  # and nothing more
            wait_until(lambda: health(served) == 200, what="a health check through")
            assert served.metric("idle_closed_at_capacity") >= 1
        finally:
            for c in conns:
                c.close()


def test_bodies_trickling_at_the_cap_give_way_to_health_checks(
    sqlite_settings: Callable[..., Settings],
) -> None:
    """Connections sending bodies slowly used to be untouchable at the cap: health checks
    were refused. The oldest such body gives way, and its client reads a whole 503 with
    Retry-After (it used to see a reset)."""
    head = (
        b"POST /hooks/firma HTTP/1.1\r\nhost: signback\r\ncontent-type: application/json\r\n"
        b"content-length: 1000\r\n\r\n{"
    )
    with serving(sqlite_settings, max_connections=5, body_timeout_seconds=60) as served:
        busy = [served.connect() for _ in range(5)]
        try:
            for c in busy:
                c.sendall(head)
            wait_until(lambda: served.router.budget.in_flight == 5000, what="5 bodies under way")
            for _ in range(3):
                assert health(served) == 200
            # The first newcomer made the oldest body give way (the later ones found the
            # room the closed health checks left): told to retry.
            with contextlib.suppress(BrokenPipeError):
                busy[0].sendall(b" " * 500)  # still sending, as a slow client would
            answer, reset = read_to_the_end(busy[0])
            assert not reset, answer
            assert answer.startswith(b"HTTP/1.1 503 "), answer
            assert b"retry-after: 1" in answer
            assert served.metric("body_closed_at_capacity") == 1
            wait_until(  # the others go on
                lambda: served.router.budget.in_flight == 4000, what="the evicted body's share"
            )
        finally:
            for c in busy:
                c.close()
        wait_until(lambda: served.router.budget.in_flight == 0, what="the budget given back")


class SlowApp:
    """An app whose answers wait until the test lets them go."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started = 0

    def let_go(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.release.set)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.loop = asyncio.get_running_loop()
        self.started += 1
        if scope["path"] == "/block":
            # Hold the event loop, so that new connections and their requests wait in the
            # kernel: accepted later, with their request already there, unread.
            time.sleep(0.3)  # noqa: ASYNC251  # blocking on purpose
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"late"})


def test_when_every_connection_is_being_answered_a_new_one_reads_a_whole_503() -> None:
    """The 503 at capacity used to be written and the socket closed at once, over the
    request the newcomer had sent: the kernel's reset could destroy the answer before the
    client read it. It is delivered whole, every time."""
    app = SlowApp()
    router = HookRouter(app, [], Metrics(), limits=ConnectionLimits(max_connections=3))
    request = b"POST /anything HTTP/1.1\r\nhost: x\r\ncontent-length: 65536\r\n\r\n"
    with running_server(router, http=HookHttpProtocol) as url:
        port = int(url.rsplit(":", 1)[1])
        busy = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        try:
            for c in busy[1:]:
                c.sendall(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            wait_until(lambda: app.started == 2, what="2 requests being answered")
            busy[0].sendall(b"GET /block HTTP/1.1\r\nhost: x\r\n\r\n")
            wait_until(lambda: app.started == 3, what="the loop held")
            newcomers = [
                socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(8)
            ]
            for c in newcomers:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    c.sendall(request + b"x" * 4096)
            answers = []
            for c in newcomers:
                with c:
                    answers.append(read_to_the_end(c))
            for answer, reset in answers:
                assert not reset, answer  # the answer was never at the mercy of a reset
                assert answer.startswith(b"HTTP/1.1 503 "), answer
                assert answer.endswith(b'{"error":"too many connections; retry shortly"}')
                assert b"retry-after: 1" in answer
        finally:
            app.let_go()
            for c in busy:
                c.close()


def test_a_pipelined_burst_is_answered_in_order_with_a_bounded_queue(
    sqlite_settings: Callable[..., Settings],
) -> None:
    """uvicorn resumes reading after every answer, so a client pipelining faster than it is
    answered made one connection's queue of parsed requests grow without end. The queue
    stays within its bound, and every request is still answered, in order."""
    count = 4000
    requests = b"".join(
        b"GET /healthz?n=%d HTTP/1.1\r\nhost: signback\r\n\r\n" % n for n in range(count)
    )
    with serving(sqlite_settings) as served, served.connect() as c:
        guard = wait_until(
            lambda: next((g for g in _guards.values() if g.router is served.router), None),
            what="the server's guard",
        )
        received = bytearray()
        queued: list[int] = []

        def read_answers() -> None:
            while received.count(b"HTTP/1.1 200 ") < count:
                chunk = c.recv(1 << 20)
                if not chunk:
                    return
                received.extend(chunk)
                protocols = [p for p in guard.registry.open if isinstance(p, HookHttpProtocol)]
                queued.append(max((len(p.pipeline) for p in protocols), default=0))

        reader = threading.Thread(target=read_answers)
        reader.start()
        c.sendall(requests)
        reader.join(60)
        assert received.count(b"HTTP/1.1 200 ") == count
    # The most requests parsed and waiting on the connection, seen by the protocol itself
    # and sampled from outside while the answers came.
    bound = MAX_QUEUED + FEED_SLICE // 18 + 1
    assert guard.peak_queued <= bound
    assert max(queued) <= bound, max(queued)


@pytest.mark.parametrize(
    ("size", "budget"),
    [
        pytest.param(1024 * 1024, 4 * 1024 * 1024, id="asgi-path-1MiB"),
        pytest.param(60 * 1024, 4 * 60 * 1024, id="short-path-60KiB"),
    ],
)
def test_partial_bodies_beyond_the_budget_get_503_with_retry_after(
    sqlite_settings: Callable[..., Settings], size: int, budget: int
) -> None:
    head = (
        b"POST /hooks/firma HTTP/1.1\r\nhost: signback\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % size
    )
    with serving(
        sqlite_settings, max_body_bytes_in_flight=budget, max_body_bytes=min(budget, 1024 * 1024)
    ) as served:
        conns = [served.connect() for _ in range(12)]
        refused = []
        try:
            for c in conns:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    c.sendall(head + b"{" + b" " * (size - 2))  # all but the last byte
            for c in conns:
                c.settimeout(0.3)
                try:
                    answer = c.recv(65536)
                except TimeoutError:
                    continue  # still waiting for its last byte: it holds its share
                refused.append(answer)
            assert served.router.budget.peak <= budget
            assert served.router.budget.in_flight == 4 * size
        finally:
            for c in conns:
                c.close()
        assert len(refused) == 8
        for answer in refused:
            assert answer.startswith(b"HTTP/1.1 503 "), answer
            assert b"retry-after: 5" in answer
            assert b"connection: close" in answer
        wait_until(lambda: served.router.budget.in_flight == 0, what="the budget given back")
        # With room again, a callback gets through to the handler (401: it is not signed).
        with httpx.Client(timeout=5) as client:
            answer_status = client.post(served.url + "/hooks/firma", json={}).status_code
        assert answer_status == 401
