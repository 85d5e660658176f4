"""A slow or silent endpoint slows neither the other endpoints nor the provider calls.

Deliveries are claimed per endpoint lane, up to a per-endpoint share of their own capacity,
and provider calls have a capacity of their own: so while one endpoint holds every
connection it may have (answering after 2 s, or not at all), another endpoint's deliveries
and the PATCHes go out as if it were not there. Checked by what arrived where, not by time.
"""

from __future__ import annotations

from collections.abc import Callable

from receiver.settings import Settings
from tests.downstream import Answer, add_endpoint, running_downstream
from tests.harness import running_okdokument, running_receiver, wait_until
from tests.integration.test_downstream_flows import post_firma


def test_slow_and_silent_endpoints_hold_up_nothing_else(
    make_settings: Callable[..., Settings],
) -> None:
    requests = 16
    with (
        running_downstream() as (url, receiver),
        running_okdokument() as (okd_url, fake),
        running_receiver(
            make_settings,
            okdokument_base_url=okd_url,
            endpoint_allow_private=True,
            endpoint_concurrency=8,
            endpoint_concurrency_per_endpoint=3,
            endpoint_timeout_seconds=3.0,
        ) as signback,
    ):
        receiver.default["/slow"] = Answer(delay=2.0)  # answers, after 2 s
        receiver.default["/silent"] = Answer(delay=5.0)  # never within the 3 s timeout
        for path in ("/slow", "/silent", "/fast"):
            add_endpoint(signback.url, receiver, url, path)
        for i in range(requests):
            signback.register(provider="firma", signatureRequestId=f"sr-iso-{i}")
            post_firma(signback, f"sr-iso-{i}", "signing_request.sent")
        wait_until(lambda: len(receiver.accepted("/fast")) == requests, what="the fast endpoint")
        # Meanwhile the slow one got at most two rounds of its three connections, the silent
        # one a single round: they did not hold the fast one up, nor take its room.
        assert len(receiver.to("/slow")) <= 6
        assert len(receiver.to("/silent")) <= 3

        # The provider calls do not wait either: OKdokument registrations PATCH at once.
        names = [f"sr-patch-{i}" for i in range(4)]
        for name in names:
            doc = fake.new_document("c.pdf", b"%PDF-1.4", document_id=f"doc-{name}")
            fake.new_round(doc, signature_request_id=name, send_info_url=None, result_url=None)
            signback.register(
                provider="okdokument", signatureRequestId=name, documentId=f"doc-{name}"
            )
        wait_until(
            lambda: (
                {
                    c.body.get("signatureRequestId")
                    for c in fake.calls
                    if c.method == "PATCH" and isinstance(c.body, dict) and c.status == 200
                }
                >= set(names)
            ),
            what="the PATCHes",
        )
        assert len(receiver.to("/slow")) < requests  # still far from done
        assert len(receiver.to("/silent")) <= 6
        assert receiver.problems() == []
