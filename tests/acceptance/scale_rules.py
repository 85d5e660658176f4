"""Rules for the PostgreSQL scale-out test (SIGNBACK_RULES_MODULE=tests.acceptance.scale_rules).

Every callback the test sends produces exactly one PATCH it can predict, under a key of its
own, so the test can check each one reached OKdokument once and in the order it was decided:

- a browser return ``GET <return_url>?result=success&ts=<n>`` → ``resulturl`` set to
  ``https://shop.example/<signatureRequestId>/returned/<n>`` (key ``return-<n>``);
- a (trusted, unconfirmed-claims-off) sendInfo ``signed`` → ``resulturl`` set to
  ``https://shop.example/<signatureRequestId>/done`` (key ``done``).
"""

from __future__ import annotations

from collections.abc import Iterator

from receiver.events import EventKind, NormalizedEvent
from receiver.model import Action, SignatureRequest
from receiver.pipeline.rules import rule

PATCH = "okdokument.patch_signature_request"
SHOP = "https://shop.example"


def returned_url(signature_request_id: str, ts: str) -> str:
    return f"{SHOP}/{signature_request_id}/returned/{ts}"


def done_url(signature_request_id: str) -> str:
    return f"{SHOP}/{signature_request_id}/done"


@rule(EventKind.SIGNER_RETURNED, provider="okdokument")
def one_patch_per_return(event: NormalizedEvent, request: SignatureRequest) -> Iterator[Action]:
    ts = event.raw.get("ts")
    if isinstance(ts, str) and ts.isdigit():
        yield Action(
            PATCH, {"resulturl": returned_url(request.external_id, ts)}, key=f"return-{ts}"
        )


@rule(EventKind.REQUEST_COMPLETED, provider="okdokument")
def done_page(event: NormalizedEvent, request: SignatureRequest) -> Iterator[Action]:
    yield Action(PATCH, {"resulturl": done_url(request.external_id)}, key="done")
