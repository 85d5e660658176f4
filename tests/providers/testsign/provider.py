"""Builds Testsign's provider from its settings."""

from __future__ import annotations

import functools

from receiver.context import AppContext
from receiver.providers.contract import Provider
from tests.providers.testsign import events, hooks, returns
from tests.providers.testsign.client import AccessTokens, TestsignClient
from tests.providers.testsign.operations import OPERATIONS
from tests.providers.testsign.settings import TestsignSettings


def build(settings: TestsignSettings) -> Provider:
    def client(_: AppContext) -> TestsignClient | None:
        if settings.client_id is None or settings.client_secret is None:
            return None
        tokens = AccessTokens(
            settings.base_url,
            settings.client_id,
            settings.client_secret.get_secret_value(),
            settings.timeout,
        )
        return TestsignClient(settings.base_url, tokens, timeout=settings.timeout)

    return Provider(
        name=events.PROVIDER,
        normalize=events.normalize,
        hooks=functools.partial(hooks.hooks, settings),
        urls={"events_url": "/hooks/testsign"},
        parse_return=returns.parse_return,
        secret_headers=hooks.SECRET_HEADERS,
        operations=OPERATIONS,
        client=client,
    )
