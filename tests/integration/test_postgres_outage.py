"""PostgreSQL under stress: lost connections, an outage, and two dispatchers sharing the work.

- Every connection of the receiver is killed (``pg_terminate_backend``): the very next
  callback is acknowledged, and processed.
- The database refuses connections for a few seconds: meanwhile /readyz says not ready and
  callbacks are refused with 503 (never acknowledged, so the provider retries); afterwards
  /readyz recovers by itself and callbacks, including one acknowledged just before the
  outage, are processed.
- Two dispatchers in one process, each with its own pool, against one database and a slow
  emulator: one request's actions never overlap and go out in order; requests run in
  parallel.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from handlers.okdokument import fake as okdokument_fake
from handlers.okdokument.operations import PATCH
from receiver.app import build_context, prepare_database
from receiver.context import AppContext
from receiver.model import Action
from receiver.outbox.dispatcher import Dispatcher
from receiver.pipeline.registration import Registration, register
from receiver.settings import Settings
from receiver.store import outbox
from tests.conftest import test_settings
from tests.databases import postgres_admin_url
from tests.harness import Receiver, running_okdokument, running_receiver, wait_until
from tests.servers import running_server

pytestmark = pytest.mark.postgres


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?", 1)[0]


def terminate_backends(name: str) -> int:
    with psycopg.connect(postgres_admin_url(), autocommit=True) as admin:
        row = admin.execute(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchone()
    assert row is not None
    return int(row[0])


@contextmanager
def outage(name: str) -> Iterator[None]:
    """The database refuses new connections and every open one is cut, until the block ends."""
    with psycopg.connect(postgres_admin_url(), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            terminate_backends(name)
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


@pytest.fixture
def make_pg_settings(postgres_url: str) -> Callable[..., Settings]:
    # sendInfo trusted as it comes: these tests send it themselves, the document is not signed.
    return functools.partial(test_settings, postgres_url, okdokument_confirm_callbacks=False)


@pytest.fixture
def okd() -> Iterator[tuple[str, okdokument_fake.FakeOkdokument]]:
    with running_okdokument() as pair:
        yield pair


def seed(fake: okdokument_fake.FakeOkdokument, sr_id: str) -> None:
    doc = fake.new_document("contract.pdf", b"%PDF-1.4", document_id=f"doc-{sr_id}")
    fake.new_round(doc, signature_request_id=sr_id, send_info_url=None, result_url=None)


def patched(fake: okdokument_fake.FakeOkdokument, sr_id: str) -> list[dict[str, Any]]:
    return [
        c.body
        for c in fake.calls
        if c.method == "PATCH"
        and c.status == 200
        and isinstance(c.body, dict)
        and c.body.get("signatureRequestId") == sr_id
    ]


def sendinfo(receiver: Receiver, registered: dict[str, Any], sr_id: str) -> httpx.Response:
    body = {"state": "signed", "id": f"doc-{sr_id}", "signatureRequestId": sr_id}
    with receiver.client() as client:
        return client.post(
            str(registered["callback_urls"]["sendinfo_url"]).removeprefix(receiver.url),
            content=json.dumps(body, separators=(",", ":")),
            headers={"content-type": "application/json"},
        )


def readyz(receiver: Receiver) -> int:
    with receiver.client() as client:
        return client.get("/readyz").status_code


def register_and_attach(
    receiver: Receiver, fake: okdokument_fake.FakeOkdokument, sr_id: str
) -> dict[str, Any]:
    seed(fake, sr_id)
    registered = receiver.register(
        provider="okdokument",
        signatureRequestId=sr_id,
        documentId=f"doc-{sr_id}",
        metadata={"done_url": f"https://shop.example/{sr_id}/done"},
    )
    wait_until(lambda: patched(fake, sr_id), what=f"the attach PATCH of {sr_id}")
    return registered


def done_patch(sr_id: str) -> dict[str, str]:
    return {"signatureRequestId": sr_id, "resulturl": f"https://shop.example/{sr_id}/done"}


def test_killed_connections_are_replaced_without_a_refused_callback(
    make_pg_settings: Callable[..., Settings], okd: tuple[str, okdokument_fake.FakeOkdokument]
) -> None:
    url, fake = okd
    fake.add_failure(delay=1.0, methods=frozenset({"PATCH"}), count=1)  # a slow attach PATCH
    with running_receiver(
        make_pg_settings,
        okdokument_base_url=url,
        rules_module="tests.acceptance.rules_for_tests",
        db_pool_min=8,  # a full pool: every one of its connections dies below
        db_pool_max=8,
    ) as receiver:
        seed(fake, "sr-cut")
        registered = receiver.register(
            provider="okdokument",
            signatureRequestId="sr-cut",
            documentId="doc-sr-cut",
            metadata={"done_url": "https://shop.example/sr-cut/done"},
        )
        wait_until(
            lambda: any(c.method == "PATCH" and c.status is None for c in fake.calls),
            what="the attach PATCH in flight",
        )
        killed = terminate_backends(database_name(receiver.settings.database_url))
        assert killed >= 9  # the pool's 8 connections and the LISTEN connection
        # The answer to the PATCH that was in flight is recorded on a fresh connection:
        # done after one attempt, never sent twice.
        attach = receiver.wait_for_actions(registered["id"], settled=1, timeout=20)[0]
        assert attach["status"] == "done"
        assert [a["status_code"] for a in attach["attempt_log"]] == [200]

        killed = terminate_backends(database_name(receiver.settings.database_url))
        assert killed >= 2
        # The provider's next callback is acknowledged at once: the pool sweeps out every
        # dead connection when it finds the first, instead of failing requests meanwhile.
        began = time.monotonic()
        response = sendinfo(receiver, registered, "sr-cut")
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "accepted"}
        assert time.monotonic() - began < 2.0
        assert readyz(receiver) == 200
        receiver.wait_for_state(registered["id"], "completed", timeout=20)
        wait_until(
            lambda: done_patch("sr-cut") in patched(fake, "sr-cut"),
            timeout=20,
            what="the done-page PATCH after the reconnect",
        )
        assert patched(fake, "sr-cut") == [
            {
                "signatureRequestId": "sr-cut",
                "sendInfoURL": registered["callback_urls"]["sendinfo_url"],
                "resulturl": registered["callback_urls"]["return_url"],
            },
            done_patch("sr-cut"),
        ]


OUTAGE_SECONDS = 6.0  # longer than the pool's checkout timeout (4 s) and the lease (2 s)


def test_an_outage_is_reported_and_survived(
    make_pg_settings: Callable[..., Settings], okd: tuple[str, okdokument_fake.FakeOkdokument]
) -> None:
    url, fake = okd
    with running_receiver(
        make_pg_settings,
        okdokument_base_url=url,
        rules_module="tests.acceptance.rules_for_tests",
        lease_seconds=2.0,  # a claim whose outcome could not be recorded comes back soon
        poll_interval=1.0,  # the production default: the loops idle, as they mostly do
    ) as receiver:
        name = database_name(receiver.settings.database_url)
        before = register_and_attach(receiver, fake, "sr-before")
        after = register_and_attach(receiver, fake, "sr-after")
        assert readyz(receiver) == 200
        # A callback acknowledged just before the outage, whose PATCH is still in flight
        # (the emulator takes 2 s) when the database goes away.
        fake.add_failure(delay=2.0, methods=frozenset({"PATCH"}), count=1)
        acknowledged = sendinfo(receiver, before, "sr-before")
        assert acknowledged.json() == {"status": "accepted"}
        wait_until(
            lambda: any(c.method == "PATCH" and c.status is None for c in fake.calls),
            what="the done-page PATCH in flight",
        )

        began = time.monotonic()
        with outage(name):
            wait_until(
                lambda: readyz(receiver) == 503, timeout=15, interval=0.2, what="/readyz 503"
            )
            with receiver.client() as client:
                assert client.get("/healthz").status_code == 200  # alive, only not ready
                ready = client.get("/readyz").json()
            assert ready["status"] == "not ready"
            assert ready["problems"][0].startswith("database unreachable")
            asked = time.monotonic()
            refused = sendinfo(receiver, after, "sr-after")
            assert refused.status_code == 503, refused.text  # not acknowledged: retried later
            assert refused.headers["retry-after"]
            assert time.monotonic() - asked < 5.0  # inside Firma's 5 s, not a provider timeout
            time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - began)))
        restored = time.monotonic()

        wait_until(lambda: readyz(receiver) == 200, timeout=30, interval=0.1, what="/readyz 200")
        assert time.monotonic() - restored < 10
        retried = sendinfo(receiver, after, "sr-after")  # the provider's retry
        assert retried.status_code == 200, retried.text
        assert retried.json() == {"status": "accepted"}

        for registered, sr_id in ((before, "sr-before"), (after, "sr-after")):
            receiver.wait_for_state(registered["id"], "completed", timeout=40)
            actions = receiver.wait_for_actions(registered["id"], settled=2, timeout=40)
            assert {a["status"] for a in actions} == {"done"}
            shown = receiver.show(registered["id"])
            assert [e["channel"] for e in shown["timeline"]].count("sendinfo") == 1
            # At least once; a second PATCH only where the attempt log shows the first
            # attempt's outcome could not be recorded (its lease ran out during the outage).
            sent = patched(fake, sr_id).count(done_patch(sr_id))
            outcomes = [a["outcome"] for a in actions[-1]["attempt_log"]]
            assert 1 <= sent <= 1 + outcomes.count("interrupted"), (sent, outcomes)
            assert outcomes[-1] == "ok"


def test_the_admin_api_answers_503_at_once_during_an_outage(
    make_pg_settings: Callable[..., Settings],
) -> None:
    """It used to wait out the pool's 4 s checkout timeout and answer 500."""
    with running_receiver(make_pg_settings, okdokument_base_url="http://127.0.0.1:9") as r:
        registered = r.register(provider="okdokument", signatureRequestId="sr-admin")
        with outage(database_name(r.settings.database_url)):
            wait_until(lambda: readyz(r) == 503, timeout=15, interval=0.2, what="/readyz 503")
            with r.admin() as admin:
                for method, path in (
                    ("GET", f"/api/requests/{registered['id']}"),
                    ("GET", "/api/inbox"),
                    ("POST", "/api/outbox/1/retry"),
                ):
                    asked = time.monotonic()
                    response = admin.request(method, path)
                    took = time.monotonic() - asked
                    assert response.status_code == 503, (path, response.text)
                    assert response.headers["retry-after"] == "5"
                    assert response.json() == {"error": "the database is unavailable; please retry"}
                    # While the server refuses connections a checkout waits 0.5 s, not 4 s.
                    assert took < 3.5, (path, took)
        with r.admin() as admin:
            wait_until(
                lambda: admin.get(f"/api/requests/{registered['id']}").status_code == 200,
                timeout=15,
                what="the admin API back after the outage",
            )


