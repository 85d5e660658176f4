"""The Procfile, run for real by ``honcho`` as a PaaS would: release first (a one-off), then
``web`` and ``worker`` against PostgreSQL named by ``DATABASE_URL=postgres://…`` (the scheme
Heroku-style platforms hand out) with ``PORT`` set; health, readiness, one OKdokument round
end to end through the emulator; then SIGTERM, and everything must be gone within 30 s,
having stopped by itself (honcho SIGKILLs what is still running 5 s after the first exit)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.acceptance.processes import ROOT, fake_okdokument, free_port, processes
from tests.conftest import ADMIN_TOKEN, SECRET_KEY
from tests.databases import PostgresTemplates, with_database
from tests.harness import wait_until

pytestmark = [pytest.mark.acceptance, pytest.mark.postgres]

HONCHO = Path(sys.executable).parent / "honcho"
SHUTDOWN_LIMIT = 30.0  # what a PaaS gives a dyno between SIGTERM and SIGKILL


@pytest.fixture
def empty_postgres_url(postgres_templates: PostgresTemplates) -> Iterator[str]:
    """A database with no schema at all: the release step has to create it."""
    name = f"signback_procfile_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_templates.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(postgres_templates.admin_url, name)
    yield url
    postgres_templates.drop(url)


def paas_env(database_url: str, port: int, okd: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("SIGNBACK_") and k != "DATABASE_URL"
    }
    env.update(
        {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "DATABASE_URL": re.sub(r"^postgresql://", "postgres://", database_url),
            "PORT": str(port),
            "SIGNBACK_ADMIN_TOKEN": ADMIN_TOKEN,
            "SIGNBACK_SECRET_KEY": SECRET_KEY,
            "SIGNBACK_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "SIGNBACK_OKDOKUMENT_BASE_URL": okd,
            "SIGNBACK_OKDOKUMENT_API_KEY": "fake-okdokument-key",
            "SIGNBACK_POLL_INTERVAL": "0.2",
            "SIGNBACK_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
    )
    assert env["DATABASE_URL"].startswith("postgres://")
    return env


def honcho(env_file: Path, *args: str) -> list[str]:
    # An empty env file: a developer's .env in the project root must not leak into the test.
    return [str(HONCHO), "--no-colour", "-e", str(env_file), "-f", "Procfile", *args]


def pids_started(output: str) -> dict[str, int]:
    return {m[0]: int(m[1]) for m in re.findall(r"(\w+\.\d+) started \(pid=(\d+)\)", output)}


def group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a recycled id owned by someone else
        return True
    return True


def test_the_procfile_under_honcho(tmp_path: Path, empty_postgres_url: str) -> None:
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    port, okd_port = free_port(), free_port()
    okd = f"http://127.0.0.1:{okd_port}"
    base = f"http://127.0.0.1:{port}"
    env = paas_env(empty_postgres_url, port, okd)
    log_path = tmp_path / "honcho.log"

    with processes(tmp_path) as started:
        fake = fake_okdokument(tmp_path, okd_port).start()
        started.append(fake)
        fake.wait_http(f"{okd}/_fake/calls")

        # Release phase: a one-off before the new processes start (the Procfile's own line).
        release = subprocess.run(
            honcho(env_file, "start", "release"),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert release.returncode == 0, release.stdout + release.stderr
        assert "is at migration" in release.stdout, release.stdout

        with log_path.open("wb") as log:
            manager = subprocess.Popen(
                honcho(env_file, "start", "web", "worker"),
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            children = _run_round(base, okd, log_path)
            stopping = time.monotonic()
            manager.send_signal(signal.SIGTERM)
            manager.wait(SHUTDOWN_LIMIT)
            # honcho returns once the shells it started are gone; the apps may still be
            # finishing. Every process group must be empty within the limit.
            wait_until(
                lambda: not any(group_alive(pid) for pid in children.values()),
                timeout=max(0.1, SHUTDOWN_LIMIT - (time.monotonic() - stopping)),
                interval=0.05,
                what="every Procfile process to exit",
            )
            took = time.monotonic() - stopping
            output = log_path.read_text(errors="replace")
            assert took < SHUTDOWN_LIMIT
            # Each process stopped by itself, cleanly: honcho never had to SIGKILL anyone,
            # and both ran their shutdown to the end. (honcho's "stopped (rc=…)" is the
            # exit status of the /bin/sh wrapping each Procfile line, killed by the same
            # SIGTERM, so it says nothing about signback's own exit.)
            assert "SIGKILL" not in output, output[-4000:]
            assert "Application shutdown complete." in output
            assert re.search(r'worker\.1 +\|.*"event": ?"worker stopped"', output)
            assert re.search(r'web\.1 +\|.*"event": ?"signback stopped"', output)
            print(f"\nProcfile: everything exited {took:.2f} s after SIGTERM")
        except BaseException:
            print(f"===== honcho =====\n{log_path.read_text(errors='replace')[-8000:]}")
            raise
        finally:
            if manager.poll() is None:
                os.killpg(manager.pid, signal.SIGKILL)
                manager.wait(10)
            for pid in pids_started(log_path.read_text(errors="replace")).values():
                if group_alive(pid):
                    os.killpg(pid, signal.SIGKILL)


def _run_round(base: str, okd: str, log_path: Path) -> dict[str, int]:
    """Health, readiness, registration → attach PATCH, signing → completed."""
    wait_until(
        lambda: _status(f"{base}/healthz") == 200,
        timeout=30,
        interval=0.1,
        what=f"/healthz on PORT ({base})",
    )
    ready = httpx.get(f"{base}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"
    children = wait_until(
        lambda: p if len(p := pids_started(log_path.read_text(errors="replace"))) == 2 else None,
        timeout=30,
        what="honcho to report web.1 and worker.1 started",
    )

    seeded = httpx.post(
        f"{okd}/_fake/signature-requests",
        json={"signatureRequestId": "sr-paas", "documentId": "doc-paas"},
    )
    assert seeded.status_code == 201, seeded.text
    with httpx.Client(
        base_url=base, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
    ) as api:
        response = api.post(
            "/api/requests",
            json={
                "provider": "okdokument",
                "signatureRequestId": "sr-paas",
                "documentId": "doc-paas",
                "return_url": "https://shop.example/thanks",
            },
        )
        assert response.status_code == 201, response.text
        registered: dict[str, Any] = response.json()
        urls = registered["callback_urls"]
        assert urls["sendinfo_url"].startswith(f"{base}/hooks/okdokument/")

        def attach() -> list[dict[str, Any]]:
            calls = httpx.get(f"{okd}/_fake/calls", timeout=10).json()
            return [c["body"] for c in calls if c["method"] == "PATCH" and c["status"] == 200]

        sent = wait_until(attach, timeout=30, interval=0.1, what="the attach PATCH (worker)")
        assert sent == [
            {
                "signatureRequestId": "sr-paas",
                "sendInfoURL": urls["sendinfo_url"],
                "resulturl": urls["return_url"],
            }
        ]
        signed = httpx.post(
            f"{okd}/_fake/sign/sr-paas", json={"follow_redirect": True}, timeout=30
        ).json()
        assert signed["sendinfo_status"] == 200, signed
        assert signed["redirect_status"] == 303, signed  # to the registered return_url
        wait_until(
            lambda: api.get(f"/api/requests/{registered['id']}").json()["state"] == "completed",
            timeout=30,
            interval=0.1,
            what="the request completed (sendInfo confirmed with Document info)",
        )
    return children


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None
