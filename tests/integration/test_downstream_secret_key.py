"""After ``SIGNBACK_SECRET_KEY`` changes, the stored endpoint secrets are unreadable; the
documented remedy (rotate the secret, re-send the dead deliveries) must work at once, not
after the 24 h overlap during which the unreadable old secret would otherwise be kept to
sign. Real HTTP on loopback, both databases, verified by ``standardwebhooks``."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from receiver.settings import Settings
from tests.downstream import DownstreamReceiver, add_endpoint, admin_client, running_downstream
from tests.harness import wait_until
from tests.integration.test_downstream_delivery import deliveries, firma_request, start
from tests.integration.test_downstream_flows import post_firma

ANOTHER_KEY = "another-secret-key-for-this-test-0123456789abcdef"


@pytest.fixture
def downstream() -> Iterator[tuple[str, DownstreamReceiver]]:
    with running_downstream() as pair:
        yield pair


def test_rotating_after_the_secret_key_changed_makes_deliveries_verify_again(
    make_settings: Callable[..., Settings], downstream: tuple[str, DownstreamReceiver]
) -> None:
    url, receiver = downstream
    with start(make_settings) as signback:
        created = add_endpoint(signback.url, receiver, url, "/rekeyed")
    endpoint_id = created["id"]

    with start(make_settings, secret_key=ANOTHER_KEY) as signback:
        firma_request(signback, "sr-rekey")
        post_firma(signback, "sr-rekey", "signing_request.sent")
        wait_until(lambda: deliveries(signback, endpoint_id, status="dead"), what="a dead delivery")
        (dead,) = deliveries(signback, endpoint_id, status="dead")
        # The reason reads as one sentence and says what to do.
        assert "SIGNBACK_SECRET_KEY changed" in dead["last_error"]
        assert "rotate-secret" in dead["last_error"]
        assert "\n" not in dead["last_error"]
        assert receiver.to("/rekeyed") == []  # nothing went out unsigned

        with admin_client(signback.url) as admin:
            rotated = admin.post(f"/api/endpoints/{endpoint_id}/rotate-secret")
            assert rotated.status_code == 200, rotated.text
            # The old secret cannot sign, so it is not kept for the overlap.
            assert rotated.json()["previous_secret_valid_until"] is None
            receiver.secrets["/rekeyed"] = rotated.json()["secret"]
            requeued = admin.post(f"/api/endpoints/{endpoint_id}/retry-dead").json()
        assert requeued == {"requeued": 1}
        post_firma(signback, "sr-rekey", "signing_request.viewed")
        wait_until(lambda: len(receiver.accepted("/rekeyed")) == 2, what="two deliveries")

    sent, viewed = receiver.accepted("/rekeyed")
    assert [d.event["type"] for d in (sent, viewed)] == [
        "signature_request.sent",
        "signature_request.viewed",
    ]
    for delivery in (sent, viewed):
        assert len(delivery.headers["webhook-signature"].split(" ")) == 1
        Webhook(rotated.json()["secret"]).verify(delivery.body, delivery.headers)
    assert receiver.problems() == []


def test_a_previous_secret_the_key_cannot_open_does_not_stop_deliveries(
    make_settings: Callable[..., Settings],
    database_url: str,
    downstream: tuple[str, DownstreamReceiver],
) -> None:
    """A row an earlier version left: rotated after the key changed, so the previous
    secret, still inside its overlap, is sealed under the old key. The current secret signs
    alone; the delivery is not given up."""
    url, receiver = downstream
    with start(make_settings) as signback:
        created = add_endpoint(signback.url, receiver, url, "/left-over")
    ((old_sealed,),) = query(database_url, "SELECT secret FROM endpoints")
    with start(make_settings, secret_key=ANOTHER_KEY) as signback:
        with admin_client(signback.url) as admin:
            rotated = admin.post(f"/api/endpoints/{created['id']}/rotate-secret").json()
            receiver.secrets["/left-over"] = rotated["secret"]
            query(
                database_url,
                "UPDATE endpoints SET previous_secret = {p}, previous_secret_until = {p}",
                (old_sealed, time.time() + 86400),
            )
            # A PATCH (here one that changes nothing) drops the cached view of the
            # endpoints, so the edited row is read at once.
            admin.patch(f"/api/endpoints/{created['id']}", json={}).raise_for_status()
            assert admin.post(f"/api/endpoints/{created['id']}/test").status_code == 202
        wait_until(lambda: receiver.to("/left-over"), what="the test event")
        assert deliveries(signback, created["id"], status="dead") == []
    (delivery,) = receiver.accepted("/left-over")
    assert len(delivery.headers["webhook-signature"].split(" ")) == 1
    assert receiver.problems() == []


def query(database_url: str, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run one statement on the test's database directly ({p} marks a parameter)."""
    if database_url.startswith("sqlite"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            return conn.execute(statement.format(p="?"), params).fetchall()
    import psycopg

    with psycopg.connect(database_url) as conn:
        # bytes: psycopg's typing takes a literal string or bytes, not a formatted str
        cursor = conn.execute(statement.format(p="%s").encode(), params)
        return cursor.fetchall() if cursor.description else []
