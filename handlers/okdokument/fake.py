"""An OKdokument emulator for tests and demos.

It speaks the API as the public docs ("Web App - OKdokument API" on the Signatus wiki)
describe it, with the documented bodies and error shapes, plus a control API under
``/_fake/`` (no key) that plays the signer's part and injects failures:

- ``GET  /_fake/calls``, ``POST /_fake/reset``, ``GET /_fake/state``
- ``POST /_fake/signature-requests`` seeds a document (a generated PDF; ``padding`` makes it
  larger) and a signature request
- ``POST /_fake/failures``, ``GET /_fake/failures``, ``DELETE /_fake/failures``
- ``POST /_fake/sign/{signatureRequestId}``, ``POST /_fake/cancel/{signatureRequestId}``
  finish the round: state change, the sendInfo callback, the browser redirect URL.
- ``GET|POST /_fake/behaviour``: ``drop_callbacks_percent`` (0 to 100: sendInfo callbacks
  lost on the way, the document keeping its state) and ``info_lag_seconds`` (Document info
  answering the previous state for so long after a change); also constructor arguments.

Where the docs are silent the emulator picks something plausible and says so in a comment
marked "Docs silent". Nothing happens at import time: build a :class:`FakeOkdokument`, then
:func:`create_app`, or call :func:`serve`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import random
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from receiver.archive.pdf import make_pdf

__all__ = [
    "DEFAULT_API_KEY",
    "FailurePlan",
    "FakeDocument",
    "FakeOkdokument",
    "FakeSignatureRequest",
    "RecordedCall",
    "create_app",
    "serve",
]

DEFAULT_API_KEY = "fake-okdokument-key"

# Create signature request: "content (base64, ≤10 MB)".
MAX_FILE_BYTES = 10 * 1024 * 1024
# States a new upload may ask for (filedata.state).
UPLOAD_STATES = frozenset({"tosign", "tags", "tostamp"})
# States from which ``changeState: "tosign"`` opens the next round. Docs: "tosign to reopen a
# signed document"; docs silent on canceled/errorsendinfo, the fake allows reopening them too.
REOPENABLE_STATES = frozenset({"signed", "canceled", "errorsendinfo"})
SIGN_RESULTS = frozenset({"success", "mobile"})
CALLBACK_TIMEOUT = 10.0


@dataclass
class FakeDocument:
    """A document as OKdokument keeps it."""

    document_id: str
    filename: str
    content: bytes
    state: str  # tags | tostamp | tosign | signed | canceled | errorsendinfo
    date_ms: int  # creation, ms since the epoch (metadata "date")
    modified_ms: int  # last state change (metadata "modification")
    number: str  # metadata "number": a string of digits in the docs' example
    current_request_id: str | None = None  # the round that can be signed now
    # The state before the last change, and when it changed (emulated monotonic seconds):
    # Document info may lag behind a callback (FakeOkdokument.info_lag_seconds).
    previous_state: str | None = None
    changed_at: float = 0.0


@dataclass
class FakeSignatureRequest:
    """One signing round on a document."""

    signature_request_id: str
    document_id: str
    send_info_url: str | None
    result_url: str | None
    extra: dict[str, Any] = field(default_factory=dict)  # rules, allowedFields, ... (unused)


@dataclass
class RecordedCall:
    """One API call the fake received (control routes are not recorded)."""

    method: str
    path: str
    query: str  # the raw query string
    body: Any  # the parsed JSON body, None when absent or not JSON
    authorized: bool  # whether the x-api-key matched (never the key itself)
    time: float  # unix seconds when it arrived
    status: int | None = None  # the status answered; None while still in flight

    def as_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "body": self.body,
            "authorized": self.authorized,
            "status": self.status,
            "time": self.time,
        }


@dataclass
class FailurePlan:
    """Make matching API calls fail or slow down, for a number of calls or a while.

    A plan is active while it has calls left (``count``) and its window (``seconds``) is
    open; with neither it stays until cleared. A plan without ``status`` only delays.
    """

    plan_id: int
    status: int | None
    delay: float
    remaining: int | None
    until: float | None  # on the fake's monotonic clock
    retry_after: int | None
    methods: frozenset[str] | None  # None: every method

    def active(self, now: float) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        return self.until is None or now < self.until

    def matches(self, method: str) -> bool:
        return self.methods is None or method in self.methods

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "id": self.plan_id,
            "status": self.status,
            "delay": self.delay,
            "remaining": self.remaining,
            "seconds_left": None if self.until is None else max(0.0, self.until - now),
            "retry_after": self.retry_after,
            "methods": None if self.methods is None else sorted(self.methods),
            "active": self.active(now),
        }


class _Invalid(Exception):
    """A request the fake refuses; carries the answer."""

    def __init__(self, status: int, message: str, value: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.value = value

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"message": self.message}
        if self.value is not None:
            body["value"] = self.value
        return JSONResponse(body, status_code=self.status)


class FakeOkdokument:
    """The emulator's state: documents, signature requests, received calls, failure plans.

    ``clock`` gives unix seconds (timestamps in bodies and URLs), ``monotonic`` drives the
    failure windows; both are injectable so tests need not sleep. ``time_factor`` scales
    the emulated time, like the Firma emulator's: a failure window of ``seconds`` lasts
    ``seconds * time_factor`` real seconds and a plan's ``delay`` sleeps that much less
    (0.05: a 20-second outage is over in one second); windows are set and reported in
    emulated seconds. ``callback_transport`` replaces the network for the outbound
    sendInfo/redirect calls (e.g. an ASGI transport).
    """

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        callback_transport: httpx.AsyncBaseTransport | None = None,
        time_factor: float = 1.0,
        drop_callbacks_percent: float = 0.0,
        info_lag_seconds: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if not time_factor > 0:
            raise ValueError(f"time_factor must be positive: {time_factor}")
        self.set_behaviour(
            drop_callbacks_percent=drop_callbacks_percent, info_lag_seconds=info_lag_seconds
        )
        self._random = random.Random(seed)  # which callbacks are dropped; not security
        self.dropped_callbacks = 0
        self._api_key = api_key.encode()
        self.clock = clock
        self.time_factor = time_factor
        self._real_monotonic = monotonic
        self._real_sleep = sleep
        self.callback_transport = callback_transport
        self.documents: dict[str, FakeDocument] = {}
        self.signature_requests: dict[str, FakeSignatureRequest] = {}
        self.calls: list[RecordedCall] = []
        self.failures: list[FailurePlan] = []
        self.created_requests = 0  # for /JSON/counter; survives deletions, not resets
        self._next_plan_id = 1

    def __repr__(self) -> str:
        return (
            f"FakeOkdokument(documents={len(self.documents)}, "
            f"signature_requests={len(self.signature_requests)}, calls={len(self.calls)})"
        )

    def reset(self) -> None:
        self.documents.clear()
        self.signature_requests.clear()
        self.calls.clear()
        self.failures.clear()
        self.created_requests = 0

    def set_behaviour(
        self, *, drop_callbacks_percent: float | None = None, info_lag_seconds: float | None = None
    ) -> None:
        """How unreliable the emulated OKdokument is. ``drop_callbacks_percent`` (0 to 100): the
        share of sendInfo callbacks lost on the way (never sent, and OKdokument believes
        them delivered: the document keeps its state, as behind a proxy that swallowed
        them). ``info_lag_seconds`` (emulated): for so long after a state change, Document
        info still answers the state before it."""
        if drop_callbacks_percent is not None:
            if not 0 <= drop_callbacks_percent <= 100:
                raise ValueError("drop_callbacks_percent is between 0 and 100")
            self.drop_callbacks_percent = float(drop_callbacks_percent)
        if info_lag_seconds is not None:
            if not info_lag_seconds >= 0:
                raise ValueError("info_lag_seconds must not be negative")
            self.info_lag_seconds = float(info_lag_seconds)

    def behaviour(self) -> dict[str, Any]:
        return {
            "drop_callbacks_percent": self.drop_callbacks_percent,
            "info_lag_seconds": self.info_lag_seconds,
            "dropped_callbacks": self.dropped_callbacks,
        }

    def drops_callback(self) -> bool:
        """Whether the next sendInfo callback is lost (and counted)."""
        dropped = self._random.random() * 100 < self.drop_callbacks_percent
        self.dropped_callbacks += dropped
        return dropped

    def key_matches(self, presented: str | None) -> bool:
        if presented is None:
            return False
        return hmac.compare_digest(presented.encode(), self._api_key)

    def monotonic(self) -> float:
        """Emulated seconds, for failure windows: real ones divided by ``time_factor``."""
        return self._real_monotonic() / self.time_factor

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of emulated time."""
        await self._real_sleep(seconds * self.time_factor)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- documents and rounds -------------------------------------------------------------

    def new_document(
        self, filename: str, content: bytes, *, document_id: str | None = None
    ) -> FakeDocument:
        now = self.now_ms()
        doc = FakeDocument(
            # Like the docs' example id: 39 URL-safe characters.
            document_id=document_id or secrets.token_urlsafe(29),
            filename=filename,
            content=content,
            state="tosign",
            date_ms=now,
            modified_ms=now,
            number=str(now),
        )
        self.documents[doc.document_id] = doc
        return doc

    def new_round(
        self,
        doc: FakeDocument,
        *,
        signature_request_id: str | None,
        send_info_url: str | None,
        result_url: str | None,
        extra: dict[str, Any] | None = None,
    ) -> FakeSignatureRequest:
        request_id = signature_request_id or str(uuid.uuid4())
        sr = FakeSignatureRequest(
            signature_request_id=request_id,
            document_id=doc.document_id,
            send_info_url=send_info_url,
            result_url=result_url,
            extra=extra or {},
        )
        self.signature_requests[request_id] = sr
        doc.current_request_id = request_id
        self.set_state(doc, "tosign")
        self.created_requests += 1
        return sr

    def set_state(self, doc: FakeDocument, state: str) -> None:
        if state != doc.state:
            doc.previous_state = doc.state
            doc.changed_at = self.monotonic()
        doc.state = state
        doc.modified_ms = self.now_ms()

    def reported_state(self, doc: FakeDocument) -> str:
        """The state Document info answers: the one before the last change while the lag
        lasts."""
        lagging = (
            self.info_lag_seconds > 0
            and doc.previous_state is not None
            and self.monotonic() - doc.changed_at < self.info_lag_seconds
        )
        return doc.previous_state if lagging and doc.previous_state else doc.state

    def metadata(self, doc: FakeDocument) -> dict[str, Any]:
        modification = datetime.fromtimestamp(doc.modified_ms / 1000, tz=UTC)
        return {
            "filename": doc.filename,
            "state": self.reported_state(doc),
            # Docs silent on the time zone of "modification"; the fake uses UTC.
            "modification": modification.strftime("%Y-%m-%d %H:%M:%S"),
            "id": doc.document_id,
            "date": doc.date_ms,
            "number": doc.number,
        }

    # -- failure plans ----------------------------------------------------------------------

    def add_failure(
        self,
        *,
        status: int | None = None,
        delay: float = 0.0,
        count: int | None = None,
        seconds: float | None = None,
        retry_after: int | None = None,
        methods: frozenset[str] | None = None,
    ) -> FailurePlan:
        if status is None and delay <= 0:
            raise ValueError("a failure plan needs a status or a delay")
        if status == 429 and retry_after is None:
            retry_after = 1  # 429 answers always carry Retry-After
        plan = FailurePlan(
            plan_id=self._next_plan_id,
            status=status,
            delay=delay,
            remaining=count,
            until=None if seconds is None else self.monotonic() + seconds,
            retry_after=retry_after,
            methods=methods,
        )
        self._next_plan_id += 1
        self.failures.append(plan)
        return plan

    def take_failure(self, method: str) -> tuple[float, FailurePlan | None]:
        """Decide what the failure plans do to one call: (delay in seconds, failing plan).

        Delay-only plans stack (their delays add up); among plans with a status, the oldest
        active one answers. Each plan that acted uses up one of its ``count``.
        """
        now = self.monotonic()
        delay = 0.0
        failing: FailurePlan | None = None
        for plan in self.failures:
            if not (plan.active(now) and plan.matches(method)):
                continue
            if plan.status is None:
                delay += plan.delay
            elif failing is None:
                failing = plan
                delay += plan.delay
            else:
                continue
            if plan.remaining is not None:
                plan.remaining -= 1
        # Forget finished plans so GET /_fake/failures stays readable.
        self.failures = [p for p in self.failures if p.active(now)]
        return delay, failing


