"""OKdokument (Anasoft / Signatus family): unsigned sendInfo callbacks, browser result URLs,
and ``PATCH /JSON/signatureRequest`` updates."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from receiver.providers import Provider
    from receiver.settings import Settings

RULES_MODULE = "handlers.okdokument.rules"


def make_provider(settings: Settings) -> Provider:
    from handlers.okdokument.provider import build

    return build(settings)
