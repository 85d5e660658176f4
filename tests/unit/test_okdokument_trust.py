"""What an OKdokument callback body may and may not decide (handlers/okdokument): the rule
and the confirmation ask only about the registered document, an answer about another
document confirms nothing, errorsendinfo is a fact of its own that leaves the claim open,
the intake refuses a body naming another document, and a registration needs its
documentId while confirmation is on."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import unquote

import pytest
from starlette.responses import JSONResponse, Response

from handlers.okdokument.client import OkdokumentClient
from handlers.okdokument.operations import CONFIRM, confirm_document_state
from handlers.okdokument.provider import registration_checker
from handlers.okdokument.routes import check_document
from handlers.okdokument.rules import confirm_before_acting
from handlers.okdokument.settings import OkdokumentSettings
from receiver.context import AppContext
from receiver.errors import CallbackRejected, InvalidAction
from receiver.events import EventKind, NormalizedEvent
from receiver.model import RequestState, SignatureRequest
from receiver.outbox.outcomes import Done, Failed, GiveUp, Skipped
from receiver.outbox.retry import RetryPolicy
from receiver.pipeline.registration import Registration
from receiver.store import requests
from receiver.store.db import open_database
from receiver.store.db.base import Database
from tests.conftest import test_settings
from tests.servers import Recorded, Recorder, running_server

pytestmark = pytest.mark.anyio

REGISTERED = "doc-victim"
REQUEST = SignatureRequest(
    id=7,
    provider="okdokument",
    external_id="sr-victim",
    state=RequestState.REGISTERED,
    document_id=REGISTERED,
)


def metadata(state: str, document_id: Any = REGISTERED) -> dict[str, Any]:
    """Document info as OKdokument documents it."""
    answer: dict[str, Any] = {
        "filename": "contract.pdf",
        "state": state,
        "modification": "2022-06-21 14:30:44",
        "date": 1655814644472,
        "number": "1655814644463",
    }
    if document_id is not None:
        answer["id"] = document_id
    return answer


class DocumentInfo:
    """Document info on loopback: answers ``answers["body"]``, and records who was asked."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.recorder = Recorder(self.respond)
        self.answers = answers

    def respond(self, _: Recorded) -> Response:
        body = self.answers["body"]
        if isinstance(body, bytes):
            return Response(body)
        return JSONResponse(body)

    @property
    def asked(self) -> list[str]:
        return [unquote(r.path.decode().rsplit("/", 1)[1]) for r in self.recorder.requests]


@pytest.fixture
def answers() -> dict[str, Any]:
    return {"body": metadata("signed")}


@pytest.fixture
def info(answers: dict[str, Any]) -> Iterator[tuple[DocumentInfo, str]]:
    document_info = DocumentInfo(answers)
    with running_server(document_info.recorder) as base:
        yield document_info, base


