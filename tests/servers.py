"""Run ASGI apps under a real uvicorn server on loopback, for tests that need real HTTP.

``running_server(app)`` binds 127.0.0.1 on a free port (the OS picks it), serves ``app`` from
a background thread with its own event loop, waits until uvicorn reports it started, yields
the base URL, and shuts the server down on exit. Sync on purpose: it works from sync and
async tests alike, and the app's event loop never shares a thread with the test's.

``Recorder`` is an app that keeps every request as it arrived (method, raw target, headers,
body) and answers what the test tells it to: a provider client's test sees exactly what
went over the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import uvicorn
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["Recorded", "Recorder", "bound_socket", "running_server"]


@dataclass(frozen=True)
class Recorded:
    """One request as the server received it."""

    method: str
    target: bytes  # the request target as sent: the raw path, and "?query" if any
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def path(self) -> bytes:
        return self.target.split(b"?", 1)[0]

    @property
    def query(self) -> bytes:
        return self.target.partition(b"?")[2]


def _ok(_: Recorded) -> Response:
    return JSONResponse({})


class Recorder:
    """An ASGI app that records every request and answers with ``respond(request)``."""

    def __init__(self, respond: Callable[[Recorded], Response] = _ok) -> None:
        self.respond = respond
        self.requests: list[Recorded] = []

    def reset(self, respond: Callable[[Recorded], Response] = _ok) -> None:
        self.respond = respond
        self.requests = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        query = scope["query_string"]
        recorded = Recorded(
            method=scope["method"],
            target=scope["raw_path"] + (b"?" + query if query else b""),
            headers={k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            body=body,
        )
        self.requests.append(recorded)
        await self.respond(recorded)(scope, receive, send)


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    """A socket bound to a free port, for a server whose address must be known in advance."""
    # Binding ourselves (port 0) avoids the race of "find a free port, then let uvicorn bind".
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


@contextlib.contextmanager
def running_server(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    startup_timeout: float = 10.0,
    shutdown_timeout: int = 10,
    sock: socket.socket | None = None,
    tls: tuple[str, str] | None = None,
    http: type[asyncio.Protocol] | Literal["httptools"] = "httptools",
) -> Iterator[str]:
    """Serve ``app`` on ``host`` at a free port (or on ``sock``); yield ``http://host:port``
    (``https://`` with ``tls=(certfile, keyfile)``). ``http`` is uvicorn's HTTP protocol."""
    sock = sock or bound_socket(host)
    port: int = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan="on",
        loop="asyncio",
        ws="none",
        http=http,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=shutdown_timeout,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )
    server = uvicorn.Server(config)
    # uvicorn installs signal handlers only in the main thread, so a thread is safe here.
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"the server on port {port} stopped during startup")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server on port {port} did not start")
            time.sleep(0.01)
        yield f"{'https' if tls else 'http'}://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(shutdown_timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(shutdown_timeout)
        sock.close()
