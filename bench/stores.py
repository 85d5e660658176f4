"""Databases for the bench: fresh SQLite files and PostgreSQL databases with the real schema
(``receiver.store.migrate.upgrade``), requests registered by SQL, and bulk fills.

Requests are inserted directly, not through ``POST /api/requests``: registering runs the
shipped rules (a PATCH per request), which is not what these scenarios measure. Tokens are
made exactly as signback makes them (``receiver.intake.tokens``), so the callback URLs are real.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from receiver.intake.tokens import hook_token_for, return_token_for, token_hash
from receiver.store.db.postgres import to_psycopg
from receiver.store.migrate import upgrade

REQUEST_SQL = (
    "INSERT INTO signature_requests (provider, external_id, document_id, reference, state,"
    " metadata, defaults, token_hash, sendinfo_hash, shared_token_retired_at, token_nonce,"
    " created_at, updated_at) VALUES (:provider, :external_id, :document_id, NULL, :state,"
    " '{}', '{}', :token_hash, :sendinfo_hash, :now, :token_nonce, :now, :now)"
)
REQUEST_TUPLE_SQL = (
    "INSERT INTO signature_requests (provider, external_id, document_id, reference, state,"
    " metadata, defaults, token_hash, sendinfo_hash, shared_token_retired_at, token_nonce,"
    " created_at, updated_at) VALUES (?, ?, ?, NULL, ?, '{}', '{}', ?, ?, ?, ?, ?, ?)"
)
EVENT_TUPLE_SQL = (
    "INSERT INTO inbox (provider, channel, dedupe_key, received_at, body, headers, query,"
    " request_id, external_id, status, attempts, kind, provider_type, event_id, occurred_at,"
    " state_before, state_after, note, processed_at) VALUES (?, 'sendinfo', ?, ?, ?, ?, '',"
    " ?, ?, 'processed', 1, 'request.sent', 'sendinfo:tosign', ?, NULL, 'sent', 'sent',"
    " 'already sent', ?)"
)
# What a stored sendInfo's headers look like after redaction (receiver.intake.ack).
STORED_HEADERS = json.dumps(
    {
        "host": "signback.example.com",
        "user-agent": "Apache-HttpClient/4.5.13 (Java/17.0.8)",
        "content-type": "application/json",
        "content-length": "118",
        "accept-encoding": "gzip,deflate",
        "x-forwarded-for": "203.0.113.7",
        "x-forwarded-proto": "https",
    },
    separators=(",", ":"),
    sort_keys=True,
)


@dataclass(frozen=True)
class Target:
    """A registered request the load hits: its sendInfo token and its ids."""

    provider: str
    request_id: int
    external_id: str
    document_id: str
    token: str


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def _digest(*parts: object, size: int = 16) -> bytes:
    return hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=size).digest()


def nonce_of(seed: str, i: int) -> str:
    return _digest(seed, "nonce", i).hex()


def external_id_of(seed: str, provider: str, i: int) -> str:
    """A UUID-shaped id, as OKdokument and Firma hand out."""
    return str(uuid.UUID(bytes=_digest(seed, provider, i)))


def document_id_of(seed: str, i: int) -> str:
    return _digest(seed, "doc", i, size=24).hex()[:39]


def request_params(
    seed: str, provider: str, i: int, secret_key: str, now: float, state: str = "registered"
) -> dict[str, Any]:
    nonce = nonce_of(seed, i)
    return {
        "provider": provider,
        "external_id": external_id_of(seed, provider, i),
        "document_id": document_id_of(seed, i),
        "state": state,
        "token_hash": token_hash(return_token_for(secret_key, nonce)),
        "sendinfo_hash": token_hash(hook_token_for(secret_key, nonce)),
        "token_nonce": nonce,
        "now": now,
    }


def migrate(url: str) -> None:
    upgrade(url)


def register(url: str, provider: str, count: int, *, secret_key: str, seed: str) -> list[Target]:
    """Insert ``count`` requests of ``provider``; return them with their callback tokens."""
    now = time.time()
    params = [request_params(seed, provider, i, secret_key, now) for i in range(count)]
    by_external = {p["external_id"]: i for i, p in enumerate(params)}
    if url.startswith("sqlite"):
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            with conn:
                conn.executemany(REQUEST_SQL, params)
            rows = conn.execute(
                "SELECT id, external_id FROM signature_requests WHERE provider = ?", (provider,)
            ).fetchall()
    else:
        with psycopg.connect(url, autocommit=False) as pg:
            with pg.cursor() as cur:
                cur.executemany(to_psycopg(REQUEST_SQL), params)
            pg.commit()
            rows = pg.execute(
                "SELECT id, external_id FROM signature_requests WHERE provider = %s", (provider,)
            ).fetchall()
    targets = []
    for request_id, external_id in rows:
        i = by_external.get(str(external_id))
        if i is not None:
            targets.append(
                Target(
                    provider=provider,
                    request_id=int(request_id),
                    external_id=str(external_id),
                    document_id=document_id_of(seed, i),
                    token=hook_token_for(secret_key, nonce_of(seed, i)),
                )
            )
    targets.sort(key=lambda t: t.request_id)
    return targets


# --- counting --------------------------------------------------------------------------------


def _scalar(url: str, sql: str, params: Sequence[Any] = ()) -> int:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
            value = conn.execute(sql, tuple(params)).fetchone()[0]
    else:
        with psycopg.connect(url, autocommit=True) as pg:
            row = pg.execute(sql.replace("?", "%s"), tuple(params)).fetchone()
            value = row[0] if row else None
    return int(value or 0)


def max_inbox_id(url: str) -> int:
    return _scalar(url, "SELECT MAX(id) FROM inbox")


def inbox_count(url: str, *, after_id: int, channel: str) -> int:
    return _scalar(
        url, "SELECT COUNT(*) FROM inbox WHERE id > ? AND channel = ?", (after_id, channel)
    )


def outbox_finished(url: str) -> int:
    return _scalar(url, "SELECT COUNT(*) FROM outbox WHERE status IN ('done', 'dead', 'skipped')")


def _rows(url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
            return [tuple(r) for r in conn.execute(sql, tuple(params)).fetchall()]
    with psycopg.connect(url, autocommit=True) as pg:
        return [tuple(r) for r in pg.execute(sql.replace("?", "%s"), tuple(params)).fetchall()]


def outbox_status_counts(url: str) -> dict[str, int]:
    rows = _rows(url, "SELECT status, COUNT(*) FROM outbox GROUP BY status")
    return {str(status): int(n) for status, n in rows}


def received_times(url: str, *, after_id: int) -> list[float]:
    rows = _rows(
        url, "SELECT received_at FROM inbox WHERE id > ? AND channel = 'sendinfo'", (after_id,)
    )
    return [float(r[0]) for r in rows]


class SqliteCounter:
    """A read-only connection kept open for frequent cheap reads (RSS sampling)."""

    def __init__(self, url: str) -> None:
        path = url.removeprefix("sqlite:///")
        self._conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, timeout=5, check_same_thread=False
        )

    def max_id(self) -> int | None:
        row = self._conn.execute("SELECT MAX(id) FROM inbox").fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def close(self) -> None:
        self._conn.close()


# --- PostgreSQL ------------------------------------------------------------------------------


def postgres_version(admin_url: str) -> str | None:
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as pg:
            row = pg.execute("SHOW server_version").fetchone()
            return None if row is None else str(row[0])
    except psycopg.Error:
        return None


def create_postgres_database(admin_url: str, name: str) -> str:
    """A fresh database ``name`` next to ``admin_url``'s; returns its URL."""
    with psycopg.connect(admin_url, autocommit=True) as pg:
        pg.execute(f'DROP DATABASE IF EXISTS "{name}"')
        pg.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


