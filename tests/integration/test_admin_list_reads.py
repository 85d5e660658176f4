"""The admin API's list reads that go through an index one branch at a time (issue #20:
p99 ≤ 50 ms on a big store, bench/admin.py): they answer exactly what one filtered
``ORDER BY id DESC`` would, on both databases, paging included."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from receiver.store import inbox, outbox, requests
from receiver.store import reconcile as reconcile_store
from receiver.store.db import open_database
from receiver.store.db.base import Database

pytestmark = pytest.mark.anyio

STATES = ("completed", "sent", "viewed", "registered", "sent", "completed", "viewed")
PROVIDERS = ("okdokument", "firma", "okdokument")


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = open_database(database_url)
    await database.connect()
    try:
        yield database
    finally:
        await database.close()


async def _fill(db: Database, count: int) -> None:
    """``count`` requests (states and providers taking turns, updated at ``i``), one inbox
    row each (every third firma; statuses taking turns) and one outbox row each (in three
    lanes, statuses taking turns)."""
    async with db.transaction() as tx:
        for i in range(count):
            provider = PROVIDERS[i % 3]
            await tx.execute(
                "INSERT INTO signature_requests (provider, external_id, reference, state,"
                " metadata, token_hash, token_nonce, created_at, updated_at) VALUES"
                " (:provider, :ext, :ref, :state, '{}', :hash, 'n', :at, :at)",
                {
                    "provider": provider,
                    "ext": f"ext-{i}",
                    "ref": f"order-{i % 4}",
                    "state": STATES[i % len(STATES)],
                    "hash": f"h-{i}",
                    "at": float(i),
                },
            )
            await tx.execute(
                "INSERT INTO inbox (provider, channel, dedupe_key, received_at, body, headers,"
                " query, request_id, external_id, status, attempts) VALUES (:provider, 'x',"
                " :key, 0, :body, '{}', '', :request, :ext, :status, 0)",
                {
                    "provider": provider,
                    "key": f"k-{i}",
                    "body": b"{}",
                    "request": i + 1,
                    "ext": f"ext-{i}",
                    "status": ("processed", "failed", "processed", "unmatched")[i % 4],
                },
            )
            await tx.execute(
                "INSERT INTO outbox (request_id, lane, action_key, operation, payload, status,"
                " due_at, attempts, created_at, updated_at) VALUES (:request, :lane, :key,"
                " 'op', '{}', :status, 0, 0, 0, 0)",
                {
                    "request": i + 1,
                    "lane": ("provider", "endpoint:1", "endpoint:2")[i % 3],
                    "key": f"a-{i}",
                    "status": ("done", "dead", "pending", "done", "skipped")[i % 5],
                },
            )


def _ids(rows: list[Any]) -> list[int]:
    return [int(r["id"]) for r in rows]


async def _expected(db: Database, table: str, where: str, params: dict[str, Any]) -> list[int]:
    return _ids(
        await db.fetch_all(
            f"SELECT id FROM {table} WHERE {where} ORDER BY id DESC LIMIT :limit", params
        )
    )


@pytest.mark.parametrize("before_id", [None, 40, 3])
@pytest.mark.parametrize(
    "filters",
    [{}, {"provider": "firma"}, {"provider": "okdokument", "state": "sent"}, {"state": "viewed"}],
)
async def test_requests_search_pages_as_one_filtered_scan_would(
    db: Database, filters: dict[str, str], before_id: int | None
) -> None:
    await _fill(db, 60)
    where = " AND ".join([f"{k} = :{k}" for k in filters] + ["id < :before"])
    params = {**filters, "before": before_id or 10**9, "limit": 7}
    rows = await requests.search(db, **filters, before_id=before_id, limit=7)
    assert _ids(rows) == await _expected(db, "signature_requests", where, params)


@pytest.mark.parametrize("chunk", [500, 2])
@pytest.mark.parametrize("provider", [None, "firma"])
async def test_stale_lists_open_requests_past_their_threshold_newest_first(
    db: Database, monkeypatch: pytest.MonkeyPatch, provider: str | None, chunk: int
) -> None:
    monkeypatch.setattr(reconcile_store, "STALE_CHUNK", chunk)  # 2: a chunk at a time
    await _fill(db, 60)
    thresholds = {"sent": 10.0, "viewed": 30.0}  # at now=50: sent before 40, viewed before 20
    rows = await reconcile_store.stale(
        db, thresholds=thresholds, now=50.0, provider=provider, before_id=55, limit=5
    )
    where = "id < 55 AND ((state = 'sent' AND updated_at < 40) OR (state = 'viewed'" + (
        " AND updated_at < 20))" + (" AND provider = 'firma'" if provider else "")
    )
    assert _ids(rows) == await _expected(db, "signature_requests", where, {"limit": 5})
    assert not await reconcile_store.stale(db, thresholds={}, now=50.0)


@pytest.mark.parametrize("status", [None, "dead", "skipped", "in_flight"])
async def test_outbox_search_by_status_merges_every_lane(db: Database, status: str | None) -> None:
    await _fill(db, 40)
    rows = await outbox.search(db, status=status, limit=6)
    where = "status = :status" if status else "1 = 1"
    assert _ids(rows) == await _expected(db, "outbox", where, {"status": status, "limit": 6})
    assert await outbox.lanes(db) == ["endpoint:1", "endpoint:2", "provider"]


@pytest.mark.parametrize("status", [None, "done", "pending"])
async def test_a_lanes_actions_page_by_status_or_across_them(
    db: Database, status: str | None
) -> None:
    await _fill(db, 40)
    rows = await outbox.in_lane(db, "endpoint:1", status=status, before_id=30, limit=4)
    where = "lane = 'endpoint:1' AND id < 30" + (" AND status = :status" if status else "")
    assert _ids(rows) == await _expected(db, "outbox", where, {"status": status, "limit": 4})


@pytest.mark.parametrize("window", [1_000, 5])
@pytest.mark.parametrize("status", [None, "processed", "failed"])
@pytest.mark.parametrize("provider", ["firma", "okdokument"])
async def test_inbox_search_by_provider_past_the_window_and_within_it(
    db: Database, monkeypatch: pytest.MonkeyPatch, window: int, status: str | None, provider: str
) -> None:
    monkeypatch.setattr(inbox, "PROVIDER_WINDOW", window)
    await _fill(db, 60)
    rows = await inbox.search(db, status=status, provider=provider, limit=8)
    where = "provider = :provider" + (" AND status = :status" if status else "")
    params = {"provider": provider, "status": status, "limit": 8}
    assert _ids(rows) == await _expected(db, "inbox", where, params)
    assert not await inbox.search(db, status="pending", provider=provider)


async def test_counts_are_the_working_statuses_exact_each_present(db: Database) -> None:
    """/api/stats and the *_rows gauges: every working status, exact across the lanes, 0
    included; the finished ones (which grow without end) are not counted."""
    assert await inbox.counts(db) == {"pending": 0, "processing": 0, "unmatched": 0, "failed": 0}
    assert await outbox.counts(db) == {"pending": 0, "in_flight": 0, "dead": 0}
    await _fill(db, 40)

    async def grouped(table: str) -> dict[str, int]:
        rows = await db.fetch_all(f"SELECT status, COUNT(*) AS n FROM {table} GROUP BY status")
        return {str(r["status"]): int(r["n"]) for r in rows}

    every_inbox, every_outbox = await grouped("inbox"), await grouped("outbox")
    assert await inbox.counts(db) == {
        status: every_inbox.get(status, 0)
        for status in ("pending", "processing", "unmatched", "failed")
    }
    assert await outbox.counts(db) == {
        status: every_outbox.get(status, 0) for status in ("pending", "in_flight", "dead")
    }
    assert (await outbox.counts(db))["dead"] == 8  # 40 actions, every fifth dead, three lanes
