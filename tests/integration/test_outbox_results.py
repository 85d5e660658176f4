"""The dispatcher's results (an attempt logged and its action settled): several in one
transaction are one statement on PostgreSQL (``outbox.record_result``, a BatchedWrite), and
each still gets its own answer: whether this worker still held the action. Both databases."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from receiver.store import outbox
from receiver.store.db import open_database
from receiver.store.db.base import Database, Later, Transaction
from receiver.store.statuses import ActionStatus, AttemptOutcome
from tests.integration.test_outbox_claim import NOW, add_action, add_request

pytestmark = pytest.mark.anyio

WORKER = "test:1:x"


async def claimed(db: Database, count: int, *, by: str = WORKER) -> list[int]:
    """``count`` actions of requests of their own, claimed by ``by`` (one attempt made)."""
    ids: list[int] = []
    for _ in range(count):
        request = await add_request(db, f"r{len(ids)}-{by}")
        action = await add_action(db, request, "patch", "pending", NOW - 10)
        async with db.transaction() as tx:
            await tx.execute(
                "UPDATE outbox SET status = 'in_flight', attempts = 1, claimed_by = :by,"
                " lease_expires_at = :lease WHERE id = :id",
                {"by": by, "lease": NOW + 60, "id": action},
            )
        ids.append(action)
    return ids


async def result(
    tx: Transaction,
    action_id: int,
    status: ActionStatus,
    outcome: AttemptOutcome,
    **overrides: Any,
) -> Later:
    facts: dict[str, Any] = {
        "attempt": 1,
        "started_at": NOW,
        "duration_ms": 12.5,
        "response_excerpt": None,
        "now": NOW + 1,
        "due_at": None,
        "status_code": 200,
        "error": None,
        "worker": WORKER,
    }
    facts.update(overrides)
    return await outbox.record_result(tx, action_id, status=status, outcome=outcome, **facts)


async def test_results_in_one_transaction_each_get_their_answer(database_url: str) -> None:
    db = open_database(database_url)
    await db.connect()
    try:
        done, retried, throttled = await claimed(db, 3)
        (lost,) = await claimed(db, 1, by="test:2:y")  # another worker holds it now
        async with db.transaction() as tx:
            answers = [
                await result(tx, done, ActionStatus.DONE, AttemptOutcome.OK),
                await result(
                    tx,
                    retried,
                    ActionStatus.PENDING,
                    AttemptOutcome.RETRY,
                    status_code=503,
                    error="provider answered 503",
                    due_at=NOW + 30,
                    response_excerpt="busy\x00",  # a NUL, as a provider may send
                ),
                await result(
                    tx,
                    throttled,
                    ActionStatus.PENDING,
                    AttemptOutcome.THROTTLED,
                    status_code=429,
                    error="slow down",
                    due_at=NOW + 60,
                    uncount=True,
                ),
                await result(tx, lost, ActionStatus.DONE, AttemptOutcome.OK),
            ]
        assert [later.rowcount for later in answers] == [1, 1, 1, 0]

        rows = {
            int(r["id"]): r
            for r in await db.fetch_all(
                "SELECT id, status, due_at, attempts, claimed_by, lease_expires_at,"
                " last_status_code, last_error, updated_at FROM outbox"
            )
        }
        assert rows[done]["status"] == "done"
        assert rows[done]["claimed_by"] is None
        assert rows[done]["lease_expires_at"] is None
        assert (rows[done]["last_status_code"], rows[done]["updated_at"]) == (200, NOW + 1)
        assert rows[done]["due_at"] == NOW - 10  # kept: no new due time
        assert (rows[retried]["status"], rows[retried]["due_at"]) == ("pending", NOW + 30)
        assert (rows[retried]["last_status_code"], rows[retried]["last_error"]) == (
            503,
            "provider answered 503",
        )
        assert rows[retried]["attempts"] == 1
        assert (rows[throttled]["due_at"], rows[throttled]["attempts"]) == (NOW + 60, 0)
        assert (rows[lost]["status"], rows[lost]["claimed_by"]) == ("in_flight", "test:2:y")

        # Every attempt is logged, the one whose lease was lost too (as before batching).
        logged = {
            int(r["action_id"]): r
            for r in await db.fetch_all(
                "SELECT action_id, attempt, started_at, duration_ms, status_code, outcome,"
                " error, response_excerpt FROM outbox_attempts"
            )
        }
        assert set(logged) == {done, retried, throttled, lost}
        assert logged[done]["outcome"] == "ok"
        assert (logged[done]["started_at"], logged[done]["duration_ms"]) == (NOW, 12.5)
        assert logged[retried]["outcome"] == "retry"
        assert logged[retried]["response_excerpt"] == "busy\\x00"
        assert logged[throttled]["outcome"] == "throttled"
    finally:
        await db.close()


async def test_results_between_other_writes_keep_their_order(database_url: str) -> None:
    """A held write between two results: three statements, in that order (the second
    result sees what the write did)."""
    db = open_database(database_url)
    await db.connect()
    try:
        first, second = await claimed(db, 2)
        async with db.transaction() as tx:
            one = await result(tx, first, ActionStatus.DONE, AttemptOutcome.OK)
            # Takes the second action away from this worker before its result is written.
            await tx.execute_later(
                "UPDATE outbox SET claimed_by = 'test:2:y' WHERE id = :id", {"id": second}
            )
            two = await result(tx, second, ActionStatus.DONE, AttemptOutcome.OK)
        assert (one.rowcount, two.rowcount) == (1, 0)
    finally:
        await db.close()


async def test_a_result_that_cannot_be_stored_fails_only_its_own_caller(
    database_url: str,
) -> None:
    """Shared transactions: a batch that fails runs again piece by piece."""
    db = open_database(database_url)
    await db.connect()
    try:
        good, other = await claimed(db, 2)

        def piece(action_id: int) -> Any:
            async def work(tx: Transaction) -> Later:
                return await result(tx, action_id, ActionStatus.DONE, AttemptOutcome.OK)

            return work

        answers = await asyncio.gather(
            db.in_shared_transaction(piece(good)),
            db.in_shared_transaction(piece(10_000_000)),  # no such action: its log refused
            db.in_shared_transaction(piece(other)),
            return_exceptions=True,
        )
        assert isinstance(answers[0], Later)
        assert answers[0].rowcount == 1
        assert isinstance(answers[1], Exception)
        assert isinstance(answers[2], Later)
        assert answers[2].rowcount == 1
        statuses = await db.fetch_all("SELECT status FROM outbox ORDER BY id")
        assert [r["status"] for r in statuses] == ["done", "done"]
    finally:
        await db.close()
