"""A user's own rules module, as SIGNBACK_RULES_MODULE loads it in the acceptance tests."""

from __future__ import annotations

from collections.abc import Iterator

from receiver.events import EventKind, NormalizedEvent
from receiver.model import Action, SignatureRequest
from receiver.pipeline.rules import rule


@rule(EventKind.REQUEST_COMPLETED, provider="okdokument")
def thank_you_page(event: NormalizedEvent, request: SignatureRequest) -> Iterator[Action]:
    """Once signed, later visits of the result URL go to the business's own 'done' page."""
    done_url = request.metadata.get("done_url")
    if isinstance(done_url, str):
        yield Action("okdokument.patch_signature_request", {"resulturl": done_url}, key="done-page")
