"""What OKdokument's unsigned sendInfo may decide, end to end over real HTTP with the
emulator, on SQLite and on PostgreSQL.

A callback body never chooses what is confirmed: one naming another document is refused,
Document info is asked only about the registered document and only an answer about that
document counts, ``errorsendinfo`` leaves the claim open for a later confirmation, and a
request cannot be registered without the document confirmation needs. The signer's browser
carries only the return token, which does not open the sendInfo route.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from handlers.okdokument.fake import FakeOkdokument
from receiver.settings import Settings
from tests.acceptance.processes import ROOT, signback_env
from tests.harness import Receiver, running_okdokument, running_receiver, wait_until

CONFIRM = "okdokument.confirm_document_state"


@pytest.fixture
def okd() -> Iterator[tuple[str, FakeOkdokument]]:
    with running_okdokument() as pair:
        yield pair


def seed(fake: FakeOkdokument, sr_id: str, doc_id: str, state: str = "tosign") -> None:
    doc = fake.new_document("contract.pdf", b"%PDF-1.4", document_id=doc_id)
    fake.new_round(doc, signature_request_id=sr_id, send_info_url=None, result_url=None)
    fake.set_state(doc, state)


def path_of(receiver: Receiver, url: str) -> str:
    return url.removeprefix(receiver.url)


def post(receiver: Receiver, url: str, body: dict[str, Any]) -> httpx.Response:
    with receiver.client() as client:
        return client.post(path_of(receiver, url), json=body)


def asked_about(fake: FakeOkdokument) -> list[str]:
    """Which documents signback asked Document info about."""
    return [
        c.path.rsplit("/", 1)[1]
        for c in fake.calls
        if c.method == "GET" and "/JSON/document/metadata/" in c.path
    ]


def log_lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def test_a_body_naming_another_document_is_refused_and_confirms_nothing(
    make_settings: Callable[..., Settings],
    okd: tuple[str, FakeOkdokument],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The issue's example: the victim's document is ``tosign``; another document really is
    ``signed``. A sendInfo to the victim's URL naming the other document must not complete
    the victim's request."""
    url, fake = okd
    seed(fake, "sr-victim", "doc-victim")
    seed(fake, "sr-someone-else", "doc-of-someone-else-that-is-signed", state="signed")
    with running_receiver(make_settings, okdokument_base_url=url) as receiver:
        registered = receiver.register(
            provider="okdokument", signatureRequestId="sr-victim", documentId="doc-victim"
        )
        receiver.wait_for_actions(registered["id"], settled=1)  # the attach PATCH
        sendinfo = registered["callback_urls"]["sendinfo_url"]
        forged = {
            "signatureRequestId": "sr-victim",
            "state": "signed",
            "id": "doc-of-someone-else-that-is-signed",
        }
        response = post(receiver, sendinfo, forged)
        assert response.status_code == 409, response.text
        assert "not the document registered" in response.json()["error"]
        shown = receiver.show(registered["id"])
        assert [e["channel"] for e in shown["timeline"]] == ["signback"]  # nothing stored
        # The genuine claim for the same round is still taken (the refusal left no trace),
        # and confirmed against the registered document, which is not signed: nothing acts.
        genuine = {**forged, "id": "doc-victim"}
        assert post(receiver, sendinfo, genuine).json() == {"status": "accepted"}
        actions = receiver.wait_for_actions(registered["id"], settled=2)
        confirm = next(a for a in actions if a["operation"] == CONFIRM)
        assert confirm["status"] == "skipped"
        assert "'tosign'" in confirm["last_error"]
        assert "document_id" not in confirm["payload"]
        assert asked_about(fake) == ["doc-victim"]
        assert receiver.show(registered["id"])["state"] == "registered"
    refused = [
        line for line in log_lines(capsys.readouterr().err) if line["event"] == "callback refused"
    ]
    assert [(r["status"], r["request"], r["channel"]) for r in refused] == [
        (409, registered["id"], "sendinfo")
    ]
    assert "not the document registered" in refused[0]["reason"]


