"""A company's webhook receiver for the downstream tests, verifying like a stranger would.

It runs under uvicorn on loopback (``running_downstream``) and checks every delivery with
the ``standardwebhooks`` package from PyPI, a verifier nobody here wrote, with the secret of
the endpoint whose path it arrived on; and validates each event against the published
schema (docs/events.schema.json). Tests then read what arrived, in order, and program the
answers (status, headers, delay) path by path.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import ADMIN_TOKEN
from tests.servers import running_server

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "docs" / "events.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def schema_errors(document: Any) -> list[str]:
    return [
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in VALIDATOR.iter_errors(document)
    ]


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float  # time.monotonic()
    verified: bool  # by standardwebhooks, with the path's secret
    problem: str | None  # why not verified, or the schema's complaint
    status: int = 0  # what the receiver answered

    @property
    def event(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Answer:
    status: int = 204
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0  # seconds before answering


class DownstreamReceiver:
    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.secrets: dict[str, str] = {}  # path → the endpoint's secret
        self.answers: dict[str, deque[Answer]] = {}  # path → answers to give first, in order
        self.default: dict[str, Answer] = {}  # path → the answer after those
        # path → decides the answer to a delivery (None: the queued or default one)
        self.behaviour: dict[str, Callable[[Delivery], Answer | None]] = {}
        self._lock = threading.Lock()

    def answer(self, path: str, *answers: Answer) -> None:
        with self._lock:
            self.answers.setdefault(path, deque()).extend(answers)

    def to(self, path: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.path == path]

    def events(self, path: str) -> list[dict[str, Any]]:
        return [d.event for d in self.to(path)]

    def accepted(self, path: str) -> list[Delivery]:
        """The deliveries answered 2xx, in the order they arrived."""
        return [d for d in self.to(path) if 200 <= d.status < 300]

    def problems(self) -> list[str]:
        with self._lock:
            return [f"{d.path} {d.webhook_id}: {d.problem}" for d in self.deliveries if d.problem]

    def _next_answer(self, path: str) -> Answer:
        with self._lock:
            queued = self.answers.get(path)
            if queued:
                return queued.popleft()
            return self.default.get(path, Answer())

    async def receive(self, request: Request) -> Response:
        body = await request.body()
        path = request.url.path
        headers = {k.lower(): v for k, v in request.headers.items()}
        secret = self.secrets.get(path)
        verified, problem = False, None
        if secret is None:
            problem = "no secret known for this path"
        else:
            try:
                Webhook(secret).verify(body, headers)
                verified = True
            except WebhookVerificationError as exc:
                problem = f"not verified: {exc}"
        if verified:
            try:
                errors = schema_errors(json.loads(body))
            except ValueError as exc:
                errors = [f"not JSON: {exc}"]
            if errors:
                problem = "schema: " + "; ".join(errors)
        delivery = Delivery(path, headers, body, time.monotonic(), verified, problem)
        decide = self.behaviour.get(path)
        answer = (decide(delivery) if decide is not None else None) or self._next_answer(path)
        delivery.status = answer.status
        with self._lock:
            self.deliveries.append(delivery)
        if answer.delay:
            await asyncio.sleep(answer.delay)
        return Response(answer.body, status_code=answer.status, headers=dict(answer.headers))


def create_app(receiver: DownstreamReceiver) -> Starlette:
    return Starlette(routes=[Route("/{path:path}", receiver.receive, methods=["POST"])])


@contextmanager
def running_downstream() -> Iterator[tuple[str, DownstreamReceiver]]:
    receiver = DownstreamReceiver()
    with running_server(create_app(receiver)) as url:
        yield url, receiver


def admin_client(base_url: str) -> httpx.Client:
    return httpx.Client(
        base_url=base_url,
        timeout=10.0,
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        transport=httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=0)),
    )


def add_endpoint(
    signback_url: str,
    receiver: DownstreamReceiver,
    url: str,
    path: str,
    **fields: Any,
) -> dict[str, Any]:
    """Create an endpoint at ``url + path`` and teach the receiver its secret."""
    with admin_client(signback_url) as admin:
        response = admin.post("/api/endpoints", json={"url": url + path, **fields})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert created["secret"].startswith("whsec_")
    receiver.secrets[path] = created["secret"]
    return created


def in_order(events: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> bool:
    values = [key(e) for e in events]
    return values == sorted(values)
