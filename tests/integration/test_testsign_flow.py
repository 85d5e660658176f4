"""A provider that exists only in the tests (tests/providers/testsign), plugged in through
``SIGNBACK_PROVIDER_MODULES`` with no edit to ``receiver/``, end to end over real HTTP:
a signed form-encoded callback → the plain-text acknowledgement → the request's state → its
rule → its operation reaching a local server with a fresh OAuth token per call; the signer's
browser return read by the provider; its settings and commands found like the shipped ones."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from receiver import cli, jsonutil
from receiver.providers.registry import MODULES_VARIABLE
from receiver.settings import Settings
from receiver.store.db import open_database
from tests.harness import Receiver, running_receiver, wait_until
from tests.providers.testsign import fake as testsign_fake
from tests.providers.testsign.settings import TestsignSettings
from tests.providers.testsign.signature import headers_for
from tests.servers import running_server

SECRET = "t" * 40


@pytest.fixture
def testsign_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODULES_VARIABLE, "tests.providers.testsign")


@pytest.fixture
def testsign_api() -> Iterator[tuple[str, testsign_fake.FakeTestsign]]:
    fake = testsign_fake.FakeTestsign()
    with running_server(testsign_fake.create_app(fake)) as url:
        yield url, fake


def callback(receiver: Receiver, envelope_id: str, status: str) -> httpx.Response:
    body = urllib.parse.urlencode(
        {"event_id": f"evt-{uuid.uuid4().hex}", "envelope_id": envelope_id, "status": status}
    ).encode()
    headers = {
        "content-type": "application/x-www-form-urlencoded",
        **headers_for(body, [SECRET], int(time.time())),
    }
    with receiver.client() as client:
        return client.post("/hooks/testsign", content=body, headers=headers)


async def stored_headers(url: str) -> list[dict[str, Any]]:
    """The headers stored with Testsign's callbacks, as the inbox holds them."""
    db = open_database(url)
    await db.connect()
    try:
        rows = await db.fetch_all(
            "SELECT headers FROM inbox WHERE provider = 'testsign' AND channel = 'webhook'"
        )
    finally:
        await db.close()
    return [jsonutil.loads_object(row["headers"]) for row in rows]


def running(make_settings: Callable[..., Settings], api: str, **overrides: Any) -> Any:
    return running_receiver(
        make_settings,
        testsign_base_url=api,
        testsign_client_id=testsign_fake.CLIENT_ID,
        testsign_client_secret=testsign_fake.CLIENT_SECRET,
        testsign_secrets=[SECRET],
        **overrides,
    )


@pytest.mark.usefixtures("testsign_installed")
def test_callback_state_rule_and_operation_end_to_end(
    make_settings: Callable[..., Settings],
    testsign_api: tuple[str, testsign_fake.FakeTestsign],
) -> None:
    api, fake = testsign_api
    with running(make_settings, api) as receiver:
        first = receiver.register(provider="testsign", signatureRequestId="env-1")
        assert first["callback_urls"] == {
            "return_url": first["callback_urls"]["return_url"],
            "events_url": f"{receiver.url}/hooks/testsign",
        }
        for status in ("sent", "completed"):
            answer = callback(receiver, "env-1", status)
            assert answer.status_code == 200, answer.text
            assert answer.text == "Hello API Event Received"
            assert answer.headers["content-type"] == "text/plain; charset=utf-8"
        shown = receiver.wait_for_state(first["id"], "completed")
        assert [e["provider_type"] for e in shown["timeline"]][-2:] == ["sent", "completed"]
        (action,) = receiver.wait_for_actions(first["id"], settled=1)
        assert action["status"] == "done", action
        assert action["operation"] == "testsign.archive"
        assert action["attempt_log"][0]["status_code"] == 200

        second = receiver.register(provider="testsign", signatureRequestId="env-2")
        assert callback(receiver, "env-2", "completed").status_code == 200
        receiver.wait_for_actions(second["id"], settled=1)
    # The operation reached the local server, its placeholder filled with Testsign's own URL,
    # each call with its own access token (they expire at once here): per-call auth.
    assert [(a.envelope_id, a.body) for a in fake.archived] == [
        ("env-1", {"notify": f"{receiver.url}/hooks/testsign"}),
        ("env-2", {"notify": f"{receiver.url}/hooks/testsign"}),
    ]
    assert [a.authorization for a in fake.archived] == ["Bearer tok-1", "Bearer tok-2"]


@pytest.mark.usefixtures("testsign_installed")
def test_signature_headers_never_reach_the_inbox_and_the_return_is_read_by_the_provider(
    make_settings: Callable[..., Settings],
    testsign_api: tuple[str, testsign_fake.FakeTestsign],
) -> None:
    api, _ = testsign_api
    with running(make_settings, api) as receiver:
        request = receiver.register(
            provider="testsign",
            signatureRequestId="env-3",
            return_url="https://shop.example/done",
            retry_url="https://shop.example/again",
        )
        assert callback(receiver, "env-3", "delivered").status_code == 200
        back = request["callback_urls"]["return_url"].removeprefix(receiver.url)
        with receiver.client() as client:
            cancelled = client.get(back, params={"event": "cancel"})
            finished = client.get(back, params={"event": "signing_complete"})
        assert (cancelled.status_code, cancelled.headers["location"]) == (
            303,
            "https://shop.example/again",
        )
        assert finished.headers["location"] == "https://shop.example/done"
        with receiver.admin() as admin:

            def stored() -> list[dict[str, Any]] | None:
                items = admin.get("/api/inbox", params={"provider": "testsign"}).json()["items"]
                return items if len(items) >= 4 else None

            items = wait_until(stored, what="the registration, the callback and two returns")
        assert sorted(i["channel"] for i in items) == ["return", "return", "signback", "webhook"]
        (headers,) = asyncio.run(stored_headers(receiver.settings.database_url))
        assert headers["x-testsign-signature-1"] == "[redacted]"
        assert headers["x-testsign-timestamp"].isdigit()
        timeline = receiver.show(request["id"])["timeline"]
        returns = [e for e in timeline if e["kind"] == "signer.returned"]
        assert sorted(e["provider_type"] for e in returns) == [
            "return:cancel",
            "return:signing_complete",
        ]


@pytest.mark.usefixtures("testsign_installed")
def test_its_settings_and_commands_come_from_the_registry(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(testsign_secrets="a,b", testsign_tolerance_seconds=30)
    section = settings.section(TestsignSettings)
    assert [s.get_secret_value() for s in section.secrets] == ["a", "b"]
    assert section.tolerance_seconds == 30
    runner = CliRunner()
    for group in ("fake", "simulate"):
        listed = runner.invoke(cli.main, [group, "--help"], prog_name="signback")
        assert listed.exit_code == 0, listed.output
        assert "testsign" in listed.output
        assert "okdokument" in listed.output
    helped = runner.invoke(cli.main, ["simulate", "testsign", "--help"], prog_name="signback")
    assert "A signed Testsign callback" in helped.output
    choices = runner.invoke(cli.main, ["requests", "add", "--help"], prog_name="signback")
    assert "[firma|okdokument|testsign]" in choices.output


def test_without_the_variable_it_is_not_there(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(MODULES_VARIABLE, raising=False)
    with running_receiver(make_settings) as receiver, receiver.client() as client:
        assert client.post("/hooks/testsign", content=b"x").status_code == 404
        with receiver.admin() as admin:
            refused = admin.post(
                "/api/requests", json={"provider": "testsign", "signatureRequestId": "x"}
            )
        assert refused.status_code == 422
