"""The business rules shipped for Firma.dev."""

from __future__ import annotations

from collections.abc import Iterator

from handlers.firma.operations import PATCH
from receiver import Action, EventKind, NormalizedEvent, SignatureRequest, rule

RETURN_URL_PLACEHOLDER = "{signback.return_url}"


def draft_properties(request: SignatureRequest) -> dict[str, object]:
    """The registered defaults, plus the completion redirect through signback's return page
    when the business gave a return URL (so the browser return lands in the timeline)."""
    properties: dict[str, object] = dict(request.defaults)
    if request.return_url and "completion_redirect_url" not in properties:
        properties["completion_redirect_url"] = RETURN_URL_PLACEHOLDER
    return properties


@rule(EventKind.REQUEST_REGISTERED, EventKind.REQUEST_CREATED, provider="firma")
def apply_draft_defaults(event: NormalizedEvent, request: SignatureRequest) -> Iterator[Action]:
    """(a) While the request is a draft, apply its registered defaults in one PATCH.

    Runs on registration and on ``signing_request.created``; the shared key makes it one
    action whichever comes first. If the request was sent in the meantime, the operation
    records the action as skipped, with the reason, instead of sending it (b).
    """
    properties = draft_properties(request)
    if properties:
        yield Action(PATCH, properties, key="draft-defaults")
