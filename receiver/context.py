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
from receiver.intake.tokens import return_token_for, sendinfo_token_for
from receiver.loadshare import Governor, IntakeLoad, Occupancy
from receiver.metrics import Metrics
from receiver.outbox.retry import RetryPolicy
from receiver.pipeline.rules import RuleBook
from receiver.providers import Provider
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


@dataclass(frozen=True, slots=True)
class CallbackUrls:
    return_url: str  # the signer's browser comes back here (/return/<return token>)
    # OKdokument's server-to-server callback (/hooks/okdokument/<sendInfo token>)
    sendinfo_url: str | None
    webhook_url: str | None  # Firma's webhook endpoint (shared by every request)

    def as_dict(self) -> dict[str, str]:
        return {
            k: v
            for k, v in (
                ("return_url", self.return_url),
                ("sendinfo_url", self.sendinfo_url),
                ("webhook_url", self.webhook_url),
            )
            if v
        }


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
    intake_load: IntakeLoad = field(default_factory=IntakeLoad)
    occupancy: Occupancy = field(default_factory=Occupancy)
    # Whether background work may go ahead now (acknowledgements first): see loadshare.py.
    governor: Governor = field(init=False)
    # Unique per context, even for two in one process: claims are settled only by their owner.
    worker_id: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    )

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate_window_seconds) and self.rate_window_seconds > 0):
            raise ConfigurationError(f"a rate window must be positive: {self.rate_window_seconds}")
        self.governor = Governor(self.intake_load, self.occupancy)

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

    def sendinfo_token(self, token_nonce: str) -> str:
        return sendinfo_token_for(self.settings.secret_key.get_secret_value(), token_nonce)

    def callback_urls(
        self, provider: str, token_nonce: str, public_url: str | None = None
    ) -> CallbackUrls:
        base = (public_url or self.settings.public_url).rstrip("/")
        sendinfo_url = None
        if provider == "okdokument":
            sendinfo_url = f"{base}/hooks/okdokument/{self.sendinfo_token(token_nonce)}"
        return CallbackUrls(
            return_url=f"{base}/return/{self.return_token(token_nonce)}",
            sendinfo_url=sendinfo_url,
            webhook_url=f"{base}/hooks/firma" if provider == "firma" else None,
        )

    async def start_providers(self) -> None:
        for provider in self.providers.values():
            if provider.start is not None:
                self.closers.append(await provider.start(self))

    async def close(self) -> None:
        while self.closers:
            await self.closers.pop()()
