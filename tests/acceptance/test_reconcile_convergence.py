"""Reconciliation, black-box: every callback is lost, and every outcome still arrives.

signback under uvicorn, both emulators under uvicorn on loopback dropping every callback
(``drop_webhooks_percent=100``, ``drop_callbacks_percent=100``), a downstream receiver
verifying what it is sent, a real SQLite file or PostgreSQL database. 100 requests (half
Firma, half OKdokument) are signed or declined (cancelled) at the provider and never called
back. They reach their final state:

- through the schedule (time-scaled: seconds, not minutes), and
- through ``signback reconcile``, a process of its own on the same database,

with exactly one downstream event per request outcome (``"source": "reconcile"``), and
within the providers' read limits: Firma's 200 reads per key in any window (the emulator
answers 429 beyond; none is answered) and OKdokument's reads under signback's own budget.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from handlers.firma.fake import (
    API_BASE_PATH,
    DEFAULT_API_KEY,
    FakeFirma,
    RateLimits,
    key_id_of,
    max_in_window,
)
from handlers.okdokument.fake import FakeOkdokument
from receiver.settings import Settings
from tests.acceptance.processes import ROOT, signback_env
from tests.downstream import DownstreamReceiver, add_endpoint, running_downstream
from tests.harness import (
    NO_KEEPALIVE,
    Receiver,
    running_firma,
    running_okdokument,
    running_receiver,
    wait_until,
)

pytestmark = pytest.mark.acceptance

SPEED = 10.0
WINDOW = 60.0 / SPEED  # Firma's "minute" (the emulator's and signback's), in wall seconds
READ_LIMIT = 200  # Firma's reads per key and window
OKD_READS_PER_MINUTE = 150.0  # signback's own budget for OKdokument (its window is WINDOW)
PER_PROVIDER = 50
PDF = b"%PDF-1.4\n1 0 obj << /Type /Page >> endobj\ntrailer << >>\n%%EOF\n"
FINAL_TYPES = (
    "signature_request.completed",
    "signature_request.declined",
    "signature_request.cancelled",
)
# The schedule, time-scaled: a first read a second after registration, then 2, 4 s … apart.
SCHEDULE = {
    "reconcile_enabled": True,
    "reconcile_first_delay_seconds": 1.0,
    "reconcile_max_interval_seconds": 4.0,
    "reconcile_soon_seconds": 0.5,
    "reconcile_tick_seconds": 0.2,
    "reconcile_batch_size": 100,
}


@contextlib.contextmanager
def stack(
    make_settings: Callable[..., Settings], **overrides: Any
) -> Iterator[tuple[Receiver, FakeFirma, str, FakeOkdokument, str, DownstreamReceiver, str]]:
    with (
        running_firma(
            rate_limits=RateLimits(window_seconds=WINDOW), drop_webhooks_percent=100, seed=1
        ) as (firma_url, firma),
        running_okdokument(drop_callbacks_percent=100, seed=2) as (okd_url, okd),
        running_downstream() as (downstream_url, downstream),
        running_receiver(
            make_settings,
            app_options={"rate_window_seconds": WINDOW},
            firma_base_url=f"{firma_url}{API_BASE_PATH}",
            firma_api_key=DEFAULT_API_KEY,
            firma_webhook_secrets=[firma.secret],
            okdokument_base_url=okd_url,
            okdokument_reads_per_minute=OKD_READS_PER_MINUTE,
            endpoint_allow_private=True,
            **overrides,
        ) as signback,
    ):
        add_endpoint(signback.url, downstream, downstream_url, "/signing")
        subscribe_firma(firma_url, signback.url)
        yield signback, firma, firma_url, okd, okd_url, downstream, downstream_url


def subscribe_firma(firma_url: str, signback_url: str) -> None:
    """Firma's webhook, pointed at signback (every delivery is dropped on the way)."""
    with httpx.Client(
        base_url=f"{firma_url}{API_BASE_PATH}",
        headers={"authorization": f"Bearer {DEFAULT_API_KEY}"},
        limits=NO_KEEPALIVE,
    ) as api:
        response = api.post(
            "/webhooks",
            json={"url": f"{signback_url}/hooks/firma", "events": ["*"]},
        )
        assert response.status_code in (200, 201), response.text