def test_an_answer_about_another_document_confirms_nothing(
    make_settings: Callable[..., Settings], okd: tuple[str, FakeOkdokument]
) -> None:
    url, fake = okd
    seed(fake, "sr-mixed", "doc-mixed")
    seed(fake, "sr-signed", "doc-signed", state="signed")
    # Document info for doc-mixed now answers with doc-signed's metadata (its id, its state):
    # an answer that is not about the document asked for, as a misrouting proxy might give.
    fake.documents["doc-mixed"] = fake.documents["doc-signed"]
    with running_receiver(make_settings, okdokument_base_url=url) as receiver:
        registered = receiver.register(
            provider="okdokument", signatureRequestId="sr-mixed", documentId="doc-mixed"
        )
        claim = {"signatureRequestId": "sr-mixed", "state": "signed", "id": "doc-mixed"}
        assert post(receiver, registered["callback_urls"]["sendinfo_url"], claim).json() == {
            "status": "accepted"
        }
        actions = receiver.wait_for_actions(registered["id"], settled=2)
        confirm = next(a for a in actions if a["operation"] == CONFIRM)
        assert confirm["status"] == "dead"
        assert confirm["attempts"] == 1  # final: an answer about another document is no state
        assert "answered about document 'doc-signed'" in confirm["last_error"]
        assert "'doc-mixed'" in confirm["last_error"]
        assert asked_about(fake) == ["doc-mixed"]
        shown = receiver.show(registered["id"])
        assert shown["state"] == "registered"
        assert "confirmation" not in [e["channel"] for e in shown["timeline"]]


def test_errorsendinfo_leaves_the_claim_open_until_document_info_agrees(
    make_settings: Callable[..., Settings], okd: tuple[str, FakeOkdokument]
) -> None:
    url, fake = okd
    seed(fake, "sr-late", "doc-late", state="errorsendinfo")
    with running_receiver(
        make_settings,
        okdokument_base_url=url,
        retry_base_delay=0.1,
        retry_max_delay=0.1,
        outbox_max_attempts=1000,
    ) as receiver:
        registered = receiver.register(
            provider="okdokument", signatureRequestId="sr-late", documentId="doc-late"
        )
        claim = {"signatureRequestId": "sr-late", "state": "signed", "id": "doc-late"}
        assert post(receiver, registered["callback_urls"]["sendinfo_url"], claim).json() == {
            "status": "accepted"
        }

        def asked_twice() -> dict[str, Any] | None:
            shown = receiver.show(registered["id"])
            confirm = [a for a in shown["actions"] if a["operation"] == CONFIRM]
            return shown if confirm and len(confirm[0]["attempt_log"]) >= 2 else None

        shown = wait_until(asked_twice, what="the confirmation to be retried")
        assert shown["state"] == "registered"
        confirm = next(a for a in shown["actions"] if a["operation"] == CONFIRM)
        assert confirm["status"] in ("pending", "in_flight")
        assert {a["outcome"] for a in confirm["attempt_log"][:2]} == {"retry"}
        assert all("errorsendinfo" in a["error"] for a in confirm["attempt_log"][:2])
        # OKdokument's Document info catches up: the next attempt confirms the claim.
        fake.set_state(fake.documents["doc-late"], "signed")
        shown = receiver.wait_for_state(registered["id"], "completed")
        kinds = [(e["channel"], e["kind"]) for e in shown["timeline"]]
        assert kinds.count(("confirmation", "delivery.failed")) == 1  # recorded once
        assert kinds.count(("confirmation", "request.completed")) == 1
        confirm = next(
            a
            for a in receiver.wait_for_actions(registered["id"], settled=2)
            if a["operation"] == CONFIRM
        )
        assert confirm["status"] == "done"
        assert confirm["attempt_log"][-1]["outcome"] == "ok"


def test_errorsendinfo_is_asked_again_only_within_the_retry_bounds(
    make_settings: Callable[..., Settings], okd: tuple[str, FakeOkdokument]
) -> None:
    url, fake = okd
    seed(fake, "sr-lost", "doc-lost", state="errorsendinfo")
    with running_receiver(make_settings, okdokument_base_url=url, outbox_max_attempts=3) as r:
        registered = r.register(
            provider="okdokument", signatureRequestId="sr-lost", documentId="doc-lost"
        )
        claim = {"signatureRequestId": "sr-lost", "state": "signed", "id": "doc-lost"}
        post(r, registered["callback_urls"]["sendinfo_url"], claim)
        actions = r.wait_for_actions(registered["id"], settled=2)
        confirm = next(a for a in actions if a["operation"] == CONFIRM)
        assert confirm["status"] == "dead"
        assert [a["outcome"] for a in confirm["attempt_log"]] == ["retry", "retry", "dead"]
        assert "gave up after 3 attempts" in confirm["last_error"]
        assert "errorsendinfo" in confirm["last_error"]
        shown = r.show(registered["id"])
        assert shown["state"] == "registered"
        assert [e["kind"] for e in shown["timeline"] if e["channel"] == "confirmation"] == [
            "delivery.failed"
        ]


