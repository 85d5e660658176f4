"""``SIGNBACK_KEEPALIVE_SECONDS``: how long `signback serve` keeps an idle connection open.

Behind a load balancer that reuses its connections to signback, the balancer's idle timeout
must be the shorter one, so the setting has to reach uvicorn: an idle connection stays
usable for a while, and is closed by signback once the configured time has passed.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.acceptance.processes import free_port, processes, signback, signback_env

pytestmark = pytest.mark.acceptance

HEALTH = b"GET /healthz HTTP/1.1\r\nHost: signback\r\n\r\n"


def answer(sock: socket.socket) -> bytes:
    """One response to GET /healthz (a small, Content-Length framed JSON answer)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-body: {data!r}"
        body += chunk
    return head


def test_an_idle_connection_is_closed_after_the_configured_time(tmp_path: Path) -> None:
    port = free_port()
    env = signback_env(
        f"sqlite:///{tmp_path / 'signback.db'}",
        port,
        SIGNBACK_KEEPALIVE_SECONDS="2",
        SIGNBACK_LOG_LEVEL="WARNING",
    )
    with processes(tmp_path) as started:
        serve = signback(tmp_path, "serve", ["serve", "--port", str(port)], env)
        started.append(serve.start())
        serve.wait_http(f"http://127.0.0.1:{port}/readyz")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(HEALTH)
            assert answer(sock).startswith(b"HTTP/1.1 200")
            idle_since = time.monotonic()
            time.sleep(1.0)  # idle, but under the 2 s: still open and usable
            sock.sendall(HEALTH)
            assert answer(sock).startswith(b"HTTP/1.1 200")
            idle_since = time.monotonic()
            assert sock.recv(1) == b""  # waits until signback closes the idle connection
            closed_after = time.monotonic() - idle_since
        # uvicorn's own default (5 s) would have kept it open far longer.
        assert 1.5 <= closed_after < 4.0, closed_after
