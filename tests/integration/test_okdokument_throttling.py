"""OKdokument documents no rate limit, but a 429 (or a 503 with Retry-After) is the provider
asking us to wait, as for every provider: the action waits as asked and the answer does not
use up an attempt. A 503 without Retry-After may be an outage and is counted."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from handlers.okdokument.fake import FakeOkdokument
from receiver.settings import Settings
from tests.harness import Receiver, running_okdokument, running_receiver, wait_until
from tests.integration.test_okdokument_flow import seed, sign

# Fewer attempts than the provider's refusals: only uncounted refusals can end delivered.
MAX_ATTEMPTS = 2


@pytest.fixture
def okd() -> Iterator[tuple[str, FakeOkdokument]]:
    with running_okdokument() as pair:
        yield pair


@pytest.fixture
def receiver(
    make_settings: Callable[..., Settings], okd: tuple[str, FakeOkdokument]
) -> Iterator[Receiver]:
    with running_receiver(
        make_settings, okdokument_base_url=okd[0], outbox_max_attempts=MAX_ATTEMPTS
    ) as r:
        yield r


def action(receiver: Receiver, request_id: int, key: str) -> dict[str, Any]:
    def settled() -> dict[str, Any] | None:
        for found in receiver.show(request_id)["actions"]:
            if found["key"] == key and found["status"] in ("done", "dead", "skipped"):
                return dict(found)
        return None

    return wait_until(settled, what=f"action {key} to settle")


@pytest.mark.parametrize(("status", "retry_after"), [(429, 0), (503, 0)])
def test_a_patch_asked_to_wait_again_and_again_is_delivered(
    receiver: Receiver, okd: tuple[str, FakeOkdokument], status: int, retry_after: int
) -> None:
    _url, fake = okd
    seed(fake, "sr-busy", "doc-busy")
    fake.add_failure(status=status, retry_after=retry_after, count=5, methods=frozenset({"PATCH"}))
    registered = receiver.register(
        provider="okdokument", signatureRequestId="sr-busy", documentId="doc-busy"
    )
    attach = action(receiver, registered["id"], "attach")
    assert attach["status"] == "done", attach
    assert attach["attempts"] == 1
    assert [a["outcome"] for a in attach["attempt_log"]] == ["throttled"] * 5 + ["ok"]
    assert [a["status_code"] for a in attach["attempt_log"]] == [status] * 5 + [200]


def test_a_confirmation_read_asked_to_wait_is_repeated_only_as_asked(
    receiver: Receiver, okd: tuple[str, FakeOkdokument]
) -> None:
    url, fake = okd
    seed(fake, "sr-conf", "doc-conf")
    registered = receiver.register(
        provider="okdokument", signatureRequestId="sr-conf", documentId="doc-conf"
    )
    action(receiver, registered["id"], "attach")
    fake.add_failure(status=429, retry_after=0, count=4, methods=frozenset({"GET"}))
    sign(url, "sr-conf")
    receiver.wait_for_state(registered["id"], "completed")
    (confirm,) = [a for a in receiver.show(registered["id"])["actions"] if a["key"] != "attach"]
    assert confirm["status"] == "done", confirm
    assert confirm["attempts"] == 1
    assert [a["outcome"] for a in confirm["attempt_log"]] == ["throttled"] * 4 + ["ok"]
    reads = [c for c in fake.calls if c.method == "GET" and "doc-conf" in c.path]
    assert [c.status for c in reads] == [429] * 4 + [200]  # one read per answer, no more


def test_a_503_without_retry_after_is_an_outage_and_counts(
    receiver: Receiver, okd: tuple[str, FakeOkdokument]
) -> None:
    _url, fake = okd
    seed(fake, "sr-down", "doc-down")
    fake.add_failure(status=503, count=MAX_ATTEMPTS, methods=frozenset({"PATCH"}))
    registered = receiver.register(
        provider="okdokument", signatureRequestId="sr-down", documentId="doc-down"
    )
    attach = action(receiver, registered["id"], "attach")
    assert attach["status"] == "dead"
    assert attach["attempts"] == MAX_ATTEMPTS
    assert [a["outcome"] for a in attach["attempt_log"]] == ["retry", "dead"]
