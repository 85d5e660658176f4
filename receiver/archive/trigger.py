"""When the pipeline queues the archive action: on the transition to ``completed`` made by
a confirmed event (a signed webhook, or a claim the provider's API confirmed), for a
provider that has documents, unless SIGNBACK_ARCHIVE_ENABLED is off. Pure."""

from __future__ import annotations

from receiver.archive import ARCHIVE_KEY, ARCHIVE_OPERATION
from receiver.context import AppContext
from receiver.events import NormalizedEvent
from receiver.model import Action, RequestState, SignatureRequest
from receiver.pipeline.states import Transition


def archive_actions(
    ctx: AppContext, event: NormalizedEvent, request: SignatureRequest, transition: Transition
) -> list[Action]:
    if not ctx.settings.archive_enabled or not event.confirmed:
        return []
    if not transition.changed or transition.after is not RequestState.COMPLETED:
        return []
    provider = ctx.providers.get(request.provider)
    if provider is None or provider.documents is None:
        return []
    return [Action(ARCHIVE_OPERATION, {}, key=ARCHIVE_KEY)]
