"""Firma.dev: HMAC-signed status webhooks and ``PATCH /signing-requests/{id}`` updates.

Importing this package is cheap: the registry reads :data:`PROVIDER`, and the provider is
built (handlers/firma/provider.py) only when the app starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from handlers.firma.settings import FirmaSettings
from receiver.providers.contract import ProviderPackage

if TYPE_CHECKING:
    import click

    from receiver.providers.contract import Provider

RULES_MODULE = "handlers.firma.rules"


def _build(settings: FirmaSettings) -> Provider:
    from handlers.firma.provider import build

    return build(settings)


def _fake() -> click.Command:
    from handlers.firma.cli import fake

    return fake


def _simulate() -> click.Command:
    from handlers.firma.cli import simulate

    return simulate


PROVIDER = ProviderPackage(
    name="firma",
    settings=FirmaSettings,
    build=_build,
    rules_module=RULES_MODULE,
    fake_command=_fake,
    simulate_command=_simulate,
)
