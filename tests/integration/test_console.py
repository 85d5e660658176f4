"""The console over real HTTP (signback under uvicorn, SQLite and PostgreSQL), and the
rejection log behind its Failures page and GET /api/rejections.

The browser-driven tests are tests/acceptance/test_console_browser.py; these check what a
browser does not show: the cookie's flags, the refusals of forms posted without their CSRF
token or by a viewer, that no secret reaches a page, and the rejection log's bounds.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from handlers.firma.signature import sign
from receiver.app import create_app
from receiver.errors import CallbackRejected
from receiver.intake.rejections import RejectionLog
from receiver.intake.router import Callback
from receiver.settings import Settings
from receiver.store import inbox, newest
from receiver.store import rejections as stored_rejections
from receiver.store.db import open_database
from tests.conftest import ADMIN_TOKEN, SECRET_KEY
from tests.harness import NO_KEEPALIVE, Receiver, running_receiver, wait_until

VIEWER_TOKEN = "test-viewer-token-0123456789"
FIRMA_SECRET = "firma-test-secret"  # tests/conftest.py's
# Connection refused at once: every provider call fails, so with one attempt allowed the
# registration's action is dead straight away (a real failure, through the dispatcher).
NOWHERE = "http://127.0.0.1:9"


def hidden(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no hidden field {name!r} in the page"
    return found.group(1)


@contextmanager
def console(receiver: Receiver, token: str = ADMIN_TOKEN) -> Iterator[httpx.Client]:
    """A client signed in to the console with ``token``, as a browser would."""
    with httpx.Client(base_url=receiver.url, timeout=10.0, limits=NO_KEEPALIVE) as client:
        form = client.get("/console/signin")
        assert form.status_code == 200
        answer = client.post(
            "/console/signin",
            data={"signin": hidden(form.text, "signin"), "token": token, "next": "/console"},
        )
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == "/console"
        yield client


@pytest.fixture
def receiver(make_settings: Callable[..., Settings]) -> Iterator[Receiver]:
    with running_receiver(
        make_settings,
        okdokument_base_url=NOWHERE,
        outbox_max_attempts=1,
        viewer_token=VIEWER_TOKEN,
    ) as running:
        yield running


def dead_request(receiver: Receiver, reference: str = "order-42") -> tuple[dict[str, Any], int]:
    """A registered OKdokument request whose first action (pointing its URLs at signback)
    died: the provider could not be reached."""
    registered = receiver.register(
        provider="okdokument",
        signatureRequestId=f"sr-{reference}",
        documentId=f"doc-{reference}",
        reference=reference,
    )
    actions = receiver.wait_for_actions(registered["id"], settled=1)
    assert actions[0]["status"] == "dead", actions
    return registered, int(actions[0]["id"])


def action_status(receiver: Receiver, request_id: int, action_id: int) -> str:
    actions = receiver.show(request_id)["actions"]
    return str(next(a["status"] for a in actions if a["id"] == action_id))


def test_signing_in_gives_a_strict_cookie_and_every_page_renders_without_secrets(
    receiver: Receiver,
) -> None:
    registered, action_id = dead_request(receiver)
    with console(receiver) as client:
        cookie = client.cookies.jar
        (session,) = [c for c in cookie if c.name == "signback_console"]
        assert session.path == "/console"
        assert not session.secure  # plain http here; https: see the test below
        assert session.has_nonstandard_attr("HttpOnly")
        assert str(session.get_nonstandard_attr("SameSite")).lower() == "strict"
        pages = {
            "/console": "Requests by state",
            "/console/requests?reference=order-42": f"/console/requests/{registered['id']}",
            f"/console/requests/{registered['id']}": "rule decision: okdokument.",
            "/console/failures": f"/console/actions/{action_id}/retry",
            "/console/endpoints": "No endpoint yet",
        }
        timeline = client.get(f"/console/requests/{registered['id']}").text
        inbox_id = re.search(r"/console/callbacks/(\d+)", timeline)
        assert inbox_id, "the timeline links its callbacks"
        pages[f"/console/callbacks/{inbox_id.group(1)}"] = "Headers"
        for path, expected in pages.items():
            page = client.get(path)
            assert page.status_code == 200, (path, page.text[:500])
            assert expected in page.text, path
            assert "content-security-policy" in page.headers
            assert page.headers["cache-control"] == "no-store"
            for secret in (ADMIN_TOKEN, SECRET_KEY, FIRMA_SECRET, VIEWER_TOKEN):
                assert secret not in page.text, (path, "shows a secret")
            for url in registered["callback_urls"].values():  # they carry the tokens
                assert url.rsplit("/", 1)[-1] not in page.text, (path, "shows a token")


def test_a_form_without_its_csrf_token_is_refused_and_with_it_retries(
    receiver: Receiver,
) -> None:
    registered, action_id = dead_request(receiver)
    with console(receiver) as client:
        refused = client.post(f"/console/actions/{action_id}/retry", data={})
        assert refused.status_code == 403
        assert "CSRF token" in refused.text
        forged = client.post(f"/console/actions/{action_id}/retry", data={"csrf": "0" * 64})
        assert forged.status_code == 403
        assert action_status(receiver, registered["id"], action_id) == "dead"

        csrf = hidden(client.get("/console/failures").text, "csrf")
        done = client.post(f"/console/actions/{action_id}/retry", data={"csrf": csrf})
        assert done.status_code == 303
        assert "re-queued" in client.get(done.headers["location"]).text
    # Re-queued for one more attempt, which fails again (the provider is still away).
    wait_until(
        lambda: len(receiver.show(registered["id"])["actions"][0]["attempt_log"]) == 2,
        what="the retried attempt",
    )


def test_the_sign_in_form_needs_its_own_token_and_the_right_admin_token(
    receiver: Receiver,
) -> None:
    with httpx.Client(base_url=receiver.url, timeout=10.0, limits=NO_KEEPALIVE) as client:
        assert client.get("/console").status_code == 303  # to the sign-in page
        assert client.post("/console/failures/retry", data={}).status_code == 401
        form = client.get("/console/signin")
        without = client.post("/console/signin", data={"token": ADMIN_TOKEN})
        assert without.status_code == 403
        wrong = client.post(
            "/console/signin", data={"signin": hidden(form.text, "signin"), "token": "x" * 30}
        )
        assert wrong.status_code == 401
        assert "not the admin token" in wrong.text
        assert client.get("/console").status_code == 303  # still signed out
        # An open redirect through ?next= is not possible.
        form = client.get("/console/signin?next=https://evil.example/")
        assert hidden(form.text, "next") == "/console"


def test_a_viewer_sees_every_page_but_no_form_and_cannot_change_anything(
    receiver: Receiver,
) -> None:
    registered, action_id = dead_request(receiver)
    with console(receiver, VIEWER_TOKEN) as client:
        page = client.get("/console/failures")
        assert page.status_code == 200
        assert f"/console/actions/{action_id}/retry" not in page.text
        assert "read-only" in page.text
        csrf = hidden(page.text, "csrf")  # the sign-out form's: a valid token
        refused = client.post(f"/console/actions/{action_id}/retry", data={"csrf": csrf})
        assert refused.status_code == 403
        assert "read-only" in refused.text
        assert action_status(receiver, registered["id"], action_id) == "dead"
        signed_out = client.post("/console/signout", data={"csrf": csrf})
        assert signed_out.status_code == 303
        assert client.get("/console").status_code == 303


def test_the_cookie_is_secure_over_https(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(), run_worker=False)
    transport = httpx.ASGITransport(app=app)

    async def sign_in() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="https://console.test") as c:
            form = await c.get("/console/signin")
            return await c.post(
                "/console/signin",
                data={"signin": hidden(form.text, "signin"), "token": ADMIN_TOKEN},
            )

    answer = asyncio.run(sign_in())
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"].lower()
    assert "secure" in cookie
    assert "httponly" in cookie
    assert "samesite=strict" in cookie


def rejections(receiver: Receiver, **params: Any) -> list[dict[str, Any]]:
    with receiver.admin() as client:
        answer = client.get("/api/rejections", params=params)
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def test_forged_firma_callbacks_are_logged_with_the_reason_and_no_secret(
    receiver: Receiver,
) -> None:
    body = b'{"id":"evt_1","type":"signing_request.completed","data":{}}'
    skewed = int(time.time()) - 1000
    forged = sign("not-the-secret", body, skewed)
    with receiver.client() as client:
        answer = client.post(
            "/hooks/firma",
            content=body,
            headers={
                "content-type": "application/json",
                "x-firma-signature": forged,
                "x-firma-signature-old": sign("older-wrong-secret", body, skewed),
                "authorization": "Bearer something-secret-0123",
            },
        )
        assert answer.status_code == 401
        assert (
            client.post(
                "/hooks/firma", content=b"x", headers={"content-type": "text/plain"}
            ).status_code
            == 415
        )

    def logged() -> list[dict[str, Any]] | None:
        rows = rejections(receiver)
        return rows if len(rows) >= 2 else None

    found = wait_until(logged, what="both refusals in the log")
    media, signature = found  # newest first
    assert media["status"] == 415
    assert media["body_length"] == 1  # as declared: refused before the body was read
    assert media["body_head"] is None
    assert signature["status"] == 401
    assert signature["route"] == "/hooks/firma"
    assert signature["provider"] == "firma"
    assert signature["remote"] == "127.0.0.1"
    assert "does not match" in signature["reason"]
    details = signature["details"]
    assert details["secrets_tried"] == 1
    assert details["old_header_present"] is True
    assert 995 <= details["timestamp_skew_seconds"] <= 1100
    assert details["current_header"] == "no match"
    assert signature["body_length"] == len(body)
    assert signature["body_head"] == body.decode()
    headers = signature["headers"]
    assert headers["x-firma-signature"] == f"t={skewed},v1=[redacted]"
    assert "something-secret" not in str(signature)
    assert forged.split("v1=")[1] not in str(signature)
    assert rejections(receiver, status=415) == [media]
    assert rejections(receiver, before_id=media["id"]) == [signature]

    with console(receiver) as client:
        page = client.get("/console/failures").text
    assert "timestamp skew seconds" in page
    assert "old header present" in page
    assert forged.split("v1=")[1] not in page


def test_the_rejection_log_keeps_only_its_newest_rows(
    make_settings: Callable[..., Settings],
) -> None:
    with running_receiver(make_settings, rejection_log_rows=5) as receiver:
        with receiver.client() as client:
            for n in range(12):
                client.post(
                    "/hooks/firma",
                    content=b'{"n": %d}' % n,
                    headers={"content-type": "application/json", "x-firma-signature": "t=1"},
                )

        def kept() -> list[dict[str, Any]] | None:
            rows = rejections(receiver, limit=50)
            return rows if rows and rows[0]["body_head"] == '{"n": 11}' else None

        rows = wait_until(kept, what="the last refusal in the log")
        assert len(rows) == 5
        assert [r["body_head"] for r in rows] == [f'{{"n": {n}}}' for n in range(11, 6, -1)]


@pytest.mark.anyio
async def test_a_flood_keeps_at_most_a_buffer_of_refusals_per_flush(database_url: str) -> None:
    db = open_database(database_url)
    await db.connect()
    try:
        log = RejectionLog(db, dict, cap=100, clock=time.time, buffer=3)
        call = Callback(
            method="POST", path="/hooks/firma", param=None, headers={}, query="", body=b""
        )
        for n in range(10):
            log.record(CallbackRejected(f"refused {n}", 400), provider="firma", call=call)
        assert log.dropped == 7
        assert await log.flush() == 3
        assert log.dropped == 0
        rows = await stored_rejections.search(db, limit=50)
        assert [r["reason"] for r in rows] == ["refused 2", "refused 1", "refused 0"]
    finally:
        await db.close()


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/console/requests?from=2026-13-01", 400, "from must be a date"),
        ("/console/requests?before=abc", 400, "before must be an id"),
        ("/console/requests?state=nope", 400, "state must be one of"),
        ("/console/requests?provider=acme", 400, "provider must be one of"),
        ("/console/requests?reference=a%00b", 400, "reference"),
        ("/console/requests?reference=" + "x" * 201, 400, "at most 200"),
        ("/console/requests/abc", 404, "No such request"),
        ("/console/requests/" + "9" * 40, 404, "No such request"),
        ("/console/callbacks/0", 404, "No such callback"),
        ("/console/documents/1", 404, "No such document"),
        ("/console/failures?lane=bogus", 400, "lane must be one of"),
        ("/console/failures?due=nan&before=5", 400, "due must be a number"),
        ("/console/failures?refused_before=-1", 400, "refused_before must be an id"),
        ("/console/nothing", 404, "Not Found"),
    ],
)
def test_bad_input_is_a_4xx_page_with_the_reason(
    receiver: Receiver, path: str, status: int, says: str
) -> None:
    with console(receiver) as client:
        page = client.get(path)
    assert page.status_code == status, page.text[:300]
    assert says in page.text
    assert page.headers["content-type"].startswith("text/html")


def test_endpoint_forms_test_rotate_and_retry_through_manage(
    make_settings: Callable[..., Settings],
) -> None:
    with running_receiver(
        make_settings, endpoint_allow_private=True, endpoint_max_attempts=1
    ) as receiver:
        with receiver.admin() as admin:
            created = admin.post("/api/endpoints", json={"url": f"{NOWHERE}/hooks"})
        assert created.status_code == 201, created.text
        endpoint = created.json()["id"]
        with console(receiver) as client:
            csrf = hidden(client.get("/console/endpoints").text, "csrf")
            tested = client.post(f"/console/endpoints/{endpoint}/test", data={"csrf": csrf})
            assert tested.status_code == 303
            assert "test event queued" in client.get(tested.headers["location"]).text

            def dead() -> bool:
                return "1 dead" in client.get("/console/endpoints").text

            wait_until(dead, what="the test delivery to die")
            page = client.get("/console/endpoints").text
            assert "could not reach the endpoint" in page
            retried = client.post(f"/console/endpoints/{endpoint}/retry", data={"csrf": csrf})
            assert "1 dead deliveries re-queued" in client.get(retried.headers["location"]).text

            rotated = client.post(f"/console/endpoints/{endpoint}/rotate", data={"csrf": csrf})
            assert rotated.status_code == 200
            shown = re.search(r'id="secret" class="mono wide" value="([^"]+)"', rotated.text)
            assert shown, "the new secret is shown once"
            secret = shown.group(1)
            assert secret.startswith("whsec_")
            assert rotated.headers["cache-control"] == "no-store"
            assert secret not in client.get("/console/endpoints").text  # shown once only


@pytest.mark.anyio
async def test_a_time_maps_to_the_first_id_at_or_after_it(database_url: str) -> None:
    """The console's search over the primary key (newest.first_ids_at), with gaps in the
    ids and moments before, between and after the rows."""
    db = open_database(database_url)
    await db.connect()
    try:
        chance = random.Random(7)
        times = sorted(chance.uniform(0, 1000) for _ in range(700))
        ids = [1 + n * 3 for n in range(len(times))]  # gaps, as rolled-back inserts leave
        async with db.transaction() as tx:
            for row_id, moment in zip(ids, times, strict=True):
                await tx.execute(
                    "INSERT INTO rejections (id, received_at, route, status, reason)"
                    " VALUES (:id, :t, '/hooks/x', 400, 'x')",
                    {"id": row_id, "t": moment},
                )
        moments = [
            -5.0,
            times[0],
            times[100],
            999.99,
            1000.5,
            *(chance.uniform(0, 1000) for _ in range(40)),
        ]
        found = await newest.first_ids_at(db, "rejections", "received_at", moments)
        for moment, position in zip(moments, found, strict=True):
            k = bisect.bisect_left(times, moment)
            # Any position after the last older row and at most the first newer one is it.
            earliest = ids[k - 1] + 1 if k else ids[0]
            latest = ids[k] if k < len(ids) else ids[-1] + 1
            assert earliest <= position <= latest, (moment, position)
    finally:
        await db.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_odd_stored_rows_still_render(receiver: Receiver) -> None:
    """Rows as an older version, a hand edit or a provider's bytes may leave them."""
    registered, action_id = dead_request(receiver)
    path = receiver.settings.database_url.split("///", 1)[1]
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE inbox SET body = ?, headers = 'not json', received_at = 'soon',"
            " occurred_at = 1e300 WHERE request_id = ?",
            (b"\xff\xfe\x00<script>alert(1)</script>", registered["id"]),
        )
        conn.execute(
            "UPDATE outbox SET payload = '[1, 2', due_at = 'never' WHERE id = ?", (action_id,)
        )
        conn.execute(
            "INSERT INTO rejections (received_at, route, status, reason, details, headers)"
            " VALUES ('x', '/hooks/x', 400, '<b>bold</b>', '{nope', '[]')"
        )
    with console(receiver) as client:
        story = client.get(f"/console/requests/{registered['id']}")
        assert story.status_code == 200
        inbox_id = re.search(r"/console/callbacks/(\d+)", story.text)
        assert inbox_id
        body = client.get(f"/console/callbacks/{inbox_id.group(1)}")
        assert body.status_code == 200
        assert "<script>alert" not in body.text  # escaped
        assert "&lt;script&gt;" in body.text
        failures = client.get("/console/failures")
        assert failures.status_code == 200
        assert "&lt;b&gt;bold&lt;/b&gt;" in failures.text
        assert client.get("/console").status_code == 200


