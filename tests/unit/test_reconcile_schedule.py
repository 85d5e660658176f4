"""The reconciler's pure parts: the per-request backoff, the findings' dedupe keys, and how
each provider reads a finding (channel ``reconcile``)."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest

from handlers.firma import events as firma_events
from handlers.okdokument import adapter as okd_adapter
from receiver.events import EventKind
from receiver.model import RequestState, SignatureRequest
from receiver.providers.contract import Reading, StoredCallback
from receiver.reconcile.operation import dedupe_key, finding
from receiver.reconcile.schedule import Next, Policy
from receiver.settings import parse_stale_after

POLICY = Policy(first_delay=120.0, max_interval=6 * 3600.0, max_age=30 * 86400.0, soon=30.0)
T0 = 1_800_000_000.0


def test_a_new_request_is_read_first_after_the_first_delay() -> None:
    assert POLICY.first(T0) == (T0 + 120.0, 120.0)


def test_the_steps_double_up_to_the_cap() -> None:
    """Read at each due time, never heard from: 2, 4, 8 … minutes apart, then 6 h."""
    at, interval = POLICY.first(T0)
    gaps: list[float] = []
    for _ in range(12):
        step = POLICY.due(now=at, created_at=T0, updated_at=T0, interval=interval, queued=False)
        assert step.read
        assert step.at is not None
        gaps.append(step.at - at)
        at, interval = step.at, step.interval
    assert gaps[:5] == [240.0, 480.0, 960.0, 1920.0, 3840.0]
    assert gaps[-3:] == [6 * 3600.0] * 3
    assert max(gaps) == POLICY.max_interval


@pytest.mark.parametrize(
    ("now", "created_at", "updated_at", "interval", "queued", "expected"),
    [
        # Due, silent since registration: read, and the next step is twice as long.
        (T0 + 120, T0, T0, 120.0, False, Next(True, T0 + 120 + 240, 240.0)),
        # A state change 60 s ago (a callback came): no read; one step after that change.
        (T0 + 600, T0, T0 + 540, 240.0, False, Next(False, T0 + 540 + 240, 240.0)),
        # A read of it still waits in the outbox (rate budget): no second one.
        (T0 + 600, T0, T0, 240.0, True, Next(False, T0 + 600 + 240, 240.0)),
        # Older than the maximum age: the schedule ends, nothing is read.
        (T0 + 31 * 86400, T0, T0, 3600.0, False, Next(False, None, 3600.0)),
        # The next read would fall past the maximum age: this is the last.
        (T0 + 30 * 86400 - 60, T0, T0, 3600.0, False, Next(True, None, 7200.0)),
        # A step stored larger than the cap (settings changed) is held to the cap.
        (T0 + 9e4, T0, T0, 9e9, False, Next(True, T0 + 9e4 + 6 * 3600, 6 * 3600.0)),
        # Never stepped (a row scheduled by the migration): the first delay.
        (T0 + 9e4, T0, T0, None, False, Next(True, T0 + 9e4 + 240, 240.0)),
    ],
)
def test_what_a_due_request_gets(
    now: float,
    created_at: float,
    updated_at: float,
    interval: float | None,
    queued: bool,
    expected: Next,
) -> None:
    assert (
        POLICY.due(
            now=now, created_at=created_at, updated_at=updated_at, interval=interval, queued=queued
        )
        == expected
    )


def test_the_same_state_twice_is_one_finding_and_a_new_state_another() -> None:
    assert dedupe_key(7, "signed") == dedupe_key(7, "signed") == "reconcile:7:signed"
    assert dedupe_key(7, "signed") != dedupe_key(7, "canceled")
    assert dedupe_key(7, "signed") != dedupe_key(8, "signed")
    # A state the key cannot hold as it is (too long, or not printable) is hashed: still
    # one key per state, within the inbox's 200 characters.
    long_state = "x" * 500
    assert dedupe_key(7, long_state) == dedupe_key(7, long_state)
    assert len(dedupe_key(7, long_state)) <= 200
    assert dedupe_key(7, "a\nb") != dedupe_key(7, "a b")


def test_a_finding_is_the_raw_answer_on_channel_reconcile() -> None:
    request = SignatureRequest(id=3, provider="firma", external_id="sr", state=RequestState.SENT)
    body = b'{"id": "sr", "status": "finished"}'
    found = finding("firma", request, Reading(body=body, state="finished"))
    assert (found.channel, found.body, found.request_id) == ("reconcile", body, 3)
    assert found.dedupe_key == "reconcile:3:finished"


def stored(provider: str, body: Mapping[str, object]) -> StoredCallback:
    return StoredCallback(
        inbox_id=5,
        provider=provider,
        channel="reconcile",
        body=json.dumps(body).encode(),
        headers={},
        query="",
        request_id=3,
        received_at=T0,
    )


@pytest.mark.parametrize(
    ("status", "signed", "kind", "state"),
    [
        ("not_sent", 0, EventKind.REQUEST_CREATED, "not_sent"),
        ("in_progress", 0, EventKind.REQUEST_SENT, "in_progress:0"),
        ("in_progress", 1, EventKind.RECIPIENT_SIGNED, "in_progress:1"),
        ("finished", 2, EventKind.REQUEST_COMPLETED, "finished"),
        ("declined", 0, EventKind.REQUEST_DECLINED, "declined"),
        ("cancelled", 0, EventKind.REQUEST_CANCELLED, "cancelled"),
        ("expired", 0, EventKind.REQUEST_EXPIRED, "expired"),
        ("paused", 0, EventKind.UNKNOWN, "paused"),
    ],
)
def test_firma_reads_its_own_answer(status: str, signed: int, kind: EventKind, state: str) -> None:
    recipients = [{"id": f"r{i}", "signed_at": "2026-12-01T10:00:00Z"} for i in range(signed)]
    answer = {
        "id": "sr-1",
        "status": status,
        "recipients": [*recipients, {"id": "late", "signed_at": None}],
        "date_finished": "2026-12-01T10:00:00Z",
    }
    event = firma_events.normalize(stored("firma", answer))
    assert (event.kind, event.external_id, event.confirmed) == (kind, "sr-1", True)
    assert event.provider_type == f"reconcile:{status}"
    assert firma_events.reading_state(answer) == state
    if status == "finished":
        assert event.occurred_at == 1_796_119_200.0  # 2026-12-01T10:00:00Z
        assert event.details["provider_status"] == "finished"


@pytest.mark.parametrize(
    ("state", "kind"),
    [
        ("signed", EventKind.REQUEST_COMPLETED),
        ("canceled", EventKind.REQUEST_CANCELLED),
        ("tosign", EventKind.REQUEST_SENT),
        ("errorsendinfo", EventKind.DELIVERY_FAILED),
        ("weird", EventKind.UNKNOWN),
    ],
)
def test_okdokument_reads_document_info_as_confirmed(state: str, kind: EventKind) -> None:
    event = okd_adapter.normalize(stored("okdokument", {"id": "doc-1", "state": state}))
    assert (event.kind, event.confirmed, event.external_id) == (kind, True, None)
    assert event.provider_type == f"reconcile:{state}"
    assert event.details["document_id"] == "doc-1"


def test_stale_thresholds_are_read_over_the_defaults() -> None:
    merged = parse_stale_after("sent=60, registered=5")
    assert (merged["sent"], merged["registered"], merged["viewed"]) == (60.0, 5.0, 7 * 86400.0)
    for wrong in ("completed=5", "sent=-1", "sent=soon", "sent"):
        with pytest.raises(ValueError, match=r"."):
            parse_stale_after(wrong)
