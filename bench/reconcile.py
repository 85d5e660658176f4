"""How fast the reconciler brings lost outcomes home, and what each costs.

    python -m bench.reconcile [--sizes 100,1000] [--postgres-url URL] [--sweep 100000]
    python -m bench --only reconcile     (as rows of the bench's report)

For each size N: the OKdokument emulator (``signback fake okdokument``, its own process,
dropping every sendInfo callback) holds N documents; signback (in this process, on a fresh
SQLite file, and on PostgreSQL when ``--postgres-url`` is given) registers a request for
each and works off the registrations' PATCHes. Then every document is signed at the
emulator, unheard of, and every request is made due at once (as after a downtime). Timed
from there until the last request is ``completed``: the worker's reconciler queues the
reads in batches (``SIGNBACK_RECONCILE_BATCH_SIZE``), the outbox reads Document info (one
slot of the read budget each, set high here so that the budget does not set the pace), the
findings go through the pipeline and emit their downstream events. Reported: requests per
second, and this process's CPU per request (the reconciler, the outbox, the pipeline and
the database driver; the emulator's own CPU is not counted, PostgreSQL's neither).
Default sizes are quick (seconds).

``--sweep N`` (and the bench's scenario: 100,000, ``--quick`` 2,000) then fills a store with
N open requests by SQL and measures the reconciler's queueing of all of them, the read path
on a sample, and the reads at OKdokument's default budget (bench/reconcile_sweep.py).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from bench import stores
from bench.procs import LOOPBACK, Procs, free_port, python_env
from bench.reconcile_sweep import SPEED, Sweep, run_sweep
from bench.report import Row, check, fmt_int
from receiver.app import build_context, prepare_database
from receiver.context import AppContext
from receiver.logs import configure_logging
from receiver.pipeline.registration import Registration, register
from receiver.settings import load_settings
from receiver.worker import Worker

if TYPE_CHECKING:
    from bench.scenarios import Bench

API_KEY = "fake-okdokument-key"
ADMIN_TOKEN = "bench-admin-token-0123456789"  # noqa: S105  # a scratch database's
SECRET_KEY = "bench-secret-key-0123456789abcdef0123456789"  # noqa: S105


def settings_for(url: str, okd_url: str, batch: int) -> dict[str, object]:
    return {
        "database_url": url,
        "admin_token": ADMIN_TOKEN,
        "secret_key": SECRET_KEY,
        "public_url": "http://127.0.0.1:9",  # nothing listens: every callback is lost anyway
        "okdokument_base_url": okd_url,
        "okdokument_api_key": API_KEY,
        "firma_webhook_secrets": ["unused-here"],
        "okdokument_reads_per_minute": 1_000_000.0,
        "reconcile_enabled": True,
        # The sweep alone: the archive's downloads of the documents completed here would
        # add reads and CPU of their own (the archive scenario measures those).
        "archive_enabled": False,
        "reconcile_tick_seconds": 0.25,
        "reconcile_batch_size": batch,
        "reconcile_first_delay_seconds": 3600.0,  # only the "due now" below brings reads
        "poll_interval": 0.05,
        "log_level": "WARNING",
        "_env_file": None,
    }


async def all_completed(ctx: AppContext) -> bool:
    row = await ctx.db.fetch_one(
        "SELECT COUNT(*) AS n FROM signature_requests WHERE state <> 'completed'"
    )
    return row is not None and int(row["n"]) == 0


async def until(
    done: Callable[[], Awaitable[bool]], interval: float, timeout: float = 600.0
) -> None:
    """Poll the database until ``done``; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if await done():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done after {timeout:.0f} s")
        await asyncio.sleep(interval)


async def settled_actions(ctx: AppContext) -> bool:
    row = await ctx.db.fetch_one(
        "SELECT COUNT(*) AS n FROM outbox WHERE status IN ('pending', 'in_flight')"
    )
    return row is not None and int(row["n"]) == 0


