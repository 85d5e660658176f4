"""``kill -9`` of signback while it delivers downstream loses nothing.

A real ``signback serve`` on SQLite receives signed Firma webhooks for ten requests and
pushes their events to a company receiver that verifies each with ``standardwebhooks``
(tests/downstream.py) and answers slowly, so that deliveries are in flight when the process
is killed. After a restart, every stored event has arrived, each request's in order, every
signature verifies, and only a delivery cut short by the kill (``interrupted`` in its
attempt log) arrived more than once.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from handlers.firma.signature import sign
from handlers.firma.simulate import firma_envelope
from tests.acceptance.processes import free_port, processes, signback, signback_env
from tests.conftest import ADMIN_TOKEN
from tests.downstream import Answer, running_downstream
from tests.harness import wait_until

pytestmark = pytest.mark.acceptance

FIRMA_SECRET = "firma-acceptance-secret"
FLOW = (
    "signing_request.created",
    "signing_request.sent",
    "signing_request.viewed",
    "signing_request.recipient.signed",
    "signing_request.completed",
)


def post_firma(url: str, sr_id: str, event_type: str) -> None:
    """One webhook, sent again until signback acknowledges it (as Firma retries while
    signback is down)."""
    envelope = firma_envelope(event_type, sr_id, now=time.time())
    envelope["id"] = f"evt_{uuid.uuid4().hex}"
    body = json.dumps(envelope).encode()
    deadline = time.monotonic() + 60
    while True:
        try:
            response = httpx.post(
                f"{url}/hooks/firma",
                content=body,
                headers={
                    "content-type": "application/json",
                    "x-firma-signature": sign(FIRMA_SECRET, body, int(time.time())),
                },
                timeout=10,
            )
            if response.status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{event_type} for {sr_id} was never acknowledged"
        time.sleep(0.1)


def test_kill_9_during_delivery_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db_path = tmp_path / "signback.db"
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    env = signback_env(
        f"sqlite:///{db_path}",
        port,
        SIGNBACK_FIRMA_WEBHOOK_SECRETS=FIRMA_SECRET,
        SIGNBACK_ENDPOINT_ALLOW_PRIVATE="true",
        SIGNBACK_LEASE_SECONDS="2",
    )
    with running_downstream() as (receiver_url, receiver), processes(tmp_path) as started:
        receiver.default["/company"] = Answer(delay=0.5)
        serve = signback(tmp_path, "serve", ["serve", "--port", str(port)], env).start()
        started.append(serve)
        serve.wait_http(f"{url}/readyz")
        created = httpx.post(
            f"{url}/api/endpoints", json={"url": f"{receiver_url}/company"}, headers=admin
        )
        assert created.status_code == 201, created.text
        receiver.secrets["/company"] = created.json()["secret"]
        names = [f"sr-k9-{i}" for i in range(10)]
        for name in names:
            registered = httpx.post(
                f"{url}/api/requests",
                json={"provider": "firma", "signatureRequestId": name},
                headers=admin,
            )
            assert registered.status_code == 201, registered.text

        # The provider's webhooks keep coming meanwhile (and are sent again while signback
        # is down), from a thread of their own.
        def send_all() -> None:
            for step in FLOW:
                for name in names:
                    post_firma(url, name, step)

        sender = threading.Thread(target=send_all)
        sender.start()
        # Deliveries are on their way (each takes 0.5 s, one per request at a time): kill.
        wait_until(lambda: len(receiver.to("/company")) >= 12, what="deliveries in flight")
        serve.kill9()
        before_restart = len(receiver.to("/company"))
        assert before_restart < len(names) * len(FLOW)

        serve.start()
        serve.wait_http(f"{url}/readyz")
        sender.join(90)
        assert not sender.is_alive()
        wait_until(
            lambda: (
                len({d.webhook_id for d in receiver.accepted("/company")}) == len(names) * len(FLOW)
            ),
            timeout=60,
            what="every event delivered after the restart",
        )
        with sqlite3.connect(db_path) as db:
            stored = db.execute("SELECT public_id, request_id FROM events ORDER BY id").fetchall()
            interrupted = {
                json.loads(payload)["event"]
                for (payload,) in db.execute(
                    "SELECT o.payload FROM outbox o JOIN outbox_attempts a ON a.action_id = o.id"
                    " WHERE a.outcome = 'interrupted'"
                )
            }
            event_ids = dict(db.execute("SELECT public_id, id FROM events").fetchall())
    assert len(stored) == len(names) * len(FLOW)
    accepted = receiver.accepted("/company")
    assert receiver.problems() == []
    assert all(d.verified for d in receiver.to("/company"))
    delivered = [d.event["id"] for d in accepted]
    assert set(delivered) == {public_id for public_id, _ in stored}  # nothing lost
    repeated = {e for e in delivered if delivered.count(e) > 1}
    assert {event_ids[e] for e in repeated} <= interrupted  # repeats only for cut-short ones
    assert interrupted  # the kill did cut deliveries short
    for request_id in {r for _, r in stored}:
        expected = [public_id for public_id, r in stored if r == request_id]
        first_arrivals = list(dict.fromkeys(e for e in delivered if e in expected))
        assert first_arrivals == expected  # in per-request order, across the crash
