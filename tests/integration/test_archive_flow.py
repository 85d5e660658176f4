"""The archive end to end over real HTTP: signback and the provider emulators under uvicorn
on loopback, SQLite and PostgreSQL. A completed request's signed PDF (and Firma's audit
trail) is downloaded by the archive action, listed with the SHA-256 of the emulator's own
bytes, and downloadable through the API, the signed link and the CLI. The emulator's 503
while generating is waited out, an expired link is replaced by a fresh one, and the read
budget is respected."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from click.testing import CliRunner
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from handlers.firma.fake import API_BASE_PATH, DEFAULT_API_KEY, FakeFirma, RateLimits
from handlers.firma.fake import create_app as create_firma_app
from receiver.app import build_context
from receiver.archive import links, retention
from receiver.cli import main as cli_main
from receiver.settings import Settings
from tests.harness import NO_KEEPALIVE, Receiver, running_firma, running_receiver, wait_until
from tests.servers import running_server

PDF = base64.b64encode(b"%PDF-1.4\n%%EOF\n").decode()


def client(base_url: str, **headers: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers=headers, timeout=10.0, limits=NO_KEEPALIVE)


class Stack:
    def __init__(self, receiver: Receiver, firma_url: str, fake: FakeFirma) -> None:
        self.receiver = receiver
        self.fake = fake
        self.admin = receiver.admin()
        self.api = client(firma_url + API_BASE_PATH, authorization=DEFAULT_API_KEY)
        self.control = client(firma_url + "/_fake")
        hook = self.api.post(
            "/webhooks",
            json={"url": receiver.url + "/hooks/firma", "events": ["signing_request.completed"]},
        )
        assert hook.status_code == 201, hook.text
        fake.secret = "firma-test-secret"

    def close(self) -> None:
        for each in (self.admin, self.api, self.control):
            each.close()

    def completed_request(self) -> tuple[int, str]:
        """A signing request created, registered, sent and signed by its one signer."""
        created = self.api.post(
            "/signing-requests",
            json={
                "name": "NDA - Acme",
                "document": PDF,
                "recipients": [{"first_name": "Alice", "email": "alice@example.com"}],
            },
        ).json()
        sr_id = str(created["id"])
        registered = self.receiver.register(provider="firma", signing_request_id=sr_id)
        assert self.api.post(f"/signing-requests/{sr_id}/send").status_code == 200
        assert self.control.post(f"/signing-requests/{sr_id}/complete").status_code == 200
        return int(registered["id"]), sr_id

    def documents(self, request_id: int, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        def probe() -> list[dict[str, Any]] | None:
            answer = self.admin.get(f"/api/requests/{request_id}/documents")
            assert answer.status_code == 200, answer.text
            items: list[dict[str, Any]] = answer.json()["items"]
            return items if len(items) >= count else None

        return wait_until(probe, timeout=timeout, what=f"{count} archived documents")

    def archive_action(self, request_id: int) -> dict[str, Any]:
        actions: list[dict[str, Any]] = self.receiver.show(request_id)["actions"]
        found = [a for a in actions if a["operation"] == "signback.archive"]
        assert len(found) == 1, actions
        return found[0]


@pytest.fixture
def stack(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[Stack]:
    with (
        running_firma() as (firma_url, fake),
        running_receiver(
            make_settings,
            firma_base_url=firma_url + API_BASE_PATH,
            firma_webhook_secrets=["firma-test-secret"],
            archive_enabled=True,
            archive_dir=str(tmp_path / "archive"),
        ) as receiver,
    ):
        built = Stack(receiver, firma_url, fake)
        try:
            yield built
        finally:
            built.close()


def test_completed_request_is_archived_with_its_checksum(stack: Stack, tmp_path: Path) -> None:
    request_id, sr_id = stack.completed_request()
    items = {d["name"]: d for d in stack.documents(request_id, 2)}
    pdf = stack.fake.final_documents[sr_id]  # the emulator's own bytes
    signed = items["signed.pdf"]
    assert signed["kind"] == "signed"
    assert signed["size"] == len(pdf)
    assert signed["sha256"] == hashlib.sha256(pdf).hexdigest()
    assert items["audit-trail.json"]["kind"] == "audit_trail"

    # Through the API (admin token), streamed, with the checksum in a header.
    answer = stack.admin.get(f"/api/requests/{request_id}/documents/signed.pdf")
    assert answer.status_code == 200
    assert answer.content == pdf
    assert answer.headers["x-checksum-sha256"] == signed["sha256"]
    assert answer.headers["content-type"] == "application/pdf"
    # Through the signed link, without any token.
    with client(stack.receiver.url) as anonymous:
        via_link = anonymous.get(signed["download_url"])
        assert via_link.status_code == 200
        assert hashlib.sha256(via_link.content).hexdigest() == signed["sha256"]
        # Tampered, or for another file: 403; the API without the token: 401.
        query = parse_qs(urlsplit(signed["download_url"]).query)
        forged = f"/archive/{request_id}/audit-trail.json?expires={query['expires'][0]}"
        assert anonymous.get(f"{forged}&sig={query['sig'][0]}").status_code == 403
        assert anonymous.get(f"/api/requests/{request_id}/documents/signed.pdf").status_code == 401
        # A genuine link past its time: 410.
        settings = stack.receiver.settings
        key = links.link_key(settings)
        old = links.link_path(key, request_id, "signed.pdf", int(time.time()) - 5)
        gone = anonymous.get(old)
        assert gone.status_code == 410
        assert "expired" in gone.json()["error"]
    # One object per document and version, named by its checksum, and nothing partial left.
    stored = sorted(p for p in (tmp_path / "archive").rglob("*") if p.is_file())
    assert [p.name for p in stored] == sorted(f"{d['sha256']}-{d['name']}" for d in items.values())
    # Counted in the metrics.
    metrics = stack.admin.get("/metrics").text
    assert 'signback_archived_files_total{kind="signed",provider="firma"} 1.0' in metrics
    total = float(signed["size"] + items["audit-trail.json"]["size"])
    assert f'signback_archived_bytes_total{{provider="firma"}} {total}' in metrics
    # The archive action is done; the audit trail is the emulator's.
    assert stack.archive_action(request_id)["status"] == "done"
    trail = stack.admin.get(f"/api/requests/{request_id}/documents/audit-trail.json").json()
    assert trail["signing_request_id"] == sr_id
    assert [e["action"] for e in trail["events"]][-1] == "completed"


def test_generation_503_is_waited_out_and_expired_links_refreshed(stack: Stack) -> None:
    # The PDF takes 1.5 s to "generate" (503 + Retry-After meanwhile), and the first link
    # Firma hands out has expired before it is used.
    setup = stack.control.post("/downloads", json={"generation_seconds": 1.5, "expire_next": 1})
    assert setup.status_code == 200
    request_id, sr_id = stack.completed_request()
    items = {d["name"]: d for d in stack.documents(request_id, 2)}
    assert (
        items["signed.pdf"]["sha256"]
        == hashlib.sha256(stack.fake.final_documents[sr_id]).hexdigest()
    )
    action = stack.archive_action(request_id)
    outcomes = [a["outcome"] for a in action["attempt_log"]]
    # The 503s were waited out as asked, not counted: the action is done on its first
    # counted attempt, with no failure on the way.
    assert "throttled" in outcomes
    assert outcomes[-1] == "ok"
    assert "retry" not in outcomes
    assert action["attempts"] == 1
    downloads = stack.control.get("/downloads").json()["downloads"]
    assert [d["status"] for d in downloads] == [400, 200]  # the expired link, then a fresh one
    calls = stack.control.get("/calls").json()["calls"]
    link_calls = [c for c in calls if c["path"].endswith(f"/{sr_id}/download")]
    assert [c["status"] for c in link_calls][-2:] == [200, 200]
    assert 503 in [c["status"] for c in link_calls]


def test_cli_lists_and_writes_a_document(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    request_id, sr_id = stack.completed_request()
    stack.documents(request_id, 2)
    settings = stack.receiver.settings
    env = {
        "SIGNBACK_DATABASE_URL": settings.database_url,
        "SIGNBACK_ADMIN_TOKEN": settings.admin_token.get_secret_value(),
        "SIGNBACK_SECRET_KEY": settings.secret_key.get_secret_value(),
        "SIGNBACK_PUBLIC_URL": settings.public_url,
        "SIGNBACK_ARCHIVE_DIR": str(tmp_path / "archive"),
        "SIGNBACK_LOG_FORMAT": "json",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # no .env here
    runner = CliRunner()
    listed = runner.invoke(cli_main, ["documents", "list", str(request_id)])
    assert listed.exit_code == 0, listed.output
    names = {d["name"]: d for d in json.loads(listed.stdout)["items"]}
    assert set(names) == {"signed.pdf", "audit-trail.json"}
    unknown = runner.invoke(cli_main, ["documents", "list", "999999"])
    assert unknown.exit_code == 2  # an unknown id is a usage problem, as in every command
    assert "no request with id 999999" in unknown.output
    target = tmp_path / "copy.pdf"
    got = runner.invoke(
        cli_main, ["documents", "get", str(request_id), "signed.pdf", "-o", str(target)]
    )
    assert got.exit_code == 0, got.output
    assert target.read_bytes() == stack.fake.final_documents[sr_id]
    missing = runner.invoke(cli_main, ["documents", "get", str(request_id), "nope.pdf"])
    assert missing.exit_code == 1
    assert "no archived file" in missing.output


def test_a_download_cut_short_records_nothing_and_is_retried(stack: Stack, tmp_path: Path) -> None:
    # The first download of the PDF breaks off after its first chunk (the connection drops
    # mid-body); the next attempt gets it whole.
    stack.control.post("/downloads", json={"padding": 100_000, "break_next": 1})
    request_id, sr_id = stack.completed_request()

    def first_attempt() -> dict[str, Any] | None:
        action = stack.archive_action(request_id)
        return action if action["attempt_log"] else None

    failed = wait_until(first_attempt, what="the archive action's first attempt")
    assert failed["attempt_log"][0]["outcome"] == "retry"
    assert "could not reach the provider" in failed["attempt_log"][0]["error"]
    items = {d["name"]: d for d in stack.documents(request_id, 2)}
    pdf = stack.fake.final_documents[sr_id]
    assert items["signed.pdf"]["sha256"] == hashlib.sha256(pdf).hexdigest()
    downloads = stack.control.get("/downloads").json()["downloads"]
    assert [d.get("broken", False) for d in downloads] == [True, False]
    # Only whole files under their final names; the broken one left nothing behind.
    files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "archive").rglob("*"))
    assert [f.name for f in files if f.suffix == ".partial"] == []
    assert sorted(f.name for f in files if f.parent.name == str(request_id)) == sorted(
        f"{d['sha256']}-{d['name']}" for d in items.values()
    )


def test_unknown_and_malformed_addresses_get_clear_answers(stack: Stack) -> None:
    request_id, _ = stack.completed_request()
    stack.documents(request_id, 2)
    for path, status in [
        ("/api/requests/999999/documents", 404),
        ("/api/requests/abc/documents", 404),
        ("/api/requests/" + "9" * 40 + "/documents", 404),
        (f"/api/requests/{request_id}/documents/nope.pdf", 404),
        ("/api/requests/999999/documents/signed.pdf", 404),
    ]:
        answer = stack.admin.get(path)
        assert answer.status_code == status, (path, answer.text)
        assert answer.json()["error"]
    with client(stack.receiver.url) as anonymous:
        for path in [
            f"/archive/{request_id}/signed.pdf",
            f"/archive/{request_id}/signed.pdf?expires=abc&sig=x",
            f"/archive/{request_id}/signed.pdf?expires=99999999999&sig=" + "0" * 64,
            "/archive/abc/signed.pdf?expires=1&sig=x",
        ]:
            answer = anonymous.get(path)
            assert answer.status_code == 403, (path, answer.text)
            assert answer.json()["error"]


def test_retention_purges_old_files_and_bodies_but_keeps_the_record(
    stack: Stack, tmp_path: Path
) -> None:
    request_id, _ = stack.completed_request()
    items = {d["name"]: d for d in stack.documents(request_id, 2)}
    before = stack.receiver.show(request_id)
    settings = stack.receiver.settings.model_copy(
        update={"archive_retention_days": 1.0, "inbox_retention_days": 1.0}
    )

    async def purge(days_later: float) -> retention.Purged:
        ctx = build_context(settings)
        ctx.clock = lambda: time.time() + days_later * 86400
        await ctx.db.connect()
        try:
            return await retention.purge_once(ctx)
        finally:
            await ctx.db.close()

    assert asyncio.run(purge(0.5)) == retention.Purged(files=0, bodies=0, partials=0)
    purged = asyncio.run(purge(2))
    assert purged.files == 2
    assert purged.bodies >= 2  # the registration's entry and the completed webhook, at least
    assert [p for p in (tmp_path / "archive").rglob("*") if p.is_file()] == []
    listed = {d["name"]: d for d in stack.documents(request_id, 2)}
    assert listed["signed.pdf"]["sha256"] == items["signed.pdf"]["sha256"]  # the record stays
    assert listed["signed.pdf"]["purged_at"]
    assert "download_url" not in listed["signed.pdf"]
    gone = stack.admin.get(f"/api/requests/{request_id}/documents/signed.pdf")
    assert gone.status_code == 410
    with client(stack.receiver.url) as anonymous:
        assert anonymous.get(items["signed.pdf"]["download_url"]).status_code == 410
    # The timeline keeps its normalized facts; only the raw bodies are gone.
    after = stack.receiver.show(request_id)
    assert after["timeline"] == before["timeline"]
    assert after["state"] == "completed"
    assert asyncio.run(purge(3)) == retention.Purged(files=0, bodies=0, partials=0)


def test_many_archives_keep_within_firma_read_limit(
    make_sqlite_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Twelve completions at once, two reads each (the download link, the audit trail),
    against an emulator that allows 20 reads a (shortened, 1 s) minute: signback's read
    budget (15 a window, shared through the database with every other Firma read) paces
    them, so Firma never answers 429, and every file is archived."""
    window = 1.0
    limits = RateLimits(read=20, window_seconds=window)
    with (
        running_firma(rate_limits=limits) as (firma_url, fake),
        running_receiver(
            make_sqlite_settings,
            app_options={"rate_window_seconds": window},
            firma_base_url=firma_url + API_BASE_PATH,
            firma_webhook_secrets=["firma-test-secret"],
            firma_reads_per_minute=15,
            archive_enabled=True,
            archive_dir=str(tmp_path / "archive"),
        ) as receiver,
    ):
        stack = Stack(receiver, firma_url, fake)
        try:
            completed = [stack.completed_request() for _ in range(12)]
            for request_id, sr_id in completed:
                items = {d["name"]: d for d in stack.documents(request_id, 2, timeout=30)}
                assert (
                    items["signed.pdf"]["sha256"]
                    == hashlib.sha256(fake.final_documents[sr_id]).hexdigest()
                )
            calls = stack.control.get("/calls").json()["calls"]
        finally:
            stack.close()
    reads = sorted(c["time"] for c in calls if c["method"] == "GET")
    assert len(reads) >= 24
    assert [c for c in calls if c["status"] == 429] == []
    busiest = max(sum(1 for t in reads if start <= t < start + window) for start in reads)
    assert busiest <= limits.read


