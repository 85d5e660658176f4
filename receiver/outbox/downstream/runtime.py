"""What a running process keeps for downstream delivery: a recent view of the endpoints
(with their secrets decrypted), one HTTP client per endpoint, and the metrics.

The view is re-read from the database at most once a second (and at once after a change made
in this process), so that a change made by another process (the CLI, another worker) takes
effect within a second. Fan-out never uses it: it reads the endpoints in its own transaction.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from receiver.context import AppContext
from receiver.logs import get_logger
from receiver.metrics import Tally
from receiver.outbox.downstream import endpoints as endpoint_store
from receiver.outbox.downstream.endpoints import EndpointStatus
from receiver.outbox.downstream.safety import OutboundPolicy, origin_of
from receiver.outbox.downstream.secrets import SecretBox, SecretUnreadable, key_bytes
from receiver.outbox.lean_http import LeanHttpClient
from receiver.outbox.provider_http import USER_AGENT

log = get_logger("signback.downstream")

VIEW_SECONDS = 1.0
ANSWER_EXCERPT_BYTES = 4096  # what is read of an endpoint's answer (the log keeps 500)
_KEY = "downstream"


@dataclass(frozen=True, slots=True)
class LiveEndpoint:
    """An endpoint as deliveries see it."""

    id: int
    url: str
    status: str
    include_raw: bool
    # The current secret's key, then the previous one's and until when it signs too.
    key: bytes | None = field(repr=False)
    previous_key: bytes | None = field(repr=False)
    previous_until: float | None
    unreadable: bool = False  # the stored secret cannot be decrypted (secret key changed)

    def keys(self, now: float) -> list[bytes]:
        keys = [] if self.key is None else [self.key]
        if self.previous_key is not None and (self.previous_until or 0) > now:
            keys.append(self.previous_key)
        return keys


class Downstream:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        settings = ctx.settings
        self.box = SecretBox(settings.secret_key.get_secret_value())
        self.policy = OutboundPolicy(
            allow_private=settings.endpoint_allow_private,
            allowed_hosts=tuple(h.lower() for h in settings.endpoint_allowed_hosts),
        )
        self._view: dict[int, LiveEndpoint] = {}
        self._view_at = float("-inf")
        self._loading: asyncio.Lock | None = None
        self._clients: dict[int, tuple[str, LeanHttpClient]] = {}
        # When this process last wrote an endpoint's success (one write per endpoint and
        # second at most, instead of one per delivery on the same row).
        self.success_written: dict[int, float] = {}
        registry = ctx.metrics.registry
        self.deliveries = Tally(
            "signback_deliveries_total",
            "Deliveries to downstream endpoints, by endpoint id and outcome (ok, retry,"
            " throttled, dead, skipped, deferred)",
            ["endpoint", "outcome"],
            registry,
        )
        self.disabled = Tally(
            "signback_endpoints_disabled_total",
            "Endpoints disabled by signback, by reason (gone: answered 410; failing: no"
            " success for SIGNBACK_ENDPOINT_DISABLE_AFTER_SECONDS)",
            ["reason"],
            registry,
        )

    # --- the view of the endpoints -------------------------------------------------------

    def invalidate(self) -> None:
        self._view_at = float("-inf")

    async def view(self) -> dict[int, LiveEndpoint]:
        if asyncio.get_running_loop().time() - self._view_at < VIEW_SECONDS:
            return self._view
        if self._loading is None:
            self._loading = asyncio.Lock()
        async with self._loading:
            now = asyncio.get_running_loop().time()
            if now - self._view_at >= VIEW_SECONDS:
                self._view = {
                    e.id: self._live(e) for e in await endpoint_store.listing(self.ctx.db)
                }
                self._view_at = now
                for gone in set(self._clients) - set(self._view):
                    await self._drop_client(gone)
        return self._view

    def _live(self, endpoint: endpoint_store.Endpoint) -> LiveEndpoint:
        key = previous = None
        unreadable = False
        try:
            key = key_bytes(self.box.open(endpoint.sealed_secret))
        except (SecretUnreadable, ValueError):
            unreadable = True
        if endpoint.sealed_previous_secret:
            # A previous secret sealed under an earlier SIGNBACK_SECRET_KEY (the key changed,
            # then the secret was rotated, as the docs advise) cannot sign; the current one
            # still does, so the deliveries go on with one signature.
            try:
                previous = key_bytes(self.box.open(endpoint.sealed_previous_secret))
            except (SecretUnreadable, ValueError):
                previous = None
        return LiveEndpoint(
            id=endpoint.id,
            url=endpoint.url,
            status=endpoint.status,
            include_raw=endpoint.include_raw,
            key=key,
            previous_key=previous,
            previous_until=endpoint.previous_secret_until,
            unreadable=unreadable,
        )

    async def endpoint(self, endpoint_id: int) -> LiveEndpoint | None:
        return (await self.view()).get(endpoint_id)

    async def enabled_ids(self) -> list[int]:
        return [e.id for e in (await self.view()).values() if e.status == EndpointStatus.ENABLED]

    # --- HTTP ----------------------------------------------------------------------------

    def client(self, endpoint: LiveEndpoint) -> LeanHttpClient:
        """The endpoint's own client (its own bounded pool: one endpoint's slow answers
        never hold another's connections), rebuilt when its origin changes."""
        origin = origin_of(endpoint.url)
        held = self._clients.get(endpoint.id)
        if held is not None and held[0] == origin:
            return held[1]
        if held is not None:
            asyncio.get_running_loop().create_task(held[1].aclose())
        settings = self.ctx.settings
        # Never through a proxy, whatever HTTPS_PROXY says (no ``proxy=``; the client
        # refuses one next to a resolver anyway): a proxy would resolve the name itself, out
        # of reach of the resolver's private-address check.
        client = LeanHttpClient(
            origin,
            {"User-Agent": USER_AGENT, "Content-Type": "application/json"},
            timeout=settings.endpoint_timeout_seconds,
            max_connections=settings.endpoint_concurrency_per_endpoint,
            resolver=self.policy.resolve,
            max_answer_bytes=ANSWER_EXCERPT_BYTES,
        )
        self._clients[endpoint.id] = (origin, client)
        return client

    async def _drop_client(self, endpoint_id: int) -> None:
        held = self._clients.pop(endpoint_id, None)
        if held is not None:
            await held[1].aclose()

    async def aclose(self) -> None:
        for endpoint_id in list(self._clients):
            await self._drop_client(endpoint_id)


def downstream(ctx: AppContext) -> Downstream:
    """This context's downstream runtime, made on first use (closed with the context)."""
    runtime = ctx.clients.get(_KEY)
    if not isinstance(runtime, Downstream):
        runtime = ctx.clients[_KEY] = Downstream(ctx)
        ctx.closers.append(runtime.aclose)
    return runtime
