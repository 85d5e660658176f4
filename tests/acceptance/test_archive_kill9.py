"""``kill -9`` of ``signback serve`` in the middle of archiving a signed PDF: nothing partial
is ever recorded. A real ``signback serve`` process on a SQLite file, the Firma emulator under
uvicorn serving a generated PDF slowly; after the kill, the database has no document row and
the archive has no file under a final name (a ``.partial`` at most). After a restart the
action comes back (its attempt logged ``interrupted``) and the document is archived whole,
with the SHA-256 of the emulator's bytes, downloadable through the API and the signed
link."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from handlers.firma.fake import API_BASE_PATH, DEFAULT_API_KEY
from tests.acceptance.processes import (
    free_port,
    processes,
    sent_firma_request,
    signback,
    signback_env,
)
from tests.conftest import ADMIN_TOKEN
from tests.harness import running_firma, wait_until

pytestmark = pytest.mark.acceptance

SECRET = "firma-kill9-secret"


def rows(db_path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db_path) as conn:
        return conn.execute(sql).fetchall()


def test_kill_9_during_a_download_leaves_no_partial_archive(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db_path = tmp_path / "signback.db"
    archive = tmp_path / "archive"
    admin = httpx.Client(
        base_url=url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
    )
    # A 400 KB PDF sent 16 KB every 0.2 s: about five seconds of download to cut short.
    with (
        running_firma(download_chunk_delay=0.2, final_document_padding=400_000) as (firma, fake),
        processes(tmp_path) as started,
        admin,
    ):
        fake.secret = SECRET
        env = signback_env(
            f"sqlite:///{db_path}",
            port,
            SIGNBACK_FIRMA_BASE_URL=firma + API_BASE_PATH,
            SIGNBACK_FIRMA_API_KEY=DEFAULT_API_KEY,
            SIGNBACK_FIRMA_WEBHOOK_SECRETS=SECRET,
            SIGNBACK_FIRMA_ARCHIVE_AUDIT_TRAIL="false",
            SIGNBACK_ARCHIVE_ENABLED="true",
            SIGNBACK_ARCHIVE_DIR=str(archive),
            SIGNBACK_LEASE_SECONDS="2",
        )
        serve = signback(tmp_path, "serve", ["serve", "--port", str(port)], env).start()
        started.append(serve)
        serve.wait_http(f"{url}/readyz")
        api = httpx.Client(
            base_url=firma + API_BASE_PATH, headers={"authorization": DEFAULT_API_KEY}
        )
        with api:
            hook = {"url": f"{url}/hooks/firma", "events": ["signing_request.completed"]}
            assert api.post("/webhooks", json=hook).status_code == 201
            sr_id, request_id = sent_firma_request(api, admin, "Lease")
        completed = httpx.post(f"{firma}/_fake/signing-requests/{sr_id}/complete", timeout=10)
        assert completed.status_code == 200

        # The download is under way (its first chunks are in the spool): kill.
        wait_until(
            lambda: any(p.stat().st_size > 32_000 for p in archive.rglob("*.partial")),
            timeout=20,
            what="a download in progress",
        )
        serve.kill9()

        assert rows(db_path, "SELECT count(*) FROM documents") == [(0,)]
        finals = [p for p in archive.rglob("*") if p.is_file() and p.suffix != ".partial"]
        assert finals == []
        partial = [p for p in archive.rglob("*.partial")]
        assert len(partial) == 1  # the cut-off download, recorded nowhere

        fake.download_chunk_delay = 0.0
        serve.start()
        serve.wait_http(f"{url}/readyz")

        def archived() -> list[dict[str, Any]] | None:
            items: list[dict[str, Any]] = admin.get(f"/api/requests/{request_id}/documents").json()[
                "items"
            ]
            return items or None

        (document,) = wait_until(archived, timeout=30, what="the archived PDF after restart")
        pdf = fake.final_documents[sr_id]
        assert document["sha256"] == hashlib.sha256(pdf).hexdigest()
        assert document["size"] == len(pdf)
        with httpx.Client(timeout=10) as anonymous:
            assert anonymous.get(document["download_url"]).content == pdf
        through_api = admin.get(f"/api/requests/{request_id}/documents/signed.pdf")
        assert through_api.status_code == 200
        assert through_api.content == pdf
        action = next(
            a
            for a in admin.get(f"/api/requests/{request_id}").json()["actions"]
            if a["operation"] == "signback.archive"
        )
        assert action["status"] == "done"
        assert [a["outcome"] for a in action["attempt_log"]] == ["interrupted", "ok"]
        final = archive / "firma" / str(request_id) / f"{document['sha256']}-signed.pdf"
        assert final.read_bytes() == pdf
