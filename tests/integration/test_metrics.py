"""GET /metrics: Prometheus text, behind the admin token, counting what happened."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from receiver.settings import Settings
from tests.harness import running_okdokument, running_receiver, wait_until


def test_metrics_count_callbacks_attempts_and_queues(
    make_settings: Callable[..., Settings],
) -> None:
    with (
        running_okdokument() as (okd_url, fake),
        running_receiver(make_settings, okdokument_base_url=okd_url) as receiver,
    ):
        doc = fake.new_document("c.pdf", b"%PDF", document_id="doc-m")
        fake.new_round(doc, signature_request_id="sr-m", send_info_url=None, result_url=None)
        registered = receiver.register(
            provider="okdokument", signatureRequestId="sr-m", documentId="doc-m"
        )
        hook = registered["callback_urls"]["sendinfo_url"]
        body = {"state": "canceled", "id": "doc-m", "signatureRequestId": "sr-m"}
        for _ in range(2):
            httpx.post(hook, json=body)
        httpx.post(hook, content=b"{broken", headers={"content-type": "application/json"})
        receiver.wait_for_actions(registered["id"], settled=2)
        with httpx.Client(base_url=receiver.url) as anonymous:
            assert anonymous.get("/metrics").status_code == 401
        with receiver.admin() as admin:
            text = wait_until(
                lambda: t if 'outcome="skipped"' in (t := admin.get("/metrics").text) else None,
                what="the skipped confirmation in the metrics",
            )
        lines = set(text.splitlines())
        callbacks = 'signback_callbacks_total{answer="%s",channel="sendinfo",provider="okdokument"}'
        assert f"{callbacks % 'accepted'} 1.0" in lines
        assert f"{callbacks % 'duplicate'} 1.0" in lines
        assert 'signback_http_responses_total{route="/hooks/okdokument",status="400"} 1.0' in lines
        ok = 'signback_outbox_attempts_total{operation="okdokument.patch_signature_request",'
        assert f'{ok}outcome="done"}} 1.0' in lines
        # Every working status has its gauge, 0 included (an alert rule needs the series);
        # finished rows, which grow without end, are not counted at each scrape.
        assert 'signback_inbox_rows{status="pending"} 0.0' in lines
        assert 'signback_outbox_rows{status="dead"} 0.0' in lines
        assert 'signback_inbox_rows{status="processed"}' not in text
        assert 'signback_outbox_rows{status="done"}' not in text
        assert "signback_outbox_attempt_seconds_bucket" in text
        assert registered["callback_urls"]["sendinfo_url"].rsplit("/", 1)[1] not in text