async def run_one(url: str, okd_url: str, size: int, batch: int) -> tuple[float, float, int]:
    """Seconds from "due" to the last completion, this process's CPU seconds meanwhile, and
    the Document info reads made."""
    ctx = build_context(load_settings(**settings_for(url, okd_url, batch)))  # type: ignore[arg-type]
    await prepare_database(ctx, serving=False)
    await ctx.start_providers()
    worker = Worker(ctx)
    task = asyncio.create_task(worker.run())
    try:
        async with httpx.AsyncClient(base_url=f"{okd_url}/_fake", timeout=30.0) as control:
            await control.post("/reset")
            for i in range(size):
                await control.post(
                    "/signature-requests",
                    json={"signatureRequestId": f"sr-{i}", "documentId": f"doc-{i}"},
                )
                await register(ctx, Registration("okdokument", f"sr-{i}", document_id=f"doc-{i}"))
            await until(lambda: settled_actions(ctx), 0.05)  # the registrations' PATCHes
            for i in range(size):
                await control.post(f"/sign/sr-{i}", json={})
            reads_before = len((await control.get("/calls")).json())
            began, cpu = time.perf_counter(), time.process_time()
            await ctx.db.execute(
                "UPDATE signature_requests SET next_reconcile_at = :now", {"now": ctx.clock()}
            )
            await until(lambda: all_completed(ctx), 0.02)
            took, used = time.perf_counter() - began, time.process_time() - cpu
            calls = (await control.get("/calls")).json()[reads_before:]
    finally:
        worker.stopping.set()
        await ctx.db.notify("inbox")
        await task
        await ctx.close()
        await ctx.db.close()
    return took, used, sum(1 for c in calls if c["method"] == "GET")


@dataclass(frozen=True)
class Measured:
    dialect: str
    size: int
    seconds: float
    cpu_seconds: float
    reads: int

    @property
    def rate(self) -> float:
        return self.size / self.seconds

    @property
    def cpu_ms(self) -> float:
        return self.cpu_seconds / self.size * 1000


def start_emulator(procs: Procs) -> str:
    """The OKdokument emulator, dropping every sendInfo callback; its base URL."""
    port = free_port()
    fake = procs.python(
        "fake-okdokument-reconcile",
        [
            "-m",
            "receiver.cli",
            "fake",
            "okdokument",
            "--port",
            str(port),
            "--drop-callbacks",
            "100",
        ],
        python_env(),
    )
    url = f"http://{LOOPBACK}:{port}"
    fake.wait_http(f"{url}/_fake/state")
    return url


def sweep(
    okd_url: str,
    databases: Sequence[tuple[str, Callable[[int], str]]],
    sizes: Sequence[int],
    batch: int,
) -> list[Measured]:
    """Each size on each database (``(dialect, size → a fresh migrated URL)``)."""
    measured: list[Measured] = []
    for size in sizes:
        for dialect, fresh in databases:
            took, used, reads = asyncio.run(run_one(fresh(size), okd_url, size, batch))
            measured.append(Measured(dialect, size, took, used, reads))
    return measured


def scenario(bench: Bench) -> None:
    """``python -m bench --only reconcile``: the sweep, as rows of the bench's report."""
    configure_logging("WARNING", "json")
    quick = bench.sizes.intake_s < 10
    sizes = (100, 1000) if quick else (1000, 5000)
    databases: list[tuple[str, Callable[[int], str]]] = [
        ("sqlite", lambda size: bench.fresh_sqlite(f"reconcile-{size}"))
    ]
    if bench.config.postgres_version is not None:
        databases.append(("postgresql", lambda _size: bench.fresh_postgres()))
    okd_url = start_emulator(bench.procs)
    bench.say(f"reconcile: {', '.join(str(s) for s in sizes)} open requests")
    try:
        measured = sweep(okd_url, databases, sizes, batch=500)
    finally:
        bench.drop_postgres()
    # The large sweep on PostgreSQL (on SQLite when there is none): the store filled by SQL.
    size, sample = (2_000, 200) if quick else (100_000, 2_000)
    dialect, fresh = databases[-1]
    bench.say(f"reconcile: a sweep of {size:,} open requests on {dialect}")
    try:
        large = asyncio.run(
            run_sweep(settings_for(fresh(size), okd_url, 500), size, sample, 500, okd_url)
        )
    finally:
        bench.drop_postgres()
    bench.rows.extend(sweep_rows(large, "SQLite" if dialect == "sqlite" else "PostgreSQL"))
    for m in measured:
        label = "SQLite" if m.dialect == "sqlite" else "PostgreSQL"
        name = f"{m.size:,} open · {label}"
        bench.rows.append(Row("reconcile", f"{name}: requests/s", fmt_int(m.rate), "", "", "", ""))
        bench.rows.append(
            Row("reconcile", f"{name}: CPU ms per request", f"{m.cpu_ms:.2f}", "", "", "", "")
        )
        bench.rows.append(
            Row(
                "reconcile",
                f"{name}: reads per request",
                f"{m.reads / m.size:.2f}",
                "",
                "",
                "1.00",
                check(m.reads == m.size, "a request read more than once"),
            )
        )


