"""Helpers to run signback and the provider emulators over real HTTP on loopback.

``running_receiver`` serves the real app (its pipeline and outbox included) under uvicorn in
a background thread; ``running_okdokument``/``running_firma`` do the same for the emulators,
so tests see exactly what crossed the wire. Assertions then wait for the background work
with :func:`wait_until` instead of sleeping a fixed time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import httpx

from handlers.firma import fake as firma_fake
from handlers.okdokument import fake as okdokument_fake
from receiver.app import create_app
from receiver.intake.protocol import HookHttpProtocol
from receiver.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.servers import bound_socket, running_server

T = TypeVar("T")
# A fresh connection per request: reused loopback connections stalled ~40 ms each in the
# polling loops (delayed ACKs), which made the suite several times slower.
NO_KEEPALIVE = httpx.Limits(max_keepalive_connections=0)
# For clients that keep connections: httpx reuses an idle connection for up to 5 s by
# default, exactly uvicorn's keep-alive timeout, so a request sent on a connection idle for
# nearly 5 s could meet the server closing it ("Connection reset by peer", which httpx does
# not retry: the request may have been read). Give up idle connections well before that.
POOLED = httpx.Limits(keepalive_expiry=2.0)


def wait_until(
    probe: Callable[[], T | None], *, timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """Call ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or probe}: last={last!r}")


@dataclass
class Receiver:
    url: str
    settings: Settings

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10.0, limits=NO_KEEPALIVE)

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            timeout=10.0,
            limits=NO_KEEPALIVE,
            headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        )

    def register(self, **body: Any) -> dict[str, Any]:
        with self.admin() as client:
            response = client.post("/api/requests", json=body)
        assert response.status_code == 201, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def show(self, request_id: int) -> dict[str, Any]:
        with self.admin() as client:
            response = client.get(f"/api/requests/{request_id}")
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def wait_for_state(self, request_id: int, state: str, timeout: float = 10.0) -> dict[str, Any]:
        return wait_until(
            lambda: (r := self.show(request_id))["state"] == state and r,
            timeout=timeout,
            what=f"request {request_id} to be {state}",
        )

    def wait_for_actions(
        self, request_id: int, *, settled: int, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Wait until ``settled`` actions are done, dead or skipped."""

        def probe() -> list[dict[str, Any]] | None:
            actions: list[dict[str, Any]] = self.show(request_id)["actions"]
            done = [a for a in actions if a["status"] in ("done", "dead", "skipped")]
            return actions if len(done) >= settled else None

        return wait_until(probe, timeout=timeout, what=f"{settled} settled actions")


@contextmanager
def running_receiver(
    make_settings: Callable[..., Settings],
    *,
    http: type[asyncio.Protocol] | Literal["httptools"] = HookHttpProtocol,
    app_options: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Iterator[Receiver]:
    """signback on a free loopback port, its public URL set to that very address (so the
    emulators' callbacks reach it), unless ``public_url`` is given. Served with the HTTP
    protocol `signback serve` uses (callbacks take its short path) unless ``http`` says
    otherwise. ``app_options`` go to ``create_app`` (e.g. ``rate_window_seconds``)."""
    sock = bound_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = make_settings(**{"public_url": url, **overrides})
    app = create_app(settings, **(app_options or {}))
    with running_server(app, sock=sock, http=http) as served:
        yield Receiver(served, settings)


@contextmanager
def running_okdokument(
    **kwargs: Any,
) -> Iterator[tuple[str, okdokument_fake.FakeOkdokument]]:
    fake = okdokument_fake.FakeOkdokument(**kwargs)
    with running_server(okdokument_fake.create_app(fake)) as url:
        yield url, fake


@contextmanager
def running_firma(**kwargs: Any) -> Iterator[tuple[str, firma_fake.FakeFirma]]:
    fake = firma_fake.FakeFirma(**kwargs)
    with running_server(firma_fake.create_app(fake)) as url:
        yield url, fake