class ScheduleWrites:
    """The database, with the one write the reconciler's part makes recorded instead of
    stored: bringing the request's next reconcile read forward (receiver/store/reconcile.py
    ``read_soon``). Everything else (the document's other rounds, the version kept) goes to
    the real store."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.soon: list[dict[str, Any]] = []

    async def execute(self, sql: str, params: dict[str, Any] | None = None) -> int:
        if sql.startswith("UPDATE signature_requests SET next_reconcile_at"):
            self.soon.append(dict(params or {}))
            return 1
        return await self.db.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


@pytest.fixture
async def writes(sqlite_url: str) -> AsyncIterator[ScheduleWrites]:
    db = open_database(sqlite_url)  # the document's other rounds are looked up there
    await db.connect()
    yield ScheduleWrites(db)
    await db.close()


@pytest.fixture
async def ctx(info: tuple[DocumentInfo, str], writes: ScheduleWrites) -> AsyncIterator[AppContext]:
    client = OkdokumentClient(info[1], "key")
    # The operation reads its client, the database, the clock and the reconcile settings,
    # and may ask for a read soon: the rest of a context is not the point.
    settings = test_settings("sqlite:///unused.db", reconcile_soon_seconds=30.0)
    yield cast(
        AppContext,
        SimpleNamespace(
            clients={"okdokument": client}, clock=lambda: 1000.0, settings=settings, db=writes
        ),
    )
    await client.aclose()


def claim(document_id: str = "doc-of-someone-else") -> NormalizedEvent:
    """A sendInfo 'signed' claim, as the adapter makes it from a body naming ``document_id``."""
    return NormalizedEvent(
        provider="okdokument",
        kind=EventKind.REQUEST_COMPLETED,
        provider_type="sendinfo:signed",
        external_id="sr-victim",
        event_id="inbox-5",
        confirmed=False,
        details={"document_state": "signed", "document_id": document_id},
    )


def test_the_confirm_rule_does_not_take_the_document_from_the_body() -> None:
    (action,) = confirm_before_acting(claim("doc-of-someone-else"), REQUEST)
    assert action.operation == CONFIRM
    assert action.key == "confirm:inbox-5"
    assert dict(action.payload) == {"claimed_state": "signed", "confirms": "inbox-5"}


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"claimed_state": "signed", "confirms": "inbox-5"}, id="current"),
        # Queued by an earlier version, which copied the callback body's id here.
        pytest.param(
            {"claimed_state": "signed", "confirms": "inbox-5", "document_id": "doc-other"},
            id="queued-before",
        ),
    ],
)
async def test_confirmation_asks_about_the_registered_document_only(
    ctx: AppContext,
    info: tuple[DocumentInfo, str],
    payload: dict[str, Any],
    writes: ScheduleWrites,
) -> None:
    outcome = await confirm_document_state(ctx, REQUEST, payload)
    assert info[0].asked == [REGISTERED]
    assert isinstance(outcome, Done)
    assert writes.soon == []  # confirmed: nothing to read
    (fact,) = outcome.follow_up
    assert fact.channel == "confirmation"
    assert fact.dedupe_key == "confirmation:inbox-5"
    assert fact.request_id == REQUEST.id
    assert json.loads(fact.body) == {
        "state": "signed",
        "id": REGISTERED,
        "signatureRequestId": "sr-victim",
        "confirms": "inbox-5",
        "claimed_state": "signed",
    }


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(metadata("signed", "doc-of-someone-else"), id="another-document"),
        pytest.param(metadata("signed", None), id="no-id"),
        pytest.param(metadata("signed", 12), id="id-not-text"),
        pytest.param(metadata("signed", REGISTERED.upper()), id="id-case-changed"),
    ],
)
async def test_an_answer_about_another_document_confirms_nothing(
    ctx: AppContext, answers: dict[str, Any], body: dict[str, Any]
) -> None:
    answers["body"] = body
    outcome = await confirm_document_state(
        ctx, REQUEST, {"claimed_state": "signed", "confirms": "c"}
    )
    assert isinstance(outcome, GiveUp)  # an anomaly for the operator (dead), not a retry
    assert not outcome.follow_up
    assert "not confirmed: Document info answered about document" in outcome.message
    assert repr(REGISTERED) in outcome.message
    decision = RetryPolicy().decide(outcome, attempts=1, created_at=0, now=1, rand=0.5)
    assert decision.status == "dead"


async def test_errorsendinfo_records_a_fact_and_leaves_the_claim_open(
    ctx: AppContext, answers: dict[str, Any], writes: ScheduleWrites
) -> None:
    answers["body"] = metadata("errorsendinfo")
    outcome = await confirm_document_state(
        ctx, REQUEST, {"claimed_state": "signed", "confirms": "inbox-5"}
    )
    assert isinstance(outcome, Failed)
    assert "errorsendinfo" in outcome.message
    assert "asking again later" in outcome.message
    (fact,) = outcome.follow_up
    # Its own key: it cannot use up the key of the confirmation that may follow.
    assert fact.dedupe_key == "delivery-failed:inbox-5"
    assert json.loads(fact.body)["state"] == "errorsendinfo"
    # The outbox's own retry policy asks again, within its bounds.
    policy = RetryPolicy(max_attempts=3)
    assert policy.decide(outcome, attempts=1, created_at=0, now=1, rand=0.5).status == "retry"
    last = policy.decide(outcome, attempts=3, created_at=0, now=1, rand=0.5)
    assert last.status == "dead"
    assert "errorsendinfo" in last.reason
    # And the reconciler reads the document soon, its backoff starting over.
    assert writes.soon == [{"at": 1030.0, "interval": 30.0, "id": REQUEST.id}]


@pytest.mark.parametrize("actual", ["tosign", "canceled", "tags", "", 5])
async def test_only_the_claimed_state_confirms(
    ctx: AppContext, answers: dict[str, Any], actual: Any, writes: ScheduleWrites
) -> None:
    answers["body"] = metadata(actual)
    outcome = await confirm_document_state(
        ctx, REQUEST, {"claimed_state": "signed", "confirms": "c"}
    )
    assert isinstance(outcome, Skipped)
    assert not outcome.follow_up
    assert outcome.message.startswith("not confirmed: OKdokument says the document is")
    # Document info may lag behind the callback: a reconcile read soon, not a retry.
    assert writes.soon == [{"at": 1030.0, "interval": 30.0, "id": REQUEST.id}]


@pytest.mark.parametrize("claimed", ["errorsendinfo", "tosign", "tags", "", "None"])
async def test_only_an_outcome_can_be_confirmed(
    ctx: AppContext, answers: dict[str, Any], info: tuple[DocumentInfo, str], claimed: str
) -> None:
    """Document info saying exactly what was claimed confirms nothing unless the claim is an
    outcome: an ``errorsendinfo`` "claim" with an ``errorsendinfo`` answer is no confirmation."""
    answers["body"] = metadata(claimed)
    with pytest.raises(InvalidAction, match="only an outcome"):
        await confirm_document_state(ctx, REQUEST, {"claimed_state": claimed, "confirms": "c"})
    assert info[0].asked == []  # nothing was even asked


@pytest.mark.parametrize(
    "body", [pytest.param(b"<html>", id="not-json"), pytest.param(b"[]", id="not-an-object")]
)
async def test_an_unreadable_answer_is_retried(
    ctx: AppContext, answers: dict[str, Any], body: bytes
) -> None:
    answers["body"] = body
    outcome = await confirm_document_state(
        ctx, REQUEST, {"claimed_state": "signed", "confirms": "c"}
    )
    assert outcome == Failed(
        "Document info answer is not a JSON object",
        status_code=200,
        response_excerpt=body.decode(),
    )


async def test_a_request_without_a_document_cannot_be_confirmed(
    ctx: AppContext, info: tuple[DocumentInfo, str]
) -> None:
    request = SignatureRequest(
        id=8, provider="okdokument", external_id="sr-old", state=RequestState.REGISTERED
    )
    with pytest.raises(InvalidAction, match="registered without a documentId"):
        await confirm_document_state(ctx, request, {"claimed_state": "signed", "confirms": "c"})
    assert info[0].asked == []


@pytest.mark.parametrize(
    ("payload", "registered", "status"),
    [
        pytest.param({"id": "doc-victim"}, "doc-victim", None, id="same"),
        pytest.param({}, "doc-victim", None, id="absent"),
        pytest.param({"id": None}, "doc-victim", None, id="null"),
        pytest.param({"id": "doc-other"}, None, None, id="nothing-registered"),
        pytest.param({"id": "doc-other"}, "doc-victim", 409, id="other"),
        pytest.param({"id": ""}, "doc-victim", 409, id="empty"),
        pytest.param({"id": "DOC-VICTIM"}, "doc-victim", 409, id="case"),
        pytest.param({"id": "doc-victim "}, "doc-victim", 409, id="trailing-space"),
        pytest.param({"id": "\ud800"}, "doc-victim", 409, id="lone-surrogate"),
        pytest.param({"id": 5}, "doc-victim", 400, id="number"),
        pytest.param({"id": ["doc-victim"]}, None, 400, id="list"),
    ],
)
def test_the_intake_refuses_a_body_naming_another_document(
    payload: dict[str, Any], registered: str | None, status: int | None
) -> None:
    if status is None:
        check_document(payload, registered)
        return
    with pytest.raises(CallbackRejected) as refused:
        check_document(payload, registered)
    assert refused.value.status_code == status
    assert "id" in refused.value.message


@pytest.mark.parametrize(
    ("confirm", "document_id", "problems"),
    [
        (True, None, ["documentId"]),
        (True, "", ["documentId"]),
        (True, "doc-1", []),
        (False, None, []),
    ],
)
def test_registration_needs_a_document_while_confirmation_is_on(
    confirm: bool, document_id: str | None, problems: list[str]
) -> None:
    settings = test_settings("sqlite:///unused.db", okdokument_confirm_callbacks=confirm)
    check = registration_checker(settings.section(OkdokumentSettings))
    found = check(Registration(provider="okdokument", external_id="sr", document_id=document_id))
    assert [name for name, _ in found] == problems
    for _, message in found:
        assert "SIGNBACK_OKDOKUMENT_CONFIRM_CALLBACKS=false" in message


async def a_round(ctx: AppContext, external_id: str) -> SignatureRequest:
    """A request on the registered document: one signing round of it."""
    async with ctx.db.transaction() as tx:
        row = await requests.insert(
            tx,
            provider="okdokument",
            external_id=external_id,
            document_id=REGISTERED,
            reference=None,
            return_url=None,
            retry_url=None,
            metadata={},
            defaults={},
            token_hash=f"t-{external_id}",
            hook_hash=f"h-{external_id}",
            token_nonce=f"n-{external_id}",
            now=1000.0,
        )
    assert row is not None
    return requests.from_row(row)


def at(modification: str, state: str = "signed") -> dict[str, Any]:
    return {**metadata(state), "modification": modification}


async def test_an_answer_from_an_earlier_round_confirms_nothing_in_a_later_one(
    ctx: AppContext, answers: dict[str, Any]
) -> None:
    """Round 1 was confirmed ``signed`` at 14:30:44. Round 2's claim of ``signed`` is
    confirmed only by an answer from after that: Document info saying ``signed`` at 14:30:44
    (or with no readable modification) is still round 1's answer."""
    first = await a_round(ctx, "sr-round-1")
    answers["body"] = at("2022-06-21 14:30:44")
    confirmed = await confirm_document_state(ctx, first, {"claimed_state": "signed"})
    assert isinstance(confirmed, Done)
    second = await a_round(ctx, "sr-round-2")  # the document is sent for signing again
    unreadable = at("21.06.2022 14:40")
    for stale in (at("2022-06-21 14:30:44"), at("2022-06-21 09:00:00"), unreadable):
        answers["body"] = stale
        outcome = await confirm_document_state(ctx, second, {"claimed_state": "signed"})
        assert isinstance(outcome, Failed), stale
        assert "earlier round" in outcome.message
        assert not outcome.follow_up
    answers["body"] = at("2022-06-21 14:35:02")
    assert isinstance(await confirm_document_state(ctx, second, {"claimed_state": "signed"}), Done)
    rounds = await requests.same_document(ctx.db, "okdokument", REGISTERED)
    assert [r["document_version"] for r in rounds] == ["2022-06-21 14:30:44", "2022-06-21 14:35:02"]


