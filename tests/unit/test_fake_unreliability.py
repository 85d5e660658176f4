"""The emulators' unreliability, as the reconciliation tests use it: a share of callbacks
lost on the way, and OKdokument's Document info lagging behind a change."""

from __future__ import annotations

import httpx
import pytest

from handlers.firma.fake import FakeFirma
from handlers.okdokument.fake import FakeOkdokument
from handlers.okdokument.fake import create_app as okd_app


class Monotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_okdokument_drops_the_share_asked_for() -> None:
    fake = FakeOkdokument(drop_callbacks_percent=30, seed=7)
    dropped = sum(fake.drops_callback() for _ in range(2000))
    assert 500 < dropped < 700
    assert fake.dropped_callbacks == dropped
    assert not any(FakeOkdokument(seed=7).drops_callback() for _ in range(200))  # default 0
    assert all(FakeOkdokument(drop_callbacks_percent=100).drops_callback() for _ in range(200))
    for wrong in (-1, 101):
        with pytest.raises(ValueError, match="between 0 and 100"):
            FakeOkdokument(drop_callbacks_percent=wrong)


def test_document_info_lags_behind_a_change_for_the_time_asked() -> None:
    clock = Monotonic()
    fake = FakeOkdokument(monotonic=clock, info_lag_seconds=5.0)
    doc = fake.new_document("a.pdf", b"%PDF", document_id="doc-1")
    fake.new_round(doc, signature_request_id="sr-1", send_info_url=None, result_url=None)
    clock.now += 10
    fake.set_state(doc, "signed")
    assert fake.metadata(doc)["state"] == "tosign"  # still the state before
    clock.now += 4.9
    assert fake.metadata(doc)["state"] == "tosign"
    clock.now += 0.2
    assert fake.metadata(doc)["state"] == "signed"


@pytest.mark.anyio
async def test_okdokument_control_api_sets_and_shows_the_behaviour() -> None:
    fake = FakeOkdokument()
    transport = httpx.ASGITransport(app=okd_app(fake))
    async with httpx.AsyncClient(transport=transport, base_url="http://okd") as client:
        assert (await client.get("/_fake/behaviour")).json() == {
            "drop_callbacks_percent": 0.0,
            "info_lag_seconds": 0.0,
            "dropped_callbacks": 0,
        }
        answer = await client.post(
            "/_fake/behaviour", json={"drop_callbacks_percent": 100, "info_lag_seconds": 2}
        )
        assert answer.json()["drop_callbacks_percent"] == 100.0
        assert fake.info_lag_seconds == 2.0
        refused = await client.post("/_fake/behaviour", json={"drop_callbacks_percent": 150})
        assert refused.status_code == 400
        seeded = await client.post(
            "/_fake/signature-requests",
            json={"signatureRequestId": "sr", "sendInfoURL": "http://127.0.0.1:9/nowhere"},
        )
        assert seeded.status_code == 201
        signed = (await client.post("/_fake/sign/sr", json={})).json()
        # Lost on the way: never sent, and OKdokument believes it delivered.
        assert signed["sendinfo_dropped"] is True
        assert signed["sendinfo_status"] is None
        assert signed["document_state"] == "signed"
        assert fake.dropped_callbacks == 1


@pytest.mark.anyio
async def test_firma_drops_the_share_asked_for_and_says_so() -> None:
    from handlers.firma.fake import create_app as firma_app

    fake = FakeFirma(drop_webhooks_percent=100, seed=3)
    transport = httpx.ASGITransport(app=firma_app(fake))
    async with httpx.AsyncClient(transport=transport, base_url="http://firma") as client:
        shown = (await client.get("/_fake/behaviour")).json()
        assert shown == {"drop_webhooks_percent": 100.0, "dropped_deliveries": 0}
        refused = await client.post("/_fake/behaviour", json={"drop_webhooks_percent": "all"})
        assert refused.status_code == 400
        changed = await client.post("/_fake/behaviour", json={"drop_webhooks_percent": 40})
        assert changed.json()["drop_webhooks_percent"] == 40.0
    with pytest.raises(Exception, match="between 0 and 100"):
        FakeFirma(drop_webhooks_percent=-5)
