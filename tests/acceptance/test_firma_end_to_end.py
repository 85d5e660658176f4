"""Firma.dev acceptance: `signback serve` and `signback fake firma` as real processes on
loopback, a real SQLite file, every webhook signed and delivered by the emulator itself.

One signing request goes the whole way: created as a draft, registered with defaults, the
rule's PATCH lands while it is a draft, then sent, viewed, signed by one recipient and
completed by the other. Along the way one delivery is repeated (the same event, a new
delivery id) and one arrives out of order (a recipient's "signed" after "completed").
"""

from __future__ import annotations

import base64
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.processes import Process, free_port, processes, signback, signback_env
from tests.conftest import ADMIN_TOKEN
from tests.harness import wait_until

pytestmark = pytest.mark.acceptance

API_KEY = "fake-firma-key"
SECRET = "5f0c" * 16  # a 64-character hex signing secret, as Firma issues them
API_PATH = "/functions/v1/signing-request-api"
PDF = b"%PDF-1.4\n3 0 obj << /Type /Page >> endobj\n%%EOF\n"
DEFAULTS = {"expiration_hours": 48, "settings": {"send_finish_email": False}}

EVENTS = (
    "signing_request.created",
    "signing_request.sent",
    "signing_request.viewed",
    "signing_request.recipient.signed",
    "signing_request.completed",
    "signing_request.updated",
    "signing_request.cancelled",
    "signing_request.expired",
    "signing_request.recipient.declined",
)