# -- helpers ------------------------------------------------------------------------------


def _is_absolute_http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _check_url(value: object) -> str:
    if not _is_absolute_http_url(value):
        # Docs silent on the message; the shape follows the documented errors.
        raise _Invalid(400, "err.invalid.url", value)
    assert isinstance(value, str)
    return value


def _send_info_url(body: Mapping[str, Any]) -> str | None:
    """The sendInfo URL from either spelling.

    The docs contradict themselves: the field table says ``sendInfoUrl``, the example sends
    ``sendInfoURL``. The fake accepts both; if both are present, ``sendInfoURL`` wins.
    """
    for key in ("sendInfoURL", "sendInfoUrl"):
        if body.get(key) is not None:
            return _check_url(body[key])
    return None


def _result_url(body: Mapping[str, Any]) -> str | None:
    if body.get("resulturl") is None:
        return None
    return _check_url(body["resulturl"])


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        # Docs silent on the body; documented errors are all {"message", "value"}.
        raise _Invalid(400, "err.invalid.json") from exc
    if not isinstance(data, dict):
        raise _Invalid(400, "err.invalid.json")
    return data


def _try_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _with_query(url: str, params: Mapping[str, str]) -> str:
    """``url`` with ``params`` added to its query; existing keys of the same name are replaced."""
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query = urlencode([*kept, *params.items()])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def _control_error(status: int, error: str) -> JSONResponse:
    return JSONResponse({"error": error}, status_code=status)


