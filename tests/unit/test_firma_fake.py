"""The Firma.dev emulator: the API in-process, webhook deliveries over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from handlers.firma import signature
from handlers.firma.fake import (
    API_BASE_PATH,
    FakeFirma,
    RateLimits,
    create_app,
    key_id_of,
    max_in_window,
)
from receiver.errors import ConfigurationError, SignatureInvalid
from tests.servers import running_server

pytestmark = pytest.mark.anyio

KEY = "test-firma-key"
OTHER_KEY = "second-firma-key"
SECRET = "0123456789abcdef" * 4
NEW_SECRET = "fedcba9876543210" * 4
ORIGIN = "http://fake.test"


def _pdf(pages: int) -> str:
    kids = b"".join(b"<< /Type /Page /Parent 2 0 R >>\n" for _ in range(pages))
    raw = b"%PDF-1.4\n<< /Type /Pages /Count " + str(pages).encode() + b" >>\n" + kids + b"%%EOF"
    return base64.b64encode(raw).decode()


def _request_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "NDA - Acme Corp",
        "description": "Mutual NDA",
        "document": _pdf(2),
        "recipients": [
            {"first_name": "Alice", "last_name": "Johnson", "email": "alice@example.com"},
            {"first_name": "Bob", "last_name": "Smith", "email": "bob@example.com", "order": 2},
        ],
        "expiration_hours": 72,
    }
    body.update(overrides)
    return body


class ManualClock:
    """Unix time that only moves when told, so rate-limit windows need no sleeping."""

    def __init__(self, now: float = 1_760_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fake(clock: ManualClock) -> FakeFirma:
    return FakeFirma(api_key=[KEY, OTHER_KEY], secret=SECRET, clock=clock)


@dataclass
class Clients:
    api: httpx.AsyncClient  # authenticated, rooted at the API base path
    control: httpx.AsyncClient  # rooted at the origin, no auth
    bare: httpx.AsyncClient  # rooted at the API base path, no auth


@contextlib.asynccontextmanager
async def _clients(fake: FakeFirma, *, lifespan: bool = False) -> AsyncIterator[Clients]:
    app = create_app(fake)
    transport = httpx.ASGITransport(app=app)
    async with contextlib.AsyncExitStack() as stack:
        if lifespan:  # ASGITransport does not run the lifespan: the webhook client needs it
            await stack.enter_async_context(app.router.lifespan_context(app))
        api = httpx.AsyncClient(
            transport=transport, base_url=ORIGIN + API_BASE_PATH, headers={"Authorization": KEY}
        )
        control = httpx.AsyncClient(transport=transport, base_url=ORIGIN)
        bare = httpx.AsyncClient(transport=transport, base_url=ORIGIN + API_BASE_PATH)
        for client in (api, control, bare):
            await stack.enter_async_context(client)
        yield Clients(api, control, bare)


@pytest.fixture
async def http(fake: FakeFirma) -> AsyncIterator[Clients]:
    async with _clients(fake) as clients:
        yield clients


async def _create(api: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    response = await api.post("/signing-requests", json=_request_body(**overrides))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def _sent(api: httpx.AsyncClient) -> dict[str, Any]:
    created = await _create(api)
    response = await api.post(f"/signing-requests/{created['id']}/send")
    assert response.status_code == 200, response.text
    sent: dict[str, Any] = response.json()
    return sent


# ---------------------------------------------------------------------------------------------
# Auth


async def test_auth_missing_wrong_and_bearer(http: Clients) -> None:
    missing = await http.bare.get("/signing-requests")
    wrong = await http.bare.get("/signing-requests", headers={"Authorization": "nope"})
    bearer = await http.bare.get("/signing-requests", headers={"Authorization": f"Bearer {KEY}"})
    other = await http.bare.get("/signing-requests", headers={"Authorization": OTHER_KEY})

    assert missing.status_code == 401
    assert missing.json()["code"] == "UNAUTHORIZED"
    assert wrong.status_code == 401
    assert wrong.json()["code"] == "UNAUTHORIZED"
    assert "x-ratelimit-limit" not in wrong.headers  # refused before any counting
    assert bearer.status_code == 200
    assert other.status_code == 200

    calls = (await http.control.get("/_fake/calls")).json()["calls"]
    assert [c["status"] for c in calls] == [401, 401, 200, 200]
    assert {c["method"] for c in calls} == {"GET"}
    assert calls[0]["path"] == f"{API_BASE_PATH}/signing-requests"
    assert KEY not in json.dumps(calls)
    assert OTHER_KEY not in json.dumps(calls)


# ---------------------------------------------------------------------------------------------
# Signing requests and their status flow


async def test_status_flow_and_409s(http: Clients, clock: ManualClock) -> None:
    created = await _create(http.api)
    assert created["status"] == "draft"  # create says draft …
    assert created["document_page_count"] == 2
    assert created["expires_at"] is None
    assert created["date_sent"] is None
    assert created["settings"]["allow_download"] is True
    assert [r["email"] for r in created["recipients"]] == ["alice@example.com", "bob@example.com"]
    assert {"id", "document_url", "credit_cost", "certificate", "date_created"} <= created.keys()
    sr_id = created["id"]

    fetched = (await http.api.get(f"/signing-requests/{sr_id}")).json()
    listed = (await http.api.get("/signing-requests")).json()
    assert fetched["status"] == "not_sent"  # … GET and list say not_sent
    assert [item["status"] for item in listed["results"]] == ["not_sent"]
    assert listed["pagination"]["total"] == 1

    document = await http.control.get(fetched["document_url"].removeprefix(ORIGIN))
    assert document.content == base64.b64decode(_pdf(2))

    clock.now += 10
    sent = await http.api.post(f"/signing-requests/{sr_id}/send")
    assert sent.status_code == 200
    assert sent.json()["status"] == "in_progress"
    assert sent.json()["date_sent"] is not None
    assert sent.json()["expires_at"] is not None

    again = await http.api.post(f"/signing-requests/{sr_id}/send")
    assert again.status_code == 409
    assert again.json()["code"] == "ALREADY_SENT"

    deleted = await http.api.delete(f"/signing-requests/{sr_id}")
    assert deleted.status_code == 409
    assert deleted.json() == {
        "error": "Cannot delete a signing request that has been sent. Use cancel instead.",
        "code": "ALREADY_SENT",
    }

    cancelled = await http.api.post(f"/signing-requests/{sr_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["date_cancelled"] is not None
    cancelled_again = await http.api.post(f"/signing-requests/{sr_id}/cancel")
    assert cancelled_again.status_code == 409

    events = (await http.control.get("/_fake/events")).json()["events"]
    assert [e["type"] for e in events] == [
        "signing_request.created",
        "signing_request.sent",
        "signing_request.cancelled",
    ]


async def test_draft_can_be_deleted_not_cancelled(http: Clients) -> None:
    created = await _create(http.api)
    cancel = await http.api.post(f"/signing-requests/{created['id']}/cancel")
    assert cancel.status_code == 409

    deleted = await http.api.delete(f"/signing-requests/{created['id']}")
    assert deleted.status_code == 200
    assert (await http.api.get(f"/signing-requests/{created['id']}")).status_code == 404
    assert (await http.api.get("/signing-requests")).json()["results"] == []
    events = (await http.control.get("/_fake/events")).json()["events"]
    assert events[-1]["type"] == "signing_request.deleted"


async def test_create_and_send(http: Clients) -> None:
    response = await http.api.post("/signing-requests/create-and-send", json=_request_body())
    assert response.status_code == 201
    assert response.json()["status"] == "in_progress"

    no_signer = await http.api.post(
        "/signing-requests/create-and-send", json=_request_body(recipients=[])
    )
    assert no_signer.status_code == 400
    assert no_signer.json()["code"] == "VALIDATION_ERROR"
    # Atomic: the refused one was not stored.
    assert (await http.api.get("/signing-requests")).json()["pagination"]["total"] == 1


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"document": _pdf(1)}, "name"),
        ({"name": "No document"}, "document"),
        (_request_body(recipients=[{"email": "not-an-email"}]), "recipients[0].email"),
        (_request_body(expiration_hours=0), "expiration_hours"),
        (_request_body(document="%%% not base64 %%%"), "document"),
    ],
)
async def test_create_validation(http: Clients, body: dict[str, Any], detail: str) -> None:
    response = await http.api.post("/signing-requests", json=body)
    assert response.status_code == 400
    assert response.json()["code"] == "VALIDATION_ERROR"
    assert detail in response.json()["details"]


async def test_invalid_json_and_unknown_id(http: Clients) -> None:
    bad = await http.api.post(
        "/signing-requests", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert bad.status_code == 400
    assert bad.json()["code"] == "INVALID_JSON"
    missing = await http.api.get("/signing-requests/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404
    assert missing.json()["code"] == "NOT_FOUND"


# ---------------------------------------------------------------------------------------------
# PATCH


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"name": "x" * 255}, {"name": "x" * 255}),
        ({"description": None}, {"description": None}),
        ({"expiration_hours": 1}, {"expiration_hours": 1}),
        ({"document": _pdf(3)}, {"document_page_count": 3}),
        ({"language": "de"}, {"language": "de"}),
        (
            {"completion_redirect_url": "https://example.com/done", "completion_redirect_delay": 0},
            {"completion_redirect_url": "https://example.com/done", "completion_redirect_delay": 0},
        ),
        (
            {"completion_title": "Thanks", "completion_message": None},
            {"completion_title": "Thanks", "completion_message": None},
        ),
    ],
)
async def test_patch_valid(http: Clients, patch: dict[str, Any], expected: dict[str, Any]) -> None:
    created = await _create(http.api)
    response = await http.api.patch(f"/signing-requests/{created['id']}", json=patch)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "not_sent"
    for key, value in expected.items():
        assert answer[key] == value
    stored = (await http.api.get(f"/signing-requests/{created['id']}")).json()
    for key, value in expected.items():
        assert stored[key] == value
    events = (await http.control.get("/_fake/events")).json()["events"]
    assert events[-1]["type"] == "signing_request.updated"


async def test_patch_settings_merge(http: Clients) -> None:
    created = await _create(http.api)
    response = await http.api.patch(
        f"/signing-requests/{created['id']}", json={"settings": {"hand_drawn_only": True}}
    )
    assert response.status_code == 200
    settings = response.json()["settings"]
    assert settings["hand_drawn_only"] is True
    assert settings["allow_download"] is True  # untouched keys keep their values


@pytest.mark.parametrize(
    ("patch", "detail"),
    [
        ({"name": "x" * 256}, "name"),
        ({"name": 5}, "name"),
        ({"description": 5}, "description"),
        ({"document": "not base64!!"}, "document"),
        ({"document": ""}, "document"),
        ({"expiration_hours": 0}, "expiration_hours"),
        ({"expiration_hours": True}, "expiration_hours"),
        ({"expiration_hours": "5"}, "expiration_hours"),
        ({"expiration_hours": 1.5}, "expiration_hours"),
        ({"settings": "yes"}, "settings"),
        ({"settings": {"allow_download": "yes"}}, "settings"),
        ({"completion_redirect_url": "ftp://example.com/"}, "completion_redirect_url"),
        ({"completion_redirect_url": "/relative"}, "completion_redirect_url"),
        ({"completion_redirect_delay": -1}, "completion_redirect_delay"),
        ({"completion_redirect_delay": False}, "completion_redirect_delay"),
        ({"language": ""}, "language"),
        ({"status": "finished"}, "status"),
        ({"name": "ok", "unknown": 1}, "unknown"),
        ({"name": "ok", "recipient": {"email": "c@example.com"}}, "recipient"),
        ({"recipient": {"email": "c@example.com"}, "field": {"type": "text"}}, "field"),
        ({}, "body"),
        ({"recipient": {"first_name": "No email"}}, "recipient.email"),
        ({"recipient": {"id": "nope", "email": "c@example.com"}}, "recipient.id"),
        ({"field": {"position": {"x": 1}}}, "field.type"),
    ],
)
async def test_patch_invalid(http: Clients, patch: dict[str, Any], detail: str) -> None:
    created = await _create(http.api)
    response = await http.api.patch(f"/signing-requests/{created['id']}", json=patch)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "VALIDATION_ERROR"
    assert detail in body["details"]
    stored = (await http.api.get(f"/signing-requests/{created['id']}")).json()
    assert stored["name"] == created["name"]  # nothing applied


async def test_patch_recipient_and_field(http: Clients) -> None:
    created = await _create(http.api)
    sr_id = created["id"]
    alice = created["recipients"][0]

    updated = await http.api.patch(
        f"/signing-requests/{sr_id}", json={"recipient": {"id": alice["id"], "last_name": "Doe"}}
    )
    added = await http.api.patch(
        f"/signing-requests/{sr_id}",
        json={"recipient": {"email": "carol@example.com", "designation": "CC"}},
    )
    field = await http.api.patch(
        f"/signing-requests/{sr_id}",
        json={"field": {"type": "signature", "page_number": 1, "recipient_id": alice["id"]}},
    )

    assert updated.status_code == 200
    assert updated.json()["recipients"][0]["last_name"] == "Doe"
    assert added.status_code == 200
    assert [r["email"] for r in added.json()["recipients"]][-1] == "carol@example.com"
    assert field.status_code == 200
    assert field.json()["fields"][0]["type"] == "signature"


async def test_patch_after_send_is_immutable_400(http: Clients) -> None:
    sent = await _sent(http.api)
    response = await http.api.patch(f"/signing-requests/{sent['id']}", json={"name": "Too late"})
    assert response.status_code == 400
    assert response.json() == {
        "error": "Cannot update signing request",
        "message": "Signing request has already been sent and cannot be modified",
    }
    assert (await http.api.get(f"/signing-requests/{sent['id']}")).json()["name"] != "Too late"


@pytest.mark.parametrize("finish", ["cancel", "complete"])
async def test_patch_after_finish_is_immutable_409_style(clock: ManualClock, finish: str) -> None:
    fake = FakeFirma(api_key=KEY, secret=SECRET, clock=clock, immutable_style="409")
    async with _clients(fake) as http:
        sent = await _sent(http.api)
        if finish == "cancel":
            await http.api.post(f"/signing-requests/{sent['id']}/cancel")
        else:
            done = await http.control.post(f"/_fake/signing-requests/{sent['id']}/complete")
            assert done.json()["status"] == "finished"
        response = await http.api.patch(f"/signing-requests/{sent['id']}", json={"name": "x"})
    assert response.status_code == 409
    assert response.json()["code"] == "ALREADY_SENT"
    assert "error" in response.json()


# ---------------------------------------------------------------------------------------------
# Rate limits


async def test_rate_limit_sliding_window(clock: ManualClock) -> None:
    limits = RateLimits(read=2, write=5, send=1)
    fake = FakeFirma(api_key=[KEY, OTHER_KEY], secret=SECRET, clock=clock, rate_limits=limits)
    async with _clients(fake) as http:
        start = clock.now
        first = await http.api.get("/signing-requests")
        clock.now += 10
        second = await http.api.get("/signing-requests")
        refused = await http.api.get("/signing-requests")
        other_key = await http.api.get("/signing-requests", headers={"Authorization": OTHER_KEY})
        write = await http.api.post("/signing-requests", json=_request_body())

        assert first.status_code == 200
        assert first.headers["X-RateLimit-Limit"] == "2"
        assert first.headers["X-RateLimit-Remaining"] == "1"
        assert first.headers["X-RateLimit-Reset"] == str(int(start + 60))
        assert second.headers["X-RateLimit-Remaining"] == "0"
        assert refused.status_code == 429
        assert refused.json()["code"] == "RATE_LIMIT_EXCEEDED"
        assert refused.json()["error"] == "Too Many Requests"
        assert refused.json()["message"]
        assert refused.headers["Retry-After"] == "50"
        assert refused.headers["X-RateLimit-Limit"] == "2"
        assert refused.headers["X-RateLimit-Remaining"] == "0"
        assert refused.headers["X-RateLimit-Reset"] == str(int(start + 60))
        assert other_key.status_code == 200  # limits are per API key
        assert write.status_code == 201  # writes have their own tier
        assert write.headers["X-RateLimit-Limit"] == "5"

        clock.now = start + 60  # the first call leaves the window, the second stays
        assert (await http.api.get("/signing-requests")).status_code == 200
        assert (await http.api.get("/signing-requests")).status_code == 429
        clock.now = start + 70
        assert (await http.api.get("/signing-requests")).status_code == 200

        # /send has its own, smaller tier.
        second_draft = await _create(http.api)
        one = await http.api.post(f"/signing-requests/{write.json()['id']}/send")
        two = await http.api.post(f"/signing-requests/{second_draft['id']}/send")
        assert one.status_code == 200
        assert one.headers["X-RateLimit-Limit"] == "1"
        assert two.status_code == 429
        assert two.headers["X-RateLimit-Limit"] == "1"

    statuses = [c["status"] for c in fake.calls]
    assert statuses.count(429) == 3


async def test_rate_limit_fixed_window(clock: ManualClock) -> None:
    clock.now = 1_000_000_010.0  # window [1_000_000_000, 1_000_000_060) when windows align at 60
    window_start = (int(clock.now) // 60) * 60
    fake = FakeFirma(
        api_key=KEY, secret=SECRET, clock=clock, rate_limits=RateLimits(read=2, window="fixed")
    )
    async with _clients(fake) as http:
        assert (await http.api.get("/signing-requests")).status_code == 200
        assert (await http.api.get("/signing-requests")).status_code == 200
        refused = await http.api.get("/signing-requests")
        assert refused.status_code == 429
        assert refused.headers["X-RateLimit-Reset"] == str(window_start + 60)
        assert refused.headers["Retry-After"] == str(window_start + 60 - int(clock.now))
        clock.now = window_start + 60.0
        reset = await http.api.get("/signing-requests")
        assert reset.status_code == 200
        assert reset.headers["X-RateLimit-Remaining"] == "1"


async def test_firmas_documented_limits_are_the_default(clock: ManualClock) -> None:
    fake = FakeFirma(api_key=KEY, secret=SECRET, clock=clock)  # no rate_limits given
    async with _clients(fake) as http:
        draft = await _create(http.api)  # write 1 of 120
        for _ in range(200):
            assert (await http.api.get(f"/signing-requests/{draft['id']}")).status_code == 200
        read = await http.api.get(f"/signing-requests/{draft['id']}")
        for _ in range(119):
            patched = await http.api.patch(f"/signing-requests/{draft['id']}", json={"name": "x"})
            assert patched.status_code == 200
        write = await http.api.patch(f"/signing-requests/{draft['id']}", json={"name": "x"})
        for refused, limit in ((read, "200"), (write, "120")):
            assert refused.status_code == 429
            assert refused.json() == {
                "error": "Too Many Requests",
                "code": "RATE_LIMIT_EXCEEDED",
                "message": f"Rate limit of {limit} requests per minute exceeded. "
                "Retry after 60 seconds.",
            }
            assert refused.headers["Retry-After"] == "60"
            assert refused.headers["X-RateLimit-Limit"] == limit
            assert refused.headers["X-RateLimit-Remaining"] == "0"
            assert refused.headers["X-RateLimit-Reset"] == str(int(clock.now + 60))
        clock.now += 60  # a minute later the window is empty again
        assert (await http.api.get(f"/signing-requests/{draft['id']}")).status_code == 200


async def test_the_rate_log_shows_every_call_per_key_and_bucket(clock: ManualClock) -> None:
    fake = FakeFirma(
        api_key=[KEY, OTHER_KEY], secret=SECRET, clock=clock, rate_limits=RateLimits(read=2)
    )
    async with _clients(fake) as http:
        draft = await _create(http.api)
        for _ in range(3):
            await http.api.get(f"/signing-requests/{draft['id']}")
            clock.now += 10
        await http.api.get("/signing-requests", headers={"Authorization": OTHER_KEY})
        report = (await http.control.get("/_fake/rate-limits")).json()

    assert report["limits"]["read"] == 2
    assert report["limits"]["window_seconds"] == 60.0
    assert KEY not in json.dumps(report)  # keys appear only as a hash
    mine = report["keys"][key_id_of(KEY)]
    start = 1_760_000_000.0
    assert mine["read"]["accepted"] == 2
    assert mine["read"]["refused"] == 1
    assert mine["read"]["accepted_times"] == [start, start + 10]
    assert mine["read"]["refused_times"] == [start + 20]
    assert mine["read"]["max_sent_in_window"] == 3
    assert mine["read"]["max_accepted_in_window"] == 2
    assert mine["write"]["accepted"] == 1
    assert report["keys"][key_id_of(OTHER_KEY)]["read"]["accepted"] == 1
    buckets = [(c["method"], c["key_id"], c["bucket"]) for c in fake.calls]
    assert buckets[:2] == [("POST", key_id_of(KEY), "write"), ("GET", key_id_of(KEY), "read")]


async def test_a_draft_seeded_through_the_control_api_costs_no_budget(
    fake: FakeFirma, http: Clients
) -> None:
    seeded = await http.control.post("/_fake/signing-requests", json={"name": "Seeded"})
    assert seeded.status_code == 201
    assert seeded.json()["status"] == "draft"
    shown = await http.api.get(f"/signing-requests/{seeded.json()['id']}")
    assert shown.json()["status"] == "not_sent"
    assert [c["method"] for c in fake.calls] == ["GET"]  # the seeding is no API call
    report = (await http.control.get("/_fake/rate-limits")).json()
    assert report["keys"][key_id_of(KEY)]["read"]["accepted"] == 1
    assert "write" not in report["keys"][key_id_of(KEY)]


@pytest.mark.parametrize(
    ("times", "most"),
    [
        ([], 0),
        ([5.0], 1),
        ([0.0, 59.9, 60.0], 2),  # a call exactly a window older no longer counts
        ([0.0, 1.0, 2.0, 61.5, 62.0], 3),
        ([3.0, 1.0, 2.0], 3),  # order does not matter
    ],
)
def test_max_in_window(times: list[float], most: int) -> None:
    assert max_in_window(times, 60.0) == most


@pytest.mark.parametrize("window", [0.0, -1.0, float("nan")])
def test_a_rate_window_must_be_positive(window: float) -> None:
    with pytest.raises(ConfigurationError):
        RateLimits(window_seconds=window)


# ---------------------------------------------------------------------------------------------
# Injected failures


async def test_injected_failures(http: Clients) -> None:
    plan = await http.control.post(
        "/_fake/failures", json={"status": 503, "count": 2, "methods": ["POST"]}
    )
    assert plan.status_code == 201
    listing = await http.api.get("/signing-requests")  # GET is not affected
    first = await http.api.post("/signing-requests", json=_request_body())
    second = await http.api.post("/signing-requests", json=_request_body())
    third = await http.api.post("/signing-requests", json=_request_body())
    assert listing.status_code == 200
    assert [first.status_code, second.status_code, third.status_code] == [503, 503, 201]
    assert first.json()["code"] == "SERVICE_UNAVAILABLE"
    assert (await http.api.get("/signing-requests")).json()["pagination"]["total"] == 1

    await http.control.post("/_fake/failures", json={"status": 429, "count": 1, "retry_after": 7})
    limited = await http.api.get("/signing-requests")
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "7"
    assert limited.json()["code"] == "RATE_LIMIT_EXCEEDED"

    await http.control.post("/_fake/failures", json={"status": 500, "count": 5})
    assert (await http.control.delete("/_fake/failures")).status_code == 200
    assert (await http.api.get("/signing-requests")).status_code == 200

    calls = (await http.control.get("/_fake/calls")).json()["calls"]
    assert sum(1 for c in calls if "injected" in c) == 3

    refused = await http.control.post("/_fake/failures", json={"count": 1})
    assert refused.status_code == 400


async def test_injected_delay_still_applies_the_call(http: Clients) -> None:
    await http.control.post("/_fake/failures", json={"delay": 0.2, "count": 1})
    started = time.monotonic()
    response = await http.api.post("/signing-requests", json=_request_body())
    assert time.monotonic() - started >= 0.2
    assert response.status_code == 201
    assert (await http.api.get("/signing-requests")).json()["pagination"]["total"] == 1


# ---------------------------------------------------------------------------------------------
# Control routes for signer actions


async def test_signer_actions(http: Clients) -> None:
    sent = await _sent(http.api)
    sr_id = sent["id"]
    view = (await http.control.post(f"/_fake/signing-requests/{sr_id}/view")).json()
    view_again = (await http.control.post(f"/_fake/signing-requests/{sr_id}/view")).json()
    assert [e["type"] for e in view["events"]] == ["signing_request.viewed"]
    assert view["events"][0]["event_id"].startswith("evt_")
    assert view_again["events"] == []  # first view only

    bob = sent["recipients"][1]["id"]
    signed = await http.control.post(
        f"/_fake/signing-requests/{sr_id}/recipient-signed", json={"recipient_id": bob}
    )
    assert [e["type"] for e in signed.json()["events"]] == ["signing_request.recipient.signed"]
    assert signed.json()["status"] == "in_progress"
    twice = await http.control.post(
        f"/_fake/signing-requests/{sr_id}/recipient-signed", json={"recipient_id": bob}
    )
    assert twice.status_code == 409

    last = await http.control.post(f"/_fake/signing-requests/{sr_id}/recipient-signed")
    assert [e["type"] for e in last.json()["events"]] == [
        "signing_request.recipient.signed",
        "signing_request.completed",
    ]
    finished = (await http.api.get(f"/signing-requests/{sr_id}")).json()
    assert finished["status"] == "finished"
    assert finished["certificate"]["generated"] is True
    assert all(r["signed_at"] for r in finished["recipients"])

    expire = await http.control.post(f"/_fake/signing-requests/{sr_id}/expire")
    assert expire.status_code == 409


async def test_decline_and_expire(http: Clients) -> None:
    one = await _sent(http.api)
    declined = await http.control.post(
        f"/_fake/signing-requests/{one['id']}/decline", json={"reason": "Wrong address"}
    )
    assert declined.json()["status"] == "declined"
    assert [e["type"] for e in declined.json()["events"]] == ["signing_request.recipient.declined"]
    assert (await http.api.get(f"/signing-requests/{one['id']}")).json()["date_declined"]

    two = await _sent(http.api)
    expired = await http.control.post(f"/_fake/signing-requests/{two['id']}/expire")
    assert expired.json()["status"] == "expired"
    assert [e["type"] for e in expired.json()["events"]] == ["signing_request.expired"]

    draft = await _create(http.api)
    not_sent = await http.control.post(f"/_fake/signing-requests/{draft['id']}/complete")
    assert not_sent.status_code == 409


async def test_reset(http: Clients, fake: FakeFirma) -> None:
    await _create(http.api)
    await http.control.post("/_fake/rotate-secret", json={"new_secret": NEW_SECRET})
    assert (await http.control.post("/_fake/reset")).json() == {"reset": True}
    assert (await http.api.get("/signing-requests")).json()["results"] == []
    assert fake.secret == SECRET
    assert fake.old_secret is None
    assert len((await http.control.get("/_fake/calls")).json()["calls"]) == 1  # the GET above


# ---------------------------------------------------------------------------------------------
# Webhook deliveries over real HTTP


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


class Receiver:
    """A tiny webhook endpoint run under uvicorn: records requests, answers scripted statuses."""

    def __init__(
        self,
        statuses: Sequence[int] = (),
        *,
        gate: threading.Event | None = None,
        delay: float = 0.0,
    ) -> None:
        self._statuses = list(statuses)
        self._gate = gate
        self._delay = delay
        self._lock = threading.Lock()
        self.requests: list[Received] = []

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            if self._gate is not None:
                await asyncio.to_thread(self._gate.wait, 10)
            if self._delay:
                await asyncio.sleep(self._delay)
            with self._lock:
                self.requests.append(Received(request.url.path, dict(request.headers), body))
                status = self._statuses.pop(0) if self._statuses else 200
            if 300 <= status < 400:
                return RedirectResponse("/elsewhere", status_code=status)
            return Response(status_code=status)

        return Starlette(
            routes=[
                Route("/{name}", hook, methods=["POST"]),
                Route("/elsewhere", hook, methods=["GET"]),
            ]
        )

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path == path]


async def _subscribe(api: httpx.AsyncClient, url: str, events: list[str]) -> str:
    response = await api.post("/webhooks", json={"url": url, "events": events})
    assert response.status_code == 201, response.text
    webhook_id: str = response.json()["id"]
    return webhook_id


def _verify(received: Received, secrets: list[str]) -> None:
    signature.verify(received.headers, received.body, secrets, now=time.time())


async def _deliveries(control: httpx.AsyncClient) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await control.get("/_fake/deliveries")).json()["deliveries"]
    return items


async def test_delivery_current_envelope_is_signed() -> None:
    receiver = Receiver()
    fake = FakeFirma(api_key=KEY, secret=SECRET)
    with running_server(receiver.app()) as url:
        async with _clients(fake, lifespan=True) as http:
            await _subscribe(http.api, f"{url}/hook", ["*"])
            created = await _create(http.api)
            await fake.drain()
            deliveries = await _deliveries(http.control)

    [got] = receiver.at("/hook")
    _verify(got, [SECRET])
    with pytest.raises(SignatureInvalid):
        _verify(got, [NEW_SECRET])
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-firma-event"] == "signing_request.created"
    assert "x-firma-signature-old" not in got.headers
    payload = json.loads(got.body)
    assert set(payload) == {"id", "type", "created_at", "company_id", "workspace_id", "data"}
    assert payload["id"].startswith("evt_")
    assert payload["type"] == "signing_request.created"
    request = payload["data"]["signing_request"]
    assert request["id"] == created["id"]
    assert request["document_page_count"] == 2
    assert {"name", "workspace_id", "sent_at", "completed_at", "cancelled_at", "expires_at"} <= set(
        request
    )
    assert [r["email"] for r in payload["data"]["recipients"]] == [
        "alice@example.com",
        "bob@example.com",
    ]
    assert payload["data"]["workspace"]["id"] == payload["workspace_id"]

    [delivery] = deliveries
    assert delivery["delivery_id"] == got.headers["x-firma-delivery"]
    assert delivery["event_id"] == payload["id"]
    assert delivery["status"] == 200
    assert delivery["ok"] is True
    assert delivery["attempt"] == 1


async def test_old_envelope_by_default_and_per_call() -> None:
    receiver = Receiver()
    old_fake = FakeFirma(api_key=KEY, secret=SECRET, envelope="old")
    current_fake = FakeFirma(api_key=KEY, secret=SECRET)
    with running_server(receiver.app()) as url:
        async with _clients(old_fake, lifespan=True) as http:
            await _subscribe(http.api, f"{url}/old", ["*"])
            created = await _create(http.api)
            await old_fake.drain()
        async with _clients(current_fake, lifespan=True) as http:
            await _subscribe(http.api, f"{url}/mixed", ["*"])
            sent = await _sent(http.api)
            override = await http.control.post(
                "/_fake/events",
                json={
                    "type": "signing_request.completed",
                    "signing_request_id": sent["id"],
                    "envelope": "old",
                },
            )
            await current_fake.drain()

    [old] = receiver.at("/old")
    _verify(old, [SECRET])
    payload = json.loads(old.body)
    assert set(payload) == {
        "event_id",
        "event_type",
        "timestamp",
        "company_id",
        "workspace_id",
        "data",
    }
    assert payload["event_type"] == "signing_request.created"
    assert payload["data"]["signing_request_id"] == created["id"]

    # Deliveries run concurrently (Firma does not guarantee order either): key them by type.
    mixed = {
        p.get("type") or p["event_type"]: p
        for p in (json.loads(r.body) for r in receiver.at("/mixed"))
    }
    assert set(mixed) == {
        "signing_request.created",
        "signing_request.sent",
        "signing_request.completed",
    }
    assert "id" in mixed["signing_request.sent"]  # the fake's default: current envelope
    completed = mixed["signing_request.completed"]
    assert "type" not in completed  # this one call asked for the old envelope
    assert completed["event_id"] == override.json()["event_id"]
    assert completed["data"]["signing_request_id"] == sent["id"]


async def test_subscriptions_and_complete() -> None:
    receiver = Receiver()
    fake = FakeFirma(api_key=KEY, secret=SECRET)
    with running_server(receiver.app()) as url:
        async with _clients(fake, lifespan=True) as http:
            await _subscribe(http.api, f"{url}/completed", ["signing_request.completed"])
            await _subscribe(http.api, f"{url}/signed", ["signing_request.recipient.signed"])
            sent = await _sent(http.api)
            done = await http.control.post(f"/_fake/signing-requests/{sent['id']}/complete")
            await fake.drain()

    fired = done.json()["events"]
    assert [e["type"] for e in fired] == [
        "signing_request.recipient.signed",
        "signing_request.recipient.signed",
        "signing_request.completed",
    ]
    [completed] = receiver.at("/completed")
    assert completed.headers["x-firma-event"] == "signing_request.completed"
    assert completed.headers["x-firma-delivery"] == fired[2]["delivery_ids"][0]
    payload = json.loads(completed.body)
    assert payload["id"] == fired[2]["event_id"]
    assert payload["data"]["signing_request"]["completed_at"] is not None
    signed = receiver.at("/signed")
    assert sorted(json.loads(r.body)["data"]["recipient"]["email"] for r in signed) == [
        "alice@example.com",
        "bob@example.com",
    ]


async def test_unknown_and_test_events() -> None:
    receiver = Receiver()
    fake = FakeFirma(api_key=KEY, secret=SECRET)
    with running_server(receiver.app()) as url:
        async with _clients(fake, lifespan=True) as http:
            everything = await _subscribe(http.api, f"{url}/all", ["*"])
            await _subscribe(http.api, f"{url}/narrow", ["signing_request.completed"])
            unknown = await http.control.post("/_fake/events", json={"type": "brand.new_thing"})
            test = await http.control.post("/_fake/events", json={"type": "webhook.test"})
            api_test = await http.api.post(f"/webhooks/{everything}/test")
            await fake.drain()

    assert len(unknown.json()["delivery_ids"]) == 1  # only the "*" webhook wants it
    assert len(test.json()["delivery_ids"]) == 2  # a test reaches every webhook
    assert api_test.status_code == 200
    assert sorted(r.headers["x-firma-event"] for r in receiver.at("/all")) == [
        "brand.new_thing",
        "webhook.test",
        "webhook.test",
    ]
    assert [r.headers["x-firma-event"] for r in receiver.at("/narrow")] == ["webhook.test"]


async def test_secret_rotation_headers() -> None:
    receiver = Receiver()
    fake = FakeFirma(api_key=KEY, secret=SECRET)
    with running_server(receiver.app()) as url:
        async with _clients(fake, lifespan=True) as http:
            await _subscribe(http.api, f"{url}/hook", ["*"])
            rotate = await http.control.post(
                "/_fake/rotate-secret", json={"new_secret": NEW_SECRET}
            )
            assert rotate.status_code == 200
            await _create(http.api)
            await fake.drain()
            await http.control.post("/_fake/end-rotation")
            await _create(http.api)
            await fake.drain()

    during, after = receiver.at("/hook")
    current_only = {k: v for k, v in during.headers.items() if k != "x-firma-signature-old"}
    old_only = {k: v for k, v in during.headers.items() if k != "x-firma-signature"}
    _verify(Received(during.path, current_only, during.body), [NEW_SECRET])
    with pytest.raises(SignatureInvalid):
        _verify(Received(during.path, current_only, during.body), [SECRET])
    _verify(Received(during.path, old_only, during.body), [SECRET])
    with pytest.raises(SignatureInvalid):
        _verify(Received(during.path, old_only, during.body), [NEW_SECRET])
    assert "x-firma-signature-old" not in after.headers
    _verify(after, [NEW_SECRET])


async def test_retries_after_500_until_success() -> None:
    receiver = Receiver([500, 500])
    fake = FakeFirma(api_key=KEY, secret=SECRET, time_factor=0.001)
    with running_server(receiver.app()) as url:
        async with _clients(fake, lifespan=True) as http:
            await _subscribe(http.api, f"{url}/hook", ["*"])
            await _create(http.api)
            await fake.drain()
            deliveries = await _deliveries(http.control)

    attempts = receiver.at("/hook")
    assert len(attempts) == 3
    assert len({r.body for r in attempts}) == 1  # same bytes every time
    for received in attempts:
        _verify(received, [SECRET])
    assert [d["attempt"] for d in deliveries] == [1, 2, 3]
    assert [d["status"] for d in deliveries] == [500, 500, 200]
    assert [d["ok"] for d in deliveries] == [False, False, True]
    assert len({d["event_id"] for d in deliveries}) == 1
    delivery_ids = [r.headers["x-firma-delivery"] for r in attempts]
    assert delivery_ids == [d["delivery_id"] for d in deliveries]
    assert len(set(delivery_ids)) == 3


async def test_retries_give_up_after_three_retries() -> None:
    receiver = Receiver([500] * 10)
    fake = FakeFirma(api_key=KEY, secret=SECRET, time_factor=0.0001)
    with running_server(receiver.app()) as url:
        async with _clients(fake, lifespan=True) as http:
            await _subscribe(http.api, f"{url}/hook", ["*"])
            await _create(http.api)
            await fake.drain()
            deliveries = await _deliveries(http.control)
            webhooks = (await http.api.get("/webhooks")).json()["results"]

    assert len(receiver.at("/hook")) == 4  # the first try plus three retries
    assert [d["attempt"] for d in deliveries] == [1, 2, 3, 4]
    assert not any(d["ok"] for d in deliveries)
    assert webhooks[0]["consecutive_failures"] == 4


async def test_redelivery_keeps_event_id() -> None:
    receiver = Receiver()
    fake = FakeFirma(api_key=KEY, secret=SECRET)
    with running_server(receiver.app()) as url:
        async with _clients(fake, lifespan=True) as http:
            await _subscribe(http.api, f"{url}/hook", ["*"])
            await _create(http.api)
            await fake.drain()
            [first] = await _deliveries(http.control)
            again = await http.control.post(f"/_fake/deliveries/{first['delivery_id']}/redeliver")
            await fake.drain()
            missing = await http.control.post("/_fake/deliveries/dlv_nope/redeliver")

    assert again.status_code == 200
    assert again.json()["event_id"] == first["event_id"]
    assert again.json()["delivery_id"] != first["delivery_id"]
    assert missing.status_code == 404
    original, duplicate = receiver.at("/hook")
    assert duplicate.body == original.body
    assert json.loads(duplicate.body)["id"] == first["event_id"]
    assert duplicate.headers["x-firma-delivery"] == again.json()["delivery_id"]
    _verify(duplicate, [SECRET])


async def test_redirects_are_failures_not_followed() -> None:
    receiver = Receiver([307])
    fake = FakeFirma(api_key=KEY, secret=SECRET, retry_delays=())
    with running_server(receiver.app()) as url:
        async with _clients(fake, lifespan=True) as http:
            await _subscribe(http.api, f"{url}/hook", ["*"])
            await _create(http.api)
            await fake.drain()
            [delivery] = await _deliveries(http.control)

    assert delivery["status"] == 307
    assert delivery["ok"] is False
    assert receiver.at("/elsewhere") == []


async def test_slow_receiver_times_out() -> None:
    receiver = Receiver(delay=0.5)
    fake = FakeFirma(api_key=KEY, secret=SECRET, retry_delays=(), delivery_timeout=0.1)
    with running_server(receiver.app()) as url:
        async with _clients(fake, lifespan=True) as http:
            await _subscribe(http.api, f"{url}/hook", ["*"])
            await _create(http.api)
            await fake.drain()
            [delivery] = await _deliveries(http.control)

    assert delivery["ok"] is False
    assert delivery["status"] is None
    assert delivery["error"]


async def test_api_answers_do_not_wait_for_deliveries() -> None:
    gate = threading.Event()
    receiver = Receiver(gate=gate)
    fake = FakeFirma(api_key=KEY, secret=SECRET)
    with running_server(receiver.app()) as url:
        async with _clients(fake, lifespan=True) as http:
            await _subscribe(http.api, f"{url}/hook", ["*"])
            try:
                response = await http.api.post("/signing-requests", json=_request_body())
                assert response.status_code == 201
                for _ in range(100):  # let the delivery reach the (blocked) receiver
                    await asyncio.sleep(0.01)
                    if fake.deliveries:
                        break
                [pending] = await _deliveries(http.control)
                assert pending["done"] is False
                assert fake.pending_deliveries == 1
            finally:
                gate.set()
            await fake.drain()
            [finished] = await _deliveries(http.control)

    assert finished["ok"] is True


async def test_shutdown_cancels_pending_retries() -> None:
    receiver = Receiver([500] * 10)
    fake = FakeFirma(api_key=KEY, secret=SECRET)  # time_factor 1: the third try waits 5 min
    with running_server(receiver.app()) as url:
        async with _clients(fake, lifespan=True) as http:
            await _subscribe(http.api, f"{url}/hook", ["*"])
            await _create(http.api)
            for _ in range(500):
                await asyncio.sleep(0.01)
                if len(fake.deliveries) == 2 and all(d.done for d in fake.deliveries):
                    break
            assert fake.pending_deliveries == 1  # sleeping before the +5 min retry
            started = time.monotonic()
        assert time.monotonic() - started < 5

    assert fake.pending_deliveries == 0
    assert len(receiver.at("/hook")) == 2