def fake_firma(
    tmp_path: Path, port: int, secret: str = SECRET, time_factor: float = 1.0
) -> Process:
    """`signback fake firma` as a process: the API, the control routes, signed deliveries."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNBACK_")}
    return Process(
        "fake-firma",
        [
            "fake",
            "firma",
            "--port",
            str(port),
            "--api-key",
            API_KEY,
            "--secret",
            secret,
            "--time-factor",
            str(time_factor),
        ],
        env,
        tmp_path / "fake-firma.log",
    )


def client(base_url: str, **headers: str) -> httpx.Client:
    return httpx.Client(
        base_url=base_url,
        headers=headers,
        timeout=30.0,
        transport=httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=0)),
    )


class Stack:
    def __init__(self, tmp_path: Path, started: list[Process]) -> None:
        fake_port, port = free_port(), free_port()
        self.firma_url = f"http://127.0.0.1:{fake_port}"
        self.url = f"http://127.0.0.1:{port}"
        self.db_path = tmp_path / "signback.db"
        # Firma's retry delays (immediately, +5 min, +1 h) 10 000 times faster.
        self.fake = fake_firma(tmp_path, fake_port, time_factor=0.0001).start()
        started.append(self.fake)
        self.fake.wait_http(f"{self.firma_url}/_fake/calls")
        self.serve = signback(
            tmp_path,
            "serve",
            ["serve", "--port", str(port)],
            signback_env(
                f"sqlite:///{self.db_path}",
                port,
                SIGNBACK_FIRMA_BASE_URL=self.firma_url + API_PATH,
                SIGNBACK_FIRMA_API_KEY=API_KEY,
                SIGNBACK_FIRMA_WEBHOOK_SECRETS=SECRET,
            ),
        ).start()
        started.append(self.serve)
        self.serve.wait_http(f"{self.url}/healthz")
        self.admin = client(self.url, authorization=f"Bearer {ADMIN_TOKEN}")
        self.api = client(self.firma_url + API_PATH, authorization=API_KEY)
        self.control = client(self.firma_url + "/_fake")

    def close(self) -> None:
        for each in (self.admin, self.api, self.control):
            each.close()

    # -- Firma, as its customer and as its signers ------------------------------------------

    def ok(self, response: httpx.Response) -> dict[str, Any]:
        assert response.status_code in (200, 201), response.text
        answer: dict[str, Any] = response.json()
        return answer

    def webhook(self, url: str, events: Sequence[str]) -> str:
        return str(self.ok(self.api.post("/webhooks", json={"url": url, "events": events}))["id"])

    def act(self, sr_id: str, action: str, **body: Any) -> list[dict[str, Any]]:
        answer = self.ok(self.control.post(f"/signing-requests/{sr_id}/{action}", json=body))
        events: list[dict[str, Any]] = answer["events"]
        return events

    def calls(self, method: str) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = self.control.get("/calls").json()["calls"]
        return [c for c in calls if c["method"] == method]

    def deliveries(self, event_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.control.get(
            "/deliveries", params={"event_id": event_id}
        ).json()["deliveries"]
        return items

    def finished_deliveries(self, event_id: str, count: int = 1) -> list[dict[str, Any]]:
        return wait_until(
            lambda: (
                d
                if len(d := [x for x in self.deliveries(event_id) if x["done"]]) >= count
                else None
            ),
            timeout=30,
            what=f"{count} finished deliveries of {event_id}",
        )

    # -- signback ------------------------------------------------------------------------------

    def show(self, request_id: int) -> dict[str, Any]:
        return self.ok(self.admin.get(f"/api/requests/{request_id}"))

    def wait_for_state(self, request_id: int, state: str) -> dict[str, Any]:
        return wait_until(
            lambda: (r := self.show(request_id))["state"] == state and r,
            timeout=30,
            what=f"request {request_id} to be {state}",
        )

    def timeline_event(self, request_id: int, event_id: str) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            rows = [e for e in self.show(request_id)["timeline"] if e["event_id"] == event_id]
            return rows[0] if rows and rows[0]["status"] == "processed" else None

        return wait_until(probe, timeout=30, what=f"event {event_id} in the timeline")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with processes(tmp_path) as started:
        running = Stack(tmp_path, started)
        try:
            yield running
        finally:
            running.close()


def test_create_patch_send_view_sign_complete(stack: Stack) -> None:
    # Everything goes to /hooks/firma, except recipients' "signed", which a second webhook
    # cannot deliver at first (its URL is wrong): those arrive late, after a fix.
    hook = f"{stack.url}/hooks/firma"
    stack.webhook(hook, [e for e in EVENTS if e != "signing_request.recipient.signed"])
    late_hook = stack.webhook(
        "http://127.0.0.1:9/hooks/firma", ["signing_request.recipient.signed"]
    )

    sr = stack.ok(
        stack.api.post(
            "/signing-requests",
            json={
                "name": "NDA - Acme Corp",
                "document": base64.b64encode(PDF).decode(),
                "recipients": [
                    {"first_name": "Alice", "last_name": "Johnson", "email": "alice@example.com"},
                    {"first_name": "Bob", "last_name": "Smith", "email": "bob@example.com"},
                ],
            },
        )
    )
    assert sr["status"] == "draft"
    registered = stack.ok(
        stack.admin.post(
            "/api/requests",
            json={
                "provider": "firma",
                "signing_request_id": sr["id"],
                "reference": "order-42",
                "return_url": "https://shop.example/thanks",
                "defaults": DEFAULTS,
            },
        )
    )
    request_id = registered["id"]
    return_url = registered["callback_urls"]["return_url"]

    # (a) The defaults, in one PATCH, while the request is a draft.
    (patch,) = wait_until(
        lambda: [c for c in stack.calls("PATCH") if c["status"] == 200],
        timeout=30,
        what="the defaults PATCH at the emulator",
    )
    assert patch["path"] == f"{API_PATH}/signing-requests/{sr['id']}"
    assert patch["body"] == {**DEFAULTS, "completion_redirect_url": return_url}
    stack.wait_for_state(request_id, "draft")
    draft = stack.ok(stack.api.get(f"/signing-requests/{sr['id']}"))
    assert (draft["status"], draft["expiration_hours"]) == ("not_sent", 48)
    assert draft["completion_redirect_url"] == return_url

    stack.ok(stack.api.post(f"/signing-requests/{sr['id']}/send"))
    assert stack.wait_for_state(request_id, "sent")["provider_status"] == "in_progress"
    (send,) = [c for c in stack.calls("POST") if c["path"].endswith("/send")]
    assert patch["time"] < send["time"]  # the PATCH came while it was a draft

    # A duplicate: the "sent" event once more, with a new delivery id.
    sent_id = next(e for e in stack.show(request_id)["timeline"] if e["kind"] == "request.sent")[
        "event_id"
    ]
    (first,) = stack.finished_deliveries(sent_id)
    stack.ok(stack.control.post(f"/deliveries/{first['delivery_id']}/redeliver"))
    again = stack.finished_deliveries(sent_id, count=2)
    assert [d["status"] for d in again] == [200, 200]
    assert again[0]["delivery_id"] != again[1]["delivery_id"]

    (viewed,) = stack.act(sr["id"], "view")
    stack.wait_for_state(request_id, "viewed")

    (alice_signed,) = stack.act(sr["id"], "recipient-signed")
    failed = stack.finished_deliveries(alice_signed["event_id"])
    assert not failed[0]["ok"]  # the signature event is stuck at the broken webhook …
    _bob_signed, completed = stack.act(sr["id"], "complete")
    assert completed["type"] == "signing_request.completed"
    done = stack.wait_for_state(request_id, "completed")  # … while "completed" goes through
    assert done["provider_status"] == "finished"

    # The webhook is fixed and Alice's failed delivery sent again: it arrives after the end.
    stack.ok(stack.api.put(f"/webhooks/{late_hook}", json={"url": hook}))
    stack.ok(stack.control.post(f"/deliveries/{failed[0]['delivery_id']}/redeliver"))
    late = stack.timeline_event(request_id, alice_signed["event_id"])
    assert (late["kind"], late["state_before"], late["state_after"]) == (
        "recipient.signed",
        "completed",
        "completed",
    )
    assert late["note"] == "ignored: request already ended as completed"

    shown = stack.show(request_id)
    assert shown["state"] == "completed"
    kinds = [e["kind"] for e in shown["timeline"]]
    assert kinds.index("request.completed") < kinds.index("recipient.signed")
    (action,) = shown["actions"]
    assert (action["key"], action["status"], action["attempts"]) == ("draft-defaults", "done", 1)
    assert len(stack.calls("PATCH")) == 1  # no PATCH went out twice
    assert viewed["event_id"] in [e["event_id"] for e in shown["timeline"]]

    with sqlite3.connect(stack.db_path) as db:
        repeated = db.execute(
            "SELECT event_id, COUNT(*) FROM inbox WHERE provider = 'firma'"
            " GROUP BY event_id HAVING COUNT(*) > 1"
        ).fetchall()
        statuses = dict(db.execute("SELECT status, COUNT(*) FROM inbox GROUP BY status").fetchall())
    assert repeated == []  # the duplicate delivery was stored once
    assert set(statuses) == {"processed"}, statuses