def sweep_rows(m: Sweep, label: str) -> list[Row]:
    """The large sweep's rows: (a) queueing, (b) the read path, (c) at the read limit."""
    name = f"{m.size:,} open · {label}"
    limit = (
        f"most reads in one window {m.most_in_window} (budget {m.reads_per_minute:g} a"
        f" window, its minute shortened {SPEED:g} times, {m.reads_at_limit} reads in {m.windows})"
    )
    return [
        Row(
            "reconcile",
            f"{name}: reconciler CPU µs per request queued (batches of {m.batch})",
            f"{m.queue_cpu_us:.0f}",
        ),
        Row(
            "reconcile",
            f"{name}: read path CPU ms per request ({m.sample:,} read, budget high)",
            f"{m.read_cpu_ms:.2f}",
        ),
        Row(
            "reconcile",
            f"{name}: sweep at the default read budget ({m.reads_per_minute:g} reads/min,"
            " computed: one read per request)",
            f"{m.sweep_hours:.1f} h",
            "",
            "",
            "within the budget",
            check(m.within_budget, limit),
        ),
        Row("reconcile", f"{name}: {limit}", str(m.most_in_window)),
    ]


def print_sweep(m: Sweep, dialect: str) -> None:
    print(
        f"\nsweep of {m.size:,} open requests on {dialect}:\n"
        f"  queueing (reconciler, batches of {m.batch}): {m.queue_cpu_us:.0f} µs CPU per"
        f" request, {m.queue_s:.1f} s in all\n"
        f"  read path ({m.sample:,} requests, budget high): {m.read_cpu_ms:.2f} ms CPU per"
        f" request, {m.sample / m.read_s:,.0f} requests/s\n"
        f"  at the default budget ({m.reads_per_minute:g} reads/min): {m.sweep_hours:.1f} h"
        f" for the sweep; most reads in one window {m.most_in_window}"
        f" ({m.reads_at_limit} in {m.windows} windows shortened {SPEED:g} times)"
        f" {'ok' if m.within_budget else 'OVER THE BUDGET'}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reconcile", description=__doc__)
    parser.add_argument("--sizes", default="100,1000", help="open requests, comma-separated")
    parser.add_argument("--batch", type=int, default=500, help="SIGNBACK_RECONCILE_BATCH_SIZE")
    parser.add_argument("--postgres-url", default=None, help="also on a fresh PostgreSQL db")
    parser.add_argument(
        "--sweep",
        type=int,
        default=0,
        help="then a sweep of this many open requests, filled by SQL (on PostgreSQL when"
        " --postgres-url is given)",
    )
    parser.add_argument("--sample", type=int, default=2000, help="the sweep's read-path sample")
    args = parser.parse_args(argv)
    configure_logging("WARNING", "json")  # the table only
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1 or args.batch < 1:
        parser.error("--sizes are positive numbers, --batch too")
    with tempfile.TemporaryDirectory(prefix="signback-reconcile-") as scratch:
        procs = Procs(Path(scratch))
        made: list[str] = []

        def sqlite(size: int) -> str:
            url = stores.sqlite_url(Path(scratch) / f"r{size}.db")
            stores.migrate(url)
            return url

        def postgres(size: int) -> str:
            name = f"signback_bench_reconcile_{size}"
            made.append(name)
            url = stores.create_postgres_database(args.postgres_url, name)
            stores.migrate(url)
            return url

        databases: list[tuple[str, Callable[[int], str]]] = [("sqlite", sqlite)]
        if args.postgres_url:
            databases.append(("postgresql", postgres))
        large: Sweep | None = None
        try:
            okd_url = start_emulator(procs)
            measured = sweep(okd_url, databases, sizes, args.batch)
            if args.sweep > 0:
                fresh = databases[-1][1]
                base = settings_for(fresh(args.sweep), okd_url, args.batch)
                sample = min(args.sample, args.sweep // 2)
                large = asyncio.run(run_sweep(base, args.sweep, sample, args.batch, okd_url))
        finally:
            procs.stop_all()
            for name in made:
                stores.drop_postgres_database(args.postgres_url, name)
    print("database    open requests   seconds   requests/s   CPU ms/request   reads")
    for m in measured:
        print(
            f"{m.dialect:<11} {m.size:>13,}   {m.seconds:>7.2f}   {m.rate:>10,.0f}"
            f"   {m.cpu_ms:>14.2f}   {m.reads:>5,}"
        )
    if large is not None:
        print_sweep(large, databases[-1][0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
