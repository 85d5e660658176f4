"""The console in a real browser: Debian's Chromium driven by Playwright, against signback
under uvicorn on loopback (SQLite file and PostgreSQL), its worker running.

What an operator does: sign in, search for a request, read its story, retry its dead
action; find forged callbacks among the refusals with their reason; download an archived
document. And what must not work: a form posted without its CSRF token, a viewer changing
anything. These tests FAIL when Chromium is missing (tests/browser.py).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from handlers.firma.signature import sign
from receiver.archive.storage import LocalStorage, default_dir, object_key
from receiver.settings import Settings
from tests.browser import CHROMIUM_ARGS, chromium_path, missing_chromium
from tests.conftest import ADMIN_TOKEN
from tests.harness import Receiver, running_receiver, wait_until

pytestmark = pytest.mark.acceptance

VIEWER_TOKEN = "test-viewer-token-0123456789"
NOWHERE = "http://127.0.0.1:9"  # connection refused: provider calls fail at once


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if (problem := missing_chromium()) is not None:
        pytest.fail(problem, pytrace=False)  # never a skip: CI installs it
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(chromium_path()), args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(timezone_id="Europe/Helsinki", accept_downloads=True)
    opened = context.new_page()
    opened.set_default_timeout(10_000)
    yield opened
    context.close()


@pytest.fixture
def receiver(make_settings: Callable[..., Settings]) -> Iterator[Receiver]:
    with running_receiver(
        make_settings,
        okdokument_base_url=NOWHERE,
        outbox_max_attempts=1,
        viewer_token=VIEWER_TOKEN,
    ) as running:
        yield running


def register(receiver: Receiver, reference: str) -> int:
    registered = receiver.register(
        provider="okdokument",
        signatureRequestId=f"sr-{reference}",
        documentId=f"doc-{reference}",
        reference=reference,
    )
    return int(registered["id"])


def dead_action(receiver: Receiver, request_id: int) -> int:
    (action,) = receiver.wait_for_actions(request_id, settled=1)
    assert action["status"] == "dead"
    return int(action["id"])


def sign_in(page: Page, receiver: Receiver, token: str = ADMIN_TOKEN) -> None:
    page.goto(f"{receiver.url}/console")
    expect(page).to_have_url(f"{receiver.url}/console/signin?next=%2Fconsole")
    # By keyboard: the token field has the focus, Enter sends the form.
    expect(page.get_by_label("Admin token")).to_be_focused()
    page.keyboard.type(token)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def test_sign_in_search_read_the_story_and_retry_the_dead_action(
    page: Page, receiver: Receiver
) -> None:
    for n in range(5):
        register(receiver, f"order-{n}")
    request_id = register(receiver, "order-42")
    action_id = dead_action(receiver, request_id)

    sign_in(page, receiver)
    expect(page.get_by_role("table").first).to_contain_text("registered")
    page.get_by_role("link", name="Requests", exact=True).click()
    page.get_by_label("Reference").fill("order-42")
    page.get_by_role("button", name="Search").click()
    rows = page.locator("table.list tbody tr")
    expect(rows).to_have_count(1)
    rows.get_by_role("link", name=f"#{request_id}").click()

    expect(page.get_by_role("heading", name=f"Request #{request_id}")).to_be_visible()
    decision = page.locator(
        "li.entry", has_text="rule decision: okdokument.patch_signature_request"
    )
    expect(decision).to_contain_text("dead")
    expect(decision.locator("table.attempts")).to_contain_text("could not reach the provider")
    # Times: the viewer's zone in the text, UTC on hover.
    stamp = decision.locator("time").first
    expect(stamp).to_have_attribute("title", f"{stamp.get_attribute('title')}")
    assert (stamp.get_attribute("title") or "").endswith("UTC")
    assert not stamp.inner_text().endswith("UTC")

    decision.get_by_role("button", name=f"Retry action {action_id}").click()
    expect(page.get_by_role("status")).to_contain_text(f"action {action_id} re-queued")
    wait_until(
        lambda: len(receiver.show(request_id)["actions"][0]["attempt_log"]) == 2,
        what="the retried attempt",
    )
    page.reload()
    attempts = page.locator("li.entry", has_text="rule decision").locator("table.attempts tbody tr")
    expect(attempts).to_have_count(2)

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.goto(f"{receiver.url}/console/failures")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def test_a_form_posted_without_its_csrf_token_is_refused(page: Page, receiver: Receiver) -> None:
    request_id = register(receiver, "order-7")
    action_id = dead_action(receiver, request_id)
    sign_in(page, receiver)
    page.goto(f"{receiver.url}/console/failures")
    form = page.locator(f"form[action='/console/actions/{action_id}/retry']")
    form.locator("input[name=csrf]").evaluate("input => input.remove()")
    form.get_by_role("button", name="Retry").click()
    expect(page.get_by_role("alert")).to_contain_text("without its CSRF token")
    assert receiver.show(request_id)["actions"][0]["status"] == "dead"


def test_a_viewer_reads_everything_and_changes_nothing(page: Page, receiver: Receiver) -> None:
    request_id = register(receiver, "order-8")
    action_id = dead_action(receiver, request_id)
    sign_in(page, receiver, VIEWER_TOKEN)
    expect(page.get_by_text("(read-only)")).to_be_visible()
    page.goto(f"{receiver.url}/console/requests/{request_id}")
    expect(page.locator("li.entry", has_text="rule decision")).to_contain_text("dead")
    expect(page.get_by_role("button", name=f"Retry action {action_id}")).to_have_count(0)
    page.goto(f"{receiver.url}/console/failures")
    expect(page.locator("form[action$='/retry']")).to_have_count(0)
    # A hand-made form with the session's own CSRF token is refused all the same.
    page.evaluate(
        """([id]) => {
            const form = document.createElement("form");
            form.method = "post";
            form.action = `/console/actions/${id}/retry`;
            form.append(document.querySelector("input[name=csrf]").cloneNode());
            document.body.append(form);
            form.submit();
        }""",
        [action_id],
    )
    expect(page.get_by_role("alert")).to_contain_text("read-only")
    assert receiver.show(request_id)["actions"][0]["status"] == "dead"


def test_forged_callbacks_show_among_the_refusals_with_their_reason(
    page: Page, receiver: Receiver
) -> None:
    body = b'{"id":"evt_forged","type":"signing_request.completed","data":{}}'
    with receiver.client() as client:
        answer = client.post(
            "/hooks/firma",
            content=body,
            headers={
                "content-type": "application/json",
                "x-firma-signature": sign("a-guessed-secret", body, int(time.time()) - 600),
            },
        )
    assert answer.status_code == 401
    sign_in(page, receiver)
    page.get_by_role("link", name="Failures").click()
    refused = page.locator("#refused tbody tr").first

    def shown() -> int:
        page.reload()  # the log is written within a second, off the intake's path
        return refused.count()

    wait_until(shown, what="the refusal on the page")
    expect(refused).to_contain_text("x-firma-signature: signature does not match")
    expect(refused).to_contain_text("secrets tried: 1")
    expect(refused).to_contain_text("old header present: no")
    expect(refused).to_contain_text("timestamp skew seconds: 6")  # 600 s, give or take
    refused.get_by_text("Headers and body").click()
    expect(refused).to_contain_text("v1=[redacted]")
    expect(refused).to_contain_text("evt_forged")


def archive_row(receiver: Receiver, request_id: int, content: bytes) -> None:
    """One archived document where the archive keeps it: the file under the archive's own
    storage key in its default directory (next to the SQLite file), and its `documents`
    row (migration 0010) with the size and SHA-256."""
    sha256 = hashlib.sha256(content).hexdigest()
    key = object_key("okdokument", request_id, sha256, "signed.pdf")
    storage = LocalStorage(default_dir(receiver.settings))
    storage.path_of(key).parent.mkdir(parents=True)
    storage.path_of(key).write_bytes(content)
    path = Path(receiver.settings.database_url.split("///", 1)[1])
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO documents (request_id, name, kind, media_type, size, sha256,"
            " storage_key, archived_at) VALUES (?, 'signed.pdf', 'signed', 'application/pdf',"
            " ?, ?, ?, ?)",
            (request_id, len(content), sha256, key, time.time()),
        )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_archived_document_is_listed_and_downloads(
    page: Page, receiver: Receiver, tmp_path: Path
) -> None:
    request_id = register(receiver, "order-9")
    content = b"%PDF-1.4 signed by everyone\n%%EOF\n"
    archive_row(receiver, request_id, content)
    sign_in(page, receiver)
    page.goto(f"{receiver.url}/console/requests/{request_id}")
    panel = page.locator("section", has=page.get_by_role("heading", name="Documents"))
    expect(panel).to_contain_text(hashlib.sha256(content).hexdigest())
    with page.expect_download() as download:
        panel.get_by_role("link", name="signed.pdf").click()
    saved = tmp_path / "downloaded.pdf"
    download.value.save_as(saved)
    assert saved.read_bytes() == content
    expect(page.locator("li.entry.k-document")).to_contain_text("document archived: signed.pdf")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_keyboard_reaches_the_content_and_the_navigation(
    page: Page, receiver: Receiver
) -> None:
    sign_in(page, receiver)
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()
    page.goto(f"{receiver.url}/console")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Overview")).to_be_focused()
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # Requests
    expect(page.get_by_role("heading", name="Requests")).to_be_visible()
    expect(page.get_by_role("link", name="Requests", exact=True)).to_have_attribute(
        "aria-current", "page"
    )
