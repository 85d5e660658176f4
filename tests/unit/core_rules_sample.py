"""A small rules module for tests/unit/test_core_rules.py (loaded by name, never by pytest)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from receiver.events import EventKind, NormalizedEvent
from receiver.model import Action, SignatureRequest
from receiver.pipeline.rules import rule

NOT_A_RULE = 42


def helper(event: NormalizedEvent, request: SignatureRequest) -> list[Action]:
    """Not marked: never collected."""
    return [Action("sample.helper", {}, key="helper")]


@rule(EventKind.REQUEST_COMPLETED)
def on_completed(event: NormalizedEvent, request: SignatureRequest) -> Iterator[Action]:
    yield Action("sample.thanks", {"id": request.external_id}, key="completed")


@rule(EventKind.REQUEST_COMPLETED, EventKind.REQUEST_CANCELLED, provider="okdokument")
def okdokument_only(event: NormalizedEvent, request: SignatureRequest) -> list[Action]:
    return [Action("sample.okdokument", {"kind": event.kind.value}, key=f"ok-{event.kind}")]


@rule(EventKind.REQUEST_COMPLETED, unconfirmed=True)
def confirm_first(event: NormalizedEvent, request: SignatureRequest) -> Iterator[Action]:
    yield Action("sample.confirm", {}, key="confirm")


@rule(EventKind.REQUEST_SENT, enabled_setting="sample_switch")
def switchable(event: NormalizedEvent, request: SignatureRequest) -> Iterator[Action]:
    yield Action("sample.switchable", {}, key="switchable")


@rule(EventKind.REQUEST_VIEWED)
def returns_none(event: NormalizedEvent, request: SignatureRequest) -> None:
    return None


@rule(EventKind.REQUEST_DECLINED)
def yields_garbage(event: NormalizedEvent, request: SignatureRequest) -> Iterator[Any]:
    yield Action("sample.first", {}, key="first")
    yield {"operation": "sample.not_an_action"}
