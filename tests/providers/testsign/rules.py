"""Testsign's rule, written against the public rule API only."""

from __future__ import annotations

from collections.abc import Iterator

from receiver import Action, EventKind, NormalizedEvent, SignatureRequest, rule


@rule(EventKind.REQUEST_COMPLETED, provider="testsign")
def archive_when_completed(event: NormalizedEvent, request: SignatureRequest) -> Iterator[Action]:
    # {signback.events_url} is Testsign's own callback URL (Provider.urls), filled in at send time.
    yield Action("testsign.archive", {"notify": "{signback.events_url}"}, key="archive")
