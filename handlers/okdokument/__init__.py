"""OKdokument (Anasoft / Signatus family): unsigned sendInfo callbacks, browser result URLs,
and ``PATCH /JSON/signatureRequest`` updates.

Importing this package is cheap: the registry reads :data:`PROVIDER`, and the provider is
built (handlers/okdokument/provider.py) only when the app starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from handlers.okdokument.settings import OkdokumentSettings
from receiver.providers.contract import ProviderPackage

if TYPE_CHECKING:
    import click

    from receiver.providers.contract import Provider

RULES_MODULE = "handlers.okdokument.rules"


def _build(settings: OkdokumentSettings) -> Provider:
    from handlers.okdokument.provider import build

    return build(settings)


def _fake() -> click.Command:
    from handlers.okdokument.cli import fake

    return fake


def _simulate() -> click.Command:
    from handlers.okdokument.cli import simulate

    return simulate


PROVIDER = ProviderPackage(
    name="okdokument",
    settings=OkdokumentSettings,
    build=_build,
    rules_module=RULES_MODULE,
    fake_command=_fake,
    simulate_command=_simulate,
)
