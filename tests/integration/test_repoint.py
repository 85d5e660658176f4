"""A new public URL (a new tunnel address) re-points every still-open request, once."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from handlers.okdokument.fake import FakeOkdokument
from receiver.settings import Settings
from tests.harness import running_okdokument, running_receiver, wait_until


def patched_urls(fake: FakeOkdokument, sr_id: str) -> list[str]:
    return [
        str(c.body["sendInfoURL"])
        for c in fake.calls
        if c.method == "PATCH"
        and c.status == 200
        and isinstance(c.body, dict)
        and c.body.get("signatureRequestId") == sr_id
        and "sendInfoURL" in c.body
    ]


def seed(fake: FakeOkdokument, sr_id: str) -> None:
    doc = fake.new_document("c.pdf", b"%PDF", document_id=f"doc-{sr_id}")
    fake.new_round(doc, signature_request_id=sr_id, send_info_url=None, result_url=None)


def test_a_new_public_url_repoints_open_requests_only(
    make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    with running_okdokument() as (okd_url, fake):
        for sr_id in ("sr-open", "sr-done"):
            seed(fake, sr_id)
        with running_receiver(make_settings, okdokument_base_url=okd_url) as first:
            registered: dict[str, Any] = {
                sr_id: first.register(
                    provider="okdokument", signatureRequestId=sr_id, documentId=f"doc-{sr_id}"
                )
                for sr_id in ("sr-open", "sr-done")
            }
            wait_until(lambda: all(patched_urls(fake, s) for s in registered), what="attach")
            response = httpx.post(f"{okd_url}/_fake/sign/sr-done", json={})
            assert response.json()["sendinfo_status"] == 200
            first.wait_for_state(registered["sr-done"]["id"], "completed")
            old_url = first.url
        capsys.readouterr()
        # Same database, new address (running_receiver binds a new port: a new tunnel).
        with running_receiver(make_settings, okdokument_base_url=okd_url) as second:
            assert second.url != old_url
            moved = wait_until(
                lambda: u if len(u := patched_urls(fake, "sr-open")) == 2 else None,
                what="the re-point PATCH",
            )
            assert moved[0].startswith(f"{old_url}/hooks/okdokument/")
            assert moved[1].startswith(f"{second.url}/hooks/okdokument/")
            # Same token, new host: the URL the provider has now reaches this receiver.
            assert moved[0].rsplit("/", 1)[1] == moved[1].rsplit("/", 1)[1]
            shown = second.show(registered["sr-open"]["id"])
            assert shown["callback_urls"]["sendinfo_url"] == moved[1]
            assert patched_urls(fake, "sr-done") == [
                u for u in patched_urls(fake, "sr-done") if u.startswith(old_url)
            ]
        err = capsys.readouterr().err
        repointed = [
            line
            for line in map(json.loads, filter(None, err.splitlines()))
            if "re-pointing open requests" in line["event"]
        ]
        assert [line["requests"] for line in repointed] == [1]
        # A third start on the same address re-points nothing.
        calls_before = len(fake.calls)
        with running_receiver(
            make_settings, okdokument_base_url=okd_url, public_url=second.url
        ) as third:
            third.show(registered["sr-open"]["id"])
        assert len(fake.calls) == calls_before