def test_a_download_longer_than_the_lease_keeps_its_claim(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A PDF that takes about three leases to download: the claim is renewed meanwhile, so
    the action is not handed to another worker, and the file is downloaded once."""
    with (
        running_firma(download_chunk_delay=0.25, final_document_padding=200_000) as (url, fake),
        running_receiver(
            make_settings,
            firma_base_url=url + API_BASE_PATH,
            firma_webhook_secrets=["firma-test-secret"],
            firma_archive_audit_trail=False,
            lease_seconds=1.0,
            archive_enabled=True,
            archive_dir=str(tmp_path / "archive"),
        ) as receiver,
    ):
        stack = Stack(receiver, url, fake)
        try:
            request_id, sr_id = stack.completed_request()
            started = time.monotonic()
            (document,) = stack.documents(request_id, 1, timeout=30)
            took = time.monotonic() - started
            action = stack.archive_action(request_id)
            downloads = stack.control.get("/downloads").json()["downloads"]
        finally:
            stack.close()
    assert took > 2.5  # well past the one-second lease
    assert document["sha256"] == hashlib.sha256(fake.final_documents[sr_id]).hexdigest()
    assert [a["outcome"] for a in action["attempt_log"]] == ["ok"]  # never interrupted
    assert [d["status"] for d in downloads] == [200]  # downloaded once


class FirmaWithoutAuditTrail(FakeFirma):
    """An API version (or a key) without the audit trail: 404 there."""

    async def audit_trail(self, request: Request, body: Any) -> Response:
        return JSONResponse({"error": "Endpoint not found", "code": "NOT_FOUND"}, 404)


def test_evidence_the_provider_does_not_have_does_not_hold_the_pdf_back(
    make_sqlite_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    fake = FirmaWithoutAuditTrail()
    with (
        running_server(create_firma_app(fake)) as url,
        running_receiver(
            make_sqlite_settings,
            firma_base_url=url + API_BASE_PATH,
            firma_webhook_secrets=["firma-test-secret"],
            archive_enabled=True,
            archive_dir=str(tmp_path / "archive"),
        ) as receiver,
    ):
        stack = Stack(receiver, url, fake)
        try:
            request_id, sr_id = stack.completed_request()
            (document,) = stack.documents(request_id, 1)
            action = wait_until(
                lambda: (a := stack.archive_action(request_id))["status"] == "done" and a,
                what="the archive action done",
            )
        finally:
            stack.close()
    assert document["name"] == "signed.pdf"
    assert document["sha256"] == hashlib.sha256(fake.final_documents[sr_id]).hexdigest()
    excerpt = action["attempt_log"][-1]["response_excerpt"]
    assert "audit-trail.json: not available (HTTP 404" in excerpt


class FirmaWithoutDownloadEndpoint(FakeFirma):
    """An API version without ``/download``: the final PDF only through the signing
    request's ``final_document_download_url``."""

    async def download_signing_request(self, request: Request, body: Any) -> Response:
        return JSONResponse({"error": "Endpoint not found", "code": "NOT_FOUND"}, 404)


def test_the_final_document_url_serves_where_there_is_no_download_endpoint(
    make_sqlite_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    fake = FirmaWithoutDownloadEndpoint()
    fake.expire_next_links = 1  # and the first link has expired by the time it is used
    with (
        running_server(create_firma_app(fake)) as url,
        running_receiver(
            make_sqlite_settings,
            firma_base_url=url + API_BASE_PATH,
            firma_webhook_secrets=["firma-test-secret"],
            firma_archive_audit_trail=False,
            archive_enabled=True,
            archive_dir=str(tmp_path / "archive"),
        ) as receiver,
    ):
        stack = Stack(receiver, url, fake)
        try:
            request_id, sr_id = stack.completed_request()
            (document,) = stack.documents(request_id, 1)
            downloads = stack.control.get("/downloads").json()["downloads"]
        finally:
            stack.close()
    assert document["sha256"] == hashlib.sha256(fake.final_documents[sr_id]).hexdigest()
    assert [d["status"] for d in downloads] == [400, 200]


def test_requests_completed_without_the_archive_can_be_queued_later(
    make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Completed while the archive was off (or before it existed): ``signback documents
    archive`` queues the action, the running worker archives the files."""
    with (
        running_firma() as (url, fake),
        running_receiver(
            make_settings,
            firma_base_url=url + API_BASE_PATH,
            firma_webhook_secrets=["firma-test-secret"],
            archive_enabled=False,
            archive_dir=str(tmp_path / "archive"),
        ) as receiver,
    ):
        stack = Stack(receiver, url, fake)
        try:
            request_id, sr_id = stack.completed_request()
            receiver.wait_for_state(request_id, "completed")
            open_one = receiver.register(provider="firma", signing_request_id="sr-open")
            assert stack.admin.get(f"/api/requests/{request_id}/documents").json() == {"items": []}
            settings = receiver.settings
            for name, value in {
                "SIGNBACK_DATABASE_URL": settings.database_url,
                "SIGNBACK_ADMIN_TOKEN": settings.admin_token.get_secret_value(),
                "SIGNBACK_SECRET_KEY": settings.secret_key.get_secret_value(),
                "SIGNBACK_ARCHIVE_DIR": str(tmp_path / "archive"),
                "SIGNBACK_LOG_FORMAT": "json",
            }.items():
                monkeypatch.setenv(name, value)
            monkeypatch.chdir(tmp_path)
            runner = CliRunner()
            queued = runner.invoke(cli_main, ["documents", "archive", str(request_id)])
            assert queued.exit_code == 0, queued.output
            assert f"{request_id}: queued" in queued.stdout
            items = {d["name"]: d for d in stack.documents(request_id, 2)}
            again = runner.invoke(cli_main, ["documents", "archive", str(request_id)])
            assert f"{request_id}: already queued before" in again.stdout
            refused = runner.invoke(
                cli_main, ["documents", "archive", str(open_one["id"]), "999999"]
            )
            assert refused.exit_code == 1
            assert f"{open_one['id']}: is registered, not completed" in refused.output
            assert "999999: no such request" in refused.output
        finally:
            stack.close()
    assert items["signed.pdf"]["sha256"] == hashlib.sha256(fake.final_documents[sr_id]).hexdigest()
