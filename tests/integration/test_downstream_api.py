"""The endpoints admin API: every input checked (a 4xx with the reason, never a 5xx), the
secret shown once and stored encrypted, the outbound-address rules at creation."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from receiver.settings import Settings
from tests.downstream import admin_client
from tests.harness import running_receiver


def fields(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {f["field"]: f["message"] for f in response.json()["fields"]}


def test_endpoint_lifecycle_and_the_secret_shown_only_once(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    with (
        running_receiver(make_settings, endpoint_allow_private=True) as signback,
        admin_client(signback.url) as admin,
    ):
        created = admin.post(
            "/api/endpoints",
            json={
                "url": "http://127.0.0.1:9/hooks?x=1",
                "description": "billing",
                "kinds": ["signature_request.completed", "signback.*"],
                "providers": ["firma"],
                "include_raw": True,
            },
        )
        assert created.status_code == 201, created.text
        body = created.json()
        secret = body["secret"]
        assert secret.startswith("whsec_")
        assert (body["status"], body["kinds"], body["providers"], body["include_raw"]) == (
            "enabled",
            ["signature_request.completed", "signback.*"],
            ["firma"],
            True,
        )
        listed = admin.get("/api/endpoints").json()["items"]
        assert [e["id"] for e in listed] == [body["id"]]
        assert all("secret" not in e for e in listed)
        shown = admin.get(f"/api/endpoints/{body['id']}").json()
        assert "secret" not in shown
        assert shown["deliveries"] == {}

        patched = admin.patch(
            f"/api/endpoints/{body['id']}", json={"description": "billing v2", "kinds": []}
        )
        assert patched.status_code == 200
        assert (patched.json()["description"], patched.json()["kinds"]) == ("billing v2", [])
        disabled = admin.patch(f"/api/endpoints/{body['id']}", json={"status": "disabled"})
        assert disabled.json()["status"] == "disabled"
        assert disabled.json()["disabled_reason"] == "disabled by hand"

        # The database holds the secret encrypted only.
        if database_url.startswith("sqlite"):
            path = database_url.removeprefix("sqlite:///")
            with sqlite3.connect(path) as conn:
                (stored,) = conn.execute("SELECT secret FROM endpoints").fetchone()
        else:
            import psycopg

            with psycopg.connect(database_url) as conn:
                row = conn.execute("SELECT secret FROM endpoints").fetchone()
                assert row is not None
                stored = row[0]
        assert stored.startswith("v1:")
        assert secret not in stored
        assert secret.removeprefix("whsec_") not in stored

        assert admin.delete(f"/api/endpoints/{body['id']}").status_code == 204
        assert admin.get(f"/api/endpoints/{body['id']}").status_code == 404
        assert admin.delete(f"/api/endpoints/{body['id']}").status_code == 404
        assert admin.get("/api/endpoints").json()["items"] == []


def test_bad_input_is_refused_with_reasons(make_settings: Callable[..., Settings]) -> None:
    with (
        running_receiver(make_settings, endpoint_allow_private=True) as signback,
        admin_client(signback.url) as admin,
    ):
        assert admin.post("/api/endpoints", content=b"{nope").status_code == 400
        assert admin.post("/api/endpoints", content=b"[" * 300_000).status_code == 413
        assert "url" in fields(admin.post("/api/endpoints", json={}))
        problems = fields(
            admin.post(
                "/api/endpoints",
                json={
                    "url": "ftp://example.com/x",
                    "kinds": ["signature_request.signed", 7],
                    "providers": ["docusign"],
                    "include_raw": "yes",
                    "colour": "red",
                },
            )
        )
        assert set(problems) == {"kinds.1", "include_raw", "colour"}  # the model's own first
        problems = fields(
            admin.post(
                "/api/endpoints",
                json={
                    "url": "ftp://example.com/x",
                    "kinds": ["signature_request.signed"],
                    "providers": ["docusign"],
                    "description": "a\x00b",
                },
            )
        )
        assert problems["url"] == "must start with http:// or https://"
        assert "unknown event type(s) signature_request.signed" in problems["kinds"]
        assert "unknown provider(s) docusign" in problems["providers"]
        assert "NUL" in problems["description"]
        for url, reason in (
            ("https://user:pw@example.com/", "credentials"),
            ("https://example.com/#frag", "fragment"),
            ("https://example.com/a b", "spaces"),
            ("https://exämple.com/", "ASCII"),
            ("https://example.com:99999/", "not a valid URL"),
            ("https://example.com/?next=https://x", "'://'"),
            ("https:///nohost", "must name a host"),
            ("https://example.com/" + "a" * 2000, "at most 2000"),
        ):
            assert reason in fields(admin.post("/api/endpoints", json={"url": url}))["url"], url
        assert admin.patch("/api/endpoints/1", json={}).status_code == 404
        for path in (
            "/api/endpoints/1",
            "/api/endpoints/0",
            "/api/endpoints/abc",
            "/api/endpoints/" + "9" * 30,
        ):
            assert admin.get(path).status_code == 404
        for action in ("rotate-secret", "test", "replay", "retry-dead"):
            assert admin.post(f"/api/endpoints/12/{action}").status_code == 404
        assert admin.get("/api/endpoints/12/deliveries").status_code == 404
        created = admin.post("/api/endpoints", json={"url": "http://127.0.0.1:9/"}).json()
        base = f"/api/endpoints/{created['id']}"
        assert "status" in fields(admin.patch(base, json={"status": "paused"}))
        assert "url" in fields(admin.patch(base, json={"url": "mailto:x@example.com"}))
        assert admin.patch(base, content=b"nope").status_code == 400
        assert admin.get(f"{base}/deliveries", params={"status": "lost"}).status_code == 422
        assert admin.get(f"{base}/deliveries", params={"limit": "x"}).status_code == 422
        assert admin.get(f"{base}/deliveries", params={"before_id": "9" * 40}).status_code == 200
        replay = admin.post(
            f"{base}/replay",
            json={"since": "2026-01-02T00:00:00", "until": 1e20, "request_id": "7", "x": 1},
        )
        assert set(fields(replay)) == {"since", "until", "request_id", "x"}
        assert (
            "after since"
            in fields(admin.post(f"{base}/replay", json={"since": 2000, "until": 1000}))["until"]
        )
        assert admin.post(f"{base}/replay", content=b"[]").status_code == 422
        assert admin.get("/api/events", params={"type": "nope"}).status_code == 422
        assert admin.get("/api/events", params={"request_id": "9" * 30}).json()["items"] == []
        unauthorized = httpx.get(f"{signback.url}/api/endpoints", timeout=10)
        assert unauthorized.status_code == 401


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:8080/hooks", "127.0.0.1 is a loopback address"),
        (
            "http://localhost:8080/hooks",
            "localhost resolves to 127.0.0.1, which is a loopback address",
        ),
        ("http://10.1.2.3/hooks", "10.1.2.3 is a private address"),
        ("http://169.254.169.254/latest", "169.254.169.254 is a link-local address"),
        ("http://[::1]/hooks", "::1 is a loopback address"),
        ("http://[::ffff:192.168.0.1]/hooks", "192.168.0.1 is a private address"),
        ("http://100.64.0.1/hooks", "100.64.0.1 is not a public address"),
        ("http://0.0.0.0/hooks", "0.0.0.0 is an unspecified address"),
    ],
)
def test_private_addresses_are_refused_unless_allowed(
    make_settings: Callable[..., Settings], url: str, problem: str
) -> None:
    with running_receiver(make_settings) as signback, admin_client(signback.url) as admin:
        refused = fields(admin.post("/api/endpoints", json={"url": url}))
        assert problem in refused["url"]
        assert "SIGNBACK_ENDPOINT_ALLOW_PRIVATE" in refused["url"]
    with (
        running_receiver(make_settings, endpoint_allow_private=True) as signback,
        admin_client(signback.url) as admin,
    ):
        assert admin.post("/api/endpoints", json={"url": url}).status_code == 201


def test_the_host_allow_list(make_settings: Callable[..., Settings]) -> None:
    with (
        running_receiver(
            make_settings,
            endpoint_allow_private=True,
            endpoint_allowed_hosts=["localhost", "*.corp.test"],
        ) as signback,
        admin_client(signback.url) as admin,
    ):
        assert admin.post("/api/endpoints", json={"url": "http://localhost:9/"}).status_code == 201
        assert admin.post("/api/endpoints", json={"url": "http://a.corp.test/"}).status_code == 201
        for url in ("http://127.0.0.1:9/", "http://corp.test/", "http://evilcorp.test/"):
            assert (
                "not in SIGNBACK_ENDPOINT_ALLOWED_HOSTS"
                in fields(admin.post("/api/endpoints", json={"url": url}))["url"]
            )


def test_the_secret_is_never_logged(
    make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    with (
        running_receiver(make_settings, endpoint_allow_private=True) as signback,
        admin_client(signback.url) as admin,
    ):
        created = admin.post("/api/endpoints", json={"url": "http://127.0.0.1:9/"}).json()
        rotated = admin.post(f"/api/endpoints/{created['id']}/rotate-secret").json()
        assert admin.post(f"/api/endpoints/{created['id']}/test").status_code == 202
    captured = capsys.readouterr()
    output: Any = captured.out + captured.err
    assert "endpoint created" in output
    for secret in (created["secret"], rotated["secret"]):
        assert secret.removeprefix("whsec_") not in output


def test_a_replay_of_an_unknown_request_is_refused(make_settings: Callable[..., Settings]) -> None:
    """An id signback never saw is a mistake to report, not an empty window; a known
    request with nothing to send is a 202 that queued nothing."""
    with (
        running_receiver(make_settings, endpoint_allow_private=True) as signback,
        admin_client(signback.url) as admin,
    ):
        created = admin.post("/api/endpoints", json={"url": "http://127.0.0.1:9/x"}).json()
        base = f"/api/endpoints/{created['id']}"
        refused = fields(admin.post(f"{base}/replay", json={"request_id": 999}))
        assert refused == {"request_id": "no request with id 999"}
        known = signback.register(provider="firma", signatureRequestId="sr-quiet")
        quiet = admin.post(f"{base}/replay", json={"request_id": known["id"]})
        assert quiet.status_code == 202, quiet.text
        assert quiet.json()["queued"] == 0


def test_a_patch_with_null_is_refused_not_ignored(make_settings: Callable[..., Settings]) -> None:
    with (
        running_receiver(make_settings, endpoint_allow_private=True) as signback,
        admin_client(signback.url) as admin,
    ):
        created = admin.post(
            "/api/endpoints",
            json={"url": "http://127.0.0.1:9/x", "kinds": ["signature_request.completed"]},
        ).json()
        base = f"/api/endpoints/{created['id']}"
        refused = fields(admin.patch(base, json={"kinds": None, "url": None, "status": None}))
        assert refused == {
            "kinds": "must not be null: leave it out to keep it (an empty list means the default)",
            "status": "must not be null: leave it out to keep it",
            "url": "must not be null: leave it out to keep it",
        }
        unchanged = admin.get(base).json()
        assert (unchanged["url"], unchanged["kinds"]) == (
            "http://127.0.0.1:9/x",
            ["signature_request.completed"],
        )
        assert admin.patch(base, json={"kinds": []}).json()["kinds"] == []
