"""An open-loop paced sender: callbacks at a fixed rate, whatever the server does.

``python -m bench.pacer --url http://127.0.0.1:PORT --data FILE --rate 2000 --seconds 60``

wrk is closed-loop (each connection waits for its answer before it sends again), so it
measures what the server can take, not how it behaves under a steady rate it can carry.
This sender sends callback ``n`` at ``start + n / rate``, over keep-alive connections (a
new one opened whenever every open one is waiting, up to ``--connections``; beyond that
requests are pipelined), from requests rendered before the clock starts: raw HTTP/1.1 on
asyncio streams, no HTTP client library, so that one process paces a few thousand callbacks
per second on a fraction of a core.

It reads the data files bench/load.py writes for wrk (``template`` and ``pool`` modes,
see bench/wrk/callbacks.lua) and prints one line ``PACER_RESULT {json}``: sent, answered
2xx, other answers, errors, how late the sends were, the latencies' percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

RESULT_PREFIX = "PACER_RESULT "
TICK = 0.002  # seconds between two sending turns


def render(method: str, path: str, host: str, headers: dict[str, str], body: bytes) -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"host: {host}", f"content-length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def requests_from(data: Path, host: str, count: int, seq_base: int) -> Iterator[bytes]:
    """``count`` requests from a bench data file (template: unique sequence numbers; pool:
    the lines in turn, from the start again when they run out)."""
    lines = data.read_text().splitlines()
    mode, rows = lines[0], [line.split("\t") for line in lines[1:] if line]
    json_type = {"content-type": "application/json"}
    for n in range(count):
        if mode == "template":
            seq = seq_base + n
            path, prefix = rows[seq % len(rows)]
            yield render("POST", path, host, json_type, f"{prefix}{seq}}}".encode())
        else:
            path, sig, event, body = rows[n % len(rows)]
            headers = {
                **json_type,
                "x-firma-signature": sig,
                "x-firma-event": event,
                "x-firma-delivery": f"dlv_{n}",
            }
            yield render("POST", path, host, headers, body.encode())


@dataclass
class Totals:
    sent: int = 0
    n2xx: int = 0
    other: int = 0
    errors: int = 0
    late_ms: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)


class Connection:
    """One keep-alive connection: writes requests, reads the answers in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.waiting: deque[float] = deque()  # send times of the requests not yet answered
        self.dead = False
        self.answered_all = asyncio.Event()  # set while nothing is waiting for an answer
        self.answered_all.set()

    def send(self, request: bytes) -> None:
        self.waiting.append(time.perf_counter())
        self.answered_all.clear()
        self.writer.write(request)

    async def read_answers(self, totals: Totals) -> None:
        try:
            while True:
                status_line = await self.reader.readuntil(b"\r\n")
                length = 0
                while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                if length:
                    await self.reader.readexactly(length)
                sent_at = self.waiting.popleft()
                if not self.waiting:
                    self.answered_all.set()
                totals.latency_ms.append((time.perf_counter() - sent_at) * 1000)
                status = int(status_line.split(b" ", 2)[1])
                if 200 <= status < 300:
                    totals.n2xx += 1
                else:
                    totals.other += 1
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError):
            self.dead = True
            totals.errors += len(self.waiting)
            self.waiting.clear()
            self.answered_all.set()


async def pace(
    url: str, data: Path, *, rate: float, seconds: float, connections: int, seq_base: int
) -> Totals:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    count = int(rate * seconds)
    rendered = list(requests_from(data, f"{host}:{port}", count, seq_base))
    totals = Totals()
    pool: list[Connection] = []
    readers: list[asyncio.Task[None]] = []

    async def connection() -> Connection:
        idle = [c for c in pool if not c.dead and not c.waiting]
        if idle:
            return idle[0]
        alive = [c for c in pool if not c.dead]
        if len(alive) < connections:
            reader, writer = await asyncio.open_connection(host, port)
            conn = Connection(reader, writer)
            pool.append(conn)
            readers.append(asyncio.create_task(conn.read_answers(totals)))
            return conn
        return min(alive, key=lambda c: len(c.waiting))  # pipelined

    start = time.perf_counter() + 0.1
    n = 0
    while n < count:
        now = time.perf_counter()
        due = min(count, int((now - start) * rate) + 1)
        while n < due:
            late = (now - (start + n / rate)) * 1000
            if n % 100 == 0:
                totals.late_ms.append(late)
            try:
                (await connection()).send(rendered[n])
                totals.sent += 1
            except OSError:
                totals.errors += 1
            n += 1
        await asyncio.sleep(TICK)
    # The last answers, then the connections close. Not a half-close first: on EOF the
    # server's transport closes itself (asyncio's default), and the answers to requests
    # still pipelined on that connection would be counted as unanswered.
    settled = [asyncio.create_task(c.answered_all.wait()) for c in pool]
    if settled:
        await asyncio.wait(settled, timeout=30)
    for waiter in settled:
        waiter.cancel()
    for conn in pool:
        conn.writer.write_eof()
    await asyncio.wait(readers, timeout=5)
    for task in readers:
        task.cancel()
    for conn in pool:
        conn.writer.close()
    return totals


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--rate", type=float, required=True, help="callbacks per second")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seq-base", type=int, default=0)
    args = parser.parse_args()
    began = time.time()
    totals = asyncio.run(
        pace(
            args.url,
            args.data,
            rate=args.rate,
            seconds=args.seconds,
            connections=args.connections,
            seq_base=args.seq_base,
        )
    )
    result = {
        "started_at": began,
        "sent": totals.sent,
        "n2xx": totals.n2xx,
        "other": totals.other,
        "errors": totals.errors,
        "late_ms_p99": round(percentile(totals.late_ms, 99), 2),
        "latency_ms": {p: round(percentile(totals.latency_ms, float(p)), 2) for p in ("50", "99")},
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
