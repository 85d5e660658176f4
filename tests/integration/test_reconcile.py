"""The reconciler on both databases: the schedule's bookkeeping, what happens after a
downtime, gap detection, and the two OKdokument cases that ask for a read soon (Document
info lagging behind a sendInfo claim, and ``errorsendinfo``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from handlers.okdokument.fake import FakeOkdokument
from receiver.app import build_context, prepare_database
from receiver.cli import main
from receiver.context import AppContext
from receiver.model import RequestState
from receiver.pipeline.registration import Registration, register
from receiver.reconcile.manual import reconcile_now
from receiver.reconcile.scheduler import HEARTBEAT_KEY, Reconciler
from receiver.settings import Settings
from receiver.store import kv, requests
from tests.conftest import ADMIN_TOKEN, SECRET_KEY
from tests.downstream import DownstreamReceiver, add_endpoint, running_downstream
from tests.harness import (
    Receiver,
    running_firma,
    running_okdokument,
    running_receiver,
    wait_until,
)

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def context(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[tuple[AppContext, Clock]]:
    clock = Clock(T0)
    ctx = build_context(
        make_settings(reconcile_enabled=True, reconcile_downtime_seconds=600.0), clock=clock
    )
    await prepare_database(ctx, serving=False)
    await ctx.start_providers()
    try:
        yield ctx, clock
    finally:
        await ctx.close()
        await ctx.db.close()


async def schedule_of(ctx: AppContext, request_id: int) -> tuple[float | None, float | None]:
    row = await ctx.db.fetch_one(
        "SELECT next_reconcile_at, reconcile_interval FROM signature_requests WHERE id = :id",
        {"id": request_id},
    )
    assert row is not None
    at, step = row["next_reconcile_at"], row["reconcile_interval"]
    return (None if at is None else float(at), None if step is None else float(step))


async def reads_queued(ctx: AppContext) -> list[tuple[int, str, str]]:
    rows = await ctx.db.fetch_all(
        "SELECT request_id, operation, action_key FROM outbox WHERE operation LIKE '%.reconcile'"
        " ORDER BY id"
    )
    return [(int(r["request_id"]), str(r["operation"]), str(r["action_key"])) for r in rows]


async def settle_provider_calls(ctx: AppContext) -> None:
    await ctx.db.execute("UPDATE outbox SET status = 'done' WHERE lane = 'provider'")


@pytest.mark.anyio
async def test_the_schedule_queues_one_read_per_due_request_and_moves_on(
    context: tuple[AppContext, Clock],
) -> None:
    ctx, clock = context
    firma = await register(ctx, Registration("firma", "sr-1"))
    okd = await register(ctx, Registration("okdokument", "sr-2", document_id="doc-2"))
    assert await schedule_of(ctx, firma.request.id) == (T0 + 120.0, 120.0)
    reconciler = Reconciler(ctx)

    assert (await reconciler.look()).queued == 0  # not due yet
    await settle_provider_calls(ctx)  # the registration's PATCH, as a worker would have
    clock.now = T0 + 121.0
    look = await reconciler.look()
    assert look.queued == 2
    assert await reads_queued(ctx) == [
        (firma.request.id, "firma.reconcile", f"reconcile:{T0 + 120.0!r}"),
        (okd.request.id, "okdokument.reconcile", f"reconcile:{T0 + 120.0!r}"),
    ]
    assert await schedule_of(ctx, firma.request.id) == (T0 + 121.0 + 240.0, 240.0)

    # Due again while its read still waits in the outbox: no second read, a step later.
    clock.now = T0 + 400.0
    look = await reconciler.look()
    assert (look.queued, look.moved) == (0, 2)
    assert len(await reads_queued(ctx)) == 2

    # A request that ended is read no more.
    async with ctx.db.transaction() as tx:
        await requests.set_state(
            tx, okd.request.id, state=RequestState.COMPLETED, provider_status=None, now=clock.now
        )
    assert await schedule_of(ctx, okd.request.id) == (None, 240.0)


@pytest.mark.anyio
async def test_a_request_with_a_provider_call_waiting_is_read_after_it(
    context: tuple[AppContext, Clock],
) -> None:
    """What the waiting call learns may settle the request: no read queued behind it, its
    next read a step later; and reads wait in a lane of their own."""
    ctx, clock = context
    okd = await register(ctx, Registration("okdokument", "sr-2", document_id="doc-2"))
    clock.now = T0 + 121.0  # the registration's PATCH still waits
    look = await Reconciler(ctx).look()
    assert (look.queued, look.moved) == (0, 1)
    assert await schedule_of(ctx, okd.request.id) == (T0 + 121.0 + 120.0, 120.0)

    await settle_provider_calls(ctx)
    clock.now = T0 + 242.0
    assert (await Reconciler(ctx).look()).queued == 1
    lanes = await ctx.db.fetch_all(
        "SELECT lane FROM outbox WHERE operation = 'okdokument.reconcile'"
    )
    assert [row["lane"] for row in lanes] == ["reconcile"]


@pytest.mark.anyio
async def test_after_a_downtime_every_open_request_is_due_at_once(
    context: tuple[AppContext, Clock],
) -> None:
    ctx, clock = context
    registered = [await register(ctx, Registration("firma", f"sr-{i}")) for i in range(3)]
    async with ctx.db.transaction() as tx:
        await kv.put(tx, HEARTBEAT_KEY, repr(T0 - 3600.0), now=T0 - 3600.0)
    clock.now = T0 + 5.0
    assert await Reconciler(ctx).after_downtime() == 3
    for one in registered:
        assert (await schedule_of(ctx, one.request.id))[0] == T0 + 5.0
    assert (await Reconciler(ctx).look()).queued == 3

    # A short pause (a restart) is no downtime: nothing is made due.
    clock.now = T0 + 60.0
    assert await Reconciler(ctx).after_downtime() == 0


@pytest.mark.anyio
async def test_a_provider_without_a_client_is_not_read(
    context: tuple[AppContext, Clock],
) -> None:
    ctx, clock = context
    await register(ctx, Registration("firma", "sr-1"))
    await register(ctx, Registration("okdokument", "sr-2", document_id="doc-2"))
    await ctx.clients.pop("okdokument").aclose()  # as without SIGNBACK_OKDOKUMENT_API_KEY
    clock.now = T0 + 121.0
    assert (await Reconciler(ctx).look()).queued == 1
    assert [operation for _, operation, _ in await reads_queued(ctx)] == ["firma.reconcile"]


@pytest.mark.anyio
async def test_without_a_heartbeat_nothing_is_made_due(
    context: tuple[AppContext, Clock],
) -> None:
    ctx, _ = context
    await register(ctx, Registration("firma", "sr-1"))
    assert await Reconciler(ctx).after_downtime() == 0
    assert await kv.get(ctx.db, HEARTBEAT_KEY) == repr(T0)


# --- over HTTP ---------------------------------------------------------------------------


@pytest.fixture
def downstream() -> Iterator[tuple[str, DownstreamReceiver]]:
    with running_downstream() as pair:
        yield pair


def stale_list(signback: Receiver, **params: str) -> httpx.Response:
    with signback.admin() as admin:
        return admin.get("/api/requests", params={"stale": "true", **params})


def test_a_silent_request_is_listed_counted_and_reported_once(
    make_settings: Callable[..., Settings], downstream: tuple[str, DownstreamReceiver]
) -> None:
    url, receiver = downstream
    with running_receiver(
        make_settings,
        reconcile_enabled=True,
        reconcile_first_delay_seconds=3600.0,  # no reads: only the silence counts here
        reconcile_tick_seconds=0.05,
        # Long enough that the first listing comes before it even on a loaded machine.
        stale_after="registered=3",
        endpoint_allow_private=True,
    ) as signback:
        add_endpoint(signback.url, receiver, url, "/ops")
        made = signback.register(provider="firma", signing_request_id="sr-silent")
        assert stale_list(signback).json()["items"] == []
        listed = wait_until(
            lambda: stale_list(signback).json()["items"], timeout=20, what="a stale request"
        )
        assert [item["id"] for item in listed] == [made["id"]]
        assert stale_list(signback, provider="okdokument").json()["items"] == []
        refused = stale_list(signback, state="sent")
        assert refused.status_code == 422
        with signback.admin() as admin:
            metrics = admin.get("/metrics").text
        assert 'signback_stale_requests{provider="firma",state="registered"} 1.0' in metrics

        wait_until(lambda: receiver.events("/ops"), timeout=10, what="the stale event")
        time.sleep(0.5)  # many more looks: still one event
        events = receiver.events("/ops")
        assert [e["type"] for e in events] == ["signature_request.stale"]
        assert events[0]["data"]["stale"]["state"] == "registered"
        assert events[0]["data"]["request"]["id"] == made["id"]
        assert receiver.problems() == []


def test_document_info_lagging_behind_a_claim_brings_a_read_soon(
    make_settings: Callable[..., Settings],
) -> None:
    with (
        running_okdokument(info_lag_seconds=1.0) as (okd_url, okd),
        running_receiver(
            make_settings,
            okdokument_base_url=okd_url,
            reconcile_enabled=True,
            reconcile_first_delay_seconds=3600.0,  # only the claim brings a read
            reconcile_soon_seconds=0.3,
            reconcile_tick_seconds=0.05,
        ) as signback,
    ):
        seed(okd, "sr-lag", "doc-lag")
        made = signback.register(
            provider="okdokument", signatureRequestId="sr-lag", documentId="doc-lag"
        )
        signback.wait_for_actions(made["id"], settled=1)  # the sendInfo URL is in place
        with httpx.Client(base_url=f"{okd_url}/_fake") as control:
            signed = control.post("/sign/sr-lag", json={})
        assert signed.json()["sendinfo_status"] == 200  # the claim came; Document info lags
        shown = signback.wait_for_state(made["id"], "completed", timeout=15)
        confirm = next(
            a for a in shown["actions"] if a["operation"] == "okdokument.confirm_document_state"
        )
        assert confirm["status"] == "skipped"
        assert "reconcile read" in confirm["last_error"]
        moved = [e for e in shown["timeline"] if e["state_after"] == "completed" and e["note"]]
        finals = [e for e in moved if "→ completed" in e["note"]]
        assert [(e["channel"], e["source"]) for e in finals] == [("reconcile", "reconcile")]


def seed(fake: FakeOkdokument, sr_id: str, doc_id: str, state: str = "tosign") -> None:
    doc = fake.new_document("contract.pdf", b"%PDF-1.4", document_id=doc_id)
    fake.new_round(doc, signature_request_id=sr_id, send_info_url=None, result_url=None)
    fake.set_state(doc, state)


def test_errorsendinfo_points_okdokument_at_the_current_sendinfo_url(
    make_settings: Callable[..., Settings],
) -> None:
    with (
        running_okdokument() as (okd_url, okd),
        running_receiver(
            make_settings,
            okdokument_base_url=okd_url,
            reconcile_enabled=True,
            reconcile_first_delay_seconds=0.2,
            reconcile_tick_seconds=0.05,
        ) as signback,
    ):
        seed(okd, "sr-err", "doc-err", state="errorsendinfo")
        made = signback.register(
            provider="okdokument", signatureRequestId="sr-err", documentId="doc-err"
        )

        def repointed() -> list[dict[str, Any]]:
            actions: list[dict[str, Any]] = signback.show(made["id"])["actions"]
            return [
                a for a in actions if a["key"] == "repoint-errorsendinfo" and a["status"] == "done"
            ]

        wait_until(repointed, timeout=15, what="the re-point after errorsendinfo")
        shown = signback.show(made["id"])
        found = [e for e in shown["timeline"] if e["channel"] == "reconcile"]
        assert [(e["kind"], e["source"]) for e in found] == [("delivery.failed", "reconcile")]
        patches = [c for c in okd.calls if c.method == "PATCH"]
        assert patches[-1].body["sendInfoURL"] == made["callback_urls"]["sendinfo_url"]
        assert (
            okd.signature_requests["sr-err"].send_info_url == made["callback_urls"]["sendinfo_url"]
        )


def cli(database_url: str, *args: str, **env: str) -> Result:
    variables = {
        "SIGNBACK_DATABASE_URL": database_url,
        "SIGNBACK_ADMIN_TOKEN": ADMIN_TOKEN,
        "SIGNBACK_SECRET_KEY": SECRET_KEY,
        "SIGNBACK_LOG_LEVEL": "WARNING",
        **env,
    }
    return CliRunner().invoke(main, list(args), env=variables, catch_exceptions=False)


def test_the_cli_lists_stale_requests(database_url: str) -> None:
    added = cli(database_url, "requests", "add", "--provider", "firma", "--id", "sr-quiet")
    assert added.exit_code == 0, added.output
    request_id = json.loads(added.stdout)["id"]
    fresh = cli(database_url, "requests", "list", "--stale")
    assert fresh.exit_code == 0, fresh.output
    assert json.loads(fresh.stdout) == []
    time.sleep(0.3)
    quiet = cli(database_url, "requests", "list", "--stale", SIGNBACK_STALE_AFTER="registered=0.2")
    assert [r["id"] for r in json.loads(quiet.stdout)] == [request_id]
    other = cli(
        database_url,
        "requests",
        "list",
        "--stale",
        "--provider",
        "okdokument",
        SIGNBACK_STALE_AFTER="registered=0.2",
    )
    assert json.loads(other.stdout) == []
    refused = cli(database_url, "requests", "list", "--stale", "--state", "sent")
    assert refused.exit_code == 2
    assert "--stale lists open requests" in refused.output


@pytest.mark.anyio
async def test_the_same_state_read_twice_is_stored_once(
    make_settings: Callable[..., Settings],
) -> None:
    from handlers.firma.fake import API_BASE_PATH, DEFAULT_API_KEY

    with running_firma() as (firma_url, firma):
        async with httpx.AsyncClient(base_url=f"{firma_url}/_fake") as control:
            created = await control.post(
                "/signing-requests",
                json={"recipients": [{"first_name": "A", "email": "a@example.com"}]},
            )
        sr_id = created.json()["id"]
        ctx = build_context(
            make_settings(
                firma_base_url=f"{firma_url}{API_BASE_PATH}", firma_api_key=DEFAULT_API_KEY
            )
        )
        await prepare_database(ctx, serving=False)
        await ctx.start_providers()
        try:
            made = await register(ctx, Registration("firma", sr_id))
            first = await reconcile_now(ctx, request_id=made.request.id)
            second = await reconcile_now(ctx, request_id=made.request.id)
            dry = await reconcile_now(ctx, request_id=made.request.id, dry_run=True)
            rows = await ctx.db.fetch_all(
                "SELECT dedupe_key, state_after FROM inbox WHERE channel = 'reconcile'"
            )
        finally:
            await ctx.close()
            await ctx.db.close()
    assert [(r.outcome, r.found, r.kind, r.state_after) for r in first] == [
        ("found", "not_sent", "request.created", "draft")
    ]
    assert [(r.outcome, r.state_after) for r in second] == [("duplicate", "draft")]
    assert [(r.outcome, r.state_after) for r in dry] == [("found", "draft")]
    assert [(r["dedupe_key"], r["state_after"]) for r in rows] == [
        (f"reconcile:{made.request.id}:not_sent", "draft")
    ]
    reads = [c for c in firma.calls if c["method"] == "GET"]
    assert len(reads) == 3


@pytest.mark.anyio
async def test_workers_looking_at_once_queue_each_read_once(
    context: tuple[AppContext, Clock], make_settings: Callable[..., Settings]
) -> None:
    ctx, clock = context
    made = [await register(ctx, Registration("firma", f"sr-{i}")) for i in range(40)]
    other = build_context(make_settings(reconcile_enabled=True), clock=clock)
    await other.db.connect()
    await other.start_providers()
    try:
        clock.now = T0 + 121.0
        looks = await asyncio.gather(*(Reconciler(c).look() for c in (ctx, other, ctx, other)))
    finally:
        await other.close()
        await other.db.close()
    queued = await reads_queued(ctx)
    assert sum(look.queued for look in looks) == len(made)
    assert sorted(request_id for request_id, _, _ in queued) == sorted(m.request.id for m in made)
    for one in made:
        assert await schedule_of(ctx, one.request.id) == (T0 + 121.0 + 240.0, 240.0)


@pytest.mark.anyio
async def test_a_read_respects_the_documents_signing_rounds(
    make_settings: Callable[..., Settings],
) -> None:
    """Document info speaks of a document's current round: an earlier round's request is
    not read once a later round exists, and a later round's request is not moved by an
    answer no later than the version an earlier round's outcome was confirmed at."""
    from handlers.okdokument.fake import DEFAULT_API_KEY

    # Document info's "modification" has whole seconds: a clock that stands still keeps the
    # new round at round 1's version, as when both fall in the same second (and lets no test
    # run decide it by crossing a second).
    with running_okdokument(clock=Clock(T0)) as (okd_url, okd):
        seed(okd, "sr-round-1", "doc-rounds", state="signed")
        ctx = build_context(
            make_settings(okdokument_base_url=okd_url, okdokument_api_key=DEFAULT_API_KEY)
        )
        await prepare_database(ctx, serving=False)
        await ctx.start_providers()
        try:
            first = await register(
                ctx, Registration("okdokument", "sr-round-1", document_id="doc-rounds")
            )
            # Round 1's outcome was confirmed at the document's current version.
            version = okd.metadata(okd.documents["doc-rounds"])["modification"]
            await requests.set_document_version(ctx.db, first.request.id, version)
            okd.new_round(
                okd.documents["doc-rounds"],
                signature_request_id="sr-round-2",
                send_info_url=None,
                result_url=None,
            )
            second = await register(
                ctx, Registration("okdokument", "sr-round-2", document_id="doc-rounds")
            )
            # Document info still carries round 1's modification.
            earlier = await reconcile_now(ctx, request_id=first.request.id)
            later = await reconcile_now(ctx, request_id=second.request.id)
            rows = await ctx.db.fetch_all("SELECT id FROM inbox WHERE channel = 'reconcile'")
            states = [
                str(row["state"])
                for row in await ctx.db.fetch_all(
                    "SELECT state FROM signature_requests ORDER BY id"
                )
            ]
        finally:
            await ctx.close()
            await ctx.db.close()
    assert [(r.outcome, "later signing round" in r.message) for r in earlier] == [("skipped", True)]
    assert [(r.outcome, "earlier round" in r.message) for r in later] == [("skipped", True)]
    assert rows == []
    assert states == [RequestState.REGISTERED.value, RequestState.REGISTERED.value]
