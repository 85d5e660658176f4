"""Firma.dev: HMAC-signed status webhooks and ``PATCH /signing-requests/{id}`` updates."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from receiver.providers import Provider
    from receiver.settings import Settings

RULES_MODULE = "handlers.firma.rules"


def make_provider(settings: Settings) -> Provider:
    from handlers.firma.provider import build

    return build(settings)
