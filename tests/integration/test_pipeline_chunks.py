"""The pipeline settles several inbox rows per transaction, on both databases
(receiver/pipeline/processor.py): what each event sees and leaves stays as it was with a
transaction per row, a chunk costs PostgreSQL a few round trips per event instead of about
nine, and two workers sharing one backlog (each with its own pool, as two processes) process
every row once, in order per request, without deadlocking on the requests they lock.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from receiver.app import build_context, prepare_database
from receiver.context import AppContext
from receiver.outbox.downstream import endpoints
from receiver.pipeline.processor import (
    CHUNK,
    POSTGRES_CHUNK,
    ROWS_PER_TURN,
    SATURATED_CHUNK,
    SATURATED_ROWS_PER_TURN,
    Pipeline,
)
from receiver.pipeline.registration import Registration, register
from receiver.settings import Settings
from receiver.store import inbox, outbox
from receiver.store import requests as request_store
from receiver.store.db.postgres import PostgresDatabase
from receiver.store.statuses import ActionStatus, AttemptOutcome, InboxStatus
from tests.conftest import test_settings

pytestmark = pytest.mark.anyio

# OKdokument states in the order a request goes through them, then a late repeat.
STATES = ("tosign", "tostamp", "signed", "tosign")


@pytest.fixture
async def ctx(make_settings: Callable[..., Settings]) -> AsyncIterator[AppContext]:
    context = build_context(
        make_settings(rules_module="bench.rules", okdokument_confirm_callbacks=False)
    )
    await prepare_database(context)
    try:
        yield context
    finally:
        await context.db.close()


async def registered(ctx: AppContext, count: int) -> list[tuple[int, str]]:
    """``count`` OKdokument requests: (id, external id)."""
    made = []
    for i in range(count):
        result = await register(
            ctx, Registration(provider="okdokument", external_id=f"sr-{i}", document_id=f"d-{i}")
        )
        made.append((result.request.id, f"sr-{i}"))
    await ctx.db.execute("DELETE FROM inbox")  # the registrations' own timeline entries
    return made


async def put_events(
    ctx: AppContext, requests: list[tuple[int, str]], *, by_token: bool, seq0: int = 0
) -> int:
    """Each request's STATES, interleaved across requests, as the intake stores them: with
    the request the hook token found (``by_token``), or only the provider's id (matched
    by the pipeline, as Firma's events are)."""
    rows = []
    for n, state in enumerate(STATES):
        for request_id, external_id in requests:
            seq = seq0 + n * len(requests) + request_id
            body = (
                f'{{"state": "{state}", "signatureRequestId": "{external_id}",'
                f' "id": "d-{external_id[3:]}", "bench": {seq}}}'
            ).encode()
            rows.append(
                inbox.insert_params(
                    provider="okdokument",
                    channel="sendinfo",
                    dedupe_key=f"cb-{seq}-{request_id}-{n}",
                    received_at=ctx.clock(),
                    body=body,
                    headers={},
                    query="",
                    request_id=request_id if by_token else None,
                    external_id=external_id,
                )
            )
    async with ctx.db.transaction() as tx:
        await tx.executemany(inbox.INSERT_SQL, rows)
    return len(rows)


async def settled(ctx: AppContext) -> list[dict[str, Any]]:
    return await ctx.db.fetch_all(
        "SELECT id, request_id, status, state_before, state_after, error FROM inbox ORDER BY id"
    )


def assert_each_event_saw_the_one_before(rows: list[dict[str, Any]]) -> None:
    by_request: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        assert row["status"] == InboxStatus.PROCESSED, row
        by_request.setdefault(int(row["request_id"]), []).append(row)
    for events in by_request.values():
        assert len(events) == len(STATES)
        for before, after in itertools.pairwise(events):
            assert after["state_before"] == before["state_after"]
        assert events[-1]["state_after"] == "completed"  # the late tosign changes nothing


@pytest.mark.parametrize("by_token", [True, False], ids=["by-token", "by-provider-id"])
async def test_events_of_one_request_in_a_chunk_see_each_other(
    ctx: AppContext, by_token: bool
) -> None:
    requests = await registered(ctx, 15)  # 60 events: a chunk and a bit, 4 per request
    total = await put_events(ctx, requests, by_token=by_token)
    assert total > max(CHUNK, POSTGRES_CHUNK)

    assert await Pipeline(ctx).run_once() == total

    assert_each_event_saw_the_one_before(await settled(ctx))
    # bench.rules queues one PATCH per tostamp callback: one per request, none twice.
    actions = await ctx.db.fetch_all(
        "SELECT request_id FROM outbox WHERE action_key LIKE 'bench:%'"
    )
    assert sorted(int(a["request_id"]) for a in actions) == sorted(r for r, _ in requests)


