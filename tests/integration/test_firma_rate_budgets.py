"""Acceptance-style: 200 rule PATCHes for one Firma key against an emulator that enforces
Firma's limits (200 reads and 120 writes a minute per key, 429 beyond), over real HTTP on
loopback, on SQLite and on PostgreSQL (there with two signback workers sharing the database).

Every PATCH must be delivered, none dead, no window may hold more calls than Firma allows,
each write costs at most one read, and no attempt may be used up by a 429.

**Time is scaled**, so that two minutes of Firma traffic take twelve seconds. The emulator's
window is ``60 / SPEED`` seconds instead of 60 (its limits stay 200 and 120 per window), and
signback's budgets span the same shortened window (``create_app(rate_window_seconds=…)``);
the per-window figures on both sides are the real ones. This still proves the real-time
property, because signback's pacing is nothing but a schedule of slots ``window / N`` apart
in the database, and every wait it makes is derived from that schedule. Scaling the window
changes the unit of time on both sides and nothing else. What does not scale is everything
outside the schedule: loopback and database latency, event-loop delays, the jitter between
a slot's start and the call's arrival at the emulator. In the scaled run those are SPEED
times larger relative to the window than in real life, so the test is harsher on the
property than real time would be, not kinder.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from handlers.firma.fake import (
    API_BASE_PATH,
    DEFAULT_API_KEY,
    RateLimits,
    key_id_of,
    max_in_window,
)
from receiver.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.harness import NO_KEEPALIVE, Receiver, running_firma, running_receiver, wait_until

SPEED = 10.0
WINDOW = 60.0 / SPEED  # the emulator's and signback's "minute", in wall-clock seconds
COUNT = 200
READ_LIMIT, WRITE_LIMIT = 200, 120  # Firma's, per key and window
PDF = b"%PDF-1.4\n1 0 obj << /Type /Page >> endobj\ntrailer << >>\n%%EOF\n"


def seed_drafts(firma_url: str, count: int) -> list[str]:
    """Drafts made through the emulator's control API: no API call, no rate budget used."""
    body = {"name": "Contract", "document": base64.b64encode(PDF).decode()}
    with httpx.Client(base_url=f"{firma_url}/_fake", timeout=10.0, limits=NO_KEEPALIVE) as control:
        return [control.post("/signing-requests", json=body).json()["id"] for _ in range(count)]


def register_all(receiver: Receiver, ids: list[str]) -> None:
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}

    def register(sr_id: str) -> None:
        with httpx.Client(base_url=receiver.url, headers=headers, timeout=10.0) as admin:
            response = admin.post(
                "/api/requests",
                json={
                    "provider": "firma",
                    "signing_request_id": sr_id,
                    "defaults": {"expiration_hours": 72},
                },
            )
        assert response.status_code == 201, response.text

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(register, ids))


def actions(receiver: Receiver) -> list[dict[str, Any]]:
    with receiver.admin() as admin:
        items: list[dict[str, Any]] = admin.get("/api/outbox", params={"limit": "1000"}).json()[
            "items"
        ]
    return items


def sent_patches(receiver: Receiver) -> int:
    """The PATCHes this process delivered (metrics count per process)."""
    with receiver.admin() as admin:
        text = admin.get("/metrics").text
    done = 'signback_outbox_attempts_total{operation="firma.patch_signing_request",outcome="done"}'
    found = [line for line in text.splitlines() if line.startswith(done)]
    return int(float(found[0].rsplit(" ", 1)[1])) if found else 0


def test_200_patches_for_one_key_stay_within_firmas_limits(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    # On PostgreSQL two signback workers share the database, so the budgets are shown to
    # hold for several processes together (SQLite is for a single process).
    workers = 2 if database_url.startswith("postgresql") else 1
    options = {"rate_window_seconds": WINDOW}
    with (
        running_firma(rate_limits=RateLimits(window_seconds=WINDOW)) as (firma_url, fake),
        contextlib.ExitStack() as stack,
    ):
        receiver_settings: dict[str, Any] = {
            "firma_base_url": f"{firma_url}{API_BASE_PATH}",
            "firma_api_key": DEFAULT_API_KEY,
            "firma_webhook_secrets": [fake.secret],
        }
        first = stack.enter_context(
            running_receiver(make_settings, app_options=options, **receiver_settings)
        )
        receivers = [first] + [
            stack.enter_context(
                running_receiver(
                    make_settings,
                    app_options=options,
                    public_url=first.url,  # the same service: nothing to re-point
                    **receiver_settings,
                )
            )
            for _ in range(workers - 1)
        ]
        drafts = seed_drafts(firma_url, COUNT)
        began = time.monotonic()
        register_all(first, drafts)

        def settled() -> list[dict[str, Any]] | None:
            items = actions(first)
            finished = [a for a in items if a["status"] in ("done", "dead", "skipped")]
            return items if len(finished) == COUNT else None

        items = wait_until(
            settled, timeout=8 * COUNT / 100 * WINDOW, interval=0.5, what="200 PATCHes"
        )
        took = time.monotonic() - began
        per_worker = [sent_patches(r) for r in receivers]

    calls = [c for c in fake.calls if c.get("key_id") == key_id_of(DEFAULT_API_KEY)]
    reads = [c for c in calls if c["method"] == "GET"]
    writes = [c for c in calls if c["method"] == "PATCH"]
    refused = [c for c in calls if c["status"] == 429]
    report = fake.rate_limiter.report()["keys"][key_id_of(DEFAULT_API_KEY)]
    max_reads = max_in_window([c["time"] for c in reads], WINDOW)
    max_writes = max_in_window([c["time"] for c in writes], WINDOW)
    span = max(c["time"] for c in calls) - min(c["time"] for c in calls)
    print(
        f"\n{database_url.split(':')[0]}: {len(reads)} reads, {len(writes)} writes,"
        f" {len(refused)} answered 429; most in one window: {max_reads} reads,"
        f" {max_writes} writes; {span * SPEED:.0f} s of Firma time ({span:.1f} s wall),"
        f" {took:.1f} s from the first registration to the last PATCH settled;"
        f" PATCHes sent per worker: {per_worker}"
    )

    assert [a["status"] for a in items] == ["done"] * COUNT, [
        (a["id"], a["status"], a["last_error"]) for a in items if a["status"] != "done"
    ]
    assert len(writes) == COUNT
    assert sum(per_worker) == COUNT
    assert all(per_worker), per_worker  # every worker took its share under the same budgets
    assert all(c["status"] == 200 for c in writes)
    # Never more than Firma allows in any window, counting every call signback sent.
    assert max_writes <= WRITE_LIMIT
    assert max_reads <= READ_LIMIT
    assert report["write"]["max_sent_in_window"] == max_writes
    assert report["read"]["max_sent_in_window"] == max_reads
    # One read per write: nothing in this flow needs more (no 429, no skip, no failure).
    assert len(reads) <= len(writes)
    assert refused == []
    # No attempt was used up by a 429 (there were none), and none by anything else.
    for action in items:
        assert action["attempts"] == 1
        assert [a["outcome"] for a in action["attempt_log"]] == ["ok"]