# --- two dispatchers ----------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    signature_request_id: str
    resulturl: str | None
    start: float
    answered: float  # when the emulator started its answer: the caller cannot be done before


def timed(app: ASGIApp, log: list[Interval]) -> ASGIApp:
    """Record when each PATCH reached the emulator and when its answer began."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "PATCH":
            await app(scope, receive, send)
            return
        start = time.monotonic()
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        answered: list[float] = []

        async def send_timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                answered.append(time.monotonic())
            await send(message)

        await app(scope, replay, send_timed)
        parsed = json.loads(body)
        log.append(
            Interval(parsed["signatureRequestId"], parsed.get("resulturl"), start, answered[0])
        )

    return wrapped


REQUESTS = 12
STEPS = 5  # actions per request after the attach PATCH
PATCH_SECONDS = 0.1  # the emulator's delay on every PATCH


@pytest.mark.anyio
async def test_two_dispatchers_never_overlap_one_requests_actions(postgres_url: str) -> None:
    fake = okdokument_fake.FakeOkdokument()
    fake.add_failure(delay=PATCH_SECONDS, methods=frozenset({"PATCH"}))  # slow, never failing
    intervals: list[Interval] = []
    with running_server(timed(okdokument_fake.create_app(fake), intervals)) as url:
        settings = test_settings(
            postgres_url, okdokument_base_url=url, outbox_concurrency=4, poll_interval=0.2
        )
        contexts: list[AppContext] = [build_context(settings) for _ in range(2)]
        for ctx in contexts:
            await prepare_database(ctx)
            await ctx.start_providers()
        try:
            expected = await _queue_actions(contexts[0], fake)
            dispatchers = [Dispatcher(ctx) for ctx in contexts]
            stopping = asyncio.Event()
            tasks = [asyncio.create_task(d.run(stopping)) for d in dispatchers]
            busiest = [0, 0]
            together = 0
            deadline = time.monotonic() + 60
            total = REQUESTS * (STEPS + 1)
            while await _done(contexts[0]) < total:
                assert time.monotonic() < deadline, await outbox.counts(contexts[0].db)
                loads = [len(d.in_flight) for d in dispatchers]
                busiest = [max(b, n) for b, n in zip(busiest, loads, strict=True)]
                together = max(together, sum(loads))
                await asyncio.sleep(0.01)
            stopping.set()
            for ctx in contexts:
                await ctx.db.notify(outbox.OUTBOX_CHANNEL)
            await asyncio.gather(*tasks)
            rows = await contexts[0].db.fetch_all(
                "SELECT o.id, r.external_id, o.payload, o.status, o.attempts FROM outbox o"
                " JOIN signature_requests r ON r.id = o.request_id ORDER BY o.id"
            )
        finally:
            for ctx in contexts:
                await ctx.close()
                await ctx.db.close()

    assert min(busiest) >= 1, busiest  # both dispatchers sent actions …
    assert together > 4, together  # … at the same time, more than one of them could alone
    assert {(r["status"], r["attempts"]) for r in rows} == {("done", 1)}
    per_request: dict[str, list[Interval]] = {}
    for interval in intervals:
        per_request.setdefault(interval.signature_request_id, []).append(interval)
    assert sorted(per_request) == sorted(expected)
    for sr_id, calls in per_request.items():
        calls.sort(key=lambda c: c.start)
        for earlier, later in itertools.pairwise(calls):
            assert later.start > earlier.answered, (sr_id, earlier, later)
        # And in the order the actions were created (attach first: its URL is signback's).
        assert [c.resulturl for c in calls][1:] == expected[sr_id], sr_id
        assert calls[0].resulturl is not None
        assert calls[0].resulturl.startswith("http://signback.test/return/")


async def _done(ctx: AppContext) -> int:
    row = await ctx.db.fetch_one("SELECT COUNT(*) AS n FROM outbox WHERE status = 'done'")
    return 0 if row is None else int(row["n"])


async def _queue_actions(
    ctx: AppContext, fake: okdokument_fake.FakeOkdokument
) -> dict[str, list[str]]:
    """Register REQUESTS requests (each queues its attach PATCH) and STEPS more PATCHes each,
    all pending before any dispatcher runs. Returns the expected resulturls per request."""
    expected: dict[str, list[str]] = {}
    for i in range(REQUESTS):
        sr_id = f"sr-two-{i}"
        seed(fake, sr_id)
        registered = await register(
            ctx, Registration(provider="okdokument", external_id=sr_id, document_id=f"doc-{i}")
        )
        urls = [f"https://shop.example/{sr_id}/step/{k}" for k in range(STEPS)]
        async with ctx.db.transaction() as tx:
            await outbox.insert_actions(
                tx,
                registered.request.id,
                [Action(PATCH, {"resulturl": u}, key=f"step-{k}") for k, u in enumerate(urls)],
                now=ctx.clock(),
                source_inbox_id=None,
            )
        expected[sr_id] = urls
    return expected