async def most_rows_in_one_loop_step(ctx: AppContext, *, saturated: bool) -> int:
    """Run the pipeline over a backlog, the governor saying callbacks pour in (or not), and
    count the rows processed between two turns of the event loop, at most: how long the
    callbacks in flight meanwhile waited for it."""
    requests = await registered(ctx, 15)
    total = await put_events(ctx, requests, by_token=True)
    ctx.governor.saturated = lambda: saturated  # type: ignore[method-assign]
    pipeline = Pipeline(ctx)
    processed = 0
    process_in = pipeline._process_in

    async def counted(*args: Any) -> Callable[[], None]:
        nonlocal processed
        processed += 1
        return await process_in(*args)

    pipeline._process_in = counted  # type: ignore[method-assign,assignment]
    steps: list[int] = []

    async def tick() -> None:
        while True:
            steps.append(processed)
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    try:
        done = 0
        while done < total:
            done += await pipeline.run_once()
    finally:
        ticker.cancel()
    steps.append(processed)
    assert_each_event_saw_the_one_before(await settled(ctx))
    return max(b - a for a, b in itertools.pairwise(steps))


async def test_under_a_flood_the_pipeline_gives_the_loop_back_every_few_rows(
    ctx: AppContext,
) -> None:
    """A flood of callbacks (the governor saturated): SQLite chunks of SATURATED_CHUNK rows
    (a chunk is one step of the loop there), a turn every SATURATED_ROWS_PER_TURN rows on
    PostgreSQL. Otherwise a step holds a whole chunk (SQLite) or ROWS_PER_TURN rows."""
    flooded = await most_rows_in_one_loop_step(ctx, saturated=True)
    assert flooded == (SATURATED_CHUNK if ctx.db.single_writer else SATURATED_ROWS_PER_TURN)


async def test_without_a_flood_the_pipeline_takes_longer_steps(ctx: AppContext) -> None:
    calm = await most_rows_in_one_loop_step(ctx, saturated=False)
    assert calm == (CHUNK if ctx.db.single_writer else ROWS_PER_TURN)


@pytest.mark.postgres
async def test_a_chunk_costs_postgres_a_few_round_trips_per_event(
    postgres_url: str,
) -> None:
    context = build_context(
        test_settings(
            postgres_url,
            rules_module="bench.rules",
            okdokument_confirm_callbacks=False,
        )
    )
    await prepare_database(context)
    try:
        requests = await registered(context, 25)
        total = await put_events(context, requests, by_token=False)  # 100 events
        db = context.db
        assert isinstance(db, PostgresDatabase)
        before, statements_before = db.round_trips, db.statements
        assert await Pipeline(context).run_once() == total
        per_event = (db.round_trips - before) / total
        statements_per_event = (db.statements - statements_before) / total
        # The claim, then per chunk (of 50): BEGIN with the requests, the endpoints, the
        # rows' held writes (states, actions, downstream events), the settlements with
        # NOTIFY and COMMIT: 0.09 per event (0.24 with chunks of 16). Nothing per event: a
        # downstream event that goes to no endpoint (none here) is a held write too; reading
        # its id back made it 0.71. Awaited one by one it was 1.6; a transaction per row
        # about nine.
        assert per_event <= 0.12, per_event
        # Each statement in a round trip is still a send of its own (psycopg flushes after
        # every one) and a statement for the server: a chunk's state changes, actions,
        # downstream events and settlements are one statement each, not one per event (that
        # was 2.5 per event here): about nine per chunk.
        assert statements_per_event <= 0.25, statements_per_event
        assert_each_event_saw_the_one_before(await settled(context))
    finally:
        await context.db.close()


@pytest.mark.postgres
async def test_two_workers_share_a_backlog_each_row_once_in_order(
    postgres_url: str,
) -> None:
    contexts = [
        build_context(
            test_settings(
                postgres_url,
                rules_module="bench.rules",
                okdokument_confirm_callbacks=False,
            )
        )
        for _ in range(2)
    ]
    for context in contexts:
        await prepare_database(context)
    try:
        # Few requests, many events each: the two workers' chunks lock the same requests.
        requests = await registered(contexts[0], 8)
        total = 0
        for round_no in range(10):
            total += await put_events(
                contexts[0], requests, by_token=round_no % 2 == 0, seq0=round_no * 1000
            )

        async def work(context: AppContext) -> int:
            done, pipeline = 0, Pipeline(context)
            while processed := await pipeline.run_once():
                done += processed
            return done

        done = await asyncio.gather(*(work(c) for c in contexts))
        assert sum(done) == total  # each row claimed by one worker only
        rows = await settled(contexts[0])
        assert [r for r in rows if r["status"] != InboxStatus.PROCESSED] == []
        assert all(r["error"] is None for r in rows)  # no deadlock, no retry
        # One PATCH per tostamp callback (bench.rules keys it by the event): none lost,
        # none twice.
        actions = await contexts[0].db.fetch_all(
            "SELECT COUNT(*) AS n FROM outbox WHERE action_key LIKE 'bench:%'"
        )
        assert int(actions[0]["n"]) == 10 * len(requests)
    finally:
        for context in contexts:
            await context.db.close()


