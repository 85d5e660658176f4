"""A sweep of many open requests (100,000 in the full bench) through the reconciler.

The store is filled with SQL (one statement: the requests, all OKdokument, all open), not
through the API; then three measurements on it:

- **queueing**: every request made due at once, the reconciler's looks
  (``Reconciler.queue_due``, batches of ``--batch``) queue a read for each and move its
  schedule on. Reported: this process's CPU per request spent in the looks alone (the
  queued reads are marked done between looks, outside the measurement, as the outbox
  would have). The reads themselves are not made here.
- **read path**: ``sample`` of them, signed at the OKdokument emulator (which dropped their
  callbacks), made due with the read budget set high: the worker's reconciler, the outbox's
  read and the pipeline bring each to ``completed``. Reported: this process's CPU per
  request, all of it (the emulator and the database server are other processes).
- **at the read limit**: the next requests made due with OKdokument's default read budget
  (``SIGNBACK_OKDOKUMENT_READS_PER_MINUTE``), its minute shortened ``SPEED`` times (the
  budget's window and nothing else; the emulator's clock is real) for ``WINDOWS`` windows.
  Reported: the most reads the emulator saw in one window (``GET /_fake/calls``), checked
  against the budget, and how long the whole sweep takes at that budget with real
  minutes, computed from it (one read per request).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from handlers.okdokument.settings import OkdokumentSettings
from receiver.app import build_context, prepare_database
from receiver.context import AppContext
from receiver.reconcile.scheduler import Reconciler
from receiver.settings import Settings, load_settings
from receiver.worker import Worker

PROVIDER = "okdokument"
SPEED = 10.0  # the budget's minute lasts 6 s in the read-limit measurement
WINDOWS = 3  # windows run at the read limit

FILL_SQL = """
WITH RECURSIVE seq (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < :n)
INSERT INTO signature_requests (provider, external_id, document_id, state, metadata, defaults,
    token_hash, sendinfo_hash, shared_token_retired_at, token_nonce, created_at, updated_at,
    next_reconcile_at, reconcile_interval)
SELECT :provider, 'sr-' || CAST(i AS TEXT), 'doc-' || CAST(i AS TEXT), 'registered', '{}', '{}',
    'th-' || CAST(i AS TEXT), 'sh-' || CAST(i AS TEXT), :now, 'nonce-' || CAST(i AS TEXT),
    :now, :now, :later, NULL
