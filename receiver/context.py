"""Everything a running signback needs, built once by the app factory or a CLI command."""

from __future__ import annotations

import math
import os
import secrets
import socket
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from receiver.clock import Clock, system_clock
from receiver.errors import ConfigurationError
from receiver.intake.redaction import HeaderRedaction
from receiver.intake.rejections import RejectionLog
from receiver.intake.tokens import hook_token_for, return_token_for
from receiver.loadshare import Governor, IntakeLoad, Occupancy
from receiver.metrics import Metrics
from receiver.outbox.retry import RetryPolicy
from receiver.pipeline.rules import RuleBook
from receiver.providers.contract import HOOK_TOKEN, Provider
from receiver.settings import Settings
from receiver.store.db.base import Database


class LruCache:
    """A small bounded mapping; the least recently used entry goes first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def get(self, key: str) -> dict[str, Any] | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: dict[str, Any]) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


# A request's callback URLs by name: ``return_url`` (the signer's browser) and those its
# provider declares (receiver/providers/contract.py ``Provider.urls``).
CallbackUrls = dict[str, str]
_RETURN_ONLY = {"return_url": "/return/{return_token}"}
_HOOK_TOKEN_FIELD = "{" + HOOK_TOKEN + "}"


@dataclass
class AppContext:
    settings: Settings
    db: Database
    providers: Mapping[str, Provider]
    rules: RuleBook
    clock: Clock = system_clock
    # How many seconds a provider's "per minute" rate budget spans (receiver/outbox/budgets.py).
    # Always 60 in service. Tests against a time-scaled emulator shorten it by the same
    # factor as the emulator's rate window.
    rate_window_seconds: float = 60.0
    clients: dict[str, Any] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    # (route, token hash) → the request's fixed fields, so a callback costs one write, not a
    # read too. Only credentials that never expire are kept (see receiver/intake/credentials.py).
    token_cache: LruCache = field(default_factory=lambda: LruCache(20_000))
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # The headers stored and logged without their values: the core's and every provider's.
    redaction: HeaderRedaction = field(init=False)
    url_names: frozenset[str] = field(init=False)
    intake_load: IntakeLoad = field(default_factory=IntakeLoad)
    occupancy: Occupancy = field(default_factory=Occupancy)
    # Whether background work may go ahead now (acknowledgements first): see loadshare.py.
    governor: Governor = field(init=False)
    # Refused callbacks, written in batches off the intake's path (receiver/intake/rejections.py).
    rejections: RejectionLog = field(init=False)
    # Unique per context, even for two in one process: claims are settled only by their owner.
    worker_id: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    )

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate_window_seconds) and self.rate_window_seconds > 0):
            raise ConfigurationError(f"a rate window must be positive: {self.rate_window_seconds}")
        held = self.metrics.background_held
        self.governor = Governor(
            self.intake_load,
            self.occupancy,
            on_hold=lambda seconds: held.inc(amount=seconds),
            database_off_loop=not self.db.statements_on_loop,
        )
        self.redaction = HeaderRedaction(
            header for provider in self.providers.values() for header in provider.secret_headers
        )
        self.rejections = RejectionLog(
            self.db, self.redaction, cap=self.settings.rejection_log_rows, clock=self.clock
        )
        # Every URL name some provider gives its requests: ``{signback.<name>}`` in a payload
        # (receiver/outbox/dispatcher.py); another ``{signback.…}`` string is left alone.
        self.url_names = frozenset(
            name for provider in self.providers.values() for name in provider.url_templates
        ) | {"return_url"}

    @property
    def retry_policy(self) -> RetryPolicy:
        s = self.settings
        return RetryPolicy(
            max_attempts=s.outbox_max_attempts,
            max_age_seconds=s.outbox_max_age_seconds,
            base_delay=s.retry_base_delay,
            max_delay=s.retry_max_delay,
            # A 429 that does not say how long: wait one rate window (the longest a
            # per-minute limit holds a key back), unless retries are configured shorter.
            throttle_delay=min(self.rate_window_seconds, s.retry_max_delay),
        )

    def return_token(self, token_nonce: str) -> str:
        return return_token_for(self.settings.secret_key.get_secret_value(), token_nonce)

    def hook_token(self, token_nonce: str) -> str:
        return hook_token_for(self.settings.secret_key.get_secret_value(), token_nonce)

    def callback_urls(
        self, provider: str, token_nonce: str, public_url: str | None = None
    ) -> CallbackUrls:
        """The request's URLs, from its provider's templates (a token is derived only when a
        template needs it); ``return_url`` only, for a provider no longer installed."""
        base = (public_url or self.settings.public_url).rstrip("/")
        found = self.providers.get(provider)
        templates = found.url_templates if found is not None else _RETURN_ONLY
        tokens: dict[str, str] = {}
        urls: CallbackUrls = {}
        for name, template in templates.items():
            if "{return_token}" in template and "return_token" not in tokens:
                tokens["return_token"] = self.return_token(token_nonce)
            if _HOOK_TOKEN_FIELD in template and HOOK_TOKEN not in tokens:
                tokens[HOOK_TOKEN] = self.hook_token(token_nonce)
            urls[name] = base + template.format_map(tokens)
        return urls

    async def start_providers(self) -> None:
        """Each provider's start hook, and its outbound client (closed by :meth:`close`)."""
        for provider in self.providers.values():
            if provider.start is not None:
                await provider.start(self)
            if provider.client is not None:
                client = provider.client(self)
                if client is not None:
                    self.clients[provider.name] = client
                    self.closers.append(client.aclose)

    async def close(self) -> None:
        while self.closers:
            await self.closers.pop()()