async def test_endpoints_are_read_once_per_transaction_and_changes_in_it_are_seen(
    ctx: AppContext,
) -> None:
    async with ctx.db.transaction() as tx:
        assert await endpoints.enabled_filters(tx) == []
        await endpoints.insert(
            tx,
            url="https://example.com/hook",
            description="",
            kinds=[],
            providers=[],
            include_raw=False,
            sealed_secret="sealed",
            now=ctx.clock(),
        )
        seen = await endpoints.enabled_filters(tx)
        assert [int(r["id"]) for r in seen] != []
        assert await endpoints.enabled_filters(tx) is seen  # read once, then reused
    async with ctx.db.transaction() as tx:
        assert len(await endpoints.enabled_filters(tx)) == 1


@pytest.mark.postgres
async def test_postgres_results_share_commits_and_a_failure_stays_its_own(
    postgres_url: str,
) -> None:
    """``in_shared_transaction`` on PostgreSQL (the dispatcher's results): what queues while
    a transaction is on its way goes in the next one together; a failing piece is undone
    alone and only its caller sees the error."""
    context = build_context(test_settings(postgres_url))
    await prepare_database(context)
    db = context.db
    assert isinstance(db, PostgresDatabase)

    def piece(key: str, *, fail: bool = False) -> Any:
        async def work(tx: Any) -> str:
            await tx.execute(
                "INSERT INTO kv (key, value, updated_at) VALUES (:key, 'x', 0)",
                {"key": key},
            )
            if fail:
                raise ValueError(f"{key} failed")
            return key

        return work

    try:
        keys = [f"k{i}" for i in range(40)]
        before = db.round_trips
        assert await asyncio.gather(*(db.in_shared_transaction(piece(k)) for k in keys)) == keys
        # A transaction each: 40 x 3 round trips (BEGIN, INSERT, COMMIT). Shared: the first
        # ones leave at once, the rest go together.
        assert db.round_trips - before <= 40 + 3 * 6

        keys = [f"f{i}" for i in range(10)]
        answers = await asyncio.gather(
            *(db.in_shared_transaction(piece(k, fail=k == "f5")) for k in keys),
            return_exceptions=True,
        )
        assert isinstance(answers[5], ValueError)
        assert [a for i, a in enumerate(answers) if i != 5] == [k for k in keys if k != "f5"]
        stored = await db.fetch_all("SELECT key FROM kv WHERE key LIKE 'f%'")
        assert sorted(str(r["key"]) for r in stored) == sorted(k for k in keys if k != "f5")
    finally:
        await db.close()


@pytest.mark.postgres
async def test_postgres_sends_held_writes_with_the_next_statement(postgres_url: str) -> None:
    """``execute_later`` on PostgreSQL: held back until a statement is awaited (then one
    round trip for all), in order; the row counts known once sent; a failing held write
    fails the transaction, which leaves nothing behind; a transaction that wrote nothing
    costs nothing."""
    context = build_context(test_settings(postgres_url))
    await prepare_database(context)
    db = context.db
    assert isinstance(db, PostgresDatabase)
    insert = "INSERT INTO kv (key, value, updated_at) VALUES (:key, :value, 0)"
    try:
        before = db.round_trips
        async with db.transaction() as tx:
            first = await tx.execute_later(insert, {"key": "h1", "value": "a"})
            again = await tx.execute_later(
                "UPDATE kv SET value = 'b' WHERE key = :key", {"key": "h1"}
            )
            for i in range(5):
                await tx.execute_later(insert, {"key": f"m{i}", "value": "m"})
            assert db.round_trips == before  # nothing sent yet
            row = await tx.fetch_one("SELECT value FROM kv WHERE key = 'h1'")
            assert row == {"value": "b"}  # sent first, in order
            assert (first.rowcount, again.rowcount) == (1, 1)
            later = await tx.execute_later(insert, {"key": "h2", "value": "c"})
            tx.notify_on_commit("outbox")
        # BEGIN, the held writes and the read; the last write, NOTIFY and COMMIT.
        assert db.round_trips - before == 2
        assert later.rowcount == 1
        assert len(await db.fetch_all("SELECT key FROM kv WHERE key LIKE 'm%'")) == 5

        before = db.round_trips
        async with db.transaction():
            pass
        assert db.round_trips == before

        async def a_duplicate_held() -> None:
            async with db.transaction() as tx:
                await tx.execute_later(insert, {"key": "h3", "value": "d"})
                await tx.execute_later(insert, {"key": "h1", "value": "dup"})

        with pytest.raises(Exception, match="duplicate key"):
            await a_duplicate_held()
        assert await db.fetch_one("SELECT key FROM kv WHERE key = 'h3'") is None
        async with db.transaction() as tx:  # the connection went back to the pool clean
            assert await tx.execute(insert, {"key": "h3", "value": "d"}) == 1
    finally:
        await db.close()


