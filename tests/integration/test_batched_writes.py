"""Held writes that many callers of one transaction make, one row each (``BatchedWrite``):
the pipeline's actions, downstream events and settlements. On PostgreSQL the rows of one
write go as one statement (an independent write's even with other writes held between
them), each caller still learns whether its row was new, and ids follow the order the rows
were held in; a transaction that sends nothing before its commit needs no BEGIN or COMMIT
(the pipeline's implicit transaction), and is still all or nothing. Both databases where
the answer is the same; statement counts on PostgreSQL only.
"""

from __future__ import annotations

from typing import Any

import pytest

from receiver.model import Action, RequestState
from receiver.outbox.downstream import events as event_store
from receiver.store import inbox, outbox
from receiver.store import requests as request_store
from receiver.store.db import open_database
from receiver.store.db.base import Database, Later, Transaction
from receiver.store.db.postgres import PostgresDatabase
from receiver.store.statuses import InboxStatus
from tests.integration.test_outbox_claim import NOW, add_request

pytestmark = pytest.mark.anyio


def action(key: str) -> Action:
    return Action(operation="patch", key=key, payload={"key": key})


def event_row(dedupe_key: str, request_id: int) -> dict[str, Any]:
    return event_store.row_params(
        public_id=f"evt_{dedupe_key}",
        event_type="signature_request.signed",
        request_id=request_id,
        provider="okdokument",
        timestamp=NOW,
        payload='{"type":"signature_request.signed"}',
        raw={"state": "signed", "note": "a NUL\x00 inside"},
        dedupe_key=dedupe_key,
        source_inbox_id=None,
        now=NOW,
    )


async def interleaved(
    tx: Transaction, requests: list[int]
) -> tuple[list[Later], list[Later], list[Later]]:
    """Per request, as the pipeline holds an event's writes: a state change (a plain held
    write), its actions, its downstream event. The second request's actions repeat one
    key (a rule firing twice in one chunk), and the third request's event repeats the
    first's dedupe key."""
    states, actions, events = [], [], []
    for i, request in enumerate(requests):
        states.append(
            await tx.execute_later(
                "UPDATE signature_requests SET state = 'signed' WHERE id = :id", {"id": request}
            )
        )
        keys = ["patch:a", "patch:a"] if i == 1 else [f"patch:{i}"]
        actions += await outbox.insert_actions_later(
            tx, request, [action(k) for k in keys], now=NOW, source_inbox_id=None
        )
        dedupe = "evt-0" if i == 2 else f"evt-{i}"
        events.append(await event_store.insert_later(tx, event_row(dedupe, request)))
    return states, actions, events


async def test_independent_writes_go_as_one_statement_each_row_answered(
    database_url: str,
) -> None:
    db = open_database(database_url)
    await db.connect()
    try:
        requests = [await add_request(db, f"batched-{i}") for i in range(4)]
        sent_before = statements(db)
        async with db.transaction() as tx:
            states, actions, events = await interleaved(tx, requests)
            await tx.flush()
            assert [later.rowcount for later in states] == [1, 1, 1, 1]
            # Request 1's second "patch:a" is the first one again: not new.
            assert [later.rowcount for later in actions] == [1, 1, 0, 1, 1]
            # Request 2's event repeats evt-0: not new.
            assert [later.rowcount for later in events] == [1, 1, 0, 1]
        if isinstance(db, PostgresDatabase):
            # BEGIN, four state changes, one statement for the five actions and one for
            # the four events; then COMMIT (nothing was held by then). Row by row they
            # had been 15 statements.
            assert statements(db) - sent_before == 1 + 4 + 1 + 1 + 1
        stored = await db.fetch_all(
            "SELECT request_id, action_key FROM outbox WHERE action_key LIKE 'patch:%' ORDER BY id"
        )
        # In the order they were held, whatever else was held between them.
        assert [(r["request_id"], r["action_key"]) for r in stored] == [
            (requests[0], "patch:0"),
            (requests[1], "patch:a"),
            (requests[2], "patch:2"),
            (requests[3], "patch:3"),
        ]
        kept = await db.fetch_all("SELECT dedupe_key, raw FROM events ORDER BY id")
        assert [r["dedupe_key"] for r in kept] == ["evt-0", "evt-1", "evt-3"]
        assert all("inside" in str(r["raw"]) for r in kept)
    finally:
        await db.close()


async def test_a_transaction_that_only_writes_is_one_exchange_and_still_atomic(
    database_url: str,
) -> None:
    db = open_database(database_url)
    await db.connect()
    try:
        request = await add_request(db, "implicit")
        sent_before = statements(db)
        async with db.transaction() as tx:
            added = await outbox.insert_actions_later(
                tx, request, [action("one"), action("two")], now=NOW, source_inbox_id=None
            )
            tx.notify_on_commit("outbox")
        assert [later.rowcount for later in added] == [1, 1]
        if isinstance(db, PostgresDatabase):
            assert statements(db) - sent_before == 2  # the actions and NOTIFY: no BEGIN, COMMIT

        async def fails_after_a_write() -> None:
            async with db.transaction() as tx:
                await outbox.insert_actions_later(
                    tx, request, [action("three")], now=NOW, source_inbox_id=None
                )
                await tx.execute_later(
                    "INSERT INTO kv (key, value, updated_at) VALUES ('k', 'v', 0)"
                )
                await tx.execute_later(
                    "INSERT INTO kv (key, value, updated_at) VALUES ('k', 'again', 0)"
                )

        with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
            await fails_after_a_write()
        keys = await db.fetch_all(
            "SELECT action_key FROM outbox WHERE request_id = :r", {"r": request}
        )
        assert sorted(r["action_key"] for r in keys) == ["one", "two"]  # "three" went back
        assert await db.fetch_one("SELECT key FROM kv WHERE key = 'k'") is None
        async with db.transaction() as tx:  # the connection went back to the pool clean
            assert await tx.fetch_one("SELECT 1 AS one") == {"one": 1}
    finally:
        await db.close()