FROM seq
"""
LATER = 10 * 365 * 86400.0  # "not due": far beyond any measurement


@dataclass(frozen=True)
class Sweep:
    size: int
    batch: int
    queue_cpu_s: float  # the looks' CPU, all requests
    queue_s: float  # the looks' wall time, all requests
    sample: int
    read_cpu_s: float  # the read path's CPU, the sample
    read_s: float
    reads_per_minute: float  # the default budget
    most_in_window: int  # reads the emulator saw in one (shortened) window, at most
    reads_at_limit: int  # reads made in the windows run at the limit
    windows: int

    @property
    def queue_cpu_us(self) -> float:
        return self.queue_cpu_s / self.size * 1e6

    @property
    def read_cpu_ms(self) -> float:
        return self.read_cpu_s / self.sample * 1000

    @property
    def sweep_hours(self) -> float:
        """The whole sweep at the default budget, in real minutes: one read per request."""
        return self.size / self.reads_per_minute / 60

    @property
    def within_budget(self) -> bool:
        # One slot of slack: a window may start just before a slot.
        return 0 < self.most_in_window <= self.reads_per_minute + 1


async def fill(ctx: AppContext, size: int) -> None:
    now = ctx.clock()
    await ctx.db.execute(
        FILL_SQL, {"n": size, "provider": PROVIDER, "now": now, "later": now + LATER}
    )


async def make_due(ctx: AppContext, first_id: int, last_id: int) -> None:
    await ctx.db.execute(
        "UPDATE signature_requests SET next_reconcile_at = :now WHERE id BETWEEN :a AND :b",
        {"now": ctx.clock(), "a": first_id, "b": last_id},
    )


async def ids(ctx: AppContext, offset: int, count: int) -> list[tuple[int, str, str]]:
    rows = await ctx.db.fetch_all(
        "SELECT id, external_id, document_id FROM signature_requests ORDER BY id"
        " LIMIT :n OFFSET :o",
        {"n": count, "o": offset},
    )
    return [(int(r["id"]), str(r["external_id"]), str(r["document_id"])) for r in rows]


async def count(ctx: AppContext, sql: str) -> int:
    row = await ctx.db.fetch_one(sql)
    return 0 if row is None else int(row["n"])


async def opened(settings: Settings, window: float = 60.0) -> AppContext:
    ctx = build_context(settings, rate_window_seconds=window)
    await prepare_database(ctx, serving=False)
    await ctx.start_providers()
    return ctx


async def closed(ctx: AppContext) -> None:
    await ctx.close()
    await ctx.db.close()


async def queue_all(ctx: AppContext, size: int) -> tuple[float, float]:
    """Every request due; the looks until each has had its read queued. CPU and wall
    seconds spent in the looks."""
    await make_due(ctx, 0, 1 << 62)
    reconciler = Reconciler(ctx)
    cpu = wall = 0.0
    queued = 0
    while queued < size:
        began, cpu0 = time.perf_counter(), time.process_time()
        made, _, _ = await reconciler.queue_due(PROVIDER)
        cpu += time.process_time() - cpu0
        wall += time.perf_counter() - began
        if made == 0:
            raise RuntimeError(f"a look queued nothing after {queued} reads")
        queued += made
        # The outbox's part, not measured: the reads are done, the batch has room again.
        await ctx.db.execute("UPDATE outbox SET status = 'done' WHERE status = 'pending'")
    await ctx.db.execute("DELETE FROM outbox")
    await ctx.db.execute(
        "UPDATE signature_requests SET next_reconcile_at = :later, reconcile_interval = NULL",
        {"later": ctx.clock() + LATER},
    )
    return cpu, wall


async def with_worker(ctx: AppContext, work: Callable[[], Awaitable[Any]]) -> Any:
    worker = Worker(ctx)
    task = asyncio.create_task(worker.run())
    try:
        return await work()
    finally:
        worker.stopping.set()
        await ctx.db.notify("inbox")
        await task


async def poll(done: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done after {timeout:.0f} s")
        await asyncio.sleep(0.02)


async def seed(control: httpx.AsyncClient, pairs: Sequence[tuple[int, str, str]]) -> None:
    for _, sr_id, doc_id in pairs:
        made = await control.post(
            "/signature-requests", json={"signatureRequestId": sr_id, "documentId": doc_id}
        )
        made.raise_for_status()


async def read_sample(ctx: AppContext, okd_url: str, sample: int) -> tuple[float, float]:
    """The first ``sample`` requests, signed at the emulator unheard of, made due; CPU and
    wall seconds until every one is completed."""
    pairs = await ids(ctx, 0, sample)
    async with httpx.AsyncClient(base_url=f"{okd_url}/_fake", timeout=30.0) as control:
        await control.post("/reset")
        await seed(control, pairs)
        for _, sr_id, _ in pairs:
            (await control.post(f"/sign/{sr_id}", json={})).raise_for_status()
    completed = "SELECT COUNT(*) AS n FROM signature_requests WHERE state = 'completed'"

    async def work() -> tuple[float, float]:
        began, cpu0 = time.perf_counter(), time.process_time()
        await make_due(ctx, pairs[0][0], pairs[-1][0])
        await poll(lambda: _at_least(count(ctx, completed), sample), timeout=1800)
        return time.process_time() - cpu0, time.perf_counter() - began

    result: tuple[float, float] = await with_worker(ctx, work)
    return result


async def _at_least(value: Awaitable[int], target: int) -> bool:
    return await value >= target


async def at_read_limit(
    ctx: AppContext, okd_url: str, offset: int, budget: float, windows: int
) -> list[float]:
    """Requests after ``offset`` due at once, the worker reading at the default budget for
    ``windows`` shortened windows; the times of the reads the emulator saw."""
    pairs = await ids(ctx, offset, int(budget * (windows + 1)) + 100)
    window = 60.0 / SPEED
    async with httpx.AsyncClient(base_url=f"{okd_url}/_fake", timeout=30.0) as control:
        await control.post("/reset")
        await seed(control, pairs)
        await with_worker(ctx, lambda: _due_then_wait(ctx, pairs, windows * window))
        calls = (await control.get("/calls")).json()
    return [float(c["time"]) for c in calls if c["method"] == "GET"]


async def _due_then_wait(ctx: AppContext, pairs: Sequence[tuple[int, str, str]], s: float) -> None:
    await make_due(ctx, pairs[0][0], pairs[-1][0])
    await asyncio.sleep(s)


def most_in_window(times: Sequence[float], window: float) -> int:
    """The most of ``times`` in any window ``(t - window, t]``."""
    ordered = sorted(times)
    most = first = 0
    for last, moment in enumerate(ordered):
        while ordered[first] <= moment - window:
            first += 1
        most = max(most, last - first + 1)
    return most


async def run_sweep(
    base: dict[str, object],
    size: int,
    sample: int,
    batch: int,
    okd_url: str,
    windows: int = WINDOWS,
) -> Sweep:
    """``base``: the settings of bench.reconcile (database, emulator, keys)."""
    high = load_settings(**{**base, "reconcile_batch_size": batch})  # type: ignore[arg-type]
    ctx = await opened(high)
    try:
        await fill(ctx, size)
        queue_cpu, queue_wall = await queue_all(ctx, size)
        read_cpu, read_wall = await read_sample(ctx, okd_url, sample)
    finally:
        await closed(ctx)
    default = {k: v for k, v in base.items() if k != "okdokument_reads_per_minute"}
    limited = load_settings(**default)  # type: ignore[arg-type]
    budget = limited.section(OkdokumentSettings).reads_per_minute
    ctx = await opened(limited, window=60.0 / SPEED)
    try:
        times = await at_read_limit(ctx, okd_url, sample, budget, windows)
    finally:
        await closed(ctx)
    return Sweep(
        size=size,
        batch=batch,
        queue_cpu_s=queue_cpu,
        queue_s=queue_wall,
        sample=sample,
        read_cpu_s=read_cpu,
        read_s=read_wall,
        reads_per_minute=budget,
        most_in_window=most_in_window(times, 60.0 / SPEED),
        reads_at_limit=len(times),
        windows=windows,
    )