def firma_requests(firma_url: str, count: int) -> list[str]:
    """Drafts with one signer, made and sent at the emulator (its control API and the send
    call: writes, outside the read budget)."""
    body = {
        "name": "Contract",
        "document": base64.b64encode(PDF).decode(),
        "recipients": [
            {"first_name": "Ann", "last_name": "Signer", "email": "ann@example.com"},
        ],
    }
    ids: list[str] = []
    with (
        httpx.Client(base_url=f"{firma_url}/_fake", limits=NO_KEEPALIVE) as control,
        httpx.Client(
            base_url=f"{firma_url}{API_BASE_PATH}",
            headers={"authorization": f"Bearer {DEFAULT_API_KEY}"},
            limits=NO_KEEPALIVE,
        ) as api,
    ):
        for _ in range(count):
            created = control.post("/signing-requests", json=body)
            assert created.status_code == 201, created.text
            sr_id = created.json()["id"]
            sent = api.post(f"/signing-requests/{sr_id}/send")
            assert sent.status_code == 200, sent.text
            ids.append(sr_id)
    return ids


def okd_requests(okd_url: str, count: int) -> list[tuple[str, str]]:
    """(signatureRequestId, documentId) pairs seeded at the emulator."""
    pairs: list[tuple[str, str]] = []
    with httpx.Client(base_url=f"{okd_url}/_fake", limits=NO_KEEPALIVE) as control:
        for i in range(count):
            seeded = control.post(
                "/signature-requests",
                json={"signatureRequestId": f"sr-{i}", "documentId": f"doc-{i}"},
            )
            assert seeded.status_code == 201, seeded.text
            pairs.append((f"sr-{i}", f"doc-{i}"))
    return pairs


def register(signback: Receiver, bodies: list[dict[str, Any]]) -> dict[str, int]:
    """Register every request; its provider id → signback's id."""

    def one(body: dict[str, Any]) -> tuple[str, int]:
        with signback.admin() as admin:
            response = admin.post("/api/requests", json=body)
        assert response.status_code == 201, response.text
        return body["signing_request_id"] if "signing_request_id" in body else body[
            "signatureRequestId"
        ], int(response.json()["id"])

    with ThreadPoolExecutor(8) as pool:
        return dict(pool.map(one, bodies))


def finish_at_providers(
    firma_url: str, firma_ids: list[str], okd_url: str, okd_ids: list[str]
) -> dict[str, str]:
    """Sign two thirds, decline (Firma) or cancel (OKdokument) the rest. The final state
    each request must reach, by its provider id."""
    expected: dict[str, str] = {}
    with httpx.Client(base_url=f"{firma_url}/_fake", limits=NO_KEEPALIVE) as control:
        for i, sr_id in enumerate(firma_ids):
            if i % 3 == 2:
                answer = control.post(f"/signing-requests/{sr_id}/decline", json={})
                expected[sr_id] = "declined"
            else:
                answer = control.post(f"/signing-requests/{sr_id}/complete", json={})
                expected[sr_id] = "completed"
            assert answer.status_code == 200, answer.text
    with httpx.Client(base_url=f"{okd_url}/_fake", limits=NO_KEEPALIVE) as control:
        for i, sr_id in enumerate(okd_ids):
            action, state = ("cancel", "cancelled") if i % 3 == 2 else ("sign", "completed")
            answer = control.post(f"/{action}/{sr_id}", json={})
            assert answer.status_code == 200, answer.text
            assert answer.json()["sendinfo_status"] is None  # dropped: never sent
            expected[sr_id] = state
    return expected


