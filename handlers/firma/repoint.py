"""Re-pointing Firma requests at a new public URL: only drafts can still change, and only
their ``completion_redirect_url`` points at signback (webhooks use one fixed URL per
workspace, which the operator updates in Firma's dashboard)."""

from __future__ import annotations

from handlers.firma.operations import EDITABLE_STATES, EDITABLE_STATUSES, PATCH
from handlers.firma.rules import RETURN_URL_PLACEHOLDER, draft_properties
from receiver.model import Action, SignatureRequest


def repoint(request: SignatureRequest, key: str) -> Action | None:
    if request.state not in EDITABLE_STATES:
        return None
    if request.provider_status and request.provider_status not in EDITABLE_STATUSES:
        return None
    if draft_properties(request).get("completion_redirect_url") != RETURN_URL_PLACEHOLDER:
        return None  # the redirect does not go through signback: nothing to move
    return Action(PATCH, {"completion_redirect_url": RETURN_URL_PLACEHOLDER}, key=key)
