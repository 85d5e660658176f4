"""Firma.dev end to end over real HTTP: signback and the Firma emulator on loopback, on SQLite
and on PostgreSQL. The emulator signs and delivers its own webhooks to ``/hooks/firma`` (it
was told where with its ``POST /webhooks``), and receives signback's PATCHes; each test checks
what signback stored and what reached the emulator."""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pytest

from handlers.firma.fake import API_BASE_PATH, DEFAULT_API_KEY, FakeFirma
from handlers.firma.signature import sign
from receiver.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.harness import Receiver, running_firma, running_receiver, wait_until

# Every documented signing-request event: what a receiver like signback subscribes to.
SIGNING_REQUEST_EVENTS: tuple[str, ...] = (
    "signing_request.created",
    "signing_request.sent",
    "signing_request.viewed",
    "signing_request.recipient.signed",
    "signing_request.completed",
    "signing_request.updated",
    "signing_request.cancelled",
    "signing_request.expired",
    "signing_request.deleted",
    "signing_request.recipient.declined",
)

PDF = (
    b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
    b"2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj\n"
    b"3 0 obj << /Type /Page /Parent 2 0 R >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
)

DEFAULTS: dict[str, Any] = {
    "expiration_hours": 48,
    "settings": {"send_finish_email": False, "require_otp_verification": True},
}
RETURN_URL = "https://shop.example/thanks?order=42"


def http_client(base_url: str, **headers: str) -> httpx.Client:
    # No keep-alive: on a kept-alive loopback connection every request after the first stalls
    # ~40 ms (Nagle's algorithm against delayed ACKs); a new connection per request is ~2 ms.
    return httpx.Client(
        base_url=base_url,
        headers=headers,
        timeout=10.0,
        transport=httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=0)),
    )