async def test_settlements_of_many_rows_are_one_statement(database_url: str) -> None:
    db = open_database(database_url)
    await db.connect()
    try:
        request = await add_request(db, "settled")
        ids = []
        for i in range(5):
            async with db.transaction() as tx:
                await tx.execute(
                    "INSERT INTO inbox (provider, channel, dedupe_key, received_at, body,"
                    " headers, query, status, attempts) VALUES ('okdokument', 'sendinfo',"
                    " :key, :now, :body, '{}', '', 'processing', 1)",
                    {"key": f"settle-{i}", "now": NOW, "body": b"{}"},
                )
            row = await db.fetch_one("SELECT MAX(id) AS id FROM inbox")
            assert row is not None
            ids.append(int(row["id"]))
        sent_before = statements(db)
        async with db.transaction() as tx:
            await inbox.finish_many(
                tx,
                [
                    inbox.finish_params(
                        inbox_id,
                        status=InboxStatus.PROCESSED if i else InboxStatus.UNMATCHED,
                        now=NOW + i,
                        request_id=request if i else None,
                        external_id=f"ext-{i}",
                        kind="signed",
                        occurred_at=NOW - i,
                        state_before="sent",
                        state_after="signed",
                        note=f"note {i}\x00",  # made storable, as every settlement's text
                    )
                    for i, inbox_id in enumerate(ids)
                ],
            )
        if isinstance(db, PostgresDatabase):
            assert statements(db) - sent_before == 1  # no BEGIN, no COMMIT: one statement
        rows = await db.fetch_all(
            "SELECT id, status, processed_at, request_id, external_id, kind, occurred_at,"
            " state_before, state_after, note, lease_expires_at FROM inbox"
            " WHERE dedupe_key LIKE 'settle-%' ORDER BY id"
        )
        assert [r["status"] for r in rows] == ["unmatched"] + ["processed"] * 4
        assert [r["request_id"] for r in rows] == [None] + [request] * 4
        assert [r["processed_at"] for r in rows] == [NOW + i for i in range(5)]
        assert [r["occurred_at"] for r in rows] == [NOW - i for i in range(5)]
        assert [r["external_id"] for r in rows] == [f"ext-{i}" for i in range(5)]
        assert {(r["kind"], r["state_before"], r["state_after"]) for r in rows} == {
            ("signed", "sent", "signed")
        }
        assert all(r["note"].startswith("note ") and "\x00" not in r["note"] for r in rows)
        assert all(r["lease_expires_at"] is None for r in rows)
    finally:
        await db.close()


async def test_state_changes_in_one_statement_end_as_one_after_the_other(
    database_url: str,
) -> None:
    db = open_database(database_url)
    await db.connect()
    try:
        twice, ended, once = [await add_request(db, f"states-{i}") for i in range(3)]
        await db.execute(
            "UPDATE signature_requests SET provider_status = 'original', next_reconcile_at = 5"
        )
        changes: list[tuple[int, RequestState, str | None, float]] = [
            (twice, RequestState.VIEWED, "seen", NOW + 1),
            (ended, RequestState.COMPLETED, None, NOW + 2),  # terminal: no more reads
            (twice, RequestState.PARTIALLY_SIGNED, None, NOW + 3),  # keeps "seen"
            (ended, RequestState.COMPLETED, "done", NOW + 4),
            (once, RequestState.VIEWED, None, NOW + 5),  # keeps "original"
        ]
        sent_before = statements(db)
        async with db.transaction() as tx:
            for i, (request, state, provider_status, at) in enumerate(changes):
                await request_store.set_state(
                    tx, request, state=state, provider_status=provider_status, now=at
                )
                # A held write of another kind between them, as the pipeline makes.
                await outbox.insert_actions_later(
                    tx, request, [action(f"between-{i}")], now=NOW, source_inbox_id=None
                )
        if isinstance(db, PostgresDatabase):
            assert statements(db) - sent_before == 2  # the states and the actions
        rows = await db.fetch_all(
            "SELECT id, state, provider_status, updated_at, next_reconcile_at"
            " FROM signature_requests WHERE external_id LIKE 'states-%' ORDER BY id"
        )
        assert [
            (r["state"], r["provider_status"], r["updated_at"], r["next_reconcile_at"])
            for r in rows
        ] == [
            ("partially_signed", "seen", NOW + 3, 5),
            ("completed", "done", NOW + 4, None),
            ("viewed", "original", NOW + 5, 5),
        ]
    finally:
        await db.close()


def statements(db: Database) -> int:
    return db.statements if isinstance(db, PostgresDatabase) else 0
