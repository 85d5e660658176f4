"""OKdokument end to end over real HTTP: signback and the emulator on loopback, on SQLite
and on PostgreSQL. Each test registers requests, lets the emulator call back, and checks
what signback stored and what reached the emulator."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from handlers.okdokument.fake import FakeOkdokument
from receiver.settings import Settings
from tests.harness import Receiver, running_okdokument, running_receiver, wait_until


@pytest.fixture
def okd() -> Iterator[tuple[str, FakeOkdokument]]:
    with running_okdokument() as pair:
        yield pair


@pytest.fixture
def receiver(
    make_settings: Callable[..., Settings], okd: tuple[str, FakeOkdokument]
) -> Iterator[Receiver]:
    with running_receiver(make_settings, okdokument_base_url=okd[0]) as r:
        yield r


def patches(fake: FakeOkdokument, signature_request_id: str) -> list[dict[str, Any]]:
    return [
        c.body
        for c in fake.calls
        if c.method == "PATCH"
        and isinstance(c.body, dict)
        and c.body.get("signatureRequestId") == signature_request_id
        and c.status == 200
    ]


def seed(fake: FakeOkdokument, sr_id: str, doc_id: str) -> None:
    doc = fake.new_document("contract.pdf", b"%PDF-1.4", document_id=doc_id)
    fake.new_round(doc, signature_request_id=sr_id, send_info_url=None, result_url=None)


def sign(okd_url: str, sr_id: str, action: str = "sign", **body: Any) -> dict[str, Any]:
    response = httpx.post(f"{okd_url}/_fake/{action}/{sr_id}", json=body, timeout=10)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_registration_points_callbacks_at_signback(
    receiver: Receiver, okd: tuple[str, FakeOkdokument]
) -> None:
    _url, fake = okd
    seed(fake, "sr-attach", "doc-attach")
    registered = receiver.register(
        provider="okdokument", signatureRequestId="sr-attach", documentId="doc-attach"
    )
    urls = registered["callback_urls"]
    assert urls["sendinfo_url"].startswith(f"{receiver.url}/hooks/okdokument/")
    assert urls["return_url"].startswith(f"{receiver.url}/return/")
    sent = wait_until(lambda: patches(fake, "sr-attach"), what="the attach PATCH")
    assert sent == [
        {
            "signatureRequestId": "sr-attach",
            "sendInfoURL": urls["sendinfo_url"],
            "resulturl": urls["return_url"],
        }
    ]
    actions = receiver.wait_for_actions(registered["id"], settled=1)
    assert actions[0]["status"] == "done"
    assert actions[0]["attempt_log"][0]["status_code"] == 200
    # The outbox stores placeholders, never the token-bearing URL.
    assert "{signback.sendinfo_url}" in str(actions[0]["payload"])


def test_signed_callback_is_confirmed_before_the_state_moves(
    receiver: Receiver, okd: tuple[str, FakeOkdokument]
) -> None:
    url, fake = okd
    seed(fake, "sr-sign", "doc-sign")
    registered = receiver.register(
        provider="okdokument", signatureRequestId="sr-sign", documentId="doc-sign"
    )
    wait_until(lambda: patches(fake, "sr-sign"), what="attach PATCH")
    result = sign(url, "sr-sign", follow_redirect=True)
    assert result["sendinfo_status"] == 200
    assert result["redirect_status"] == 200  # no return_url registered: our own page
    shown = receiver.wait_for_state(registered["id"], "completed")
    steps = [(e["channel"], e["kind"], e["state_after"]) for e in shown["timeline"]]
    assert ("sendinfo", "request.completed", "registered") in steps  # a claim first
    assert ("confirmation", "request.completed", "completed") in steps  # then confirmed
    assert any(
        e["channel"] == "return" and e["kind"] == "signer.returned" for e in shown["timeline"]
    )


def post_sendinfo(receiver: Receiver, sendinfo_url: str, body: dict[str, Any]) -> httpx.Response:
    path = sendinfo_url.removeprefix(receiver.url)
    with receiver.client() as client:
        return client.post(path, json=body)


def test_a_forged_signed_claim_changes_nothing(
    receiver: Receiver, okd: tuple[str, FakeOkdokument]
) -> None:
    """Someone with the URL claims 'signed'; OKdokument says 'tosign': nothing acts on it."""
    _url, fake = okd
    seed(fake, "sr-forged", "doc-forged")
    registered = receiver.register(
        provider="okdokument",
        signatureRequestId="sr-forged",
        documentId="doc-forged",
        retry_url="https://shop.example/retry",
    )
    body = {"state": "signed", "id": "doc-forged", "signatureRequestId": "sr-forged"}
    assert post_sendinfo(receiver, registered["callback_urls"]["sendinfo_url"], body).json() == {
        "status": "accepted"
    }
    actions = receiver.wait_for_actions(registered["id"], settled=2)
    confirm = next(a for a in actions if a["operation"] == "okdokument.confirm_document_state")
    assert confirm["status"] == "skipped"
    assert "not confirmed" in confirm["last_error"]
    assert "'tosign'" in confirm["last_error"]
    assert receiver.show(registered["id"])["state"] == "registered"


def test_cancel_points_the_next_redirect_at_the_retry_page(
    receiver: Receiver, okd: tuple[str, FakeOkdokument]
) -> None:
    url, fake = okd
    seed(fake, "sr-cancel", "doc-cancel")
    registered = receiver.register(
        provider="okdokument",
        signatureRequestId="sr-cancel",
        documentId="doc-cancel",
        retry_url="https://shop.example/retry?order=7",
        return_url="https://shop.example/thanks",
    )
    wait_until(lambda: patches(fake, "sr-cancel"), what="attach PATCH")
    result = sign(url, "sr-cancel", action="cancel", follow_redirect=True)
    assert result["redirect_status"] == 303  # result=close goes to the retry page at once
    receiver.wait_for_state(registered["id"], "cancelled")
    sent = wait_until(
        lambda: p if len(p := patches(fake, "sr-cancel")) >= 2 else None, what="retry PATCH"
    )
    assert sent[-1] == {
        "signatureRequestId": "sr-cancel",
        "resulturl": "https://shop.example/retry?order=7",
    }
    # The callback and the browser's close both asked for it; one action (key retry-page).
    actions = receiver.wait_for_actions(registered["id"], settled=3)
    assert [a["key"] for a in actions].count("retry-page") == 1


def test_the_same_callback_three_times_is_processed_once(
    receiver: Receiver, okd: tuple[str, FakeOkdokument]
) -> None:
    _url, fake = okd
    seed(fake, "sr-dup", "doc-dup")
    registered = receiver.register(
        provider="okdokument", signatureRequestId="sr-dup", documentId="doc-dup"
    )
    fake.set_state(fake.documents["doc-dup"], "signed")
    body = {"state": "signed", "id": "doc-dup", "signatureRequestId": "sr-dup"}
    answers = [
        post_sendinfo(receiver, registered["callback_urls"]["sendinfo_url"], body).json()
        for _ in range(3)
    ]
    assert answers == [{"status": "accepted"}, {"status": "duplicate"}, {"status": "duplicate"}]
    shown = receiver.wait_for_state(registered["id"], "completed")
    assert [e["channel"] for e in shown["timeline"]].count("sendinfo") == 1
    confirms = [a for a in shown["actions"] if a["operation"].endswith("confirm_document_state")]
    assert len(confirms) == 1


def test_a_late_cancel_claim_never_moves_a_completed_request_back(
    receiver: Receiver, okd: tuple[str, FakeOkdokument]
) -> None:
    url, fake = okd
    seed(fake, "sr-late", "doc-late")
    registered = receiver.register(
        provider="okdokument",
        signatureRequestId="sr-late",
        documentId="doc-late",
        retry_url="https://shop.example/retry",
    )
    wait_until(lambda: patches(fake, "sr-late"), what="attach PATCH")
    sign(url, "sr-late")
    receiver.wait_for_state(registered["id"], "completed")
    late = {"state": "canceled", "id": "doc-late", "signatureRequestId": "sr-late"}
    assert post_sendinfo(receiver, registered["callback_urls"]["sendinfo_url"], late).json() == {
        "status": "accepted"
    }

    def late_event_recorded() -> dict[str, Any] | None:
        shown = receiver.show(registered["id"])
        events = [e for e in shown["timeline"] if e["provider_type"] == "sendinfo:canceled"]
        return shown if events and events[0]["status"] == "processed" else None

    shown = wait_until(late_event_recorded, what="the late event to be processed")
    assert shown["state"] == "completed"
    late_event = next(e for e in shown["timeline"] if e["provider_type"] == "sendinfo:canceled")
    assert "ended as completed" in late_event["note"]
    assert not [a for a in shown["actions"] if a["key"] == "retry-page"]


def test_a_failing_provider_is_retried_until_the_patch_lands(
    receiver: Receiver, okd: tuple[str, FakeOkdokument]
) -> None:
    _url, fake = okd
    seed(fake, "sr-503", "doc-503")
    fake.add_failure(status=503, count=3, methods=frozenset({"PATCH"}))
    registered = receiver.register(
        provider="okdokument", signatureRequestId="sr-503", documentId="doc-503"
    )
    actions = receiver.wait_for_actions(registered["id"], settled=1)
    attach = actions[0]
    assert attach["status"] == "done"
    assert [a["status_code"] for a in attach["attempt_log"]] == [503, 503, 503, 200]
    assert [a["outcome"] for a in attach["attempt_log"]] == ["retry", "retry", "retry", "ok"]


def test_retry_after_is_obeyed(receiver: Receiver, okd: tuple[str, FakeOkdokument]) -> None:
    _url, fake = okd
    seed(fake, "sr-429", "doc-429")
    fake.add_failure(status=429, count=1, retry_after=1, methods=frozenset({"PATCH"}))
    registered = receiver.register(
        provider="okdokument", signatureRequestId="sr-429", documentId="doc-429"
    )
    attach = receiver.wait_for_actions(registered["id"], settled=1)[0]
    first, second = attach["attempt_log"]
    assert first["status_code"] == 429
    assert second["status_code"] == 200
    times = [c.time for c in fake.calls if c.method == "PATCH"]
    assert times[1] - times[0] >= 0.95  # waited for Retry-After: 1, not the 10 ms backoff


def test_a_final_error_leaves_the_action_dead_with_the_providers_message(
    receiver: Receiver, okd: tuple[str, FakeOkdokument]
) -> None:
    _url, fake = okd  # "sr-unknown" is not known to the emulator: 400 View ID does not exist
    registered = receiver.register(
        provider="okdokument", signatureRequestId="sr-unknown", documentId="doc-unknown"
    )
    attach = receiver.wait_for_actions(registered["id"], settled=1)[0]
    assert attach["status"] == "dead"
    assert attach["attempts"] == 1  # 400 is final: no retries
    assert "View ID does not exist: sr-unknown" in attach["last_error"]
    with receiver.admin() as admin:
        dead = admin.get("/api/outbox", params={"status": "dead"}).json()["items"]
        assert [a["id"] for a in dead] == [attach["id"]]
        # Fix the cause, then re-queue: the operator's way out.
        seed(fake, "sr-unknown", "doc-unknown")
        assert admin.post(f"/api/outbox/{attach['id']}/retry").status_code == 200
        assert admin.post("/api/outbox/999999/retry").status_code == 404
    wait_until(lambda: patches(fake, "sr-unknown"), what="the re-queued PATCH")
    again = receiver.wait_for_actions(registered["id"], settled=1)[0]
    assert again["status"] == "done"
    assert again["attempts"] == 2