def test_reconciliation_findings_show_on_the_timeline(receiver: Receiver) -> None:
    """Reconciliation (another stage) stores what it learns from the provider as inbox rows
    of the channel ``reconcile``: the timeline shows them as findings."""
    registered = receiver.register(
        provider="okdokument", signatureRequestId="sr-rec", documentId="doc-rec", reference="r"
    )

    async def store_finding() -> None:
        db = open_database(receiver.settings.database_url)
        await db.connect()
        try:
            params = inbox.insert_params(
                provider="okdokument",
                channel="reconcile",
                dedupe_key="reconcile:sr-rec:1",
                received_at=time.time(),
                body=b'{"state": "signed"}',
                headers={},
                query="",
                request_id=registered["id"],
                external_id="sr-rec",
            )
            async with db.transaction() as tx:
                await tx.execute(
                    inbox.INSERT_SQL,
                    {**params, "status": "processed"},
                )
                await tx.execute(
                    "UPDATE inbox SET provider_type = 'document info: signed',"
                    " kind = 'request.completed' WHERE dedupe_key = 'reconcile:sr-rec:1'"
                )
        finally:
            await db.close()

    asyncio.run(store_finding())
    with console(receiver) as client:
        page = client.get(f"/console/requests/{registered['id']}").text
    assert "reconciliation finding: document info: signed" in page
    assert "k-finding" in page
