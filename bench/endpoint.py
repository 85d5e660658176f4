"""A company's webhook endpoint for the downstream scenario: ``python -m bench.endpoint``.

It answers every POST with 204 after the delay configured for its path (``--delay
/slow=2``; others after ``--default-delay``), records each arrival's time by path, and tells
them at ``GET /_stats`` as JSON ``{"<path>": [unix times…]}`` (``POST /_reset`` forgets
them). A small asyncio server on httptools' parser (as the outbox's client uses), so that it
takes little of the machine's CPU away from signback: it does not verify signatures (the
tests do, with the standardwebhooks package).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import defaultdict

import httptools


class Endpoint:
    def __init__(self, delays: dict[str, float], default_delay: float) -> None:
        self.delays = delays
        self.default_delay = default_delay
        self.arrivals: dict[str, list[float]] = defaultdict(list)


class _Connection(asyncio.Protocol):
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0].decode("latin-1")
        self.url = b""
        if method == b"GET" and path == "/_stats":
            self._write(200, json.dumps(self.endpoint.arrivals).encode())
            return
        if method == b"POST" and path == "/_reset":
            self.endpoint.arrivals.clear()
            self._write(204, b"")
            return
        self.endpoint.arrivals[path].append(time.time())
        delay = self.endpoint.delays.get(path, self.endpoint.default_delay)
        asyncio.get_running_loop().call_later(delay, self._write, 204, b"")

    def _write(self, status: int, body: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        reason = {200: b"OK", 204: b"No Content"}[status]
        head = b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\n\r\n" % (status, reason, len(body))
        self.transport.write(head + body)


async def serve(port: int, endpoint: Endpoint) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Connection(endpoint), "127.0.0.1", port, backlog=1024
    )
    async with server:
        await server.serve_forever()


def parse_delays(values: list[str]) -> dict[str, float]:
    """``["/slow=2", "/a=0.1"]`` → ``{"/slow": 2.0, "/a": 0.1}``."""
    delays = {}
    for value in values:
        path, _, seconds = value.partition("=")
        if not path.startswith("/") or not seconds:
            raise ValueError(f"--delay takes /path=seconds, not {value!r}")
        delays[path] = float(seconds)
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.endpoint")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", action="append", default=[], help="/path=seconds")
    parser.add_argument("--default-delay", type=float, default=0.1)
    args = parser.parse_args()
    asyncio.run(serve(args.port, Endpoint(parse_delays(args.delay), args.default_delay)))


if __name__ == "__main__":
    main()
