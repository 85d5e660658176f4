"""SIGTERM: stop claiming, finish in-flight calls within the grace period, hand back the
rest — for `signback serve` and for `signback worker`."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.processes import (
    fake_okdokument,
    free_port,
    processes,
    signback,
    signback_env,
)
from tests.conftest import ADMIN_TOKEN
from tests.harness import wait_until

pytestmark = pytest.mark.acceptance


def calls(okd: str) -> list[dict[str, Any]]:
    answer: list[dict[str, Any]] = httpx.get(f"{okd}/_fake/calls").json()
    return answer


def action_row(db_path: Path) -> tuple[str, int]:
    with sqlite3.connect(db_path) as db:
        status, attempts = db.execute("SELECT status, attempts FROM outbox").fetchone()
    return str(status), int(attempts)


@pytest.mark.parametrize("grace", ["25", "1"])
def test_sigterm_finishes_or_hands_back_in_flight_calls(tmp_path: Path, grace: str) -> None:
    okd_port, port = free_port(), free_port()
    okd, url = f"http://127.0.0.1:{okd_port}", f"http://127.0.0.1:{port}"
    db_path = tmp_path / "signback.db"
    with processes(tmp_path) as started:
        fake = fake_okdokument(tmp_path, okd_port).start()
        started.append(fake)
        fake.wait_http(f"{okd}/_fake/calls")
        httpx.post(
            f"{okd}/_fake/signature-requests",
            json={"signatureRequestId": "sr-t", "documentId": "doc-t"},
        )
        # Every PATCH takes 3 s to answer.
        httpx.post(f"{okd}/_fake/failures", json={"delay": 3, "seconds": 600, "methods": ["PATCH"]})
        env = signback_env(
            f"sqlite:///{db_path}",
            port,
            SIGNBACK_OKDOKUMENT_BASE_URL=okd,
            SIGNBACK_OKDOKUMENT_API_KEY="fake-okdokument-key",
            SIGNBACK_SHUTDOWN_GRACE_SECONDS=grace,
        )
        serve = signback(tmp_path, "serve", ["serve", "--port", str(port)], env).start()
        started.append(serve)
        serve.wait_http(f"{url}/healthz")
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}) as api:
            created = api.post(
                "/api/requests",
                json={
                    "provider": "okdokument",
                    "signatureRequestId": "sr-t",
                    "documentId": "doc-t",
                },
            )
            assert created.status_code == 201
        wait_until(
            lambda: [c for c in calls(okd) if c["method"] == "PATCH"],
            what="the PATCH to be in flight",
        )
        began = time.monotonic()
        # uvicorn re-raises SIGTERM once its shutdown is complete: -15 is a clean exit here.
        assert serve.terminate(timeout=30) in (0, -15)
        took = time.monotonic() - began
        assert '"signback stopped"' in serve.log()
        if grace == "25":
            # The in-flight PATCH was allowed to finish, and was recorded as done.
            assert 1.5 < took < 10
            assert action_row(db_path) == ("done", 1)
            return
        # Grace of 1 s: the call was cut short and the action handed back, not counted.
        assert took < 5
        assert action_row(db_path) == ("pending", 0)
        httpx.delete(f"{okd}/_fake/failures")
        # A worker (not serve) picks it up, and finishes it.
        worker = signback(tmp_path, "worker", ["worker"], env).start()
        started.append(worker)
        wait_until(lambda: action_row(db_path)[0] == "done", timeout=20, what="done")
        assert worker.terminate(timeout=30) == 0
        assert '"worker stopped"' in worker.log()
