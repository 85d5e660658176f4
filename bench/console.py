"""The console and the admin API on a big store: ``python -m bench.console``.

Fills a store directly with SQL on the migrated schema (requests in every state with a
reference each, processed callbacks, outbox actions some of them dead with their attempts,
two endpoints, a full rejection log, and what bench/admin.py adds: events with their
deliveries, callbacks not processed), then serves the app in this process (its lifespan
run, no worker, no network: the time measured is the server's own) and times each console
page: one warm-up, then ``--rounds`` rounds; the median and the slowest are reported. Then
each admin API list, ``--samples`` times with fresh parameters (bench/admin.py): median,
p99 and slowest.

    python -m bench.console                                  # 20,000 requests, 100,000 events
    python -m bench.console --requests 1000000 --events 5000000
    python -m bench.console --postgres-url postgresql://postgres@127.0.0.1:5432/postgres
    python -m bench.console --docs docs/performance.md        # write the table there too

The issue's targets: every page under 200 ms of server time, and every admin list's p99
under 50 ms, with 1,000,000 requests and 5,000,000 events.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import psycopg
from starlette.applications import Starlette

from bench import admin, stores
from receiver.app import create_app
from receiver.intake.tokens import hook_token_for, return_token_for, token_hash
from receiver.settings import load_settings

ADMIN_TOKEN = "bench-admin-token-0123456789"  # noqa: S105 (a scratch store's)
SECRET_KEY = "bench-secret-key-0123456789-0123456789"  # noqa: S105
SEED = "console"
STATES = (  # (state, share of the requests), the oldest requests mostly finished
    ("completed", 0.55),
    ("sent", 0.2),
    ("viewed", 0.08),
    ("declined", 0.05),
    ("expired", 0.05),
    ("registered", 0.04),
    ("partially_signed", 0.03),
)
REQUEST_SQL = (
    "INSERT INTO signature_requests (provider, external_id, document_id, reference, state,"
    " metadata, defaults, token_hash, sendinfo_hash, shared_token_retired_at, token_nonce,"
    " created_at, updated_at) VALUES (?, ?, ?, ?, ?, '{}', '{}', ?, ?, ?, ?, ?, ?)"
)
ACTION_SQL = (
    "INSERT INTO outbox (request_id, action_key, operation, payload, status, due_at, attempts,"
    " last_status_code, last_error, created_at, updated_at, lane) VALUES (?, ?,"
    " 'okdokument.patch_signature_request', '{\"state\":\"tostamp\"}', ?, ?, ?, ?, ?, ?, ?,"
    " 'provider')"
)
ATTEMPT_SQL = (
    "INSERT INTO outbox_attempts (action_id, attempt, started_at, duration_ms, status_code,"
    " outcome, error, response_excerpt) VALUES (?, ?, ?, 12.5, ?, ?, ?, ?)"
)
ENDPOINT_SQL = (
    "INSERT INTO endpoints (url, description, kinds, providers, include_raw, status, secret,"
    " created_at, updated_at, last_success_at, last_failure_at, last_failure, failing_since)"
    " VALUES (?, ?, '[]', '[]', ?, 'enabled', 'sealed-not-a-real-secret', ?, ?, ?, ?, ?, ?)"
)
REJECTION_SQL = (
    "INSERT INTO rejections (received_at, route, provider, status, reason, details, remote,"
    " headers, body_length, body_head) VALUES (?, '/hooks/firma', 'firma', 401,"
    " 'x-firma-signature: signature does not match', ?, '203.0.113.9', ?, 64, ?)"
)


def state_of(i: int, count: int) -> str:
    position = i / max(count, 1)
    edge = 0.0
    for state, share in STATES:
        edge += share
        if position < edge:
            return state
    return "sent"


def request_rows(count: int, now: float) -> Iterator[tuple[object, ...]]:
    # Registered over the last ``count`` minutes (ids grow with the time, as in service).
    for i in range(count):
        nonce = stores.nonce_of(SEED, i)
        created = now - (count - i) * 60.0
        yield (
            "okdokument",
            stores.external_id_of(SEED, "okdokument", i),
            stores.document_id_of(SEED, i),
            f"order-{i}",
            state_of(i, count),
            token_hash(return_token_for(SECRET_KEY, nonce)),
            token_hash(hook_token_for(SECRET_KEY, nonce)),
            created,
            nonce,
            created,
            created + 30.0,
        )


def action_rows(requests: int, now: float) -> Iterator[tuple[object, ...]]:
    # One action for every 100th request; every 10th of those dead.
    for i in range(0, requests, 100):
        dead = (i // 100) % 10 == 0
        yield (
            i + 1,
            f"confirm-{i}",
            "dead" if dead else "done",
            now - (requests - i),
            3 if dead else 1,
            502 if dead else 200,
            "bad gateway" if dead else None,
            now - (requests - i) - 5,
            now - (requests - i),
        )


def executemany(
    conn: Any, sql: str, rows: Iterator[tuple[object, ...]], chunk: int = 50_000
) -> None:
    batch: list[tuple[object, ...]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= chunk:
            conn.executemany(sql, batch)
            batch.clear()
    if batch:
        conn.executemany(sql, batch)


def fill(conn: Any, *, requests: int, events: int, commit: Any) -> None:
    """The same rows on either database (``conn``: sqlite3, or a psycopg cursor with the
    statements' ``?`` made ``%s``)."""
    now = time.time()
    executemany(conn, REQUEST_SQL, request_rows(requests, now))
    commit()
    executemany(conn, stores.EVENT_TUPLE_SQL, stores._event_rows(SEED, events, requests, now))
    commit()
    executemany(conn, ACTION_SQL, action_rows(requests, now))
    commit()
    attempts = []
    for n, row in enumerate(action_rows(requests, now)):
        for attempt in range(1, int(str(row[4])) + 1):
            ok = row[2] == "done"
            attempts.append(
                (
                    n + 1,
                    attempt,
                    row[3],
                    200 if ok else 502,
                    "ok" if ok else ("dead" if attempt == 3 else "retry"),
                    None if ok else "bad gateway",
                    None if ok else "<html>502</html>",
                )
            )
    executemany(conn, ATTEMPT_SQL, iter(attempts))
    executemany(
        conn,
        ENDPOINT_SQL,
        iter(
            [
                (
                    "https://erp.example.com/hooks/signback",
                    "ERP",
                    False,
                    now,
                    now,
                    now,
                    None,
                    None,
                    None,
                ),
                (
                    "https://crm.example.com/webhooks",
                    "CRM",
                    False,
                    now,
                    now,
                    now - 7200,
                    now - 60,
                    "503: upstream unavailable",
                    now - 7000,
                ),
            ]
        ),
    )
    details = json.dumps(
        {"secrets_tried": 2, "old_header_present": False, "timestamp_skew_seconds": 0}
    )
    headers = json.dumps(
        {"content-type": "application/json", "x-firma-signature": "t=1,v1=[redacted]"}
    )
    executemany(
        conn,
        REJECTION_SQL,
        iter((now - k, details, headers, f'{{"id":"evt_{k}"}}') for k in range(10_000)),
    )
    commit()
    admin.fill_extras(
        conn, requests=requests, events=events, now=now, commit=commit, state_of=state_of
    )


def fill_sqlite(path: Path, *, requests: int, events: int) -> str:
    url = stores.sqlite_url(path)
    stores.migrate(url)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-1048576")
        conn.execute("BEGIN")

        def commit() -> None:
            conn.execute("COMMIT")
            conn.execute("BEGIN")

        fill(conn, requests=requests, events=events, commit=commit)
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=WAL")
    return url


_GIVEN = object()  # a ``?`` of an INSERT: the row's next value


def _insert_parts(sql: str) -> tuple[str, list[str], list[object]]:
    """``INSERT INTO t (a, b) VALUES (?, 'x')`` → ``t``, ``[a, b]``, ``[_GIVEN, "x"]``."""
    found = re.fullmatch(r"INSERT INTO (\w+) \(([^)]*)\) VALUES \((.*)\)", sql.strip(), re.S)
    assert found, sql
    values: list[object] = []
    for item in re.findall(r"'(?:[^']|'')*'|[^,]+", found.group(3)):
        item = item.strip()
        if item == "?":
            values.append(_GIVEN)
        elif item.startswith("'"):
            values.append(item[1:-1].replace("''", "'"))
        elif item.upper() == "NULL":
            values.append(None)
        else:
            values.append(float(item) if "." in item else int(item))
    return found.group(1), [c.strip() for c in found.group(2).split(",")], values


PG_NAME = "signback_bench_console"


def _kept_postgres(admin_url: str, name: str = PG_NAME) -> str | None:
    """The URL of a database kept by an earlier ``--keep-postgres`` run, if there is one."""
    with psycopg.connect(admin_url, autocommit=True) as pg:
        found = pg.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
    return f"{admin_url.rpartition('/')[0]}/{name}" if found else None


class CopyCursor:
    """The fill's INSERTs as COPY (a hundred times faster than row by row): the
    statement gives the table, the columns and the constants between the ``?``s."""

    def __init__(self, pg: psycopg.Connection[Any]) -> None:
        self.pg = pg

    def executemany(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        table, columns, values = _insert_parts(sql)
        with (
            self.pg.cursor() as cur,
            cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            for row in rows:
                given = iter(row)
                copy.write_row([next(given) if v is _GIVEN else v for v in values])


def fill_postgres(admin_url: str, *, requests: int, events: int, name: str = PG_NAME) -> str:
    url = stores.create_postgres_database(admin_url, name)
    stores.migrate(url)
    with psycopg.connect(url) as pg:
        fill(CopyCursor(pg), requests=requests, events=events, commit=pg.commit)
        pg.commit()
        pg.autocommit = True
        pg.execute("VACUUM ANALYZE")
    return url


def _hidden(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, name
    return found.group(1)


async def time_pages(
    url: str, *, rounds: int, requests: int, samples: int = 0, budget: float = 30.0
) -> tuple[list[tuple[str, float, float]], list[admin.Timing]]:
    """The console's pages (median and slowest of ``rounds``), then the admin API's reads
    (``samples`` each, see bench/admin.py; none when 0)."""
    settings = load_settings(
        purpose="bench",
        database_url=url,
        admin_token=ADMIN_TOKEN,
        secret_key=SECRET_KEY,
        log_level="WARNING",
        _env_file=None,
    )
    router = create_app(settings, run_worker=False)
    app = router.fallback  # the Starlette app: its lifespan opens the database
    assert isinstance(app, Starlette)
    middle = max(requests // 2, 1)
    day = dt.datetime.fromtimestamp(time.time() - requests * 30.0, tz=dt.UTC).date().isoformat()
    pages = [
        ("overview", "/console"),
        ("requests (newest)", "/console/requests"),
        ("requests: state", "/console/requests?state=viewed"),
        ("requests: state + provider", "/console/requests?state=completed&provider=okdokument"),
        ("requests: reference", f"/console/requests?reference=order-{middle}"),
        (
            "requests: provider id",
            "/console/requests?provider_id=" + stores.external_id_of(SEED, "okdokument", middle),
        ),
        ("requests: one day", f"/console/requests?from={day}&to={day}"),
        ("requests: page in the middle", f"/console/requests?before={middle}"),
        ("request (timeline)", f"/console/requests/{middle + 1}"),
        ("callback (body)", "/console/callbacks/1"),
        ("failures", "/console/failures"),
        ("endpoints", "/console/endpoints"),
        ("GET /api/rejections", "/api/rejections"),
    ]
    results = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=router)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            form = await client.get("/console/signin")
            signed = await client.post(
                "/console/signin",
                data={"signin": _hidden(form.text, "signin"), "token": ADMIN_TOKEN},
            )
            assert signed.status_code == 303, signed.text
            for name, path in pages:
                headers = (
                    {"authorization": f"Bearer {ADMIN_TOKEN}"} if path.startswith("/api") else {}
                )
                times = []
                for n in range(rounds + 1):
                    started = time.perf_counter()
                    answer = await client.get(path, headers=headers)
                    elapsed = (time.perf_counter() - started) * 1000
                    assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
                    if n:  # the first is a warm-up
                        times.append(elapsed)
                results.append((name, statistics.median(times), max(times)))
            queries = (
                await admin.time_queries(
                    client,
                    admin.Shape.of(requests),
                    token=ADMIN_TOKEN,
                    samples=samples,
                    budget=budget,
                )
                if samples
                else []
            )
    return results, queries


def report(
    label: str,
    requests: int,
    events: int,
    fill_seconds: float,
    rows: list[tuple[str, float, float]],
) -> str:
    lines = [
        f"**{label}**, {requests:,} requests and {events:,} events"
        + (f" (filled in {fill_seconds:.0f} s):" if fill_seconds >= 1 else " (filled earlier):"),
        "",
        "| page | median ms | slowest ms |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {median:.1f} | {worst:.1f} |" for name, median, worst in rows]
    return "\n".join(lines) + "\n"


MARK_START = "<!-- console:start -->"
MARK_END = "<!-- console:end -->"


def write_docs(path: Path, text: str) -> None:
    """Put ``text`` between the console markers of ``path`` (appended the first time)."""
    current = path.read_text() if path.exists() else ""
    block = f"{MARK_START}\n{text}{MARK_END}\n"
    if MARK_START in current and MARK_END in current:
        head, _, rest = current.partition(MARK_START)
        _, _, tail = rest.partition(MARK_END + "\n")
        path.write_text(head + block + tail)
    else:
        path.write_text(current.rstrip("\n") + "\n\n" + block)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.console", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--postgres-url", help="also (or only, with --no-sqlite) on PostgreSQL")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--docs", type=Path, help="write the tables to this Markdown file")
    parser.add_argument(
        "--keep-postgres",
        action="store_true",
        help="keep the database (and use it as it is when it exists)",
    )
    parser.add_argument(
        "--postgres-db", default=PG_NAME, help=f"the database to fill (default {PG_NAME})"
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=200,
        help="samples of each admin API query (0: none; bench/admin.py)",
    )
    parser.add_argument(
        "--admin-budget",
        type=float,
        default=30.0,
        help="seconds an admin query may take for its samples (it then stops at 20)",
    )
    parser.add_argument(
        "--store",
        type=Path,
        help="the SQLite file to fill, kept afterwards; filled already: used as it is",
    )
    args = parser.parse_args(argv)
    out = []
    with tempfile.TemporaryDirectory(prefix="signback-console-") as scratch:
        runs: list[tuple[str, Any]] = []
        if not args.no_sqlite:
            path: Path = args.store or Path(scratch) / "store.db"
            if path.exists():  # filled by an earlier run: used as it is
                runs.append(("SQLite", lambda: stores.sqlite_url(path)))
            else:
                runs.append(
                    (
                        "SQLite",
                        lambda: fill_sqlite(path, requests=args.requests, events=args.events),
                    )
                )
        if args.postgres_url:
            kept = (
                _kept_postgres(args.postgres_url, args.postgres_db) if args.keep_postgres else None
            )
            runs.append(
                (
                    "PostgreSQL",
                    (lambda: kept)
                    if kept
                    else lambda: fill_postgres(
                        args.postgres_url,
                        requests=args.requests,
                        events=args.events,
                        name=args.postgres_db,
                    ),
                )
            )
        for label, make in runs:
            started = time.monotonic()
            print(
                f"filling {label}: {args.requests:,} requests, {args.events:,} events …", flush=True
            )
            url = make()
            seconds = time.monotonic() - started
            rows, queries = asyncio.run(
                time_pages(
                    url,
                    rounds=args.rounds,
                    requests=args.requests,
                    samples=args.samples,
                    budget=args.admin_budget,
                )
            )
            text = report(label, args.requests, args.events, seconds, rows)
            if queries:
                text += "\n" + admin.report(queries)
            print(text, flush=True)
            out.append(text)
            if label == "PostgreSQL" and not args.keep_postgres:
                stores.drop_postgres_database(args.postgres_url, args.postgres_db)
    if args.docs:
        stamp = dt.date.today().isoformat()
        write_docs(
            args.docs,
            f"## Console pages on a big store\n\n`python -m bench.console --requests"
            f" {args.requests} --events {args.events}` ({stamp}; server time, in process, no"
            " network; 2 shared cores):\n\n" + "\n".join(out),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