@dataclass
class Firma:
    """The emulator over HTTP: its API as a Firma customer uses it, and its ``/_fake`` control
    for what only signers or Firma itself do (view, sign, redeliver, inject failures)."""

    url: str
    fake: FakeFirma
    api: httpx.Client
    control: httpx.Client

    def _ok(self, response: httpx.Response) -> dict[str, Any]:
        assert response.status_code in (200, 201), response.text
        answer: dict[str, Any] = response.json()
        return answer

    def create(self, **extra: Any) -> dict[str, Any]:
        """``POST /signing-requests``: a draft with two signers."""
        body = {
            "name": "NDA - Acme Corp",
            "document": base64.b64encode(PDF).decode(),
            "recipients": [
                {"first_name": "Alice", "last_name": "Johnson", "email": "alice@example.com"},
                {"first_name": "Bob", "last_name": "Smith", "email": "bob@example.com"},
            ],
            **extra,
        }
        created = self._ok(self.api.post("/signing-requests", json=body))
        assert created["status"] == "draft"
        return created

    def get(self, sr_id: str) -> dict[str, Any]:
        return self._ok(self.api.get(f"/signing-requests/{sr_id}"))

    def send(self, sr_id: str) -> dict[str, Any]:
        return self._ok(self.api.post(f"/signing-requests/{sr_id}/send"))

    def act(self, sr_id: str, action: str, **body: Any) -> list[dict[str, Any]]:
        """A signer's action (view, recipient-signed, complete): the events it fired."""
        answer = self._ok(self.control.post(f"/signing-requests/{sr_id}/{action}", json=body))
        events: list[dict[str, Any]] = answer["events"]
        return events

    def webhook(self, url: str, events: Sequence[str] = SIGNING_REQUEST_EVENTS) -> str:
        return str(
            self._ok(self.api.post("/webhooks", json={"url": url, "events": list(events)}))["id"]
        )

    def fail_next(self, **rule: Any) -> None:
        assert self.control.post("/failures", json=rule).status_code == 201

    def calls(self, method: str, sr_id: str) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = self.control.get("/calls").json()["calls"]
        path = f"{API_BASE_PATH}/signing-requests/{sr_id}"
        return [c for c in calls if c["method"] == method and c["path"] == path]

    def all_calls(self) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = self.control.get("/calls").json()["calls"]
        return calls

    def deliveries(self, **query: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.control.get("/deliveries", params=query).json()[
            "deliveries"
        ]
        return items

    def failed_delivery(self, event_id: str) -> dict[str, Any]:
        """Wait until the delivery of an event is over; it must have failed."""
        done = wait_until(
            lambda: [d for d in self.deliveries(event_id=event_id) if d["done"]],
            what=f"the delivery of {event_id} to fail",
        )
        assert not done[0]["ok"]
        return done[0]

    def redeliver(self, hook_id: str, url: str, delivery: Mapping[str, Any]) -> None:
        """Point a webhook at ``url``, and send a delivery of it again."""
        fixed = self.api.put(f"/webhooks/{hook_id}", json={"url": url})
        assert fixed.status_code == 200, fixed.text
        redelivered = self.control.post(f"/deliveries/{delivery['delivery_id']}/redeliver")
        assert redelivered.status_code == 200, redelivered.text

    def event_id(self, event_type: str, sr_id: str) -> str:
        """The id of the (only) event of a type about a signing request."""
        events = self.control.get("/events").json()["events"]
        found = [
            e["event_id"]
            for e in events
            if e["type"] == event_type and sr_id in json.dumps(e["payload"])
        ]
        assert len(found) == 1, (event_type, found)
        return str(found[0])

    def delivered(self, event_id: str, count: int = 1) -> list[dict[str, Any]]:
        """Wait until ``count`` deliveries of an event were answered 2xx by signback."""
        return wait_until(
            lambda: (
                d
                if len(d := [x for x in self.deliveries(event_id=event_id) if x["ok"]]) >= count
                else None
            ),
            what=f"{count} successful deliveries of {event_id}",
        )


@dataclass
class Signback:
    receiver: Receiver
    admin: httpx.Client

    def inbox(self, **query: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.admin.get(
            "/api/inbox", params={"provider": "firma", "limit": "1000", **query}
        ).json()["items"]
        return items

    def event(self, event_id: str, *, status: str = "processed") -> dict[str, Any]:
        """Wait until the event with this Firma id reached ``status``; return its inbox row."""

        def probe() -> dict[str, Any] | None:
            rows = [r for r in self.inbox() if r["event_id"] == event_id]
            assert len(rows) <= 1, rows
            return rows[0] if rows and rows[0]["status"] == status else None

        return wait_until(probe, what=f"event {event_id} to be {status}")

    def show(self, request_id: int) -> dict[str, Any]:
        response = self.admin.get(f"/api/requests/{request_id}")
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def wait_for_state(self, request_id: int, state: str) -> dict[str, Any]:
        return wait_until(
            lambda: (r := self.show(request_id))["state"] == state and r,
            what=f"request {request_id} to be {state}",
        )

    def settled_actions(self, request_id: int, count: int = 1) -> list[dict[str, Any]]:
        def probe() -> list[dict[str, Any]] | None:
            actions: list[dict[str, Any]] = self.show(request_id)["actions"]
            settled = [a for a in actions if a["status"] in ("done", "dead", "skipped")]
            return actions if len(settled) >= count else None

        return wait_until(probe, what=f"{count} settled actions")

    def register(self, sr_id: str, **body: Any) -> dict[str, Any]:
        response = self.admin.post(
            "/api/requests", json={"provider": "firma", "signing_request_id": sr_id, **body}
        )
        assert response.status_code == 201, response.text
        answer: dict[str, Any] = response.json()
        return answer


@contextmanager
def stack(
    make_settings: Callable[..., Settings],
    *,
    events: Sequence[str] | None = SIGNING_REQUEST_EVENTS,
    receiver_options: Mapping[str, Any] | None = None,
    **fake_options: Any,
) -> Iterator[tuple[Signback, Firma]]:
    """The emulator (its retries 10 000 times faster) and signback pointed at each other.

    ``events``: what the emulator's webhook for ``/hooks/firma`` subscribes to (None: no
    webhook, signback hears nothing from Firma)."""
    with (
        running_firma(time_factor=0.0001, **fake_options) as (url, fake),
        running_receiver(
            make_settings,
            firma_base_url=f"{url}{API_BASE_PATH}",
            firma_api_key=DEFAULT_API_KEY,
            firma_webhook_secrets=[fake.secret],
            **(receiver_options or {}),
        ) as receiver,
        http_client(receiver.url, authorization=f"Bearer {ADMIN_TOKEN}") as admin,
        http_client(f"{url}{API_BASE_PATH}", authorization=DEFAULT_API_KEY) as api,
        http_client(f"{url}/_fake") as control,
    ):
        firma = Firma(url, fake, api, control)
        if events is not None:
            firma.webhook(f"{receiver.url}/hooks/firma", events)
        yield Signback(receiver, admin), firma


def test_an_early_event_waits_for_registration_then_defaults_go_out_in_one_patch(
    make_settings: Callable[..., Settings],
) -> None:
    with stack(make_settings) as (signback, firma):
        sr = firma.create()
        created = signback.event(
            firma.event_id("signing_request.created", sr["id"]), status="unmatched"
        )
        assert created["kind"] == "request.created"
        assert created["request_id"] is None
        assert "kept until one is" in created["note"]

        registered = signback.register(sr["id"], defaults=DEFAULTS, return_url=RETURN_URL)
        assert registered["requeued_events"] == 1
        return_url = registered["callback_urls"]["return_url"]
        assert return_url.startswith(f"{signback.receiver.url}/return/")

        shown = signback.wait_for_state(registered["id"], "draft")
        assert shown["provider_status"] == "draft"
        created = signback.event(created["event_id"])
        assert (created["request_id"], created["state_before"], created["state_after"]) == (
            registered["id"],
            "registered",
            "draft",
        )
        (action,) = signback.settled_actions(registered["id"])
        assert (action["key"], action["status"]) == ("draft-defaults", "done")
        # The outbox keeps the placeholder; the token-bearing URL is made at send time.
        assert action["payload"]["completion_redirect_url"] == "{signback.return_url}"

        patches = firma.calls("PATCH", sr["id"])
        assert [p["body"] for p in patches] == [{**DEFAULTS, "completion_redirect_url": return_url}]
        assert patches[0]["status"] == 200
        now = firma.get(sr["id"])
        assert now["expiration_hours"] == 48
        assert now["settings"]["send_finish_email"] is False
        assert now["settings"]["require_otp_verification"] is True
        assert now["completion_redirect_url"] == return_url

        # Firma reports the update; processing it (and the duplicate rule trigger from the
        # created event) leads to no second PATCH.
        signback.event(firma.event_id("signing_request.updated", sr["id"]))
        assert len(firma.calls("PATCH", sr["id"])) == 1

        # The redirect Firma will send the signer to comes back through signback.
        with http_client(signback.receiver.url) as browser:
            back = browser.get(return_url.removeprefix(signback.receiver.url))
        assert back.status_code == 303
        assert back.headers["location"] == RETURN_URL


def test_a_request_sent_before_the_rule_ran_is_skipped_with_the_reason(
    make_settings: Callable[..., Settings],
) -> None:
    with stack(make_settings) as (signback, firma):
        sr = firma.create()
        firma.send(sr["id"])
        signback.event(firma.event_id("signing_request.sent", sr["id"]), status="unmatched")

        registered = signback.register(sr["id"], defaults=DEFAULTS)
        (action,) = signback.settled_actions(registered["id"])
        assert action["status"] == "skipped", action
        assert action["last_error"].startswith("not sent: ")
        assert "immutable once it is sent" in action["last_error"]
        assert signback.wait_for_state(registered["id"], "sent")["provider_status"] == "in_progress"
        assert firma.calls("PATCH", sr["id"]) == []
        assert firma.get(sr["id"])["expiration_hours"] != DEFAULTS["expiration_hours"]


@pytest.mark.parametrize("style", ["400", "409"])
def test_an_immutable_answer_is_final_and_says_why(
    make_settings: Callable[..., Settings], style: str
) -> None:
    # signback asks Firma (GET) before writing. That answer ("not_sent") is held back for a
    # moment and the request is sent in between: the PATCH that follows meets a request that
    # has just become immutable. (No webhook, so nothing else tells signback about the send.)
    with stack(make_settings, events=None, immutable_style=style) as (signback, firma):
        sr = firma.create()
        firma.fail_next(delay=1.0, methods=["GET"])
        registered = signback.register(sr["id"], defaults=DEFAULTS)
        wait_until(lambda: firma.calls("GET", sr["id"]), what="signback's GET at the emulator")
        firma.send(sr["id"])

        (action,) = signback.settled_actions(registered["id"])
        assert action["status"] == "dead"
        assert action["attempts"] == 1  # final: not retried
        assert action["last_status_code"] == int(style)
        assert "immutable after sending" in action["last_error"]
        assert action["attempt_log"][0]["outcome"] == "dead"
        order = [
            (c["method"], c["path"].rsplit("/", 1)[1], c["status"])
            for c in firma.all_calls()
            if sr["id"] in c["path"]
        ]
        assert order == [
            ("GET", sr["id"], 200),
            ("POST", "send", 200),
            ("PATCH", sr["id"], int(style)),
        ]


def test_a_429_waits_for_retry_after_and_is_not_counted(
    make_settings: Callable[..., Settings],
) -> None:
    with stack(make_settings) as (signback, firma):
        sr = firma.create()
        firma.fail_next(status=429, retry_after=1, methods=["PATCH"])
        registered = signback.register(sr["id"], defaults=DEFAULTS)
        (action,) = signback.settled_actions(registered["id"])
        assert action["status"] == "done"
        assert action["attempts"] == 1  # the 429 was Firma asking us to wait, not a failure
        assert [a["status_code"] for a in action["attempt_log"]] == [429, 200]
        assert [a["outcome"] for a in action["attempt_log"]] == ["throttled", "ok"]
        assert action["attempt_log"][0]["error"].startswith("throttled: HTTP 429: ")
        first, second = firma.calls("PATCH", sr["id"])
        assert second["time"] - first["time"] >= 0.95  # Retry-After: 1, not the 10 ms backoff


@pytest.mark.parametrize("method", ["PATCH", "GET"])
def test_429s_past_the_attempt_limit_still_end_delivered(
    make_settings: Callable[..., Settings], method: str
) -> None:
    # Firma answers 429 to the write (or to the read before it) more often than the action
    # may fail: each is Firma asking us to wait, so the action is not given up as dead.
    with stack(make_settings, receiver_options={"outbox_max_attempts": 3}) as (signback, firma):
        sr = firma.create()
        firma.fail_next(status=429, retry_after=0, count=6, methods=[method])
        registered = signback.register(sr["id"], defaults=DEFAULTS)
        (action,) = signback.settled_actions(registered["id"])
        assert action["status"] == "done", action
        assert action["attempts"] == 1
        log = action["attempt_log"]
        assert [a["outcome"] for a in log] == ["throttled"] * 6 + ["ok"]
        assert [a["status_code"] for a in log] == [429] * 6 + [200]
        assert {a["attempt"] for a in log} == {1}  # none of them used up an attempt
        assert len(firma.calls("PATCH", sr["id"])) == (7 if method == "PATCH" else 1)
        assert len(firma.calls("GET", sr["id"])) == 7  # one read per attempt, no more
        metrics = signback.admin.get("/metrics").text
        assert (
            'signback_outbox_attempts_total{operation="firma.patch_signing_request",'
            'outcome="throttled"} 6.0' in metrics
        )


def test_writes_are_paced_by_our_own_limit(make_settings: Callable[..., Settings]) -> None:
    # 120 a minute (the most the setting allows: Firma's own limit) is one every 0.5 s.
    # (The default, 100 a minute, keeps signback under Firma's limit with some room.)
    with stack(make_settings, receiver_options={"firma_writes_per_minute": 120}) as (
        signback,
        firma,
    ):
        drafts = [firma.create()["id"] for _ in range(4)]
        for sr_id in drafts:
            signback.register(sr_id, defaults=DEFAULTS)

        def patch_times() -> list[float] | None:
            times = sorted(c["time"] for c in firma.all_calls() if c["method"] == "PATCH")
            return times if len(times) == 4 else None

        times = wait_until(patch_times, what="four PATCHes")
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # The slots are 0.5 s apart; each PATCH follows its slot after one GET, whose
        # latency varies on a busy machine, so single gaps vary by that much.
        assert times[-1] - times[0] >= 1.4, gaps
        assert min(gaps) >= 0.35, gaps


def test_an_action_waiting_for_a_write_slot_reads_nothing(
    make_settings: Callable[..., Settings],
) -> None:
    # One write a minute: the second request's slot is a minute away. Its action is put
    # back until then without a GET (the write slot is taken before the read), and without
    # using up an attempt.
    with stack(make_settings, events=None, receiver_options={"firma_writes_per_minute": 1}) as (
        signback,
        firma,
    ):
        first, second = firma.create()["id"], firma.create()["id"]
        done = signback.register(first, defaults=DEFAULTS)
        (action,) = signback.settled_actions(done["id"])
        assert action["status"] == "done"
        waiting = signback.register(second, defaults=DEFAULTS)

        def deferred() -> dict[str, Any] | None:
            (action,) = signback.show(waiting["id"])["actions"]
            due = datetime.fromisoformat(action["due_at"]).timestamp()
            return action if action["status"] == "pending" and due > time.time() + 30 else None

        action = wait_until(deferred, what="the second action to be deferred")
        assert action["attempts"] == 0
        assert action["attempt_log"] == []
        sent = [(c["method"], c["path"].rsplit("/", 1)[1]) for c in firma.all_calls()]
        assert [c for c in sent if c[0] != "POST"] == [("GET", first), ("PATCH", first)]


def test_a_redelivered_event_is_stored_once(make_settings: Callable[..., Settings]) -> None:
    with stack(make_settings) as (signback, firma):
        sr = firma.create()
        registered = signback.register(sr["id"])
        firma.send(sr["id"])
        signback.wait_for_state(registered["id"], "sent")
        sent_id = firma.event_id("signing_request.sent", sr["id"])
        (first,) = firma.delivered(sent_id)
        for _ in range(2):
            answer = firma.control.post(f"/deliveries/{first['delivery_id']}/redeliver")
            assert answer.status_code == 200, answer.text
        deliveries = firma.delivered(sent_id, count=3)
        assert len({d["delivery_id"] for d in deliveries}) == 3  # X-Firma-Delivery differs
        assert all(d["status"] == 200 for d in deliveries)

        # The same event once more, from us, freshly signed: signback says "duplicate".
        payload = next(
            e["payload"]
            for e in firma.control.get("/events").json()["events"]
            if e["event_id"] == sent_id
        )
        body = json.dumps(payload, separators=(",", ":")).encode()
        with http_client(signback.receiver.url) as client:
            again = client.post(
                "/hooks/firma",
                content=body,
                headers={
                    "content-type": "application/json",
                    "x-firma-signature": sign(firma.fake.secret, body, int(time.time())),
                    "x-firma-delivery": "dlv_by_the_test",
                },
            )
        assert again.json() == {"status": "duplicate"}

        rows = [r for r in signback.inbox() if r["external_id"] == sr["id"]]
        assert [r["event_id"] for r in rows].count(sent_id) == 1
        timeline = signback.show(registered["id"])["timeline"]
        assert [e["provider_type"] for e in timeline].count("signing_request.sent") == 1


def test_an_unknown_event_type_is_stored_and_shown(make_settings: Callable[..., Settings]) -> None:
    with stack(make_settings) as (signback, firma):
        hook = firma.api.get("/webhooks").json()["results"][0]["id"]
        sr = firma.create()
        registered = signback.register(sr["id"])
        signback.wait_for_state(registered["id"], "draft")
        fired = firma.control.post(
            "/events",
            json={
                "type": "signing_request.teleported",
                "signing_request_id": sr["id"],
                "webhook_id": hook,
                "data": {"destination": "moon"},
            },
        ).json()
        row = signback.event(fired["event_id"])
        assert (row["kind"], row["provider_type"]) == ("unknown", "signing_request.teleported")
        assert row["request_id"] == registered["id"]
        assert row["note"] == "unknown does not change the state"
        shown = signback.show(registered["id"])
        assert shown["state"] == "draft"
        assert fired["event_id"] in [e["event_id"] for e in shown["timeline"]]

        # One about nothing signback knows: kept and listed all the same.
        other = firma.control.post(
            "/events", json={"type": "billing.invoice.paid", "webhook_id": hook}
        ).json()
        firma.delivered(other["event_id"])
        listed = wait_until(
            lambda: [r for r in signback.inbox() if r["event_id"] == other["event_id"]],
            what="the second unknown event to be normalized",
        )
        assert (listed[0]["kind"], listed[0]["provider_type"]) == (
            "unknown",
            "billing.invoice.paid",
        )


def test_webhook_test_is_acknowledged_stored_and_changes_nothing(
    make_settings: Callable[..., Settings],
) -> None:
    with stack(make_settings) as (signback, firma):
        hook = firma.api.get("/webhooks").json()["results"][0]["id"]
        sr = firma.create()
        registered = signback.register(sr["id"], defaults=DEFAULTS)
        signback.settled_actions(registered["id"])
        before = signback.wait_for_state(registered["id"], "draft")

        tested = firma.api.post(f"/webhooks/{hook}/test")
        assert tested.status_code == 200, tested.text
        event_id = tested.json()["event_id"]
        (delivery,) = firma.delivered(event_id)
        assert delivery["status"] == 200
        row = signback.event(event_id)
        assert (row["kind"], row["provider_type"]) == ("test", "webhook.test")
        assert row["note"] == "test event: stored, changes nothing"
        assert row["request_id"] is None
        after = signback.show(registered["id"])
        assert (after["state"], after["provider_status"]) == (
            before["state"],
            before["provider_status"],
        )
        assert len(after["actions"]) == len(before["actions"])


def test_completed_before_viewed_ends_completed_and_records_the_late_one(
    make_settings: Callable[..., Settings],
) -> None:
    everything_but_viewed = [e for e in SIGNING_REQUEST_EVENTS if e != "signing_request.viewed"]
    with stack(make_settings, events=everything_but_viewed) as (signback, firma):
        # A second webhook gets `viewed` only, and cannot reach signback at first.
        late_hook = firma.webhook("http://127.0.0.1:9/hooks/firma", ["signing_request.viewed"])
        sr = firma.create()
        registered = signback.register(sr["id"])
        firma.send(sr["id"])
        signback.wait_for_state(registered["id"], "sent")

        (viewed,) = firma.act(sr["id"], "view")
        failed = firma.failed_delivery(viewed["event_id"])
        firma.act(sr["id"], "complete")
        done = signback.wait_for_state(registered["id"], "completed")
        assert done["provider_status"] == "finished"

        # The webhook is fixed and the failed delivery sent again: `viewed` arrives last.
        firma.redeliver(late_hook, f"{signback.receiver.url}/hooks/firma", failed)
        late = signback.event(viewed["event_id"])
        assert (late["kind"], late["state_before"], late["state_after"]) == (
            "request.viewed",
            "completed",
            "completed",
        )
        assert late["note"] == "ignored: request already ended as completed"

        shown = signback.show(registered["id"])
        assert shown["state"] == "completed"
        kinds = [e["kind"] for e in shown["timeline"]]
        assert kinds.index("request.completed") < kinds.index("request.viewed")


def test_a_late_created_leaves_the_sent_status_as_it_is(
    make_settings: Callable[..., Settings],
) -> None:
    """The state machine keeps a request where it is on a late event, and the provider status
    stays with the state: a `created` delivered after `sent` does not say "draft" again."""
    everything_but_created = [e for e in SIGNING_REQUEST_EVENTS if e != "signing_request.created"]
    with stack(make_settings, events=everything_but_created) as (signback, firma):
        late_hook = firma.webhook("http://127.0.0.1:9/hooks/firma", ["signing_request.created"])
        sr = firma.create()
        registered = signback.register(sr["id"])
        created_id = firma.event_id("signing_request.created", sr["id"])
        failed = firma.failed_delivery(created_id)
        firma.send(sr["id"])
        sent = signback.wait_for_state(registered["id"], "sent")
        assert sent["provider_status"] == "in_progress"

        firma.redeliver(late_hook, f"{signback.receiver.url}/hooks/firma", failed)
        late = signback.event(created_id)
        assert (late["state_before"], late["state_after"]) == ("sent", "sent")
        assert late["note"] == "late event ignored: sent is past draft"

        shown = signback.show(registered["id"])
        assert (shown["state"], shown["provider_status"]) == ("sent", "in_progress")


def test_the_older_envelope_drives_the_same_flow(make_settings: Callable[..., Settings]) -> None:
    with stack(make_settings, envelope="old") as (signback, firma):
        sr = firma.create()
        registered = signback.register(sr["id"], defaults=DEFAULTS)
        shown = signback.wait_for_state(registered["id"], "draft")
        assert shown["provider_status"] == "not_sent"  # the old envelope's own status word
        (action,) = signback.settled_actions(registered["id"])
        assert action["status"] == "done"
        firma.send(sr["id"])
        signback.wait_for_state(registered["id"], "sent")
        firma.act(sr["id"], "recipient-signed")
        signback.wait_for_state(registered["id"], "partially_signed")
        firma.act(sr["id"], "complete")
        shown = signback.wait_for_state(registered["id"], "completed")
        provider_types = [e["provider_type"] for e in shown["timeline"]]
        for expected in (
            "signing_request.created",
            "signing_request.sent",
            "signing_request.recipient.signed",
            "signing_request.completed",
        ):
            assert expected in provider_types
        assert len(firma.calls("PATCH", sr["id"])) == 1
