"""The archive with real processes: ``signback serve`` and ``signback fake firma`` on
loopback, a real SQLite file. The emulator answers ``503`` with ``Retry-After`` while it
"generates" the final PDF, and its first link has expired by the time it is used. The
completed request's signed PDF is listed with the SHA-256 of the emulator's own bytes, and
downloads through the API, the signed link and ``signback documents get``; the downstream
event ``signature_request.document_archived`` carries the same checksum and link."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.processes import (
    ROOT,
    Process,
    free_port,
    processes,
    sent_firma_request,
    signback,
    signback_env,
)
from tests.conftest import ADMIN_TOKEN
from tests.harness import wait_until

pytestmark = pytest.mark.acceptance

API_KEY = "fake-firma-key"
SECRET = "7a1e" * 16
API_PATH = "/functions/v1/signing-request-api"


def test_completed_request_archived_through_real_processes(tmp_path: Path) -> None:
    fake_port, port = free_port(), free_port()
    firma, url = f"http://127.0.0.1:{fake_port}", f"http://127.0.0.1:{port}"
    db_path = tmp_path / "signback.db"
    archive = tmp_path / "archive"
    env_fake = {k: v for k, v in os.environ.items() if not k.startswith("SIGNBACK_")}
    fake = Process(
        "fake-firma",
        [
            "fake",
            "firma",
            "--port",
            str(fake_port),
            "--api-key",
            API_KEY,
            "--secret",
            SECRET,
            "--generation-seconds",
            "2",
        ],
        env_fake,
        tmp_path / "fake-firma.log",
    )
    env = signback_env(
        f"sqlite:///{db_path}",
        port,
        SIGNBACK_FIRMA_BASE_URL=firma + API_PATH,
        SIGNBACK_FIRMA_API_KEY=API_KEY,
        SIGNBACK_FIRMA_WEBHOOK_SECRETS=SECRET,
        SIGNBACK_ARCHIVE_ENABLED="true",
        SIGNBACK_ARCHIVE_DIR=str(archive),
    )
    admin = httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    api = httpx.Client(base_url=firma + API_PATH, headers={"authorization": API_KEY})
    control = httpx.Client(base_url=firma + "/_fake")
    with processes(tmp_path) as started, admin, api, control:
        started.append(fake.start())
        fake.wait_http(f"{firma}/_fake/calls")
        serve = signback(tmp_path, "serve", ["serve", "--port", str(port)], env).start()
        started.append(serve)
        serve.wait_http(f"{url}/readyz")
        hook = {"url": f"{url}/hooks/firma", "events": ["signing_request.completed"]}
        assert api.post("/webhooks", json=hook).status_code == 201
        downloads = {"expire_next": 1, "padding": 150_000}
        assert control.post("/downloads", json=downloads).status_code == 200
        sr_id, request_id = sent_firma_request(api, admin, "Contract")
        assert control.post(f"/signing-requests/{sr_id}/complete").status_code == 200

        def listed() -> dict[str, dict[str, Any]] | None:
            items = admin.get(f"/api/requests/{request_id}/documents").json()["items"]
            return {d["name"]: d for d in items} if len(items) == 2 else None

        items = wait_until(listed, timeout=30, what="the archived files")
        pdf = control.get(f"/documents/{sr_id}", params={"final": "true"}).content
        assert pdf.startswith(b"%PDF-")
        signed = items["signed.pdf"]
        assert signed["sha256"] == hashlib.sha256(pdf).hexdigest()
        assert signed["size"] == len(pdf)

        assert admin.get(f"/api/requests/{request_id}/documents/signed.pdf").content == pdf
        with httpx.Client(timeout=10) as anonymous:
            assert anonymous.get(signed["download_url"]).content == pdf
        written = tmp_path / "copy.pdf"
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "receiver.cli",
                "documents",
                "get",
                str(request_id),
                "signed.pdf",
                "-o",
                str(written),
            ],
            env=env,
            cwd=ROOT,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert cli.returncode == 0, cli.stderr
        assert written.read_bytes() == pdf

        # The 503s were waited out (not counted), the expired link was replaced.
        action = next(
            a
            for a in admin.get(f"/api/requests/{request_id}").json()["actions"]
            if a["operation"] == "signback.archive"
        )
        outcomes = [a["outcome"] for a in action["attempt_log"]]
        assert "throttled" in outcomes
        assert outcomes[-1] == "ok"
        assert action["attempts"] == 1
        uses = control.get("/downloads").json()["downloads"]
        assert [u["status"] for u in uses] == [400, 200]

    # The event a business application receives carries the same checksum and link.
    with sqlite3.connect(db_path) as db:
        (payload,) = db.execute(
            "SELECT payload FROM events WHERE type = 'signature_request.document_archived'"
            " AND payload LIKE '%signed.pdf%'"
        ).fetchone()
    event = json.loads(payload)
    assert event["data"]["document"]["sha256"] == signed["sha256"]
    assert event["data"]["document"]["download_url"].startswith(f"{url}/archive/{request_id}/")