def drop_postgres_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as pg:
        pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- bulk fill (growth scenario) -------------------------------------------------------------


@dataclass(frozen=True)
class Filled:
    targets: list[Target]
    requests: int
    events: int
    seconds: float
    file_bytes: int


def _request_rows(
    seed: str, count: int, secret_key: str, now: float
) -> Iterator[tuple[object, ...]]:
    for i in range(count):
        nonce = nonce_of(seed, i)
        yield (
            "okdokument",
            external_id_of(seed, "okdokument", i),
            document_id_of(seed, i),
            "sent",
            token_hash(return_token_for(secret_key, nonce)),
            token_hash(hook_token_for(secret_key, nonce)),
            now,
            nonce,
            now,
            now,
        )


def _event_rows(seed: str, events: int, requests: int, now: float) -> Iterator[tuple[object, ...]]:
    # Sorted by request (and the dedupe keys ascending), so every index grows at its end:
    # the fill is fast, and the result is the same B-trees a long-running store would have.
    for j in range(events):
        i = j * requests // events
        external_id = external_id_of(seed, "okdokument", i)
        body = json.dumps(
            {"state": "tosign", "id": document_id_of(seed, i), "signatureRequestId": external_id},
            separators=(",", ":"),
        ).encode()
        received = now - (events - j) * 0.01
        yield (
            "okdokument",
            f"sendinfo:{j:064x}",
            received,
            body,
            STORED_HEADERS,
            i + 1,
            external_id,
            f"inbox-{j + 1}",
            received + 0.005,
        )


def fill_sqlite(
    path: Path,
    *,
    requests: int,
    events: int,
    hit: int,
    secret_key: str,
    seed: str,
    chunk: int = 50_000,
) -> Filled:
    """A store with ``requests`` registered OKdokument requests and ``events`` processed
    callbacks; ``hit`` of the requests, spread over the whole table, are returned as targets.

    Plain SQL on the migrated schema, in large transactions, with the journal off during the
    fill (a scratch file: a crash here only means filling again); WAL is switched on after.
    """
    started = time.monotonic()
    url = sqlite_url(path)
    migrate(url)
    now = time.time()
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-1048576")  # 1 GiB while filling
        for sql, rows in (
            (REQUEST_TUPLE_SQL, _request_rows(seed, requests, secret_key, now)),
            (EVENT_TUPLE_SQL, _event_rows(seed, events, requests, now)),
        ):
            batch: list[tuple[object, ...]] = []
            for row in rows:
                batch.append(row)
                if len(batch) >= chunk:
                    conn.execute("BEGIN")
                    conn.executemany(sql, batch)
                    conn.execute("COMMIT")
                    batch.clear()
            if batch:
                conn.execute("BEGIN")
                conn.executemany(sql, batch)
                conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=WAL")  # what signback sets; no ANALYZE (nor does it)
    chosen = sorted(random.Random(seed).sample(range(requests), min(hit, requests)))
    targets = [
        Target(
            provider="okdokument",
            request_id=i + 1,
            external_id=external_id_of(seed, "okdokument", i),
            document_id=document_id_of(seed, i),
            token=hook_token_for(secret_key, nonce_of(seed, i)),
        )
        for i in chosen
    ]
    return Filled(targets, requests, events, time.monotonic() - started, path.stat().st_size)
