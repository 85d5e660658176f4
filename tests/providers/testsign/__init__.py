"""Testsign: a provider that exists only in the tests, written from docs/architecture.md's
"Adding a provider" checklist, to prove that a provider plugs in with no edit to
``receiver/``: ``SIGNBACK_PROVIDER_MODULES=tests.providers.testsign``.

What it is like (chosen to differ from the shipped providers): form-encoded callbacks, a
plain-text acknowledgement (``Hello API Event Received``), two signature headers
(``X-Testsign-Signature-1`` and ``-2``, one per secret the sender holds) over a timestamp
header, its own settings prefix (``SIGNBACK_TESTSIGN_``), an operation whose client gets an
OAuth access token per call, a browser return it reads, and an emulator (``fake.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from receiver.providers.contract import ProviderPackage
from tests.providers.testsign.settings import TestsignSettings

if TYPE_CHECKING:
    import click

    from receiver.providers.contract import Provider

NAME = "testsign"


def _build(settings: TestsignSettings) -> Provider:
    from tests.providers.testsign.provider import build

    return build(settings)


def _fake() -> click.Command:
    from tests.providers.testsign.cli import fake

    return fake


def _simulate() -> click.Command:
    from tests.providers.testsign.cli import simulate

    return simulate


PROVIDER = ProviderPackage(
    name=NAME,
    settings=TestsignSettings,
    build=_build,
    rules_module="tests.providers.testsign.rules",
    fake_command=_fake,
    simulate_command=_simulate,
)