async def test_a_second_claim_of_the_confirmed_outcome_is_confirmed_again(
    ctx: AppContext, answers: dict[str, Any]
) -> None:
    """Two claims of ``signed`` for one round (a retry of OKdokument's, or two queued before
    the first confirmation landed): the second finds the version this very request was
    confirmed at. That is this round's answer, not an earlier round's: it confirms (the
    fact it records is a duplicate the pipeline ignores) instead of being asked again until
    its retries run out."""
    request = await a_round(ctx, "sr-twice")
    answers["body"] = at("2022-06-21 14:30:44")
    assert isinstance(await confirm_document_state(ctx, request, {"claimed_state": "signed"}), Done)
    again = await confirm_document_state(ctx, request, {"claimed_state": "signed"})
    assert isinstance(again, Done), again
    rounds = await requests.same_document(ctx.db, "okdokument", REGISTERED)
    assert [r["document_version"] for r in rounds] == ["2022-06-21 14:30:44"]


async def test_a_round_the_document_has_left_is_not_confirmed(
    ctx: AppContext, answers: dict[str, Any], info: tuple[DocumentInfo, str]
) -> None:
    """Once a later round exists on the document, Document info speaks of that round: a
    late claim of the earlier round is not confirmed by it (not even asked)."""
    first = await a_round(ctx, "sr-old-round")
    await a_round(ctx, "sr-new-round")
    answers["body"] = at("2022-06-21 15:00:00")
    with pytest.raises(InvalidAction, match="later signing round"):
        await confirm_document_state(ctx, first, {"claimed_state": "signed"})
    assert info[0].asked == []
