"""The receivers the docs show (docs/receivers/) work against a real signback: they verify
each delivery with the standardwebhooks library of their language, refuse a forged one, and
handle a replayed event once. The Node one runs where ``node`` and ``npm`` are installed
(its dependency comes from the npm registry into a scratch folder)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.settings import Settings
from tests.acceptance.processes import free_port
from tests.downstream import admin_client
from tests.harness import running_receiver, wait_until
from tests.integration.test_downstream_flows import post_firma

RECEIVERS = Path(__file__).resolve().parent.parent.parent / "docs" / "receivers"


def command(language: str, tmp_path: Path, port: int) -> list[str]:
    if language == "python":
        return [sys.executable, str(RECEIVERS / "receiver.py"), "--port", str(port)]
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed")
    for name in ("package.json", "receiver.mjs"):
        shutil.copy(RECEIVERS / name, tmp_path / name)
    installed = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if installed.returncode != 0:
        pytest.skip(f"npm could not install standardwebhooks: {installed.stderr[-500:]}")
    return [node, str(tmp_path / "receiver.mjs")]


@contextmanager
def started(args: list[str], secret: str, port: int, log: Path) -> Iterator[Callable[[], str]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            args,
            env={"SIGNBACK_WEBHOOK_SECRET": secret, "PORT": str(port), "PATH": "/usr/bin:/bin"},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
        )
    try:
        wait_until(lambda: "listening" in log.read_text(), what="the receiver to listen")
        yield log.read_text
    finally:
        process.terminate()
        process.wait(10)


def lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("language", ["python", "node"])
def test_the_documented_receiver(
    make_sqlite_settings: Callable[..., Settings], tmp_path: Path, language: str
) -> None:
    port = free_port()
    args = command(language, tmp_path, port)
    with (
        running_receiver(make_sqlite_settings, endpoint_allow_private=True) as signback,
        admin_client(signback.url) as admin,
    ):
        created = admin.post(
            "/api/endpoints", json={"url": f"http://127.0.0.1:{port}/signback"}
        ).json()
        with started(args, created["secret"], port, tmp_path / "receiver.log") as output:
            request = signback.register(
                provider="firma", signatureRequestId="sr-doc", reference="order-9"
            )
            post_firma(signback, "sr-doc", "signing_request.sent")
            post_firma(signback, "sr-doc", "signing_request.completed")

            def two_printed() -> list[dict[str, Any]] | None:
                found = lines(output())
                return found if len(found) >= 2 else None

            printed = wait_until(two_printed, what="two events")
            assert [(p["type"], p["request"], p["reference"]) for p in printed] == [
                ("signature_request.sent", request["id"], "order-9"),
                ("signature_request.completed", request["id"], "order-9"),
            ]
            # A forged delivery is refused.
            forged = httpx.post(
                f"http://127.0.0.1:{port}/signback",
                content=b'{"type":"signature_request.completed"}',
                headers={
                    "webhook-id": "msg_x",
                    "webhook-timestamp": str(int(time.time())),
                    "webhook-signature": "v1,AAAA",
                },
                timeout=10,
            )
            assert forged.status_code == 400
            # A replay arrives with the same webhook-ids: accepted, handled once.
            replayed = admin.post(f"/api/endpoints/{created['id']}/replay", json={})
            assert replayed.json()["queued"] == 2

            def replay_done() -> bool:
                items = admin.get(
                    f"/api/endpoints/{created['id']}/deliveries", params={"status": "done"}
                ).json()["items"]
                return len(items) == 4

            wait_until(replay_done, what="the replay delivered")
            assert len(lines(output())) == 2
            assert "refused" in output()
