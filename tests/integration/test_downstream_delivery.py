"""How deliveries fail and recover: retries, Retry-After, 410, dead deliveries and their bulk
re-send, replays, automatic disabling, secret rotation, filters, held deliveries, and the
private-address rule at send time (a proxy in the environment changes nothing). Real HTTP
on loopback, on both databases; every delivery is verified by the ``standardwebhooks``
package (tests/downstream.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from receiver.settings import Settings
from tests.downstream import (
    Answer,
    DownstreamReceiver,
    add_endpoint,
    admin_client,
    running_downstream,
)
from tests.harness import Receiver, running_okdokument, running_receiver, wait_until
from tests.integration.test_downstream_flows import post_firma
from tests.servers import bound_socket


@pytest.fixture
def downstream() -> Iterator[tuple[str, DownstreamReceiver]]:
    with running_downstream() as pair:
        yield pair


def start(make_settings: Callable[..., Settings], **overrides: Any) -> Any:
    return running_receiver(make_settings, endpoint_allow_private=True, **overrides)


def deliveries(signback: Receiver, endpoint_id: int, **query: str) -> list[dict[str, Any]]:
    with admin_client(signback.url) as admin:
        response = admin.get(f"/api/endpoints/{endpoint_id}/deliveries", params=query)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def endpoint(signback: Receiver, endpoint_id: int) -> dict[str, Any]:
    with admin_client(signback.url) as admin:
        response = admin.get(f"/api/endpoints/{endpoint_id}")
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def metrics(signback: Receiver) -> str:
    with admin_client(signback.url) as admin:
        return admin.get("/metrics").text


def firma_request(signback: Receiver, name: str) -> dict[str, Any]:
    return signback.register(provider="firma", signatureRequestId=name)


def test_a_rotated_secret_and_the_previous_one_both_verify_each_delivery(
    make_settings: Callable[..., Settings], downstream: tuple[str, DownstreamReceiver]
) -> None:
    url, receiver = downstream
    with start(make_settings) as signback:
        created = add_endpoint(signback.url, receiver, url, "/rotating")
        old = created["secret"]
        request = firma_request(signback, "sr-rot")
        post_firma(signback, "sr-rot", "signing_request.sent")
        wait_until(lambda: receiver.accepted("/rotating"), what="a delivery")
        first = receiver.to("/rotating")[0]
        assert len(first.headers["webhook-signature"].split(" ")) == 1

        with admin_client(signback.url) as admin:
            rotated = admin.post(f"/api/endpoints/{created['id']}/rotate-secret").json()
            shown = admin.get(f"/api/endpoints/{created['id']}").json()
        new = rotated["secret"]
        assert new.startswith("whsec_")
        assert new != old
        assert rotated["previous_secret_valid_until"] is not None
        assert "secret" not in shown  # shown in full on creation and rotation only
        receiver.secrets["/rotating"] = new
        post_firma(signback, "sr-rot", "signing_request.viewed")
        wait_until(lambda: len(receiver.accepted("/rotating")) == 2, what="a second delivery")
        second = receiver.to("/rotating")[1]
        assert second.event["data"]["request"]["id"] == request["id"]
        assert len(second.headers["webhook-signature"].split(" ")) == 2  # both sign
        for secret in (old, new):  # a receiver holding either secret verifies it
            Webhook(secret).verify(second.body, second.headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(old).verify(second.body, {**second.headers, "webhook-id": "msg_other"})
        assert receiver.problems() == []


def test_410_gone_disables_the_endpoint_and_holds_its_deliveries_until_enabled(
    make_settings: Callable[..., Settings], downstream: tuple[str, DownstreamReceiver]
) -> None:
    url, receiver = downstream
    with start(make_settings) as signback:
        gone = add_endpoint(signback.url, receiver, url, "/gone")
        watcher = add_endpoint(
            signback.url, receiver, url, "/ops", kinds=["signback.endpoint.disabled"]
        )
        receiver.answer("/gone", Answer(status=410, body=b"unsubscribed"))
        firma_request(signback, "sr-gone")
        post_firma(signback, "sr-gone", "signing_request.sent")

        (event,) = wait_until(lambda: receiver.events("/ops"), what="the disabled event")
        assert event["type"] == "signback.endpoint.disabled"
        assert event["data"]["endpoint"]["id"] == gone["id"]
        assert "410" in event["data"]["endpoint"]["reason"]
        shown = endpoint(signback, gone["id"])
        assert shown["status"] == "disabled"
        assert "410" in shown["disabled_reason"]
        (dead,) = deliveries(signback, gone["id"], status="dead")
        assert dead["attempts"] == 1  # final at once: no retries
        assert dead["attempt_log"][0]["status_code"] == 410
        assert dead["attempt_log"][0]["response_excerpt"] == "unsubscribed"
        assert 'signback_endpoints_disabled_total{reason="gone"} 1.0' in metrics(signback)

        # Disabled: new events are not fanned out to it; a test event is refused.
        post_firma(signback, "sr-gone", "signing_request.viewed")
        signback.wait_for_state(int(dead["request_id"]), "viewed")
        with admin_client(signback.url) as admin:
            assert admin.post(f"/api/endpoints/{gone['id']}/test").status_code == 409
            # Re-sent while disabled: held, not attempted.
            assert admin.post(f"/api/endpoints/{gone['id']}/retry-dead").json() == {"requeued": 1}
        assert len(receiver.to("/gone")) == 1
        with admin_client(signback.url) as admin:
            enabled = admin.patch(f"/api/endpoints/{gone['id']}", json={"status": "enabled"})
        assert enabled.json()["status"] == "enabled"
        (again,) = wait_until(lambda: receiver.accepted("/gone"), what="the held delivery")
        assert again.webhook_id == receiver.to("/gone")[0].webhook_id
        assert watcher["id"] != gone["id"]
        assert receiver.problems() == []


def test_retry_after_is_obeyed_and_not_counted_as_an_attempt(
    make_settings: Callable[..., Settings], downstream: tuple[str, DownstreamReceiver]
) -> None:
    url, receiver = downstream
    with start(make_settings, endpoint_max_attempts=1) as signback:
        created = add_endpoint(signback.url, receiver, url, "/busy")
        receiver.answer(
            "/busy",
            Answer(status=429, headers={"retry-after": "1"}),
            Answer(status=503, headers={"retry-after": "1"}),
        )
        firma_request(signback, "sr-busy")
        post_firma(signback, "sr-busy", "signing_request.sent")
        wait_until(lambda: receiver.accepted("/busy"), timeout=15, what="the third try")
        arrivals = [d.received_at for d in receiver.to("/busy")]
        assert len(arrivals) == 3
        assert arrivals[1] - arrivals[0] >= 0.95  # waited as asked, not the 10 ms backoff
        assert arrivals[2] - arrivals[1] >= 0.95
        (delivery,) = wait_until(
            lambda: deliveries(signback, created["id"], status="done"), what="done"
        )
        outcomes = [(a["status_code"], a["outcome"]) for a in delivery["attempt_log"]]
        assert outcomes == [(429, "throttled"), (503, "throttled"), (204, "ok")]
        assert delivery["attempts"] == 1  # max_attempts=1, yet never dead: throttling is free


def test_a_failing_endpoint_ends_dead_with_its_answer_and_is_re_sent_in_bulk(
    make_settings: Callable[..., Settings], downstream: tuple[str, DownstreamReceiver]
) -> None:
    url, receiver = downstream
    with start(make_settings, endpoint_max_attempts=3) as signback:
        created = add_endpoint(signback.url, receiver, url, "/down")
        receiver.default["/down"] = Answer(status=500, body=b"database is down")
        firma_request(signback, "sr-down")
        post_firma(signback, "sr-down", "signing_request.sent")
        post_firma(signback, "sr-down", "signing_request.viewed")

        def both_dead() -> list[dict[str, Any]] | None:
            found = deliveries(signback, created["id"], status="dead")
            return found if len(found) == 2 else None

        dead = wait_until(both_dead, what="both deliveries dead")
        for delivery in dead:
            assert delivery["attempts"] == 3
            assert "gave up after 3 attempts" in delivery["last_error"]
            assert delivery["last_status_code"] == 500
            assert [a["outcome"] for a in delivery["attempt_log"]] == ["retry", "retry", "dead"]
            assert all(a["response_excerpt"] == "database is down" for a in delivery["attempt_log"])
        # The second waited behind the first (per-request order) and was tried after it.
        assert [d["event"]["type"] for d in reversed(dead)] == [
            "signature_request.sent",
            "signature_request.viewed",
        ]
        shown = endpoint(signback, created["id"])
        assert shown["status"] == "enabled"
        assert shown["failing_since"] is not None
        assert "HTTP 500" in shown["last_failure"]
        assert shown["deliveries"] == {"dead": 2}
        first_ids = {d.webhook_id for d in receiver.to("/down")}

        receiver.default["/down"] = Answer(status=200)
        with admin_client(signback.url) as admin:
            assert admin.post(f"/api/endpoints/{created['id']}/retry-dead").json() == {
                "requeued": 2
            }
        wait_until(lambda: len(receiver.accepted("/down")) == 2, what="the re-sent deliveries")
        assert [d.event["type"] for d in receiver.accepted("/down")] == [
            "signature_request.sent",
            "signature_request.viewed",
        ]
        assert {d.webhook_id for d in receiver.accepted("/down")} == first_ids
        wait_until(
            lambda: endpoint(signback, created["id"])["failing_since"] is None,
            what="the failure streak to end",
        )
        assert receiver.problems() == []


def test_replay_re_sends_stored_events_with_their_first_webhook_id(
    make_settings: Callable[..., Settings], downstream: tuple[str, DownstreamReceiver]
) -> None:
    url, receiver = downstream
    with start(make_settings) as signback:
        created = add_endpoint(signback.url, receiver, url, "/replay")
        first = firma_request(signback, "sr-r1")
        firma_request(signback, "sr-r2")
        for sr in ("sr-r1", "sr-r2"):
            post_firma(signback, sr, "signing_request.sent")
            post_firma(signback, sr, "signing_request.completed")
        wait_until(lambda: len(receiver.accepted("/replay")) == 4, what="four deliveries")
        before = [d.webhook_id for d in receiver.accepted("/replay")]
        with admin_client(signback.url) as admin:
            bad = admin.post(f"/api/endpoints/{created['id']}/replay", json={"since": "yesterday"})
            assert bad.status_code == 422
            assert bad.json()["fields"][0]["field"] == "since"
            done = admin.post(
                f"/api/endpoints/{created['id']}/replay",
                json={"request_id": first["id"], "since": "2020-01-01T00:00:00Z"},
            )
        assert done.status_code == 202
        assert done.json() == {"queued": 2, "events": 2, "truncated": False}
        wait_until(lambda: len(receiver.accepted("/replay")) == 6, what="the replayed two")
        replayed = receiver.accepted("/replay")[4:]
        assert [d.webhook_id for d in replayed] == [
            d.webhook_id
            for d in receiver.accepted("/replay")[:4]
            if d.event["data"]["request"]["id"] == first["id"]
        ]
        assert set(before) >= {d.webhook_id for d in replayed}
        assert receiver.problems() == []


def test_an_endpoint_failing_for_too_long_is_disabled_with_an_event_and_a_metric(
    make_settings: Callable[..., Settings], downstream: tuple[str, DownstreamReceiver]
) -> None:
    url, receiver = downstream
    with start(make_settings, endpoint_disable_after_seconds=0.3) as signback:
        failing = add_endpoint(signback.url, receiver, url, "/failing")
        add_endpoint(signback.url, receiver, url, "/ops", kinds=["signback.*"])
        receiver.default["/failing"] = Answer(status=502)
        firma_request(signback, "sr-fail")
        post_firma(signback, "sr-fail", "signing_request.sent")
        (event,) = wait_until(lambda: receiver.events("/ops"), what="the disabled event")
        assert event["type"] == "signback.endpoint.disabled"
        assert "no successful delivery for" in event["data"]["endpoint"]["reason"]
        assert endpoint(signback, failing["id"])["status"] == "disabled"
        assert 'signback_endpoints_disabled_total{reason="failing"} 1.0' in metrics(signback)
        assert receiver.problems() == []


def test_filters_choose_event_types_and_providers(
    make_settings: Callable[..., Settings], downstream: tuple[str, DownstreamReceiver]
) -> None:
    url, receiver = downstream
    with (
        running_okdokument() as (okd_url, fake),
        start(make_settings, okdokument_base_url=okd_url) as signback,
    ):
        add_endpoint(signback.url, receiver, url, "/all")
        add_endpoint(
            signback.url, receiver, url, "/completed", kinds=["signature_request.completed"]
        )
        add_endpoint(signback.url, receiver, url, "/okd-only", providers=["okdokument"])
        add_endpoint(signback.url, receiver, url, "/ops", kinds=["signback.*"])
        firma_request(signback, "sr-filter")
        post_firma(signback, "sr-filter", "signing_request.sent")
        post_firma(signback, "sr-filter", "signing_request.completed")
        # An OKdokument request whose attach PATCH is refused (no such request there): the
        # dead action is an operational event.
        registered = signback.register(
            provider="okdokument", signatureRequestId="sr-missing", documentId="doc-missing"
        )
        (dead,) = wait_until(lambda: receiver.events("/ops"), what="the dead action event")
        wait_until(lambda: len(receiver.accepted("/all")) == 2, what="both firma events")
        assert [e["type"] for e in receiver.events("/all")] == [
            "signature_request.sent",
            "signature_request.completed",
        ]
        assert [e["type"] for e in receiver.events("/completed")] == ["signature_request.completed"]
        assert receiver.events("/okd-only") == []
        assert dead["type"] == "signback.action.dead"
        assert dead["data"]["action"]["operation"] == "okdokument.patch_signature_request"
        assert dead["data"]["action"]["status_code"] == 400
        assert "View ID does not exist" in dead["data"]["action"]["error"]
        assert dead["data"]["request"]["id"] == registered["id"]
        assert fake is not None
        assert receiver.problems() == []


def test_deliveries_never_wait_behind_their_requests_provider_calls(
    make_settings: Callable[..., Settings], downstream: tuple[str, DownstreamReceiver]
) -> None:
    """Lanes: a request whose PATCH keeps failing still has its events delivered."""
    url, receiver = downstream
    with (
        running_okdokument() as (okd_url, fake),
        start(make_settings, okdokument_base_url=okd_url) as signback,
    ):
        add_endpoint(signback.url, receiver, url, "/lanes")
        doc = fake.new_document("c.pdf", b"%PDF-1.4", document_id="doc-lane")
        fake.new_round(doc, signature_request_id="sr-lane", send_info_url=None, result_url=None)
        httpx.post(
            f"{okd_url}/_fake/failures",
            json={"status": 500, "seconds": 600, "methods": ["PATCH"]},
            timeout=10,
        ).raise_for_status()
        registered = signback.register(
            provider="okdokument", signatureRequestId="sr-lane", documentId="doc-lane"
        )
        return_url = registered["callback_urls"]["return_url"].removeprefix(signback.url)
        with signback.client() as client:
            assert client.get(return_url, params={"result": "success"}).status_code in (200, 303)
        (event,) = wait_until(lambda: receiver.events("/lanes"), what="the return event")
        assert event["type"] == "signature_request.signer_returned"
        (attach,) = signback.show(registered["id"])["actions"][:1]
        assert attach["operation"] == "okdokument.patch_signature_request"
        assert attach["status"] in ("pending", "in_flight")  # still failing, still retried
        assert receiver.problems() == []


def test_a_private_address_is_refused_at_send_time_unless_allowed(
    make_settings: Callable[..., Settings], downstream: tuple[str, DownstreamReceiver]
) -> None:
    """An endpoint made while private addresses were allowed (or whose name now resolves
    to one) gets nothing once they are not: the resolved address is checked at connect."""
    url, receiver = downstream
    with start(make_settings) as signback:
        created = add_endpoint(
            signback.url, receiver, url.replace("127.0.0.1", "localhost"), "/private"
        )
    with running_receiver(make_settings, endpoint_allow_private=False) as strict:
        firma_request(strict, "sr-private")
        post_firma(strict, "sr-private", "signing_request.sent")
        (delivery,) = wait_until(
            lambda: [
                d
                for d in deliveries(strict, created["id"])
                if d["attempt_log"] and d["attempts"] >= 2
            ],
            what="refused attempts",
        )
        error = delivery["attempt_log"][0]["error"]
        assert "localhost resolves to" in error
        assert "loopback" in error
        assert delivery["attempt_log"][0]["status_code"] is None
        assert "loopback" in endpoint(strict, created["id"])["last_failure"]
    assert receiver.to("/private") == []  # never connected to


@contextmanager
def listening_proxy() -> Iterator[tuple[str, list[tuple[str, int]]]]:
    """A proxy address that records every connection made to it (and closes it at once):
    whatever came through it would fail, and the list shows that it was tried."""
    sock = bound_socket()
    sock.listen()
    sock.settimeout(0.05)
    connected: list[tuple[str, int]] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, peer = sock.accept()
            except TimeoutError:
                continue
            connected.append(peer)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", connected
    finally:
        stop.set()
        thread.join()
        sock.close()


def send_test(signback: Receiver, endpoint_id: int) -> None:
    # The admin client has its own transport, so httpx ignores the proxy variables for it.
    with admin_client(signback.url) as admin:
        response = admin.post(f"/api/endpoints/{endpoint_id}/test")
    assert response.status_code == 202, response.text


def test_deliveries_ignore_a_proxy_in_the_environment(
    make_settings: Callable[..., Settings],
    downstream: tuple[str, DownstreamReceiver],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Provider calls follow HTTPS_PROXY and friends; deliveries never do. A proxy resolves
    the endpoint's name itself, so through one the private-address check would check
    nothing: a delivery connects directly, and a private address is still refused."""
    url, receiver = downstream
    with start(make_settings) as signback:
        direct = add_endpoint(signback.url, receiver, url, "/direct")
        private = add_endpoint(
            signback.url, receiver, url.replace("127.0.0.1", "localhost"), "/private"
        )
    with listening_proxy() as (proxy_url, connected):
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):
            monkeypatch.setenv(name, proxy_url)
            monkeypatch.setenv(name.lower(), proxy_url)
        with start(make_settings) as signback:
            send_test(signback, direct["id"])
            (delivery,) = wait_until(lambda: receiver.accepted("/direct"), what="a delivery")
            assert delivery.event["type"] == "signback.test"
        with running_receiver(make_settings, endpoint_allow_private=False) as strict:
            send_test(strict, private["id"])
            (refused,) = wait_until(
                lambda: [d for d in deliveries(strict, private["id"]) if d["attempt_log"]],
                what="a refused attempt",
            )
            error = refused["attempt_log"][0]["error"]
            assert "localhost resolves to" in error
            assert "loopback" in error
        assert connected == []  # the proxy never saw a connection
    assert receiver.to("/private") == []
    assert receiver.problems() == []