def test_registration_needs_a_document_id_while_confirmation_is_on(
    make_settings: Callable[..., Settings],
) -> None:
    body = {"provider": "okdokument", "signatureRequestId": "sr-no-doc"}
    with running_receiver(make_settings, okdokument_base_url="http://127.0.0.1:9") as r:
        admin = r.admin()
        refused = admin.post("/api/requests", json=body)
        assert refused.status_code == 422, refused.text
        (problem,) = refused.json()["fields"]
        assert problem["field"] == "documentId"
        assert "SIGNBACK_OKDOKUMENT_CONFIRM_CALLBACKS=false" in problem["message"]
        assert admin.get("/api/requests").json()["items"] == []  # nothing stored
        # Firma has no such need.
        firma = admin.post("/api/requests", json={**body, "provider": "firma"})
        assert firma.status_code == 201, firma.text
        admin.close()
    with running_receiver(
        make_settings, okdokument_base_url="http://127.0.0.1:9", okdokument_confirm_callbacks=False
    ) as r:
        registered = r.register(**body)
        assert registered["document_id"] is None


def run_cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "receiver.cli", *args],
        cwd=ROOT,
        env=signback_env(settings.database_url, 0, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_cli_applies_the_same_rule(make_sqlite_settings: Callable[..., Settings]) -> None:
    settings = make_sqlite_settings()
    add = ("requests", "add", "--provider", "okdokument", "--id")
    refused = run_cli(settings, *add, "sr-cli")
    assert refused.returncode != 0
    assert "--document-id: required while SIGNBACK_OKDOKUMENT_CONFIRM_CALLBACKS" in refused.stderr
    assert "Traceback" not in refused.stderr
    with_doc = run_cli(settings, *add, "sr-cli", "--document-id", "doc-cli")
    assert with_doc.returncode == 0, with_doc.stderr
    assert json.loads(with_doc.stdout)["document_id"] == "doc-cli"
    unconfirmed = run_cli(settings, *add, "sr-cli-2", SIGNBACK_OKDOKUMENT_CONFIRM_CALLBACKS="false")
    assert unconfirmed.returncode == 0, unconfirmed.stderr


def test_the_signers_browser_never_sees_a_credential_that_posts_callbacks(
    make_settings: Callable[..., Settings], okd: tuple[str, FakeOkdokument]
) -> None:
    url, fake = okd
    seed(fake, "sr-browser", "doc-browser")
    seed(fake, "sr-page", "doc-page")
    with running_receiver(make_settings, okdokument_base_url=url) as receiver:
        with_page = receiver.register(
            provider="okdokument",
            signatureRequestId="sr-browser",
            documentId="doc-browser",
            return_url="https://shop.example/thanks",
        )
        own_page = receiver.register(
            provider="okdokument", signatureRequestId="sr-page", documentId="doc-page"
        )
        firma = receiver.register(provider="firma", signatureRequestId="sr_browser_firma")
        for registered in (with_page, own_page):
            receiver.wait_for_actions(registered["id"], settled=1)
        seen = []
        for sr_id in ("sr-browser", "sr-page"):
            # The signer finishes; OKdokument calls sendInfo and sends the browser back.
            result = httpx.post(
                f"{url}/_fake/sign/{sr_id}", json={"follow_redirect": True}, timeout=10
            ).json()
            assert result["sendinfo_status"] == 200
            assert result["redirect_status"] in (200, 303)
            with receiver.client() as client:  # what the browser got there, in full
                answer = client.get(path_of(receiver, result["redirect_url"]))
            seen.append(result["redirect_url"] + str(answer.headers) + answer.text)
        for registered, browser in zip((with_page, own_page), seen, strict=True):
            urls = registered["callback_urls"]
            sendinfo_token = urls["sendinfo_url"].rsplit("/", 1)[1]
            return_token = urls["return_url"].rsplit("/", 1)[1]
            assert return_token != sendinfo_token
            assert return_token in browser
            assert sendinfo_token not in browser
            receiver.wait_for_state(registered["id"], "completed")
        # What a browser holds does not open the intake: the return token on the sendInfo
        # route is an unknown URL (checked after the return route cached that token).
        cases = [(with_page, "sr-browser", "doc-browser"), (own_page, "sr-page", "doc-page")]
        for registered, sr_id, doc_id in cases:
            token = registered["callback_urls"]["return_url"].rsplit("/", 1)[1]
            body = {"signatureRequestId": sr_id, "state": "canceled", "id": doc_id}
            with receiver.client() as client:
                refused = client.post(f"/hooks/okdokument/{token}", json=body)
                assert refused.status_code == 404, refused.text
                assert refused.json() == {"error": "unknown callback URL"}
                # Nor does the sendInfo token open the browser's page.
                sendinfo_token = registered["callback_urls"]["sendinfo_url"].rsplit("/", 1)[1]
                assert client.get(f"/return/{sendinfo_token}").status_code == 404
        firma_token = firma["callback_urls"]["return_url"].rsplit("/", 1)[1]
        body = {"signatureRequestId": "sr_browser_firma", "state": "signed"}
        with receiver.client() as client:
            assert client.post(f"/hooks/okdokument/{firma_token}", json=body).status_code == 404
        timeline = receiver.show(with_page["id"])["timeline"]
        assert [e["provider_type"] for e in timeline if e["channel"] == "sendinfo"] == [
            "sendinfo:signed"
        ]


def test_a_sendinfo_that_is_no_outcome_acts_on_nothing(
    make_settings: Callable[..., Settings], okd: tuple[str, FakeOkdokument]
) -> None:
    """sendInfo is unsigned: ``tosign``, ``errorsendinfo`` and the other states that are no
    outcome used to be trusted (the request moved to ``sent``, a ``delivery_failed`` went
    downstream). They are recorded on the timeline; nothing moves, is asked or is sent."""
    url, fake = okd
    seed(fake, "sr-noout", "doc-noout")
    with running_receiver(make_settings, okdokument_base_url=url) as receiver:
        registered = receiver.register(
            provider="okdokument", signatureRequestId="sr-noout", documentId="doc-noout"
        )
        receiver.wait_for_actions(registered["id"], settled=1)  # the attach PATCH
        with receiver.admin() as admin:
            events_before = admin.get("/api/events").json()["items"]
        hook = registered["callback_urls"]["sendinfo_url"]
        states = ["tosign", "errorsendinfo", "tags", "tostamp", "nonsense"]
        for state in states:
            body = {"signatureRequestId": "sr-noout", "state": state, "id": "doc-noout"}
            assert post(receiver, hook, body).json() == {"status": "accepted"}

        def settled() -> dict[str, Any] | None:
            shown = receiver.show(registered["id"])
            done = [e for e in shown["timeline"] if e["status"] == "processed"]
            return shown if len(done) == 1 + len(states) else None

        shown = wait_until(settled, what="the sendInfo rows processed")
        assert shown["state"] == "registered"
        assert [a["operation"] for a in shown["actions"]] == ["okdokument.patch_signature_request"]
        assert asked_about(fake) == []
        with receiver.admin() as admin:
            assert admin.get("/api/events").json()["items"] == events_before


def test_document_info_from_an_earlier_round_confirms_nothing_in_a_later_one(
    make_settings: Callable[..., Settings],
) -> None:
    """OKdokument sends a document for signing again as a new request (a new round) on the
    same document id, and Document info speaks of the document. Round 2's ``signed`` claim
    while Document info still shows round 1's ``signed`` (same ``modification``) is not
    confirmed; once the document really changes after round 1, it is."""
    now = [1_800_000_000.0]
    with running_okdokument(clock=lambda: now[0]) as (url, fake):
        seed(fake, "sr-round-1", "doc-rounds")
        with running_receiver(
            make_settings,
            okdokument_base_url=url,
            retry_base_delay=0.05,
            retry_max_delay=0.05,
            outbox_max_attempts=1000,
        ) as receiver:
            first = receiver.register(
                provider="okdokument", signatureRequestId="sr-round-1", documentId="doc-rounds"
            )
            receiver.wait_for_actions(first["id"], settled=1)  # sendInfoURL is in place
            now[0] += 60
            with httpx.Client(base_url=url, timeout=10) as okdokument:
                assert okdokument.post("/_fake/sign/sr-round-1").status_code < 300
            receiver.wait_for_state(first["id"], "completed")
            doc = fake.documents["doc-rounds"]
            round_one_signed_at = doc.modified_ms

            # Round 2 on the same document.
            now[0] += 60
            fake.new_round(
                doc, signature_request_id="sr-round-2", send_info_url=None, result_url=None
            )
            second = receiver.register(
                provider="okdokument", signatureRequestId="sr-round-2", documentId="doc-rounds"
            )
            receiver.wait_for_actions(second["id"], settled=1)
            # Document info lags: it still answers round 1's state, as of round 1.
            doc.state, doc.modified_ms = "signed", round_one_signed_at
            claim = {"signatureRequestId": "sr-round-2", "state": "signed", "id": "doc-rounds"}
            hook = second["callback_urls"]["sendinfo_url"]
            assert post(receiver, hook, claim).json() == {"status": "accepted"}

            def asked_twice() -> dict[str, Any] | None:
                shown = receiver.show(second["id"])
                confirm = [a for a in shown["actions"] if a["operation"] == CONFIRM]
                return shown if confirm and len(confirm[0]["attempt_log"]) >= 2 else None

            shown = wait_until(asked_twice, what="round 2's confirmation to be retried")
            assert shown["state"] == "registered"
            confirm = next(a for a in shown["actions"] if a["operation"] == CONFIRM)
            assert all("earlier round" in a["error"] for a in confirm["attempt_log"][:2])

            # The signer really signs round 2: the document changes after round 1.
            now[0] += 60
            fake.set_state(doc, "signed")
            shown = receiver.wait_for_state(second["id"], "completed")
            assert receiver.show(first["id"])["state"] == "completed"
