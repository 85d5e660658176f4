"""The upgrade to separate sendInfo tokens (migration 0006 and the start-up that follows it),
for real: a database at revision 0005 with requests written the way the previous release
wrote them, upgraded, then served, against the OKdokument emulator, on SQLite and on
PostgreSQL.

The tokens are derived here independently of ``receiver.intake.tokens`` (the HMAC written out), so
the test pins the old token and the new one rather than whatever the code now derives.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from alembic import command

from handlers.okdokument.fake import FakeOkdokument
from receiver.app import build_context
from receiver.pipeline.hook_token_split import MOVE_KEY, split_shared_tokens
from receiver.store.db import open_database
from receiver.store.migrate import alembic_config, upgrade
from tests.conftest import SECRET_KEY, test_settings
from tests.databases import postgres_admin_url, with_database
from tests.harness import Receiver, running_okdokument, running_receiver, wait_until

ATTACH_PAYLOAD = json.dumps(
    {"resulturl": "{signback.return_url}", "sendInfoURL": "{signback.sendinfo_url}"},
    sort_keys=True,
)


def derive(label: bytes, nonce: str) -> str:
    digest = hmac.new(SECRET_KEY.encode(), label + nonce.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class OldRequest:
    """A request as the previous release registered it: one token for both URLs."""

    provider: str
    external_id: str
    state: str
    document_id: str | None = None
    return_url: str | None = None
    nonce: str = ""

    @property
    def old_token(self) -> str:  # the previous release's only token (now the return token)
        return derive(b"callback-token:", self.nonce)

    @property
    def new_token(self) -> str:  # the sendInfo token this release gives the request
        return derive(b"sendinfo-token:", self.nonce)


def old_request(provider: str, external_id: str, state: str, **fields: Any) -> OldRequest:
    return OldRequest(provider, external_id, state, nonce=uuid.uuid4().hex, **fields)


async def write_old_rows(url: str, rows: list[OldRequest], *, attach: str = "done") -> list[int]:
    """Insert requests with the SQL of the previous release's registration: the request (its
    one token's hash), the registration's timeline entry, and the attach PATCH (OKdokument
    only; ``attach`` is its status: done, or pending as if just registered)."""
    db = open_database(url)
    await db.connect()
    ids = []
    try:
        async with db.transaction() as tx:
            for old in rows:
                row = await tx.fetch_one(
                    "INSERT INTO signature_requests (provider, external_id, document_id,"
                    " reference, state, return_url, retry_url, metadata, defaults, token_hash,"
                    " token_nonce, created_at, updated_at) VALUES (:provider, :external_id,"
                    " :document_id, :reference, :state, :return_url, :retry_url, :metadata,"
                    " :defaults, :token_hash, :token_nonce, :now, :now) ON CONFLICT DO NOTHING"
                    " RETURNING id",
                    {
                        "provider": old.provider,
                        "external_id": old.external_id,
                        "document_id": old.document_id,
                        "reference": None,
                        "state": old.state,
                        "return_url": old.return_url,
                        "retry_url": None,
                        "metadata": "{}",
                        "defaults": "{}",
                        "token_hash": sha256(old.old_token),
                        "token_nonce": old.nonce,
                        "now": 1_700_000_000.0,
                    },
                )
                assert row is not None
                request_id = int(row["id"])
                ids.append(request_id)
                await tx.execute(
                    "INSERT INTO inbox (provider, channel, dedupe_key, received_at, body,"
                    " headers, query, request_id, external_id, status, attempts, kind,"
                    " provider_type, event_id, occurred_at, state_after, note, processed_at)"
                    " VALUES (:provider, 'signback', :key, 1700000000, :body, '{}', '',"
                    " :request_id, :external_id, 'processed', 0, 'request.registered',"
                    " 'signback.registered', :event_id, 1700000000, 'registered',"
                    " 'registered; 1 action(s) queued', 1700000000)",
                    {
                        "provider": old.provider,
                        "key": f"registered:{request_id}",
                        "body": b'{"reference":null}',
                        "request_id": request_id,
                        "external_id": old.external_id,
                        "event_id": f"registered-{request_id}",
                    },
                )
                if old.provider == "okdokument":
                    await tx.execute(
                        "INSERT INTO outbox (request_id, action_key, operation, payload, status,"
                        " due_at, attempts, created_at, updated_at) VALUES (:request_id,"
                        " 'attach', 'okdokument.patch_signature_request', :payload, :status,"
                        " 1700000000, :attempts, 1700000000, 1700000000)",
                        {
                            "request_id": request_id,
                            "payload": ATTACH_PAYLOAD,
                            "status": attach,
                            "attempts": 1 if attach == "done" else 0,
                        },
                    )
    finally:
        await db.close()
    return ids


async def read_requests(url: str) -> dict[str, dict[str, Any]]:
    db = open_database(url)
    await db.connect()
    try:
        rows = await db.fetch_all(
            "SELECT r.external_id, r.token_hash, r.sendinfo_hash, r.shared_token_retired_at,"
            " (SELECT COUNT(*) FROM outbox o WHERE o.request_id = r.id"
            " AND o.action_key = :key) AS moves FROM signature_requests r",
            {"key": MOVE_KEY},
        )
    finally:
        await db.close()
    return {str(row["external_id"]): row for row in rows}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_at_0005(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new database migrated only to revision 0005 (the previous release's schema)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'signback.db'}"
        command.upgrade(alembic_config(url), "0005")
        yield url
        return
    request.getfixturevalue("postgres_templates")  # skips (or fails under CI) without one
    admin = postgres_admin_url()
    name = f"signback_old_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(admin, name)
    try:
        command.upgrade(alembic_config(url), "0005")
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def okd() -> Iterator[tuple[str, FakeOkdokument]]:
    with running_okdokument() as pair:
        yield pair


def seed(fake: FakeOkdokument, sr_id: str, doc_id: str, state: str = "tosign") -> None:
    doc = fake.new_document("contract.pdf", b"%PDF-1.4", document_id=doc_id)
    fake.new_round(doc, signature_request_id=sr_id, send_info_url=None, result_url=None)
    fake.set_state(doc, state)


def sendinfo_patches(fake: FakeOkdokument, sr_id: str) -> list[tuple[int | None, dict[str, Any]]]:
    return [
        (c.status, c.body)
        for c in fake.calls
        if c.method == "PATCH"
        and isinstance(c.body, dict)
        and c.body.get("signatureRequestId") == sr_id
        and c.status is not None
    ]


def sendinfo(receiver: Receiver, token: str, body: dict[str, Any]) -> httpx.Response:
    with receiver.client() as client:
        return client.post(f"/hooks/okdokument/{token}", json=body)


def browser(receiver: Receiver, token: str) -> httpx.Response:
    with receiver.client() as client:
        return client.get(f"/return/{token}", params={"result": "success"})


def serve(url: str, okd_url: str, **overrides: Any) -> AbstractContextManager[Receiver]:
    return running_receiver(
        partial(test_settings, url),
        okdokument_base_url=okd_url,
        retry_base_delay=0.1,
        retry_max_delay=0.1,
        outbox_max_attempts=10_000,
        **overrides,
    )


def nothing_to_send(receiver: Receiver) -> bool:
    with receiver.admin() as admin:
        waiting: dict[str, int] = admin.get("/api/stats").json()["outbox"]
    return waiting["pending"] + waiting["in_flight"] == 0


def test_upgrade_moves_open_requests_to_their_own_sendinfo_url(
    database_at_0005: str,
    okd: tuple[str, FakeOkdokument],
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = database_at_0005
    okd_url, fake = okd
    open_one = old_request(
        "okdokument", "sr-open", "registered", document_id="doc-open", return_url="https://x.test/"
    )
    ended = old_request("okdokument", "sr-done", "completed", document_id="doc-done")
    firma = old_request("firma", "sr_firma", "sent")
    asyncio.run(write_old_rows(url, [open_one, ended, firma]))
    seed(fake, "sr-open", "doc-open")
    seed(fake, "sr-done", "doc-done", state="signed")
    upgrade(url)
    before = asyncio.run(read_requests(url))
    assert {r["sendinfo_hash"] for r in before.values()} == {None}  # the migration cannot

    # OKdokument fails the re-point PATCH until told otherwise: the window in between.
    fake.add_failure(status=503, count=1_000_000, methods=frozenset({"PATCH"}))
    with serve(url, okd_url) as receiver:
        # OKdokument holds what the previous release gave it: the shared token's URLs.
        held = fake.signature_requests["sr-open"]
        held.send_info_url = f"{receiver.url}/hooks/okdokument/{open_one.old_token}"
        held.result_url = f"{receiver.url}/return/{open_one.old_token}"

        tried = wait_until(lambda: sendinfo_patches(fake, "sr-open"), what="the re-point PATCH")
        assert tried[0] == (
            503,
            {
                "signatureRequestId": "sr-open",
                # Only the sendInfo URL: the result URL has not changed, and may point at
                # the retry page by now.
                "sendInfoURL": f"{receiver.url}/hooks/okdokument/{open_one.new_token}",
            },
        )
        after = asyncio.run(read_requests(url))
        assert after["sr-open"]["sendinfo_hash"] == sha256(open_one.new_token)
        assert after["sr-open"]["token_hash"] == sha256(open_one.old_token)  # unchanged
        assert after["sr-open"]["shared_token_retired_at"] is None
        assert after["sr-open"]["moves"] == 1
        # Ended requests and Firma's are not moved: their shared token is retired at once.
        for old in (ended, firma):
            assert after[old.external_id]["sendinfo_hash"] == sha256(old.new_token)
            assert after[old.external_id]["shared_token_retired_at"] is not None
            assert after[old.external_id]["moves"] == 0
            body = {"state": "signed", "signatureRequestId": old.external_id}
            assert sendinfo(receiver, old.old_token, body).status_code == 404
        assert not sendinfo_patches(fake, "sr-done")

        # Before OKdokument has the new URL, the old one still works (twice: not cached) …
        claim = {"state": "signed", "id": "doc-open", "signatureRequestId": "sr-open"}
        for n in range(2):
            answer = sendinfo(receiver, open_one.old_token, {**claim, "n": n})
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"status": "accepted"}
        # … and so does the new one, which OKdokument may get any moment now.
        fresh = {**claim, "n": "new"}  # not OKdokument's own bytes, which come last
        assert sendinfo(receiver, open_one.new_token, fresh).json() == {"status": "accepted"}
        shown = receiver.show(ids_of(receiver, "sr-open"))
        assert shown["callback_urls"] == {
            "sendinfo_url": f"{receiver.url}/hooks/okdokument/{open_one.new_token}",
            "return_url": f"{receiver.url}/return/{open_one.old_token}",
        }

        # OKdokument recovers: the PATCH lands, and from then on only the new token opens it.
        httpx.delete(f"{okd_url}/_fake/failures", timeout=10)
        request_id = ids_of(receiver, "sr-open")

        def moved() -> dict[str, Any] | None:
            actions = receiver.show(request_id)["actions"]
            move = next(a for a in actions if a["key"] == MOVE_KEY)
            return move if move["status"] == "done" else None

        move = wait_until(moved, what="the re-point PATCH to succeed")
        outcomes = [a["outcome"] for a in move["attempt_log"]]
        assert outcomes[-1] == "ok"
        assert set(outcomes[:-1]) == {"retry"}
        assert {a["status_code"] for a in move["attempt_log"][:-1]} == {503}
        assert held.send_info_url == f"{receiver.url}/hooks/okdokument/{open_one.new_token}"
        assert held.result_url == f"{receiver.url}/return/{open_one.old_token}"  # untouched
        refused = sendinfo(receiver, open_one.old_token, {**claim, "n": "after"})
        assert refused.status_code == 404, refused.text
        # The signer's old return link keeps working.
        assert browser(receiver, open_one.old_token).status_code == 303
        assert asyncio.run(read_requests(url))["sr-open"]["shared_token_retired_at"] is not None
        # OKdokument's own callback now goes to the new URL and completes the round.
        signed = httpx.post(f"{okd_url}/_fake/sign/sr-open", json={}, timeout=10).json()
        assert signed["sendinfo_status"] == 200
        receiver.wait_for_state(request_id, "completed")
        # The completion's own actions (the rules' PATCHes) go before the count is taken.
        wait_until(lambda: nothing_to_send(receiver), timeout=60, what="nothing left to send")
        calls = len(fake.calls)
    err = capsys.readouterr().err
    assert any("hook URL of its own" in line for line in err.splitlines())

    # A second start finds nothing left to do.
    with serve(url, okd_url) as receiver:
        assert browser(receiver, open_one.old_token).status_code == 303
        assert sendinfo(receiver, open_one.old_token, claim).status_code == 404
    assert len(fake.calls) == calls, fake.calls[calls:]
    assert "sendInfo URL of its own" not in capsys.readouterr().err
    assert asyncio.run(read_requests(url))["sr-open"]["moves"] == 1


def ids_of(receiver: Receiver, external_id: str) -> int:
    with receiver.admin() as admin:
        items = admin.get("/api/requests").json()["items"]
    return next(int(i["id"]) for i in items if i["signature_request_id"] == external_id)


def test_a_request_registered_by_a_previous_release_still_running_is_moved_too(
    database_at_0005: str, okd: tuple[str, FakeOkdokument]
) -> None:
    """A rolling deploy: a process of the previous release registers a request after this
    release's start-up (no sendInfo hash, its attach PATCH still queued). The dispatcher
    stores the hash before it hands out the new URL, and retires the shared token once
    OKdokument has it."""
    url = database_at_0005
    okd_url, fake = okd
    upgrade(url)
    late = old_request("okdokument", "sr-late", "registered", document_id="doc-late")
    seed(fake, "sr-late", "doc-late")
    with serve(url, okd_url) as receiver:
        asyncio.run(write_old_rows(url, [late], attach="pending"))
        sent = wait_until(
            lambda: [b for s, b in sendinfo_patches(fake, "sr-late") if s == 200],
            what="the attach PATCH",
        )
        assert sent[0]["sendInfoURL"] == f"{receiver.url}/hooks/okdokument/{late.new_token}"
        request_id = ids_of(receiver, "sr-late")
        wait_until(lambda: receiver.show(request_id)["actions"][0]["status"] == "done", what="done")
        claim = {"state": "signed", "id": "doc-late", "signatureRequestId": "sr-late"}
        assert sendinfo(receiver, late.new_token, claim).json() == {"status": "accepted"}
        assert sendinfo(receiver, late.old_token, claim).status_code == 404
        assert browser(receiver, late.old_token).status_code == 200
    row = asyncio.run(read_requests(url))["sr-late"]
    assert row["sendinfo_hash"] == sha256(late.new_token)
    assert row["shared_token_retired_at"] is not None


def test_processes_starting_at_once_give_each_row_one_hash_and_one_move(
    database_at_0005: str,
) -> None:
    url = database_at_0005
    # More rows than one batch, of every kind the start-up tells apart.
    rows = [
        old_request(
            *(
                ("okdokument", f"sr-{i}", "registered")
                if i % 3 == 0
                else ("okdokument", f"sr-{i}", "completed")
                if i % 3 == 1
                else ("firma", f"sr_{i}", "sent")
            ),
            document_id=f"doc-{i}",
        )
        for i in range(1_203)
    ]
    asyncio.run(write_old_rows(url, rows))
    upgrade(url)
    settings = test_settings(url)

    async def start_several() -> list[tuple[int, int]]:
        contexts = [build_context(settings) for _ in range(3)]
        for ctx in contexts:
            await ctx.db.connect()
        try:
            first = await asyncio.gather(*(split_shared_tokens(ctx) for ctx in contexts))
            again = await split_shared_tokens(contexts[0])
        finally:
            for ctx in contexts:
                await ctx.db.close()
        return [*first, again]

    *results, again = asyncio.run(start_several())
    open_rows = [r for r in rows if r.provider == "okdokument" and r.state == "registered"]
    assert sum(done for done, _ in results) == len(rows)
    assert sum(queued for _, queued in results) == len(open_rows)
    assert again == (0, 0)
    stored = asyncio.run(read_requests(url))
    for old in rows:
        row = stored[old.external_id]
        assert row["sendinfo_hash"] == sha256(old.new_token)
        moving = old in open_rows
        assert (row["shared_token_retired_at"] is None) is moving
        assert row["moves"] == (1 if moving else 0)


def test_the_migration_goes_down_and_up_again(database_at_0005: str) -> None:
    url = database_at_0005
    asyncio.run(write_old_rows(url, [old_request("okdokument", "sr-1", "registered")]))
    upgrade(url)
    command.downgrade(alembic_config(url), "0005")
    upgrade(url)
    assert asyncio.run(read_requests(url))["sr-1"]["sendinfo_hash"] is None
