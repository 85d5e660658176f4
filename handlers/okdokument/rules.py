"""The business rules shipped for OKdokument (see the README's "Business rules" section)."""

from __future__ import annotations

from collections.abc import Iterator

from handlers.okdokument.operations import CONFIRM, PATCH
from receiver import Action, EventKind, NormalizedEvent, SignatureRequest, rule


def point_at_signback(key: str) -> Action:
    """PATCH sendInfoURL and resulturl to this request's signback URLs (filled at send time,
    so they always use the current public URL)."""
    return Action(
        PATCH,
        {"sendInfoURL": "{signback.sendinfo_url}", "resulturl": "{signback.return_url}"},
        key=key,
    )


@rule(EventKind.REQUEST_REGISTERED, provider="okdokument")
def attach_callback_urls(event: NormalizedEvent, request: SignatureRequest) -> Iterator[Action]:
    """(a) On registration, point the request's sendInfoURL and resulturl at signback."""
    yield point_at_signback("attach")


def repoint(request: SignatureRequest, key: str) -> Action | None:
    """A new public URL: every OKdokument request not yet ended is pointed at it again."""
    return point_at_signback(key)


def point_hook_url(request: SignatureRequest, key: str) -> Action:
    """Give OKdokument the request's own sendInfo URL (a request registered while one token
    served both URLs). Only ``sendInfoURL``: the result URL has not changed, and it may
    point at the retry page by now (rule c)."""
    return Action(PATCH, {"sendInfoURL": "{signback.sendinfo_url}"}, key=key)


@rule(
    EventKind.REQUEST_COMPLETED,
    EventKind.REQUEST_CANCELLED,
    provider="okdokument",
    unconfirmed=True,
    enabled_setting="okdokument.confirm_callbacks",
)
def confirm_before_acting(event: NormalizedEvent, request: SignatureRequest) -> Iterator[Action]:
    """(b) sendInfo is unsigned: check its claim with Document info before anything acts.

    The document asked about is the one registered for the request, read when the action
    runs; the callback's body has no say in it (so the payload carries no document id)."""
    yield Action(
        CONFIRM,
        {"claimed_state": event.details.get("document_state"), "confirms": event.event_id},
        key=f"confirm:{event.event_id}",
    )


@rule(EventKind.REQUEST_CANCELLED, EventKind.SIGNER_RETURNED, provider="okdokument")
def retry_page(event: NormalizedEvent, request: SignatureRequest) -> Iterator[Action]:
    """(c) The signer cancelled (callback) or closed (browser): next time, send them to the
    retry page registered for this request."""
    if not request.retry_url:
        return
    if event.kind is EventKind.SIGNER_RETURNED and event.details.get("result") != "close":
        return
    yield Action(PATCH, {"resulturl": request.retry_url}, key="retry-page")


@rule(EventKind.DELIVERY_FAILED, provider="okdokument")
def repoint_after_errorsendinfo(
    event: NormalizedEvent, request: SignatureRequest
) -> Iterator[Action]:
    """(d) The reconciler found the document in ``errorsendinfo``: OKdokument could not call
    the sendInfo URL. Point it at signback's current one (filled in at send time: if the
    public URL changed, this is the new one; if not, the PATCH changes nothing)."""
    if event.provider_type != "reconcile:errorsendinfo":
        return
    yield Action(PATCH, {"sendInfoURL": "{signback.sendinfo_url}"}, key="repoint-errorsendinfo")