def states(signback: Receiver) -> dict[str, str]:
    """Every request's state, by its provider id."""
    with signback.admin() as admin:
        items = admin.get("/api/requests", params={"limit": "500"}).json()["items"]
    return {item["signature_request_id"]: item["state"] for item in items}


def check_reads(firma: FakeFirma, okd: FakeOkdokument) -> tuple[int, int]:
    """No read refused, and at most the limit in any window. The most reads in one window."""
    calls = [c for c in firma.calls if c.get("key_id") == key_id_of(DEFAULT_API_KEY)]
    reads = [c for c in calls if c["method"] == "GET"]
    assert not [c for c in calls if c["status"] == 429]
    most_firma = max_in_window([c["time"] for c in reads], WINDOW) if reads else 0
    assert most_firma <= READ_LIMIT
    okd_reads = [c.time for c in okd.calls if c.method == "GET"]
    most_okd = max_in_window(okd_reads, WINDOW) if okd_reads else 0
    # signback's own budget for OKdokument, which documents no limit (one slot of slack:
    # the window may start just before a slot).
    assert most_okd <= OKD_READS_PER_MINUTE + 1
    return most_firma, most_okd


def check_downstream(
    downstream: DownstreamReceiver, ids: dict[str, int], expected: dict[str, str]
) -> None:
    """Exactly one event per request outcome, of the right type, from the reconciler."""
    assert downstream.problems() == []
    events = downstream.events("/signing")
    finals = [e for e in events if e["type"] in FINAL_TYPES]
    per_request = Counter(e["data"]["request"]["id"] for e in finals)
    assert per_request == Counter(ids.values())
    for event in finals:
        provider_id = event["data"]["request"]["external_id"]
        assert event["type"] == f"signature_request.{expected[provider_id]}"
        assert event["data"]["event"]["source"] == "reconcile"


def test_every_lost_outcome_arrives_through_the_schedule(
    make_settings: Callable[..., Settings],
) -> None:
    with stack(make_settings, **SCHEDULE) as (signback, firma, firma_url, okd, okd_url, down, _):
        firma_ids = firma_requests(firma_url, PER_PROVIDER)
        okd_pairs = okd_requests(okd_url, PER_PROVIDER)
        began = time.monotonic()
        ids = register(
            signback,
            [{"provider": "firma", "signing_request_id": i} for i in firma_ids]
            + [
                {"provider": "okdokument", "signatureRequestId": sr, "documentId": doc}
                for sr, doc in okd_pairs
            ],
        )
        # The first reads find them out for signing; then the signers act, unheard of.
        wait_until(
            lambda: sum(s == "sent" for s in states(signback).values()) == 2 * PER_PROVIDER,
            timeout=180,
            interval=0.25,
            what="every request read as sent",
        )
        expected = finish_at_providers(firma_url, firma_ids, okd_url, [p[0] for p in okd_pairs])
        wait_until(
            lambda: states(signback) == expected,
            timeout=180,
            interval=0.25,
            what="every request in its final state",
        )
        took = time.monotonic() - began
        wait_until(
            lambda: (
                len([e for e in down.events("/signing") if e["type"] in FINAL_TYPES]) >= len(ids)
            ),
            timeout=60,
            interval=0.25,
            what="the final events delivered",
        )
        time.sleep(1.0)  # a few more looks of the schedule: nothing more may come
        check_downstream(down, ids, expected)
        most_firma, most_okd = check_reads(firma, okd)
        assert sum(d.dropped for d in firma.deliveries) >= PER_PROVIDER  # really lost
        assert okd.dropped_callbacks == PER_PROVIDER
        firma_reads = len([c for c in firma.calls if c["method"] == "GET"])
        print(
            f"\n{len(ids)} requests final in {took:.1f} s; Firma {firma_reads} reads"
            f" (most in one window {most_firma}), OKdokument"
            f" {len([c for c in okd.calls if c.method == 'GET'])} reads (most {most_okd})"
        )