@pytest.mark.postgres
async def test_postgres_action_results_cost_one_round_trip_per_shared_transaction(
    postgres_url: str,
) -> None:
    """The dispatcher's result of an action (its attempt logged, the action settled) is
    written without waiting for either: the results sharing a transaction go with its
    COMMIT, one round trip for all; each caller learns afterwards whether it still held its
    action (a lost lease settles nothing)."""
    context = build_context(test_settings(postgres_url))
    await prepare_database(context)
    db = context.db
    assert isinstance(db, PostgresDatabase)
    now = context.clock()
    try:
        async with db.transaction() as tx:
            for i in range(30):
                await tx.execute(
                    "INSERT INTO outbox (request_id, action_key, operation, payload, status,"
                    " due_at, attempts, created_at, updated_at, claimed_by)"
                    " VALUES (NULL, :key, 'signback.test', '{}', 'in_flight', :now, 1, :now,"
                    " :now, :worker)",
                    {"key": f"r{i}", "now": now, "worker": "w:lost" if i == 7 else "w:1"},
                )
        ids = [
            int(r["id"])
            for r in await db.fetch_all(
                "SELECT id FROM outbox WHERE action_key LIKE 'r%' ORDER BY id"
            )
        ]

        def result(action_id: int) -> Any:
            async def record_in(tx: Any) -> Any:
                await outbox.record_attempt(
                    tx,
                    action_id=action_id,
                    attempt=1,
                    started_at=now,
                    duration_ms=1.0,
                    status_code=200,
                    outcome=AttemptOutcome.OK,
                    error=None,
                    response_excerpt=None,
                )
                return await outbox.settle(
                    tx,
                    action_id,
                    status=ActionStatus.DONE,
                    now=now,
                    due_at=None,
                    status_code=200,
                    error=None,
                    worker="w:1",
                )

            return record_in

        before = db.round_trips
        settled = await asyncio.gather(*(db.in_shared_transaction(result(i)) for i in ids))
        # The first two leave at once, the rest share the next ones: a few round trips in
        # all (awaited one by one, it was two per result and three per transaction).
        assert db.round_trips - before <= 6
        assert [s.rowcount for s in settled] == [0 if n == 7 else 1 for n in range(30)]
        logged = await db.fetch_one("SELECT COUNT(*) AS n FROM outbox_attempts")
        assert logged == {"n": 30}
        done = await db.fetch_one("SELECT COUNT(*) AS n FROM outbox WHERE status = 'done'")
        assert done == {"n": 29}
    finally:
        await db.close()


@pytest.mark.postgres
async def test_callbacks_are_stored_while_the_pipeline_holds_their_requests(
    postgres_url: str,
) -> None:
    """The pipeline locks a chunk's requests until it commits; the intake's batch of inbox
    rows that reference them (a foreign key check each, in the batch's own order) neither
    waits for that lock nor deadlocks with it (``{for_update}``: FOR NO KEY UPDATE)."""
    context = build_context(test_settings(postgres_url))
    await prepare_database(context)
    try:
        requests = await registered(context, 3)
        ids = {request_id for request_id, _ in requests}
        lock = context.db.render("{for_update}")
        rows = [
            inbox.insert_params(
                provider="okdokument",
                channel="sendinfo",
                dedupe_key=f"held-{request_id}",
                received_at=context.clock(),
                body=b"{}",
                headers={},
                query="",
                request_id=request_id,
                external_id=external_id,
            )
            for request_id, external_id in reversed(requests)
        ]
        async with context.db.transaction() as tx:
            locked = await request_store.get_many(tx, ids, lock=lock)
            assert set(locked) == ids
            db = context.db
            assert isinstance(db, PostgresDatabase)
            stored = await asyncio.wait_for(
                db.insert_rows(inbox.NEW_CALLBACK, rows, inbox.INBOX_CHANNEL), timeout=5
            )
            assert len(stored) == len(rows)
    finally:
        await context.db.close()
