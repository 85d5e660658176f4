"""How long a forced WAL reset holds up the SQLite driver's group commits.

    python -m bench.wal_reset [--rate 8000] [--seconds 40]

In one process, without HTTP: batches of 32 Firma-sized rows go through
``SqliteDatabase.insert_new`` (the intake's group commit) at ``--rate`` rows a second (0: as
fast as the loop allows), with no pause long enough for a reset at a lull. Every time the
WAL passes 256 MiB the driver takes its write lock while a thread copies the last pages;
this prints how long each of those copies held the lock, and the wait of every row from
``insert_new`` to its answer. ``docs/architecture.md`` quotes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from bench import stores
from receiver.store import inbox
from receiver.store.db.sqlite import SqliteDatabase

BATCH = 32  # rows in flight at once, as with wrk's 32 connections
BODY = os.urandom(410).hex().encode()  # 820 bytes: the bench's Firma event (bench.load)


class TimedResets(SqliteDatabase):
    """The SQLite driver, noting how long each WAL reset held the write lock. (The time
    includes waiting for the lock, which here is nothing: the forced reset runs between
    two group commits, and nothing else writes.)"""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.held: list[float] = []

    async def _finish_reset(self) -> bool:
        started = time.perf_counter()
        finished = await super()._finish_reset()
        if finished:
            self.held.append(time.perf_counter() - started)
        return finished


async def flood(
    url: str, rate: float, seconds: float
) -> tuple[int, float, list[float], list[float]]:
    """Rows written, seconds taken, each reset's hold on the lock, each row's wait."""
    db = TimedResets(url)
    await db.connect()
    waits: list[float] = []

    async def one(key: int) -> None:
        asked = time.perf_counter()
        params = inbox.insert_params(
            provider="firma",
            channel="webhook",
            dedupe_key=f"event:{key}",
            received_at=time.time(),
            body=BODY,
            headers={"content-type": "application/json"},
            query="",
            request_id=None,
            external_id=None,
        )
        await db.insert_new(inbox.NEW_CALLBACK, params, inbox.INBOX_CHANNEL)
        waits.append(time.perf_counter() - asked)

    rows = 0
    began_at = time.monotonic()
    deadline = began_at + seconds
    try:
        while time.monotonic() < deadline:
            began = time.perf_counter()
            await asyncio.gather(*(one(rows + k) for k in range(BATCH)))
            rows += BATCH
            if rate > 0:
                await asyncio.sleep(max(0.0, BATCH / rate - (time.perf_counter() - began)))
    finally:
        await db.close()
    return rows, time.monotonic() - began_at, db.held, waits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wal_reset", description=__doc__)
    parser.add_argument("--rate", type=float, default=8000.0, help="rows a second (0: flat out)")
    parser.add_argument("--seconds", type=float, default=40.0)
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rate < 0:
        parser.error("--seconds must be positive and --rate not negative")
    with tempfile.TemporaryDirectory(prefix="signback-wal-reset-") as scratch:
        url = stores.sqlite_url(Path(scratch) / "reset.db")
        stores.migrate(url)
        rows, took, held, waits = asyncio.run(flood(url, args.rate, args.seconds))
    waits.sort()

    def pct(p: float) -> str:
        return f"{waits[min(len(waits) - 1, int(len(waits) * p))] * 1000:.1f}"

    print(f"{rows:,} rows in {took:.1f} s ({rows / took:,.0f}/s)")
    print(
        f"forced WAL resets: {len(held)}; write lock held (ms): "
        + ", ".join(f"{h * 1000:.1f}" for h in held)
    )
    print(
        f"per-row wait (ms): p50 {pct(0.5)}, p99 {pct(0.99)}, p99.99 {pct(0.9999)}, "
        f"max {waits[-1] * 1000:.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
