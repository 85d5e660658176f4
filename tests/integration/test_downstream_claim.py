"""Lanes in the outbox claim: head-of-line per (request, lane), and each lane's claim cost
independent of another lane's backlog (PostgreSQL plans, as rows examined)."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from receiver.store import outbox
from receiver.store.db import open_database
from receiver.store.db.base import Database
from receiver.store.db.postgres import PostgresDatabase, to_psycopg
from receiver.store.statuses import ActionStatus
from tests.integration.test_outbox_claim import NOW, add_request, rows_examined

pytestmark = pytest.mark.anyio


async def add(
    db: Database, request_id: int | None, lane: str, key: str, status: ActionStatus, due: float
) -> int:
    async with db.transaction() as tx:
        row = await tx.fetch_one(
            "INSERT INTO outbox (request_id, lane, action_key, operation, payload, status,"
            " due_at, attempts, created_at, updated_at) VALUES (:request_id, :lane, :key,"
            " 'signback.deliver', '{}', :status, :due, 0, 0, 0) RETURNING id",
            {"request_id": request_id, "lane": lane, "key": key, "status": status, "due": due},
        )
    assert row is not None
    return int(row["id"])


async def claim(db: Database, lanes: dict[str, int]) -> list[int]:
    claim = await outbox.claim_lanes(db, lanes, now=NOW, lease_seconds=60, worker="test:1:x")
    return [int(r["id"]) for r in claim.rows]


async def next_due(db: Database, lanes: dict[str, int]) -> float | None:
    claim = await outbox.claim_lanes(db, lanes, now=NOW, lease_seconds=60, worker="test:1:x")
    return claim.next_due


async def test_head_of_line_holds_per_request_and_lane(database_url: str) -> None:
    db = open_database(database_url)
    await db.connect()
    try:
        a = await add_request(db, "a")
        patch = await add(db, a, "provider", "patch", ActionStatus.PENDING, NOW + 60)  # not due yet
        e1_first = await add(db, a, "endpoint:1", "d1", ActionStatus.PENDING, NOW - 10)
        e1_second = await add(db, a, "endpoint:1", "d2", ActionStatus.PENDING, NOW - 20)
        e2_first = await add(db, a, "endpoint:2", "d3", ActionStatus.PENDING, NOW - 5)
        loose = [
            await add(db, None, "endpoint:1", f"t{i}", ActionStatus.PENDING, NOW - 1)
            for i in range(2)
        ]

        # The request's PATCH is not due, yet its deliveries go; each endpoint's first one
        # only; actions of no request are always their own head.
        assert await claim(db, {"provider": 5, "endpoint:1": 5, "endpoint:2": 5}) == [
            e1_first,
            e2_first,
            *loose,
        ]
        assert await claim(db, {"endpoint:1": 5}) == []  # e1_second waits behind e1_first
        assert await claim(db, {"provider": 5}) == []
        async with db.transaction() as tx:
            await outbox.settle(
                tx,
                e1_first,
                status=ActionStatus.DONE,
                now=NOW,
                due_at=None,
                status_code=204,
                error=None,
                worker="test:1:x",
            )
        assert await claim(db, {"endpoint:2": 5}) == []  # another lane's turn changes nothing
        assert await claim(db, {"endpoint:1": 5}) == [e1_second]
        # Each claim says when its own lanes have an action due next, and no other's.
        assert await next_due(db, {"provider": 5}) == NOW + 60
        assert await next_due(db, {"endpoint:2": 5}) is None
        assert await next_due(db, {"endpoint:2": 5, "provider": 5}) == NOW + 60
        assert patch > 0
    finally:
        await db.close()


def lane_claim_work(
    conn: psycopg.Connection[Any], postgres_url: str, lane: str, limit: int
) -> tuple[int, int]:
    with conn.transaction(force_rollback=True):
        sql = to_psycopg(PostgresDatabase(postgres_url).render(outbox.CLAIM_SQL))
        row = conn.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + sql,
            {"lease": NOW + 60, "worker": "t", "now": NOW, "limit": limit, "lane": lane},
        ).fetchone()
    assert row is not None
    document = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    plan = document[0]["Plan"]
    return rows_examined(plan), int(plan["Actual Rows"])


@pytest.mark.postgres
def test_a_lanes_backlog_costs_other_lanes_claims_nothing(postgres_url: str) -> None:
    backlog = 30_000
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO signature_requests (provider, external_id, state, token_hash,"
            " token_nonce, created_at, updated_at) SELECT 'firma', 'sr-' || i, 'sent',"
            " md5(i::text), 'n', 0, 0 FROM generate_series(1, %s::int) i",
            [backlog],
        )
        conn.execute("ANALYZE")
        # A big due backlog to endpoint 1 (one delivery per request), a few for endpoint 2
        # and the provider lane.
        conn.execute(
            "INSERT INTO outbox (request_id, lane, action_key, operation, payload, status,"
            " due_at, attempts, created_at, updated_at) SELECT r.id, 'endpoint:1',"
            " 'd' || r.id, 'signback.deliver', '{}', 'pending', %s - 100 + random(), 0, 0, 0"
            " FROM signature_requests r",
            [NOW],
        )
        for lane in ("endpoint:2", "provider"):
            conn.execute(
                "INSERT INTO outbox (request_id, lane, action_key, operation, payload, status,"
                " due_at, attempts, created_at, updated_at) SELECT r.id, %s, %s || r.id,"
                " 'signback.deliver', '{}', 'pending', %s - 50, 0, 0, 0"
                " FROM signature_requests r WHERE r.id <= 20",
                [lane, lane, NOW],
            )
        works = {}
        for lane, limit in (("endpoint:2", 16), ("provider", 16), ("endpoint:1", 64)):
            work, claimed = lane_claim_work(conn, postgres_url, lane, limit)
            assert claimed == limit, lane
            works[lane] = work
    print(f"lane claim work with a {backlog} backlog in endpoint:1: {works}")
    # Each claim walks its own lane in claim order and stops at its limit: a few rows per
    # claimed action, never the other lane's backlog.
    for lane, work in works.items():
        assert work < 20 * 64, (lane, work)