def run_reconcile(signback: Receiver, okd_url: str, firma_url: str, *args: str) -> Any:
    """``signback reconcile`` as its own process, on the same database."""
    settings = signback.settings
    env = signback_env(
        settings.database_url,
        0,
        SIGNBACK_PUBLIC_URL=signback.url,
        SIGNBACK_FIRMA_BASE_URL=f"{firma_url}{API_BASE_PATH}",
        SIGNBACK_FIRMA_API_KEY=DEFAULT_API_KEY,
        SIGNBACK_FIRMA_WEBHOOK_SECRETS="unused-here",
        SIGNBACK_OKDOKUMENT_BASE_URL=okd_url,
        SIGNBACK_OKDOKUMENT_API_KEY="fake-okdokument-key",
        # The command's budgets span a real minute: below Firma's 200 reads.
        SIGNBACK_FIRMA_READS_PER_MINUTE="190",
        SIGNBACK_OKDOKUMENT_READS_PER_MINUTE="600",
        SIGNBACK_RECONCILE_ENABLED="false",
    )
    done = subprocess.run(
        [sys.executable, "-m", "receiver.cli", "reconcile", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=240,
        check=False,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


CLI_PER_PROVIDER = 20


def test_every_lost_outcome_arrives_through_signback_reconcile(
    make_settings: Callable[..., Settings],
) -> None:
    # No schedule in the service: only the command reads.
    with stack(make_settings) as (signback, firma, firma_url, okd, okd_url, down, _):
        firma_ids = firma_requests(firma_url, CLI_PER_PROVIDER)
        okd_pairs = okd_requests(okd_url, CLI_PER_PROVIDER)
        ids = register(
            signback,
            [{"provider": "firma", "signing_request_id": i} for i in firma_ids]
            + [
                {"provider": "okdokument", "signatureRequestId": sr, "documentId": doc}
                for sr, doc in okd_pairs
            ],
        )
        expected = finish_at_providers(firma_url, firma_ids, okd_url, [p[0] for p in okd_pairs])
        assert set(states(signback).values()) == {"registered"}

        # A dry run says what it would do, and does nothing.
        code, out, err = run_reconcile(signback, okd_url, firma_url, "--dry-run")
        assert code == 0, err
        would = {r["external_id"]: r["state_after"] for r in json.loads(out)}
        assert would == expected
        assert set(states(signback).values()) == {"registered"}

        # One request, then the rest of one provider, then everything.
        first_okd = okd_pairs[0][0]
        code, out, err = run_reconcile(
            signback, okd_url, firma_url, "--request", str(ids[first_okd])
        )
        assert code == 0, err
        [only] = json.loads(out)
        assert (only["outcome"], only["state_after"]) == ("found", expected[first_okd])

        code, out, err = run_reconcile(signback, okd_url, firma_url, "--provider", "firma")
        assert code == 0, err
        assert {r["provider"] for r in json.loads(out)} == {"firma"}

        code, out, err = run_reconcile(signback, okd_url, firma_url)
        assert code == 0, err
        assert states(signback) == expected

        # Nothing is open any more: a second run reads nothing, emits nothing.
        code, out, err = run_reconcile(signback, okd_url, firma_url)
        assert (code, json.loads(out)) == (0, [])
        code, _, err = run_reconcile(signback, okd_url, firma_url, "--request", "999999")
        assert code == 2
        assert "no request 999999" in err

        wait_until(
            lambda: (
                len([e for e in down.events("/signing") if e["type"] in FINAL_TYPES]) >= len(ids)
            ),
            timeout=60,
            interval=0.25,
            what="the final events delivered",
        )
        time.sleep(0.5)
        check_downstream(down, ids, expected)
        check_reads(firma, okd)
