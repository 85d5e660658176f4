"""Issue 14, item 4: never a 500, and every acknowledged callback can be processed.

The findings of the black-box run, each as a case on both databases (the property suite in
tests/property generalises them): what used to answer 500 (or 422 for a bug), what broke a
view for as long as its row existed, and what was acknowledged yet ended *failed*. Plus
rows stored before the checks existed, written straight into the database: they render.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from handlers.firma import signature
from receiver.settings import Settings
from receiver.store.db import open_database
from tests.harness import Receiver, running_receiver, wait_until
from tests.servers import running_server

FIRMA_SECRET = "firma-test-secret"


@pytest.fixture
def receiver(make_settings: Callable[..., Settings]) -> Iterator[Receiver]:
    with running_receiver(
        make_settings,
        okdokument_base_url="http://127.0.0.1:9",
        firma_base_url="http://127.0.0.1:9/functions/v1/signing-request-api",
        outbox_max_attempts=1,
    ) as served:
        yield served


def strict(response: httpx.Response) -> Any:
    return orjson.loads(response.content)  # refuses NaN and lone surrogates


def firma_post(client: httpx.Client, body: bytes) -> httpx.Response:
    header = signature.sign(FIRMA_SECRET, body, int(time.time()))
    return client.post(
        "/hooks/firma",
        content=body,
        headers={"content-type": "application/json", "x-firma-signature": header},
    )


def settled_timeline(receiver: Receiver, request_id: int, count: int) -> list[dict[str, Any]]:
    def probe() -> list[dict[str, Any]] | None:
        timeline: list[dict[str, Any]] = receiver.show(request_id)["timeline"]
        done = [e for e in timeline if e["status"] not in ("pending", "processing")]
        return timeline if len(done) >= count else None

    return wait_until(probe, timeout=30, what=f"{count} settled timeline entries")


def test_absurd_times_are_kept_out_of_the_views(receiver: Receiver) -> None:
    """A Firma created_at of 1e15, 1e308 or 70 digits, and a browser's ts of 999999999999999,
    used to make GET /api/requests/{id} answer 422 and GET /api/inbox 500."""
    firma = receiver.register(provider="firma", signatureRequestId="fsr-times")
    okd = receiver.register(
        provider="okdokument", signatureRequestId="sr-times", documentId="doc-1"
    )
    with receiver.client() as client:
        for n, created_at in enumerate(["1e15", "1e308", "9" * 70, '"1e15"']):
            body = (
                f'{{"id":"evt-{n}","type":"signing_request.sent","created_at":{created_at},'
                '"data":{"signing_request":{"id":"fsr-times"}}}'
            ).encode()
            assert firma_post(client, body).status_code == 200
        page = client.get(
            str(okd["callback_urls"]["return_url"]).removeprefix(receiver.url),
            params={"ts": "999999999999999", "result": "success"},
        )
        assert page.status_code == 200
    for request_id, count in ((firma["id"], 5), (okd["id"], 2)):
        timeline = settled_timeline(receiver, request_id, count)
        assert [e["occurred_at"] for e in timeline[1:]] == [None] * (count - 1)
        assert {e["status"] for e in timeline} == {"processed"}
    with receiver.admin() as admin:
        listed = admin.get("/api/inbox")
        assert listed.status_code == 200, listed.text
        assert len(strict(listed)["items"]) == 7


def test_unstorable_facts_are_stored_escaped_or_cut_and_processed(receiver: Receiver) -> None:
    """A state with a lone surrogate or longer than provider_type's 120 characters: the
    callback is acknowledged, so it must be processed, not fail five times."""
    okd = receiver.register(
        provider="okdokument", signatureRequestId="sr-facts", documentId="doc-1"
    )
    hook = str(okd["callback_urls"]["sendinfo_url"]).removeprefix(receiver.url)
    states = ['"\\ud800"', '"a\\u0000b"', json.dumps("x" * 500), json.dumps("é" * 300)]
    with receiver.client() as client:
        for state in states:
            response = client.post(
                hook,
                content=f'{{"signatureRequestId":"sr-facts","state":{state}}}'.encode(),
                headers={"content-type": "application/json"},
            )
            assert response.status_code == 200, response.text
    timeline = settled_timeline(receiver, okd["id"], 5)[1:]
    assert [e["status"] for e in timeline] == ["processed"] * 4
    types = [e["provider_type"] for e in timeline]
    assert types[0] == "sendinfo:\\ud800"  # the escape as text
    assert types[1] == "sendinfo:a\\x00b"
    assert types[2] == "sendinfo:" + "x" * 110 + "…"  # cut to the column, marked
    assert len(types[3]) == 120
    assert types[3].endswith("…")


def test_what_used_to_answer_500(receiver: Receiver) -> None:
    okd = receiver.register(provider="okdokument", signatureRequestId="sr-500", documentId="doc-1")
    hook = str(okd["callback_urls"]["sendinfo_url"]).removeprefix(receiver.url)
    with receiver.client() as client:
        forged = client.post(
            hook,
            content=b'{"signatureRequestId":"\\ud800","state":"signed"}',
            headers={"content-type": "application/json"},
        )
        assert forged.status_code == 409, forged.text
        long_id = ('{"id":"' + "e" * 200 + '","type":"signing_request.sent"}').encode()
        assert firma_post(client, long_id).status_code == 200  # stored: a hashed dedupe key
        assert firma_post(client, long_id).json() == {"status": "duplicate"}
    deep = b"[" * 100_000 + b"]" * 100_000
    cases: list[tuple[str, str, bytes | None, int]] = [
        ("GET", "/api/requests/9223372036854775808", None, 404),
        ("GET", "/api/requests/" + "9" * 5000, None, 404),
        ("GET", "/api/requests/abc", None, 404),
        ("POST", "/api/outbox/9223372036854775808/retry", None, 404),
        ("POST", "/api/inbox/99999999999999999999999/retry", None, 409),
        ("GET", "/api/requests?before_id=99999999999999999999999", None, 200),
        ("GET", "/api/requests?reference=a%00b", None, 422),
        ("GET", "/api/requests?limit=%C2%B2", None, 422),
        ("GET", "/api/requests?provider=a%00b", None, 422),
        ("GET", "/api/inbox?status=a%00b", None, 422),
        ("GET", "/api/inbox?provider=nobody", None, 422),
        ("GET", "/api/outbox?status=%00", None, 422),
        ("POST", "/api/requests", deep, 400),
        ("POST", "/api/requests", b'{"metadata":' + deep + b"}", 400),
        (
            "POST",
            "/api/requests",
            b'{"provider":"okdokument","signatureRequestId":"a\\u0000b"}',
            422,
        ),
        (
            "POST",
            "/api/requests",
            b'{"provider":"okdokument","signatureRequestId":"x","reference":"\\u0000"}',
            422,
        ),
        (
            "POST",
            "/api/requests",
            b'{"provider":"okdokument","signatureRequestId":"y","metadata":{"a":"\\ud800"}}',
            422,
        ),
        (
            "POST",
            "/api/requests",
            b'{"provider":"okdokument","signatureRequestId":"z","metadata":{"a":NaN}}',
            422,
        ),
        (
            "POST",
            "/api/requests",
            b'{"provider":"firma","signatureRequestId":"w","defaults":{"name":1e999}}',
            422,
        ),
    ]
    with receiver.admin() as admin:
        for method, path, body, status in cases:
            response = admin.request(method, path, content=body)
            assert response.status_code == status, (method, path[:80], response.text)
            answer = strict(response)
            if status == 422 and "fields" in answer:
                assert answer["fields"][0]["message"], answer
    with receiver.admin() as admin:
        for path in ("/api/inbox", "/api/outbox", "/api/requests", f"/api/requests/{okd['id']}"):
            assert admin.get(path).status_code == 200


async def write_old_rows(database_url: str, request_id: int) -> None:
    """Rows as an earlier version could leave them: an absurd time, metadata whose JSON
    holds a lone-surrogate escape (orjson refuses it) and a number beyond 64 bits, an
    action whose payload holds one too, and (SQLite) text in a time column."""
    db = open_database(database_url)
    await db.connect()
    try:
        async with db.transaction() as tx:
            await tx.execute(
                "UPDATE signature_requests SET metadata = :m, updated_at = :u WHERE id = :id",
                {
                    "m": '{"a":"\\ud800","b":123456789012345678901234567890}',
                    "u": 1e300,
                    "id": request_id,
                },
            )
            await tx.execute(
                "INSERT INTO inbox (provider, channel, dedupe_key, received_at, body, headers,"
                " query, request_id, status, attempts, occurred_at, kind) VALUES"
                " ('okdokument', 'return', 'old-1', :r, :b, '{}', 'ts=1', :id, 'processed', 1,"
                " :o, 'signer.returned')",
                {"r": 1e15, "b": b"", "id": request_id, "o": 1e308},
            )
            await tx.execute(
                "INSERT INTO outbox (request_id, action_key, operation, payload, status, due_at,"
                " attempts, created_at, updated_at) VALUES (:id, 'old', 'x', :p, 'dead', :d, 1,"
                " 0, :u)",
                {"id": request_id, "p": '{"a":"\\udfff"}', "d": 1e20, "u": -1e300},
            )
            if db.dialect == "sqlite":  # SQLite keeps text in a REAL column as text
                await tx.execute(
                    "UPDATE inbox SET occurred_at = 'not a time' WHERE dedupe_key = 'old-1'"
                )
    finally:
        await db.close()


def test_rows_stored_before_the_checks_still_render(receiver: Receiver) -> None:
    """Old rows are not rewritten: the views cope with whatever they hold."""
    request_id = receiver.register(
        provider="okdokument", signatureRequestId="sr-old", documentId="doc-1"
    )["id"]
    asyncio.run(write_old_rows(receiver.settings.database_url, request_id))
    with receiver.admin() as admin:
        for path in (f"/api/requests/{request_id}", "/api/requests", "/api/inbox", "/api/outbox"):
            response = admin.get(path)
            assert response.status_code == 200, (path, response.text)
            strict(response)
        # The standard library, not orjson: orjson reads big integers as floats.
        shown = json.loads(admin.get(f"/api/requests/{request_id}").content)
    assert shown["updated_at"] is None
    assert shown["metadata"] == {"a": "\\ud800", "b": 123456789012345678901234567890}
    old = next(e for e in shown["timeline"] if e["channel"] == "return")
    assert (old["received_at"], old["occurred_at"]) == (None, None)
    assert shown["actions"][-1]["payload"] == {"a": "\\udfff"}
    assert shown["actions"][-1]["updated_at"] is None


def test_a_busy_database_is_a_503_for_the_admin_api(
    make_sqlite_settings: Callable[..., Settings],
) -> None:
    """Another process holding SQLite's lock past the busy timeout is no bug: 503."""
    with running_receiver(
        make_sqlite_settings, okdokument_base_url="http://127.0.0.1:9", sqlite_busy_timeout_ms=200
    ) as r:
        path = r.settings.database_url.removeprefix("sqlite:///")
        blocker = sqlite3.connect(path, timeout=0.1, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            with r.admin() as admin:  # a write waits for the lock, then gives up
                response = admin.post(
                    "/api/requests",
                    json={
                        "provider": "okdokument",
                        "signatureRequestId": "b",
                        "documentId": "doc-b",
                    },
                )
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"]
                assert "unavailable" in strict(response)["error"]
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        r.register(provider="okdokument", signatureRequestId="b", documentId="doc-1")  # the retry


def test_a_provider_answer_with_a_nul_is_recorded(make_settings: Callable[..., Settings]) -> None:
    """What a provider answers is outside text too: PostgreSQL cannot store a NUL, and the
    attempt (and the action's end) could not be recorded."""

    async def answer(request: Request) -> Response:
        return Response(b'{"error":"bad\x00answer"}', status_code=500)

    provider = Starlette(routes=[Route("/{path:path}", answer, methods=["GET", "PATCH"])])
    with (
        running_server(provider) as provider_url,
        running_receiver(
            make_settings, okdokument_base_url=provider_url, outbox_max_attempts=1
        ) as receiver,
    ):
        registered = receiver.register(
            provider="okdokument", signatureRequestId="sr-nul", documentId="doc-1"
        )
        (attach,) = receiver.wait_for_actions(registered["id"], settled=1, timeout=30)
    assert attach["status"] == "dead"
    (attempt,) = attach["attempt_log"]
    assert attempt["status_code"] == 500
    assert "bad\\x00answer" in attempt["response_excerpt"]


def test_timestamps_past_a_doubles_range_are_a_normal_answer(receiver: Receiver) -> None:
    """A Firma created_at (or the older timestamp) of 400 digits, negative too, made
    float() raise OverflowError: a 500 at intake. Such a body is an event like any other,
    its time unreadable; and every view of it renders."""
    firma = receiver.register(provider="firma", signatureRequestId="fsr-huge")
    times = ["1" + "0" * 400, "-1" + "0" * 400, "1" + "0" * 309, '"-1e308"', '"NaN"', "-1e308"]
    with receiver.client() as client:
        for n, value in enumerate(times):
            for key in ("created_at", "timestamp"):
                body = (
                    f'{{"id":"evt-{key}-{n}","type":"signing_request.sent","{key}":{value},'
                    '"data":{"signing_request":{"id":"fsr-huge"}}}'
                ).encode()
                answer = firma_post(client, body)
                assert answer.status_code == 200, (value, answer.text)
        # In the signature header: one verification error (401), never a 500.
        for stamp in ("9" * 70, "-5", "1e308", "NaN", "1" + "0" * 400):
            body = b'{"id":"evt-h","type":"signing_request.sent"}'
            v1 = signature.compute(FIRMA_SECRET, body, 1)
            answer = client.post(
                "/hooks/firma",
                content=body,
                headers={
                    "content-type": "application/json",
                    "x-firma-signature": f"t={stamp},v1={v1}",
                },
            )
            assert answer.status_code == 401, (stamp, answer.text)
            assert answer.json()["error"]
    timeline = settled_timeline(receiver, firma["id"], 1 + 2 * len(times))
    assert {e["status"] for e in timeline} == {"processed"}
    assert [e["occurred_at"] for e in timeline[1:]] == [None] * (2 * len(times))
    with receiver.admin() as admin:
        for path in ("/api/inbox", f"/api/requests/{firma['id']}", "/api/events"):
            answer = admin.get(path)
            assert answer.status_code == 200, (path, answer.text)
            strict(answer)
