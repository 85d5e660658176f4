"""Floods of connections against a real `signback serve` process.

- With the default settings, 300 connections that send nothing and 40 that send their
  request head a byte a second are all closed within 7 s (they used to stay open for good).
- A process allowed only 256 open files (hard limit too, so it cannot raise it) derives its
  connection cap from that limit; 400 idle connections then still leave /healthz and
  /readyz answerable. Before the cap, the process ran out of descriptors and answered
  nothing.
- 200 connections that each announce a 1 MiB Firma webhook and send all but its last byte
  cannot make the process hold more than its body budget: the process's memory grows by
  about the budget, not by 200 MiB, and the callbacks beyond it get 503 with Retry-After.
- Connections pipelining thousands of requests each are answered in full and in order,
  with the process's peak memory bounded (each connection's queue is).
"""

from __future__ import annotations

import contextlib
import re
import resource
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.acceptance.processes import ROOT, Process, free_port, processes, signback_env

pytestmark = pytest.mark.acceptance

MiB = 1024 * 1024


def start_serve(
    tmp_path: Path, port: int, env: dict[str, str], *, max_files: int | None = None
) -> Process:
    """`signback serve` on ``port``; with ``max_files``, under that limit of open files
    (soft and hard, so that the process cannot raise it)."""

    def limit() -> None:
        if max_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max_files, max_files))

    process = Process("serve", ["serve", "--port", str(port)], env, tmp_path / "serve.log")
    with process.log_path.open("ab") as log:
        process.popen = subprocess.Popen(
            [sys.executable, "-m", "receiver.cli", *process.args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=limit,
        )
    return process


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert found, status
    return int(found.group(1))


def test_silent_and_slow_connections_are_closed_with_the_default_settings(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = signback_env(f"sqlite:///{tmp_path / 'signback.db'}", port)
    head = b"GET /healthz HTTP/1.1\r\nhost: signback\r\nx-slow: " + b"a" * 60 + b"\r\n\r\n"
    with processes(tmp_path) as started:
        serve = start_serve(tmp_path, port, env)
        started.append(serve)
        serve.wait_http(f"http://127.0.0.1:{port}/readyz")
        # Before the first connection: the server's timers start when it accepts each one,
        # so no connection can be closed sooner than the timeout after this instant.
        opened = time.monotonic()
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
        slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
        selector = selectors.DefaultSelector()
        for sock in silent + slow:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        closed_after: dict[socket.socket, float] = {}
        answers: dict[socket.socket, bytes] = {}
        try:
            sent = 0
            while len(closed_after) < len(silent) + len(slow) and time.monotonic() - opened < 12:
                if time.monotonic() - opened >= sent:  # one more byte of the head, each second
                    for sock in slow:
                        if sock not in closed_after:
                            with contextlib.suppress(OSError):
                                sock.send(head[sent : sent + 1])
                    sent += 1
                for key, _ in selector.select(timeout=0.05):
                    ready = key.fileobj
                    assert isinstance(ready, socket.socket)
                    try:
                        data = ready.recv(65536)
                    except ConnectionResetError:
                        data = b""
                    if data:
                        answers[ready] = answers.get(ready, b"") + data
                    else:
                        closed_after[ready] = time.monotonic() - opened
                        selector.unregister(ready)
        finally:
            selector.close()
            for sock in silent + slow:
                sock.close()
        assert len(closed_after) == 340, f"{340 - len(closed_after)} still open after 12 s"
        assert max(closed_after.values()) < 7.0, max(closed_after.values())
        assert min(closed_after.values()) >= 5.0  # the default SIGNBACK_HEADER_TIMEOUT_SECONDS
        assert all(sock not in answers for sock in silent)  # closed without a word
        assert all(answers[sock].startswith(b"HTTP/1.1 408 ") for sock in slow)


def test_idle_connections_beyond_the_descriptor_limit_leave_health_checks_answerable(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = signback_env(
        f"sqlite:///{tmp_path / 'signback.db'}",
        port,
        SIGNBACK_HEADER_TIMEOUT_SECONDS="60",  # the flood stays open; only the cap acts
    )
    with processes(tmp_path) as started:
        serve = start_serve(tmp_path, port, env, max_files=256)
        started.append(serve)
        serve.wait_http(f"http://127.0.0.1:{port}/readyz")
        flood: list[socket.socket] = []
        try:
            for _ in range(400):
                flood.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                for path in ("/healthz", "/readyz", "/healthz"):
                    assert client.get(path).status_code == 200
            assert serve.popen is not None
            assert serve.popen.poll() is None
            # The cap came from the limit: 256 files leave room for 72 connections (128 fixed,
            # 2 per outbox slot, 1 per reconcile read in flight, 16 for confirmations).
            assert '"max_connections":72' in serve.log()
            assert "connection closed: idle closed at capacity" in serve.log()
        finally:
            for sock in flood:
                sock.close()


def test_many_half_sent_large_bodies_hold_no_more_than_the_budget(tmp_path: Path) -> None:
    port = free_port()
    budget = 8 * MiB
    env = signback_env(
        f"sqlite:///{tmp_path / 'signback.db'}",
        port,
        SIGNBACK_MAX_BODY_BYTES_IN_FLIGHT=str(budget),
        SIGNBACK_BODY_TIMEOUT_SECONDS="60",
        SIGNBACK_LOG_LEVEL="ERROR",
    )
    head = (
        b"POST /hooks/firma HTTP/1.1\r\nhost: signback\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % MiB
    )
    almost = head + b"{" + b" " * (MiB - 2)  # all but the last byte
    with processes(tmp_path) as started:
        serve = start_serve(tmp_path, port, env)
        started.append(serve)
        serve.wait_http(f"http://127.0.0.1:{port}/readyz")
        assert serve.popen is not None
        before = rss_kib(serve.popen.pid)
        conns: list[socket.socket] = []
        try:
            for _ in range(200):
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                conns.append(sock)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(almost)
            refused = 0
            for sock in conns:
                sock.settimeout(0.05)
                with contextlib.suppress(TimeoutError, ConnectionResetError):
                    answer = sock.recv(65536)
                    if answer.startswith(b"HTTP/1.1 503 "):
                        assert b"retry-after: 5" in answer
                        refused += 1
            time.sleep(0.5)  # let the held bodies settle in the server's buffers
            grown_mib = (rss_kib(serve.popen.pid) - before) / 1024
        finally:
            for sock in conns:
                sock.close()
        assert refused >= 200 - budget // MiB
        # The budget (8 MiB) plus what uvicorn reads ahead per connection; 200 MiB before.
        assert grown_mib < 40, grown_mib


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert found, status
    return int(found.group(1))


def test_pipelined_bursts_are_answered_in_order_within_bounded_memory(tmp_path: Path) -> None:
    """Clients pipelining faster than they are answered made each connection's queue of
    parsed requests grow by everything one read held (uvicorn resumed reading after every
    answer). Four connections pipeline 10,000 requests each: every request is answered, in
    order, and the process's peak memory grows by a few MiB, not by the queues."""
    port = free_port()
    env = signback_env(f"sqlite:///{tmp_path / 'signback.db'}", port, SIGNBACK_LOG_LEVEL="ERROR")
    count = 10_000
    burst = b"".join(
        b"GET /healthz?n=%d HTTP/1.1\r\nhost: signback\r\n\r\n" % n for n in range(count)
    )
    with processes(tmp_path) as started:
        serve = start_serve(tmp_path, port, env)
        started.append(serve)
        serve.wait_http(f"http://127.0.0.1:{port}/readyz")
        assert serve.popen is not None
        before = peak_rss_kib(serve.popen.pid)
        conns = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(4)]
        received = {id(c): bytearray() for c in conns}
        try:
            selector = selectors.DefaultSelector()
            for c in conns:
                c.setblocking(False)
                selector.register(
                    c, selectors.EVENT_READ | selectors.EVENT_WRITE, memoryview(burst)
                )
            deadline = time.monotonic() + 120
            pending = set(received)
            while pending and time.monotonic() < deadline:
                for key, events in selector.select(timeout=1):
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    if events & selectors.EVENT_WRITE and key.data:
                        with contextlib.suppress(BlockingIOError):
                            sent = sock.send(key.data[:65536])
                            rest = key.data[sent:]
                            selector.modify(
                                sock,
                                selectors.EVENT_READ | (selectors.EVENT_WRITE if rest else 0),
                                rest,
                            )
                    if events & selectors.EVENT_READ:
                        chunk = sock.recv(1 << 20)
                        got = received[id(sock)]
                        got.extend(chunk)
                        if not chunk or got.count(b"HTTP/1.1 200 ") >= count:
                            pending.discard(id(sock))
            grown_mib = (peak_rss_kib(serve.popen.pid) - before) / 1024
        finally:
            for c in conns:
                c.close()
        for got in received.values():
            assert got.count(b"HTTP/1.1 200 ") == count
            assert got.count(b"HTTP/1.1 ") == count  # nothing else: no 431, no 503
        print(f"peak memory grew by {grown_mib:.1f} MiB")
        assert grown_mib < 30, grown_mib