async def _control_json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise _Invalid(400, "the control API wants a JSON object") from exc
    if not isinstance(data, dict):
        raise _Invalid(400, "the control API wants a JSON object")
    return data


# -- the app ------------------------------------------------------------------------------

ApiHandler = Callable[[Request, bytes], Awaitable[Response]]


def create_app(fake: FakeOkdokument) -> Starlette:
    """The emulator as an ASGI app, serving ``fake``'s state.

    The outbound client (sendInfo callbacks, followed redirects) is opened in the lifespan.
    Under a transport that does not run the lifespan (``httpx.ASGITransport``) the control
    routes open a short-lived client per call instead.
    """
    outbound: list[httpx.AsyncClient] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(
            timeout=CALLBACK_TIMEOUT,
            transport=fake.callback_transport,
            follow_redirects=False,
            headers={"User-Agent": "fake-okdokument"},
        ) as client:
            outbound.append(client)
            try:
                yield
            finally:
                outbound.remove(client)

    @contextlib.asynccontextmanager
    async def outbound_client() -> AsyncIterator[httpx.AsyncClient]:
        if outbound:
            yield outbound[0]
            return
        async with httpx.AsyncClient(
            timeout=CALLBACK_TIMEOUT,
            transport=fake.callback_transport,
            follow_redirects=False,
            headers={"User-Agent": "fake-okdokument"},
        ) as client:
            yield client

    def api(
        handler: ApiHandler, *, needs_key: bool = True
    ) -> Callable[[Request], Awaitable[Response]]:
        """Wrap an API handler: record the call, apply failure plans, check the key."""

        async def endpoint(request: Request) -> Response:
            raw = await request.body()
            authorized = fake.key_matches(request.headers.get("x-api-key"))
            call = RecordedCall(
                method=request.method,
                path=request.url.path,
                query=request.url.query,
                body=_try_json(raw),
                authorized=authorized,
                time=fake.clock(),
            )
            fake.calls.append(call)
            response = await answer(request, raw, authorized)
            call.status = response.status_code
            return response

        async def answer(request: Request, raw: bytes, authorized: bool) -> Response:
            # Failures come first: an overloaded gateway answers before anything checks the key.
            delay, plan = fake.take_failure(request.method)
            if delay > 0:
                await fake.sleep(delay)
            if plan is not None and plan.status is not None:
                headers = {}
                if plan.retry_after is not None:
                    headers["Retry-After"] = str(plan.retry_after)
                # Docs silent on 5xx/429 bodies; the fake keeps the documented error shape.
                return JSONResponse(
                    {"message": "err.fake.failure", "value": plan.plan_id},
                    status_code=plan.status,
                    headers=headers,
                )
            if needs_key and not authorized:
                # Docs: "401 Unauthorized - when user is not authenticated"; body undocumented.
                return JSONResponse({"message": "err.unauthorized"}, status_code=401)
            try:
                return await handler(request, raw)
            except _Invalid as exc:
                return exc.response()

        return endpoint

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def open_url(request: Request, signature_request_id: str) -> str:
        return f"{base(request)}/openDocument/{signature_request_id}"

    # -- API --------------------------------------------------------------------------------

    async def create_signature_request(request: Request, raw: bytes) -> Response:
        body = _json_object(raw)
        request_id = body.get("signatureRequestId")
        if request_id is not None:
            if not isinstance(request_id, str) or not request_id:
                raise _Invalid(400, "err.invalid.signatureRequestId", request_id)
            if request_id in fake.signature_requests:
                # Docs list 409 for create without saying when; a taken id is the obvious case.
                raise _Invalid(409, "err.signature.request.exist", request_id)
        send_info_url = _send_info_url(body)
        result_url = _result_url(body)
        extra: dict[str, Any] = {
            k: body[k]
            for k in ("expirationTime", "rules", "allowedFields", "fieldConfig")
            if k in body
        }
        filedata = body.get("filedata")
        document_id = body.get("id")
        if (filedata is None) == (document_id is None):
            # Docs silent; exactly one of a new file or an existing document makes sense.
            raise _Invalid(400, "err.missing.filedata.or.id")

        if filedata is not None:
            doc = _upload(filedata)
        else:
            if not isinstance(document_id, str) or document_id not in fake.documents:
                # Docs list 400/405/409 for create; an unknown document id is a bad request.
                raise _Invalid(400, "err.not.found", document_id)
            doc = fake.documents[document_id]
            change_state = body.get("changeState")
            if change_state is not None and change_state != "tosign":
                raise _Invalid(400, "err.invalid.changeState", change_state)
            if doc.state in REOPENABLE_STATES and change_state != "tosign":
                # A finished round must be reopened explicitly (docs: changeState "tosign").
                raise _Invalid(409, "err.document.state", doc.state)
            if doc.state not in REOPENABLE_STATES and doc.state != "tosign":
                raise _Invalid(409, "err.document.state", doc.state)

        sr = fake.new_round(
            doc,
            signature_request_id=request_id,
            send_info_url=send_info_url,
            result_url=result_url,
            extra=extra,
        )
        # Docs show the body but not the status; 200 like every other documented success.
        return JSONResponse(
            {
                "message": "msg.signature.request.id.created",
                "result": sr.signature_request_id,
                "url": open_url(request, sr.signature_request_id),
                "documentId": doc.document_id,
            }
        )

    def _upload(filedata: object) -> FakeDocument:
        if not isinstance(filedata, dict):
            raise _Invalid(400, "err.invalid.filedata")
        filename = filedata.get("filename")
        content = filedata.get("content")
        state = filedata.get("state", "tosign")  # Docs silent on a default; tosign is "ready"
        if not isinstance(filename, str) or not filename:
            raise _Invalid(400, "err.missing.filename")
        if not isinstance(content, str) or not content:
            raise _Invalid(400, "err.missing.content", filename)
        if state not in UPLOAD_STATES:
            raise _Invalid(400, "err.invalid.state", state)
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _Invalid(400, "err.invalid.content", filename) from exc
        if len(data) > MAX_FILE_BYTES:
            raise _Invalid(400, "err.file.too.large", filename)
        # "tags" (tag search) and "tostamp" are passing states; the fake finishes them at once
        # and the document is "tosign" when the response goes out.
        return fake.new_document(filename, data)

    async def update_signature_request(request: Request, raw: bytes) -> Response:
        body = _json_object(raw)
        request_id = body.get("signatureRequestId")
        if not isinstance(request_id, str) or not request_id:
            # Docs: signatureRequestId is required; the message is the fake's.
            raise _Invalid(400, "err.missing.signatureRequestId")
        sr = fake.signature_requests.get(request_id)
        if sr is None:
            # Exactly the documented error body of this page.
            raise _Invalid(400, f"View ID does not exist: {request_id}", request_id)
        send_info_url = _send_info_url(body)
        result_url = _result_url(body)
        if send_info_url is not None:
            sr.send_info_url = send_info_url
        if result_url is not None:
            sr.result_url = result_url
        # The docs' example "url" is the host followed by the id (no /openDocument/).
        return JSONResponse(
            {"message": "msg.updated", "result": request_id, "url": f"{base(request)}/{request_id}"}
        )

    async def delete_signature_request(request: Request, raw: bytes) -> Response:
        request_id = request.path_params["signatureRequestId"]
        sr = fake.signature_requests.pop(request_id, None)
        if sr is None:
            raise _Invalid(400, "err.signature.request.not.exist", request_id)
        doc = fake.documents.get(sr.document_id)
        if doc is not None and doc.current_request_id == request_id:
            # Docs silent on the document; it stays, but no round can be signed any more.
            doc.current_request_id = None
        return JSONResponse({"message": "msg.deleted", "result": request_id})

    def _document(document_id: str) -> FakeDocument:
        doc = fake.documents.get(document_id)
        if doc is None:
            raise _Invalid(404, "err.not.found", document_id)
        return doc

    async def document_metadata(request: Request, raw: bytes) -> Response:
        doc = _document(request.path_params["documentId"])
        return JSONResponse(fake.metadata(doc))

    async def download_document(request: Request, raw: bytes) -> Response:
        doc = _document(request.path_params["documentId"])
        return Response(
            doc.content,
            media_type="application/pdf",
            headers={"Content-Disposition": f'attachment; filename="{doc.filename}"'},
        )

    async def delete_document(request: Request, raw: bytes) -> Response:
        # The wiki lists "Delete document"; its page could not be read. Answered like
        # Delete Signature Request (docs/archive.md).
        doc = _document(request.path_params["documentId"])
        del fake.documents[doc.document_id]
        return JSONResponse({"message": "msg.deleted", "result": doc.document_id})

    async def list_flat(request: Request, raw: bytes) -> Response:
        state = request.query_params.get("state")
        if not state:
            # Docs: "?state=<state>|*"; they never show the parameter missing.
            raise _Invalid(400, "err.missing.state")
        items = []
        for doc in fake.documents.values():
            if state != "*" and doc.state != state:
                continue
            item = fake.metadata(doc)
            item["url"] = (
                open_url(request, doc.current_request_id) if doc.current_request_id else None
            )
            item["group"] = None  # Docs silent on what a group is.
            items.append(item)
        return JSONResponse(items)

    async def counter(request: Request, raw: bytes) -> Response:
        # Docs: "usage counters", shape undocumented; the fake's own, keep it simple.
        by_state: dict[str, int] = {}
        for doc in fake.documents.values():
            by_state[doc.state] = by_state.get(doc.state, 0) + 1
        return JSONResponse(
            {
                "signatureRequests": fake.created_requests,
                "documents": len(fake.documents),
                "states": by_state,
            }
        )

    async def open_document(request: Request, raw: bytes) -> Response:
        request_id = request.path_params["signatureRequestId"]
        if request_id not in fake.signature_requests:
            # A person's browser lands here; docs silent, a plain page is friendlier than JSON.
            return HTMLResponse("<h1>Document not found</h1>", status_code=404)
        return RedirectResponse(f"{base(request)}/_fake/viewer/{request_id}", status_code=302)

    # -- control ----------------------------------------------------------------------------

    async def viewer(request: Request) -> Response:
        sr = fake.signature_requests.get(request.path_params["signatureRequestId"])
        doc = fake.documents.get(sr.document_id) if sr else None
        if sr is None or doc is None:
            return HTMLResponse("<h1>Document not found</h1>", status_code=404)
        return HTMLResponse(
            f"<h1>Fake OKdokument viewer</h1><p>{doc.filename}: {doc.state}</p>"
            f"<p>POST /_fake/sign/{sr.signature_request_id} or "
            f"/_fake/cancel/{sr.signature_request_id} to finish the round.</p>"
        )

    async def list_calls(request: Request) -> Response:
        return JSONResponse([c.as_json() for c in fake.calls])

    async def reset(request: Request) -> Response:
        fake.reset()
        return JSONResponse({"reset": True})

    async def show_state(request: Request) -> Response:
        return JSONResponse(
            {
                "documents": [
                    {**fake.metadata(d), "current_signature_request": d.current_request_id}
                    for d in fake.documents.values()
                ],
                "signature_requests": [
                    {
                        "signatureRequestId": sr.signature_request_id,
                        "documentId": sr.document_id,
                        "sendInfoURL": sr.send_info_url,
                        "resulturl": sr.result_url,
                    }
                    for sr in fake.signature_requests.values()
                ],
            }
        )

    async def seed(request: Request) -> Response:
        try:
            body = await _control_json(request)
            request_id = body.get("signatureRequestId")
            document_id = body.get("documentId")
            filename = body.get("filename", "document.pdf")
            for name, value in (
                ("signatureRequestId", request_id),
                ("documentId", document_id),
                ("filename", filename),
            ):
                if value is not None and (not isinstance(value, str) or not value):
                    raise _Invalid(400, f"{name} must be a non-empty string")
            # Filler bytes that make the generated PDF larger (the archive's bench).
            padding = body.get("padding", 0)
            if isinstance(padding, bool) or not isinstance(padding, int):
                raise _Invalid(400, "padding must be a whole number of bytes")
            if not 0 <= padding <= MAX_FILE_BYTES:
                raise _Invalid(400, f"padding must be between 0 and {MAX_FILE_BYTES}")
            if request_id is not None and request_id in fake.signature_requests:
                return _control_error(409, f"signature request {request_id} exists")
            send_info_url = _send_info_url(body)
            result_url = _result_url(body)
        except _Invalid as exc:
            return _control_error(400, f"{exc.message} {exc.value or ''}".strip())
        doc = fake.documents.get(document_id) if document_id else None
        if doc is None:
            # A small real PDF, generated (receiver/archive/pdf.py), naming the document.
            content = make_pdf(
                [f"Document {document_id or filename} (OKdokument emulator)"], padding=padding
            )
            doc = fake.new_document(filename, content, document_id=document_id)
        sr = fake.new_round(
            doc,
            signature_request_id=request_id,
            send_info_url=send_info_url,
            result_url=result_url,
        )
        return JSONResponse(
            {
                "signatureRequestId": sr.signature_request_id,
                "documentId": doc.document_id,
                "filename": doc.filename,
                "sendInfoURL": sr.send_info_url,
                "resulturl": sr.result_url,
                "state": doc.state,
                "url": open_url(request, sr.signature_request_id),
            },
            status_code=201,
        )

    async def add_failure(request: Request) -> Response:
        try:
            body = await _control_json(request)
        except _Invalid as exc:
            return _control_error(400, exc.message)
        try:
            status = _opt_int(body, "status", 100, 599)
            count = _opt_int(body, "count", 1, None)
            retry_after = _opt_int(body, "retry_after", 0, None)
            delay = _opt_number(body, "delay") or 0.0
            seconds = _opt_number(body, "seconds")
            methods_raw = body.get("methods")
            methods: frozenset[str] | None = None
            if methods_raw is not None:
                if not isinstance(methods_raw, list) or not all(
                    isinstance(m, str) for m in methods_raw
                ):
                    raise ValueError("methods must be a list of HTTP methods")
                methods = frozenset(m.upper() for m in methods_raw)
            plan = fake.add_failure(
                status=status,
                delay=delay,
                count=count,
                seconds=seconds,
                retry_after=retry_after,
                methods=methods,
            )
        except ValueError as exc:
            return _control_error(400, str(exc))
        return JSONResponse(plan.as_json(fake.monotonic()), status_code=201)

    async def list_failures(request: Request) -> Response:
        now = fake.monotonic()
        return JSONResponse([p.as_json(now) for p in fake.failures])

    async def clear_failures(request: Request) -> Response:
        fake.failures.clear()
        return JSONResponse({"cleared": True})

    async def finish_round(request: Request, *, state: str) -> Response:
        """Play the signer pressing Submit (``signed``) or Cancel (``canceled``)."""
        try:
            body = await _control_json(request)
        except _Invalid as exc:
            return _control_error(400, exc.message)
        request_id = request.path_params["signatureRequestId"]
        if state == "signed":
            result = body.get("result", "success")
            if result not in SIGN_RESULTS:
                return _control_error(400, f"result must be one of {sorted(SIGN_RESULTS)}")
        else:
            result = "close"
        lang = body.get("lang", "en")
        follow = body.get("follow_redirect", False)
        if not isinstance(lang, str) or not isinstance(follow, bool):
            return _control_error(400, "lang must be a string, follow_redirect a boolean")

        sr = fake.signature_requests.get(request_id)
        doc = fake.documents.get(sr.document_id) if sr else None
        if sr is None or doc is None:
            return _control_error(404, f"unknown signature request {request_id}")
        if doc.current_request_id != request_id or doc.state != "tosign":
            return _control_error(
                409, f"document {doc.document_id} is {doc.state}, not open for {request_id}"
            )
        fake.set_state(doc, state)
        if state == "signed":
            # What Download document then serves: the document with the round's signature
            # appended, as a PDF signature is (an incremental update after the original).
            separator = b"" if doc.content.endswith(b"\n") else b"\n"
            doc.content += (
                separator
                + (
                    f"% Signed (OKdokument emulator) in round {request_id} at "
                    f"{int(fake.clock())}\n%%EOF\n"
                ).encode()
            )

        sendinfo_status: int | None = None
        sendinfo_error: str | None = None
        sendinfo_dropped = sr.send_info_url is not None and fake.drops_callback()
        redirect_url: str | None = None
        redirect_status: int | None = None
        redirect_error: str | None = None
        async with outbound_client() as client:
            if sr.send_info_url is not None and not sendinfo_dropped:
                # Exactly the documented shape and key order, compact like the docs' example;
                # no authorization of any kind (the docs require the endpoint to work without).
                payload = json.dumps(
                    {"state": state, "id": doc.document_id, "signatureRequestId": request_id},
                    separators=(",", ":"),
                )
                try:
                    reply = await client.post(
                        sr.send_info_url,
                        content=payload.encode(),
                        headers={"Content-Type": "application/json"},
                    )
                    sendinfo_status = reply.status_code
                except httpx.HTTPError as exc:
                    sendinfo_error = f"{type(exc).__name__}: {exc}"
                # Docs: "Expected answer: HTTP 200"; anything else is a failed sendInfo.
                if sendinfo_status != 200:
                    fake.set_state(doc, "errorsendinfo")
            if sr.result_url is not None:
                stem = doc.filename.rsplit(".", 1)[0] if "." in doc.filename else doc.filename
                redirect_url = _with_query(
                    sr.result_url,
                    {
                        "name": stem,
                        "docid": doc.document_id,
                        "lang": lang,
                        "result": result,
                        "ts": str(fake.now_ms()),
                    },
                )
                if follow:
                    # Like the signer's browser: one GET, redirects are the receiver's answer.
                    try:
                        reply = await client.get(redirect_url, headers={"Accept": "text/html"})
                        redirect_status = reply.status_code
                    except httpx.HTTPError as exc:
                        redirect_error = f"{type(exc).__name__}: {exc}"
        return JSONResponse(
            {
                "sendinfo_status": sendinfo_status,
                "sendinfo_error": sendinfo_error,
                "sendinfo_dropped": sendinfo_dropped,
                "document_state": doc.state,
                "redirect_url": redirect_url,
                "redirect_status": redirect_status,
                "redirect_error": redirect_error,
            }
        )

    async def show_behaviour(request: Request) -> Response:
        return JSONResponse(fake.behaviour())

    async def set_behaviour(request: Request) -> Response:
        try:
            body = await _control_json(request)
            drop = _opt_number(body, "drop_callbacks_percent")
            lag = _opt_number(body, "info_lag_seconds")
            fake.set_behaviour(drop_callbacks_percent=drop, info_lag_seconds=lag)
        except _Invalid as exc:
            return _control_error(400, exc.message)
        except ValueError as exc:
            return _control_error(400, str(exc))
        return JSONResponse(fake.behaviour())

    async def sign(request: Request) -> Response:
        return await finish_round(request, state="signed")

    async def cancel(request: Request) -> Response:
        return await finish_round(request, state="canceled")

    routes: list[BaseRoute] = [
        Route("/JSON/signatureRequest", api(create_signature_request), methods=["POST"]),
        Route("/JSON/signatureRequest", api(update_signature_request), methods=["PATCH"]),
        # ``:path`` so that a percent-encoded "/" in an id still reaches the handler (and gets
        # the documented not-found answer) instead of the router's bare 404.
        Route(
            "/JSON/signatureRequest/{signatureRequestId:path}",
            api(delete_signature_request),
            methods=["DELETE"],
        ),
        Route(
            "/JSON/document/metadata/{documentId:path}",
            api(document_metadata),
            methods=["GET"],
        ),
        Route("/JSON/document/{documentId:path}", api(download_document), methods=["GET"]),
        Route("/JSON/document/{documentId:path}", api(delete_document), methods=["DELETE"]),
        Route("/JSON/list/flat", api(list_flat), methods=["GET"]),
        Route("/JSON/counter", api(counter), methods=["GET"]),
        # Open document is the one API call without a key (docs).
        Route(
            "/openDocument/{signatureRequestId}",
            api(open_document, needs_key=False),
            methods=["GET"],
        ),
        Route("/_fake/viewer/{signatureRequestId}", viewer, methods=["GET"]),
        Route("/_fake/calls", list_calls, methods=["GET"]),
        Route("/_fake/reset", reset, methods=["POST"]),
        Route("/_fake/state", show_state, methods=["GET"]),
        Route("/_fake/signature-requests", seed, methods=["POST"]),
        Route("/_fake/failures", add_failure, methods=["POST"]),
        Route("/_fake/failures", list_failures, methods=["GET"]),
        Route("/_fake/failures", clear_failures, methods=["DELETE"]),
        Route("/_fake/behaviour", show_behaviour, methods=["GET"]),
        Route("/_fake/behaviour", set_behaviour, methods=["POST"]),
        Route("/_fake/sign/{signatureRequestId}", sign, methods=["POST"]),
        Route("/_fake/cancel/{signatureRequestId}", cancel, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _opt_int(body: Mapping[str, Any], key: str, low: int, high: int | None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{key} out of range: {value}")
    return value


def _opt_number(body: Mapping[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{key} must be a non-negative number")
    return float(value)


def serve(
    port: int,
    host: str = "127.0.0.1",
    api_key: str = DEFAULT_API_KEY,
    time_factor: float = 1.0,
    drop_callbacks_percent: float = 0.0,
    info_lag_seconds: float = 0.0,
) -> None:
    """Run the emulator until interrupted (``signback fake okdokument --port N``)."""
    import uvicorn

    fake = FakeOkdokument(
        api_key=api_key,
        time_factor=time_factor,
        drop_callbacks_percent=drop_callbacks_percent,
        info_lag_seconds=info_lag_seconds,
    )
    uvicorn.run(create_app(fake), host=host, port=port)
