"""A Firma.dev emulator for tests and demos: the signing-request API plus webhook deliveries.

Build one with ``create_app(FakeFirma(...))`` and talk to it over HTTP (in-process through
``httpx.ASGITransport`` or under uvicorn via :func:`serve`). A client's base URL is
``http://<host>:<port>/functions/v1/signing-request-api``. Everything lives in memory.

What it emulates (see ``/work/shared/providers/firma.md`` and the PATCH reference page):

* signing requests and their status flow ``not_sent → in_progress → finished | declined |
  cancelled | expired``, with Firma's two spellings of an unsent request (create answers
  ``draft``; GET, list and PATCH answer ``not_sent``);
* the PATCH validation rules and the immutability error in both documented styles;
* per-key rate limits, on by default at Firma's published figures (200 reads and 120 writes
  a minute, sliding window), answered with Firma's 429, its headers (``Retry-After``,
  ``X-RateLimit-Limit``, ``-Remaining``, ``-Reset``) and body; every call the limiter saw is
  logged per key and bucket (``GET /_fake/rate-limits``). ``RateLimits(window_seconds=…)``
  shortens the window for tests whose client scales its own budgets by the same factor;
* the final documents: ``GET /signing-requests/{id}/download`` gives a fresh pre-signed
  link (``{download_url, expires_at}``) to a small generated PDF (with the signers and
  the completion), ``503`` with ``Retry-After`` while it is "being generated"
  (``document_generation_seconds`` after completion), links that expire
  (``download_link_seconds``, or at once with ``POST /_fake/download-links/expire``),
  slow downloads (``download_chunk_delay``); ``GET /signing-requests/{id}/audit``, the
  audit trail; ``GET /_fake/documents/{id}?final=true`` shows the final PDF;
* webhooks: subscriptions, signed deliveries in the current or the older envelope, retries
  (immediately, +5 min, +1 h, scaled by ``time_factor``), no redirects, 5 s deadline, and the
  signing-secret rotation grace period (``X-Firma-Signature-Old``); a share of them can be
  lost on the way (``drop_webhooks_percent``, ``GET|POST /_fake/behaviour``).

A control API under ``/_fake/`` (no auth) drives what only signers or Firma itself could do
(view, sign, decline, expire, arbitrary events, redelivery, injected API failures) and shows
what happened (every API call, every delivery attempt). Importing this module does nothing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import math
import random
import re
import secrets
import string
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from handlers.firma import signature
from receiver.archive.pdf import make_pdf
from receiver.errors import ConfigurationError

API_BASE_PATH = "/functions/v1/signing-request-api"
CONTROL_BASE_PATH = "/_fake"
DEFAULT_API_KEY = "fake-firma-key"
# A published demo secret, not a credential: the fake signs with it unless told otherwise.
DEFAULT_SECRET = "9369eccf7d6b1b3debfffdcdf35650075527ee5c00ebf357fbe33ce2aaa62ce2"  # noqa: S105

# Firma retries a failed delivery immediately, then after 5 minutes, then after 1 hour
# (older docs: 1 m, 5 m, 30 m, 2 h, 6 h). Each delay is multiplied by ``time_factor``.
DEFAULT_RETRY_DELAYS: tuple[float, ...] = (0.0, 300.0, 3600.0)
DELIVERY_TIMEOUT_SECONDS = 5.0  # Firma wants an answer within 5 s
AUTO_DISABLE_AFTER = 50  # consecutive failed attempts before Firma disables a webhook
DOCUMENT_URL_TTL_SECONDS = 7 * 24 * 3600  # "initial URLs are valid for 7 days"
# Where the emulator's pre-signed download links point (Firma's are storage URLs).
STORAGE_BASE_PATH = "/_storage/v1/object/sign"
DOWNLOAD_LINK_SECONDS = 3600.0  # "URL expires after 1 hour"
DOWNLOAD_CHUNK_BYTES = 16 * 1024

Clock = Callable[[], float]
Envelope = Literal["current", "old"]
ImmutableStyle = Literal["400", "409"]
JSONObject = dict[str, Any]
Details = dict[str, str]

# Status values as the API shows them. ``not_sent`` is shown as ``draft`` by create only.
NOT_SENT = "not_sent"
IN_PROGRESS = "in_progress"
FINISHED = "finished"
CANCELLED = "cancelled"
DECLINED = "declined"
EXPIRED = "expired"

SETTINGS_BOOLEAN_KEYS = frozenset(
    {
        "allow_download",
        "attach_pdf_on_finish",
        "allow_editing_before_sending",
        "use_signing_order",
        "hand_drawn_only",
        "send_signing_email",
        "send_finish_email",
        "send_expiration_email",
        "send_cancellation_email",
        "require_otp_verification",
    }
)
# Defaults as the PATCH page's example response shows them, plus the flags it leaves out.
DEFAULT_SETTINGS: Mapping[str, bool] = {
    "allow_download": True,
    "attach_pdf_on_finish": True,
    "allow_editing_before_sending": False,
    "use_signing_order": False,
    "hand_drawn_only": False,
    "send_signing_email": True,
    "send_finish_email": True,
    "send_expiration_email": True,
    "send_cancellation_email": True,
    "require_otp_verification": False,
}

_EVENT_ID_ALPHABET = string.ascii_lowercase + string.digits
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# Firma re-extracts the page count from the PDF; counting page objects is close enough here.
_PDF_PAGE = re.compile(rb"/Type\s*/Page(?![A-Za-z])")
_FAKE_PDF = (
    b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
    b"2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj\n"
    b"3 0 obj << /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >> endobj\n"
    b"trailer << /Root 1 0 R >>\n%%EOF\n"
)


# ---------------------------------------------------------------------------------------------
# Small pure helpers


def _iso(moment: float | None) -> str | None:
    """Firma's timestamp format in API answers and payloads: ``2025-10-03T14:30:00Z``."""
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_int(value: Any) -> bool:
    # JSON ``true`` arrives as a Python bool, which is an int: Firma's zod schema refuses it.
    return isinstance(value, int) and not isinstance(value, bool)


def _decode_base64(value: Any) -> bytes | None:
    """The decoded document, or None when ``value`` is not non-empty, valid base64."""
    if not isinstance(value, str):
        return None
    compact = "".join(value.split())  # tolerate line-wrapped base64
    if not compact:
        return None
    try:
        decoded = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded or None


def _page_count(document: bytes) -> int:
    return max(1, len(_PDF_PAGE.findall(document)))


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _error(
    status: int,
    error: str,
    code: str | None = None,
    *,
    message: str | None = None,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """Firma's error shape: ``{"error", "code", "message"?, "details"?}``."""
    body: JSONObject = {"error": error}
    if code is not None:
        body["code"] = code
    if message is not None:
        body["message"] = message
    if details is not None:
        body["details"] = dict(details)
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_error(details: Details, error: str = "Validation failed") -> JSONResponse:
    return _error(400, error, "VALIDATION_ERROR", details=details)


def _not_found(what: str = "Signing request") -> JSONResponse:
    return _error(404, f"{what} not found", "NOT_FOUND")


# ---------------------------------------------------------------------------------------------
# Validation tables (PATCH properties; create reuses them)


def _check_name(value: Any) -> str | None:
    if not isinstance(value, str):
        return "Expected a string"
    if len(value) > 255:
        return "Must be at most 255 characters"
    return None


def _check_optional_text(value: Any) -> str | None:
    return None if value is None or isinstance(value, str) else "Expected a string or null"


def _check_document(value: Any) -> str | None:
    return None if _decode_base64(value) is not None else "Expected a base64-encoded document"


def _check_expiration_hours(value: Any) -> str | None:
    if not _is_int(value):
        return "Expected an integer"
    return None if value >= 1 else "Must be at least 1"


def _check_settings(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "Expected an object"
    # Unknown keys are accepted: the docs list the settings with a trailing "…".
    wrong = sorted(
        k for k in SETTINGS_BOOLEAN_KEYS & value.keys() if not isinstance(value[k], bool)
    )
    return f"Expected booleans: {', '.join(wrong)}" if wrong else None


def _check_language(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return "Expected a language code"
    return None if len(value) <= 35 else "Must be at most 35 characters"


def _check_redirect_url(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and _is_http_url(value):
        return None
    return "Expected an absolute http(s) URL or null"


def _check_redirect_delay(value: Any) -> str | None:
    if not _is_int(value):
        return "Expected an integer"
    return None if value >= 0 else "Must be at least 0"


PROPERTY_CHECKS: Mapping[str, Callable[[Any], str | None]] = {
    "name": _check_name,
    "description": _check_optional_text,
    "document": _check_document,
    "expiration_hours": _check_expiration_hours,
    "settings": _check_settings,
    # Newer API versions: completion page and signer language.
    "language": _check_language,
    "completion_title": _check_optional_text,
    "completion_message": _check_optional_text,
    "completion_redirect_url": _check_redirect_url,
    "completion_redirect_delay": _check_redirect_delay,
}
PATCH_ENTITIES = ("recipient", "field")


def _check_recipient(value: Any, *, prefix: str, require_email: bool) -> Details:
    if not isinstance(value, dict):
        return {prefix: "Expected an object"}
    details: Details = {}
    email = value.get("email")
    if email is None and require_email:
        details[f"{prefix}.email"] = "Email is required"
    elif email is not None and (not isinstance(email, str) or not _EMAIL.match(email)):
        details[f"{prefix}.email"] = "Invalid email format"
    for key in ("first_name", "last_name", "name", "designation", "id"):
        if key in value and value[key] is not None and not isinstance(value[key], str):
            details[f"{prefix}.{key}"] = "Expected a string"
    if "order" in value and (not _is_int(value["order"]) or value["order"] < 1):
        details[f"{prefix}.order"] = "Expected an integer of at least 1"
    return details


# ---------------------------------------------------------------------------------------------
# State


@dataclass
class Recipient:
    id: str
    email: str
    first_name: str | None
    last_name: str | None
    name: str | None
    designation: str  # "Signer", "CC", …
    order: int
    signed_at: float | None = None
    declined_at: float | None = None
    decline_reason: str | None = None

    @property
    def must_sign(self) -> bool:
        # A CC recipient only receives copies; everyone else has to act for completion.
        return self.designation.lower() != "cc"

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        return " ".join(p for p in (self.first_name, self.last_name) if p) or self.email

    def update(self, data: Mapping[str, Any]) -> None:
        for key in ("email", "first_name", "last_name", "name", "designation", "order"):
            if key in data:
                setattr(self, key, data[key])


@dataclass
class SigningRequest:
    id: str
    name: str
    description: str | None
    document: bytes
    page_count: int
    expiration_hours: int
    settings: dict[str, Any]
    template_id: str | None
    created_at: float
    status: str = NOT_SENT
    sent_at: float | None = None
    finished_at: float | None = None
    cancelled_at: float | None = None
    declined_at: float | None = None
    expired_at: float | None = None
    recipients: list[Recipient] = field(default_factory=list)
    fields: list[JSONObject] = field(default_factory=list)
    language: str | None = None
    completion_title: str | None = None
    completion_message: str | None = None
    completion_redirect_url: str | None = None
    completion_redirect_delay: int | None = None
    viewed: bool = False

    @property
    def expires_at(self) -> float | None:
        # The expiration clock starts when the request is sent.
        if self.sent_at is None:
            return None
        return self.sent_at + self.expiration_hours * 3600

    def recipient(self, recipient_id: str) -> Recipient | None:
        return next((r for r in self.recipients if r.id == recipient_id), None)

    def unsigned(self) -> list[Recipient]:
        pending = [r for r in self.recipients if r.must_sign and r.signed_at is None]
        return sorted(pending, key=lambda r: r.order)


@dataclass
class Webhook:
    id: str
    url: str
    events: list[str]
    created_at: float
    enabled: bool = True
    consecutive_failures: int = 0

    def wants(self, event_type: str) -> bool:
        return self.enabled and ("*" in self.events or event_type in self.events)

    def to_json(self) -> JSONObject:
        return {
            "id": self.id,
            "url": self.url,
            "events": list(self.events),
            "enabled": self.enabled,
            "consecutive_failures": self.consecutive_failures,
            "date_created": _iso(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class FakeEvent:
    id: str
    type: str
    envelope: Envelope
    body: bytes  # exactly the bytes every delivery of this event sends
    created_at: float


@dataclass(slots=True)
class DeliveryAttempt:
    delivery_id: str  # X-Firma-Delivery: new for every attempt
    event_id: str
    event_type: str
    webhook_id: str
    url: str
    attempt: int  # 1 for the first try of a delivery chain
    time: float
    redelivery_of: str | None = None
    status: int | None = None  # the receiver's HTTP status, None when no answer came
    error: str | None = None
    ok: bool = False
    done: bool = False  # False while the request is under way
    dropped: bool = False  # lost on the way (FakeFirma.drop_webhooks_percent): never sent

    def to_json(self) -> JSONObject:
        return {
            "dropped": self.dropped,
            "delivery_id": self.delivery_id,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "webhook_id": self.webhook_id,
            "url": self.url,
            "attempt": self.attempt,
            "time": self.time,
            "redelivery_of": self.redelivery_of,
            "status": self.status,
            "error": self.error,
            "ok": self.ok,
            "done": self.done,
        }


@dataclass(slots=True)
class FailureRule:
    """Make the next ``count`` matching API calls fail (``status``) and/or answer late."""

    count: int
    status: int | None = None
    delay: float = 0.0  # real seconds, not scaled: meant for client timeout tests
    methods: frozenset[str] | None = None
    retry_after: int = 1

    def matches(self, method: str) -> bool:
        return self.count > 0 and (self.methods is None or method in self.methods)

    def to_json(self) -> JSONObject:
        return {
            "count": self.count,
            "status": self.status,
            "delay": self.delay,
            "methods": sorted(self.methods) if self.methods is not None else None,
            "retry_after": self.retry_after,
        }


@dataclass(frozen=True, slots=True)
class FiredEvent:
    event_id: str
    type: str
    delivery_ids: tuple[str, ...]

    def to_json(self) -> JSONObject:
        return {
            "event_id": self.event_id,
            "type": self.type,
            "delivery_ids": list(self.delivery_ids),
        }


# ---------------------------------------------------------------------------------------------
# Rate limits


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Requests per window and per API key, by kind of call (Firma's published tiers)."""

    read: int = 200  # GET
    write: int = 120  # POST/PUT/PATCH/DELETE
    send: int = 60  # POST …/{id}/send
    webhooks: int = 60  # webhook CRUD
    webhook_test: int = 10  # POST /webhooks/{id}/test
    window_seconds: float = 60.0
    window: Literal["sliding", "fixed"] = "sliding"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.window_seconds) and self.window_seconds > 0):
            raise ConfigurationError(f"a rate window must be positive: {self.window_seconds}")

    def limit(self, bucket: str) -> int:
        return int(getattr(self, bucket))


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_at: int  # unix seconds
    retry_after: int  # seconds; meaningful when not allowed

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_at),
        }


def max_in_window(times: Sequence[float], window: float) -> int:
    """The most of ``times`` that fall in any window ``(t - window, t]`` (the limiter's own
    sliding window: a call exactly ``window`` seconds older no longer counts)."""
    ordered = sorted(times)
    most = 0
    first = 0
    for last, moment in enumerate(ordered):
        while ordered[first] <= moment - window:
            first += 1
        most = max(most, last - first + 1)
    return most


class RateLimiter:
    """Counts calls per (key, bucket) in a sliding or a fixed window. Refused calls don't count.

    ``log`` keeps every call the limiter saw, per (key id, bucket): (time, allowed). The
    control API shows it (``GET /_fake/rate-limits``), so a test can check a client's pace
    against the limits in any window, refused calls included.
    """

    def __init__(self, limits: RateLimits) -> None:
        self.limits = limits
        self._sliding: dict[tuple[str, str], deque[float]] = {}
        self._fixed: dict[tuple[str, str], tuple[float, int]] = {}
        self.log: dict[tuple[str, str], list[tuple[float, bool]]] = {}

    def reset(self) -> None:
        self._sliding.clear()
        self._fixed.clear()
        self.log.clear()

    def hit(self, key: str, bucket: str, now: float) -> RateDecision:
        decision = self._decide(key, bucket, now)
        self.log.setdefault((key, bucket), []).append((now, decision.allowed))
        return decision

    def report(self) -> JSONObject:
        """Per key id and bucket: calls accepted and refused, their times, and the most
        calls in any one window (all of them, and the accepted ones)."""
        window = self.limits.window_seconds
        keys: dict[str, dict[str, JSONObject]] = {}
        for (key, bucket), entries in sorted(self.log.items()):
            accepted = [t for t, allowed in entries if allowed]
            refused = [t for t, allowed in entries if not allowed]
            keys.setdefault(key, {})[bucket] = {
                "limit": self.limits.limit(bucket),
                "accepted": len(accepted),
                "refused": len(refused),
                "max_sent_in_window": max_in_window([t for t, _ in entries], window),
                "max_accepted_in_window": max_in_window(accepted, window),
                "accepted_times": accepted,
                "refused_times": refused,
            }
        limits = self.limits
        return {
            "limits": {
                "read": limits.read,
                "write": limits.write,
                "send": limits.send,
                "webhooks": limits.webhooks,
                "webhook_test": limits.webhook_test,
                "window_seconds": limits.window_seconds,
                "window": limits.window,
            },
            "keys": keys,
        }

    def _decide(self, key: str, bucket: str, now: float) -> RateDecision:
        limit = self.limits.limit(bucket)
        window = self.limits.window_seconds
        if self.limits.window == "fixed":
            start = math.floor(now / window) * window
            seen_start, count = self._fixed.get((key, bucket), (start, 0))
            if seen_start != start:
                count = 0
            reset = start + window
            if count >= limit:
                return RateDecision(False, limit, 0, math.ceil(reset), _seconds_until(reset, now))
            self._fixed[(key, bucket)] = (start, count + 1)
            return RateDecision(True, limit, limit - count - 1, math.ceil(reset), 0)
        hits = self._sliding.setdefault((key, bucket), deque())
        while hits and hits[0] <= now - window:
            hits.popleft()
        if len(hits) >= limit:
            reset = hits[0] + window  # when the oldest counted call leaves the window
            return RateDecision(False, limit, 0, math.ceil(reset), _seconds_until(reset, now))
        hits.append(now)
        return RateDecision(True, limit, limit - len(hits), math.ceil(hits[0] + window), 0)


def key_id_of(api_key: str) -> str:
    """How the rate log names an API key: the start of its SHA-256, never the key."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def _seconds_until(moment: float, now: float) -> int:
    return max(1, math.ceil(moment - now))


def _bucket(method: str, path: str) -> str:
    """Which rate-limit tier a call belongs to (``path`` is relative to the API base)."""
    if path.startswith("/webhooks"):
        return "webhook_test" if path.endswith("/test") else "webhooks"
    if method == "GET":
        return "read"
    if method == "POST" and path.endswith("/send") and not path.endswith("/create-and-send"):
        return "send"
    return "write"


def _rate_limited(decision: RateDecision, message: str | None = None) -> JSONResponse:
    return _error(
        429,
        "Too Many Requests",
        "RATE_LIMIT_EXCEEDED",
        message=message
        or f"Rate limit of {decision.limit} requests per minute exceeded. "
        f"Retry after {decision.retry_after} seconds.",
        headers={**decision.headers(), "Retry-After": str(decision.retry_after)},
    )


# ---------------------------------------------------------------------------------------------
# The fake


ApiHandler = Callable[[Request, Any], Awaitable[Response]]


class FakeFirma:
    """In-memory state of the emulator plus its webhook sender. One instance per app."""

    def __init__(
        self,
        *,
        api_key: str | Sequence[str] = DEFAULT_API_KEY,
        secret: str = DEFAULT_SECRET,
        clock: Clock = time.time,
        time_factor: float = 1.0,
        envelope: Envelope = "current",
        immutable_style: ImmutableStyle = "400",
        rate_limits: RateLimits | None = None,
        retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
        delivery_timeout: float = DELIVERY_TIMEOUT_SECONDS,
        company_id: str = "comp_fake",
        workspace_id: str = "ws_fake",
        workspace_name: str = "Fake Workspace",
        webhook_transport: httpx.AsyncBaseTransport | None = None,
        drop_webhooks_percent: float = 0.0,
        seed: int | None = None,
        document_generation_seconds: float = 0.0,
        download_link_seconds: float = DOWNLOAD_LINK_SECONDS,
        download_chunk_delay: float = 0.0,
        final_document_padding: int = 0,
    ) -> None:
        keys = (api_key,) if isinstance(api_key, str) else tuple(api_key)
        if not 0 <= drop_webhooks_percent <= 100:
            raise ConfigurationError("drop_webhooks_percent is between 0 and 100")
        # The share of deliveries lost on the way: never sent, and Firma believes them
        # delivered (no retry), as behind a proxy that swallowed them.
        self.drop_webhooks_percent = float(drop_webhooks_percent)
        self._random = random.Random(seed)  # which deliveries are dropped; not security
        if not keys or not all(keys):
            raise ConfigurationError("the fake Firma needs at least one non-empty API key")
        if not secret:
            raise ConfigurationError("the fake Firma needs a non-empty webhook signing secret")
        if envelope not in ("current", "old"):
            raise ConfigurationError(f"envelope must be 'current' or 'old', not {envelope!r}")
        if immutable_style not in ("400", "409"):
            raise ConfigurationError(
                f"immutable_style must be '400' or '409', not {immutable_style!r}"
            )
        if time_factor < 0 or delivery_timeout <= 0:
            raise ConfigurationError("time_factor must be >= 0 and delivery_timeout > 0")
        self.api_keys = keys
        self.clock = clock
        self.time_factor = time_factor
        self.envelope: Envelope = envelope
        self.immutable_style: ImmutableStyle = immutable_style
        self.rate_limiter = RateLimiter(rate_limits or RateLimits())
        self.retry_delays = tuple(retry_delays)
        self.delivery_timeout = delivery_timeout
        self.company_id = company_id
        self.workspace_id = workspace_id
        self.workspace_name = workspace_name
        self._initial_secret = secret
        self._webhook_transport = webhook_transport
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.secret = secret
        self.old_secret: str | None = None  # set during a rotation grace period
        self.signing_requests: dict[str, SigningRequest] = {}
        self.webhooks: dict[str, Webhook] = {}
        self.events: dict[str, FakeEvent] = {}
        self.calls: list[JSONObject] = []
        self.deliveries: list[DeliveryAttempt] = []
        self.failures: list[FailureRule] = []
        # The final documents: how long after completion the PDF is "being generated" (503),
        # how long a download link works, a pause between the chunks of a download (slow
        # downloads), and filler bytes that make the PDF larger.
        self.document_generation_seconds = document_generation_seconds
        self.download_link_seconds = download_link_seconds
        self.download_chunk_delay = download_chunk_delay
        self.final_document_padding = final_document_padding
        self.expire_next_links = 0  # links handed out already expired (a slow client)
        self.break_next_downloads = 0  # downloads cut off after their first chunk
        self.final_documents: dict[str, bytes] = {}
        self.download_links: dict[str, tuple[str, float]] = {}  # token → (request id, expiry)
        self.downloads: list[JSONObject] = []  # every use of a link, with its status

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the webhook HTTP client (the app's lifespan calls this)."""
        if self._client is None:
            # Firma does not follow redirects: a 3xx is a failed delivery.
            self._client = httpx.AsyncClient(
                timeout=self.delivery_timeout,
                follow_redirects=False,
                transport=self._webhook_transport,
            )

    async def aclose(self) -> None:
        """Cancel pending deliveries and retries, then close the client."""
        await self._cancel_tasks()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def drain(self) -> None:
        """Wait until every delivery chain (retries included) has ended. For tests."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    @property
    def pending_deliveries(self) -> int:
        return len(self._tasks)

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def reset(self) -> None:
        """Back to the state right after construction."""
        await self._cancel_tasks()
        self.secret = self._initial_secret
        self.old_secret = None
        self.signing_requests.clear()
        self.webhooks.clear()
        self.events.clear()
        self.calls.clear()
        self.deliveries.clear()
        self.failures.clear()
        self.rate_limiter.reset()
        self.final_documents.clear()
        self.download_links.clear()
        self.downloads.clear()

    # -- the API pipeline: record, auth, injected failures, rate limit, handler ---------------

    def api(self, handler: ApiHandler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            raw = await request.body()
            record: JSONObject = {
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "body": _body_for_log(raw),
                "status": None,
                "time": self.clock(),
            }
            self.calls.append(record)  # in arrival order; the status is filled in below
            response = await self._handle(request, raw, handler, record)
            record["status"] = response.status_code
            return response

        return endpoint

    async def _handle(
        self, request: Request, raw: bytes, handler: ApiHandler, record: JSONObject
    ) -> Response:
        key = self._authenticate(request.headers.get("authorization"))
        if key is None:
            error = (
                "Missing API key" if "authorization" not in request.headers else "Invalid API key"
            )
            return _error(
                401, error, "UNAUTHORIZED", message="Send the key in the Authorization header"
            )
        method = request.method
        delay_after = 0.0
        rule = next((r for r in self.failures if r.matches(method)), None)
        if rule is not None:
            rule.count -= 1
            self.failures = [r for r in self.failures if r.count > 0]
            record["injected"] = rule.to_json()
            if rule.status is not None:
                if rule.delay:
                    await asyncio.sleep(rule.delay)
                return self._injected_failure(rule)
            delay_after = rule.delay
        relative = request.url.path.removeprefix(API_BASE_PATH)
        key_id = key_id_of(key)  # never keep the key itself around
        bucket = _bucket(method, relative)
        record["key_id"], record["bucket"] = key_id, bucket
        decision = self.rate_limiter.hit(key_id, bucket, self.clock())
        if not decision.allowed:
            return _rate_limited(decision)
        body: Any = None
        if raw.strip():
            try:
                body = json.loads(raw)
            except (UnicodeDecodeError, ValueError):
                response: Response = _error(400, "Invalid JSON body", "INVALID_JSON")
            else:
                response = await handler(request, body)
        else:
            response = await handler(request, body)
        response.headers.update(decision.headers())
        if delay_after:
            # The call took effect; only the answer is late (how a retried create duplicates).
            await asyncio.sleep(delay_after)
        return response

    def _authenticate(self, header: str | None) -> str | None:
        if header is None:
            return None
        value = header.strip()
        # Firma takes the raw key; a "Bearer " prefix is accepted too.
        if value[:7].lower() == "bearer ":
            value = value[7:].strip()
        found: str | None = None
        for key in self.api_keys:
            if hmac.compare_digest(value.encode(), key.encode()):
                found = key
        return found

    def _injected_failure(self, rule: FailureRule) -> Response:
        status = cast(int, rule.status)
        if status == 429:
            now = self.clock()
            decision = RateDecision(
                False, 0, 0, math.ceil(now + rule.retry_after), rule.retry_after
            )
            return _rate_limited(decision, "Too many requests (injected by the fake)")
        if status == 503:
            return _error(
                503,
                "Service Unavailable",
                "SERVICE_UNAVAILABLE",
                headers={"Retry-After": str(rule.retry_after)},
            )
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Injected failure"
        return _error(status, phrase, "INJECTED_FAILURE")

    # -- serialisation -----------------------------------------------------------------------

    def _recipient_json(self, recipient: Recipient) -> JSONObject:
        return {
            "id": recipient.id,
            "email": recipient.email,
            "name": recipient.display_name,
            "first_name": recipient.first_name,
            "last_name": recipient.last_name,
            "order": recipient.order,
            "designation": recipient.designation,
            "signed_at": _iso(recipient.signed_at),
        }

    def signing_request_json(
        self, sr: SigningRequest, origin: str, *, draft: bool = False
    ) -> JSONObject:
        """A signing request as the API answers it (the PATCH page's response shape)."""
        finished = sr.status == FINISHED
        document_url = f"{origin}{CONTROL_BASE_PATH}/documents/{sr.id}"
        return {
            "id": sr.id,
            "name": sr.name,
            "description": sr.description,
            "document_url": document_url,
            "document_url_expires_at": _iso(self.clock() + DOCUMENT_URL_TTL_SECONDS),
            "document_page_count": sr.page_count,
            # Firma's docs: create answers "draft", everything else "not_sent".
            "status": "draft" if draft and sr.status == NOT_SENT else sr.status,
            "expiration_hours": sr.expiration_hours,
            "credit_cost": 1,
            "settings": dict(sr.settings),
            "template_id": sr.template_id,
            "date_created": _iso(sr.created_at),
            "date_sent": _iso(sr.sent_at),
            "date_finished": _iso(sr.finished_at),
            "date_cancelled": _iso(sr.cancelled_at),
            "date_declined": _iso(sr.declined_at),
            "expires_at": _iso(sr.expires_at),
            "certificate": {
                "generated": finished,
                "generated_on": _iso(sr.finished_at) if finished else None,
                "has_error": False,
            },
            # A fresh pre-signed link to the final PDF, once it is generated (1 hour).
            "final_document_download_url": self._final_link(sr, origin) if finished else None,
            "final_document_download_error": None,
            "language": sr.language,
            "completion_title": sr.completion_title,
            "completion_message": sr.completion_message,
            "completion_redirect_url": sr.completion_redirect_url,
            "completion_redirect_delay": sr.completion_redirect_delay,
            "recipients": [self._recipient_json(r) for r in sr.recipients],
            "fields": [dict(f) for f in sr.fields],
        }

    # -- signing requests --------------------------------------------------------------------

    def _build_signing_request(self, body: Any) -> SigningRequest | Response:
        """Validate a create body. Lenient about unknown keys (the create schema is large)."""
        if not isinstance(body, dict):
            return _validation_error({"body": "Expected a JSON object"})
        details: Details = {}
        if "name" not in body:
            details["name"] = "Name is required"
        template_id = body.get("template_id")
        if template_id is not None and not isinstance(template_id, str):
            details["template_id"] = "Expected a string"
        if "document" not in body and template_id is None:
            details["document"] = "A base64 document or a template_id is required"
        for key, check in PROPERTY_CHECKS.items():
            if key in body:
                problem = check(body[key])
                if problem:
                    details[key] = problem
        recipients_raw = body.get("recipients", [])
        if not isinstance(recipients_raw, list):
            details["recipients"] = "Expected a list"
            recipients_raw = []
        for index, item in enumerate(recipients_raw):
            details.update(
                _check_recipient(item, prefix=f"recipients[{index}]", require_email=True)
            )
        fields_raw = body.get("fields", [])
        if not isinstance(fields_raw, list) or not all(isinstance(f, dict) for f in fields_raw):
            details["fields"] = "Expected a list of objects"
        if details:
            return _validation_error(details)
        now = self.clock()
        document = _decode_base64(body["document"]) if "document" in body else _FAKE_PDF
        assert document is not None  # checked above
        sr = SigningRequest(
            id=str(uuid.uuid4()),
            name=body["name"],
            description=body.get("description"),
            document=document,
            page_count=_page_count(document),
            expiration_hours=body.get("expiration_hours", 168),
            settings={**DEFAULT_SETTINGS, **body.get("settings", {})},
            template_id=template_id,
            created_at=now,
            fields=[{**f, "id": f.get("id") or str(uuid.uuid4())} for f in fields_raw],
        )
        for index, item in enumerate(recipients_raw):
            sr.recipients.append(_new_recipient(item, default_order=index + 1))
        for key in (
            "language",
            "completion_title",
            "completion_message",
            "completion_redirect_url",
            "completion_redirect_delay",
        ):
            if key in body:
                setattr(sr, key, body[key])
        return sr

    def _send_problem(self, sr: SigningRequest) -> Response | None:
        if sr.status != NOT_SENT:
            return _error(
                409,
                "Signing request has already been sent",
                "ALREADY_SENT",
                message=f"Only an unsent signing request can be sent (status: {sr.status})",
            )
        if not any(r.must_sign for r in sr.recipients):
            return _validation_error(
                {"recipients": "At least one signer is required before sending"},
                "Cannot send signing request",
            )
        return None

    def _mark_sent(self, sr: SigningRequest) -> None:
        sr.status = IN_PROGRESS
        sr.sent_at = self.clock()

    async def list_signing_requests(self, request: Request, body: Any) -> Response:
        query = request.query_params
        try:
            page = max(1, int(query.get("page", "1")))
            page_size = min(100, max(1, int(query.get("page_size", "20"))))
        except ValueError:
            return _validation_error({"page": "page and page_size must be integers"})
        wanted = query.get("status")
        items = sorted(self.signing_requests.values(), key=lambda s: s.created_at, reverse=True)
        if wanted:
            items = [s for s in items if s.status == wanted]
        origin = _origin(request)
        start = (page - 1) * page_size
        return JSONResponse(
            {
                "results": [
                    self.signing_request_json(s, origin) for s in items[start : start + page_size]
                ],
                "pagination": {
                    "page": page,
                    "page_size": page_size,
                    "total": len(items),
                    "total_pages": max(1, math.ceil(len(items) / page_size)),
                },
            }
        )

    async def create_signing_request(self, request: Request, body: Any) -> Response:
        built = self._build_signing_request(body)
        if isinstance(built, Response):
            return built
        self.signing_requests[built.id] = built
        self.emit("signing_request.created", built)
        # No Idempotency-Key support, like Firma: a retried create makes a second request.
        return JSONResponse(
            self.signing_request_json(built, _origin(request), draft=True), status_code=201
        )

    async def create_and_send(self, request: Request, body: Any) -> Response:
        built = self._build_signing_request(body)
        if isinstance(built, Response):
            return built
        problem = self._send_problem(built)
        if problem is not None:
            return problem  # atomic: nothing was stored
        self.signing_requests[built.id] = built
        self.emit("signing_request.created", built)
        self._mark_sent(built)
        self.emit("signing_request.sent", built)
        return JSONResponse(self.signing_request_json(built, _origin(request)), status_code=201)

    async def get_signing_request(self, request: Request, body: Any) -> Response:
        sr = self.signing_requests.get(request.path_params["id"])
        if sr is None:
            return _not_found()
        return JSONResponse(self.signing_request_json(sr, _origin(request)))

    async def send_signing_request(self, request: Request, body: Any) -> Response:
        sr = self.signing_requests.get(request.path_params["id"])
        if sr is None:
            return _not_found()
        problem = self._send_problem(sr)
        if problem is not None:
            return problem
        self._mark_sent(sr)
        self.emit("signing_request.sent", sr)
        return JSONResponse(self.signing_request_json(sr, _origin(request)))

    async def cancel_signing_request(self, request: Request, body: Any) -> Response:
        sr = self.signing_requests.get(request.path_params["id"])
        if sr is None:
            return _not_found()
        if sr.status != IN_PROGRESS:
            hint = " Delete a draft instead." if sr.status == NOT_SENT else ""
            return _error(
                409,
                f"Cannot cancel a signing request with status {sr.status}.{hint}",
                "INVALID_STATUS",
            )
        sr.status = CANCELLED
        sr.cancelled_at = self.clock()
        self.emit("signing_request.cancelled", sr)
        return JSONResponse(self.signing_request_json(sr, _origin(request)))

    async def delete_signing_request(self, request: Request, body: Any) -> Response:
        sr = self.signing_requests.get(request.path_params["id"])
        if sr is None:
            return _not_found()
        if sr.status != NOT_SENT:
            return _error(
                409,
                "Cannot delete a signing request that has been sent. Use cancel instead.",
                "ALREADY_SENT",
            )
        # The event is built before the request disappears (it carries its data).
        self.emit("signing_request.deleted", sr)
        del self.signing_requests[sr.id]
        return JSONResponse({"success": True, "id": sr.id, "message": "Signing request deleted"})

    async def patch_signing_request(self, request: Request, body: Any) -> Response:
        sr = self.signing_requests.get(request.path_params["id"])
        if sr is None:
            return _not_found()
        if not isinstance(body, dict) or not body:
            return _validation_error({"body": "Send properties, a recipient or a field to update"})
        entities = [k for k in PATCH_ENTITIES if k in body]
        if entities and len(body) > 1:
            # One entity type per call: properties, or a single recipient, or a single field.
            return _validation_error(
                {
                    k: "Only one entity type per request: properties, a recipient or a field"
                    for k in body
                },
                "Invalid update request",
            )
        details: Details = {}
        if entities == ["recipient"]:
            details = self._check_patch_recipient(sr, body["recipient"])
        elif entities == ["field"]:
            details = self._check_patch_field(sr, body["field"])
        else:
            for key, value in body.items():
                check = PROPERTY_CHECKS.get(key)
                problem = "Unknown property" if check is None else check(value)
                if problem:
                    details[key] = problem
        if details:
            return _validation_error(details)
        if sr.status != NOT_SENT:
            return self._immutable()
        warning = self._apply_patch(sr, body)
        self.emit("signing_request.updated", sr)
        answer = self.signing_request_json(sr, _origin(request))
        if warning:
            answer["warning"] = warning
        return JSONResponse(answer)

    def _immutable(self) -> Response:
        # The docs disagree: the spec answers 400 without a code, a guide says 409 ALREADY_SENT.
        if self.immutable_style == "409":
            return _error(
                409,
                "Signing request has already been sent and cannot be modified",
                "ALREADY_SENT",
            )
        return _error(
            400,
            "Cannot update signing request",
            message="Signing request has already been sent and cannot be modified",
        )

    def _check_patch_recipient(self, sr: SigningRequest, value: Any) -> Details:
        existing = isinstance(value, dict) and value.get("id") is not None
        details = _check_recipient(value, prefix="recipient", require_email=not existing)
        if not details and existing and sr.recipient(value["id"]) is None:
            details["recipient.id"] = "No recipient with this id on this signing request"
        return details

    def _check_patch_field(self, sr: SigningRequest, value: Any) -> Details:
        if not isinstance(value, dict):
            return {"field": "Expected an object"}
        details: Details = {}
        field_id = value.get("id")
        if field_id is None and not isinstance(value.get("type"), str):
            details["field.type"] = "Type is required for a new field"
        if field_id is not None and not any(f.get("id") == field_id for f in sr.fields):
            details["field.id"] = "No field with this id on this signing request"
        recipient_id = value.get("recipient_id")
        if recipient_id is not None and sr.recipient(str(recipient_id)) is None:
            details["field.recipient_id"] = "No recipient with this id on this signing request"
        return details

    def _apply_patch(self, sr: SigningRequest, body: JSONObject) -> str | None:
        if "recipient" in body:
            data = body["recipient"]
            found = sr.recipient(data["id"]) if data.get("id") is not None else None
            if found is not None:
                found.update(data)
            else:
                sr.recipients.append(_new_recipient(data, default_order=len(sr.recipients) + 1))
            return None
        if "field" in body:
            data = body["field"]
            current = next((f for f in sr.fields if f.get("id") == data.get("id")), None)
            if current is not None:
                current.update(data)
            else:
                sr.fields.append({**data, "id": data.get("id") or str(uuid.uuid4())})
            return None
        warning = None
        for key, value in body.items():
            if key == "document":
                document = _decode_base64(value)
                assert document is not None  # validated
                sr.document = document
                sr.page_count = _page_count(document)
                if sr.fields:
                    warning = "Document replaced: check that existing fields are still placed right"
            elif key == "settings":
                sr.settings.update(value)
            else:
                setattr(sr, key, value)
        return warning

    # -- webhooks (API) ----------------------------------------------------------------------

    def _check_webhook(self, body: Any, *, partial: bool) -> Details:
        if not isinstance(body, dict):
            return {"body": "Expected a JSON object"}
        details: Details = {}
        url = body.get("url")
        if url is None and not partial:
            details["url"] = "URL is required"
        elif url is not None and (not isinstance(url, str) or not _is_http_url(url)):
            # Real Firma insists on HTTPS; the fake also takes http for loopback receivers.
            details["url"] = "Expected an absolute http(s) URL"
        events = body.get("events")
        if events is None and not partial:
            details["events"] = "At least one event type is required"
        elif events is not None and (
            not isinstance(events, list)
            or not events
            or not all(isinstance(e, str) and e for e in events)
        ):
            details["events"] = "Expected a non-empty list of event types"
        if "enabled" in body and not isinstance(body["enabled"], bool):
            details["enabled"] = "Expected a boolean"
        return details

    async def create_webhook(self, request: Request, body: Any) -> Response:
        details = self._check_webhook(body, partial=False)
        if details:
            return _validation_error(details)
        webhook = Webhook(
            id=str(uuid.uuid4()),
            url=body["url"],
            events=list(body["events"]),
            created_at=self.clock(),
            enabled=body.get("enabled", True),
        )
        self.webhooks[webhook.id] = webhook
        return JSONResponse(webhook.to_json(), status_code=201)

    async def list_webhooks(self, request: Request, body: Any) -> Response:
        return JSONResponse({"results": [w.to_json() for w in self.webhooks.values()]})

    async def get_webhook(self, request: Request, body: Any) -> Response:
        webhook = self.webhooks.get(request.path_params["id"])
        return _not_found("Webhook") if webhook is None else JSONResponse(webhook.to_json())

    async def update_webhook(self, request: Request, body: Any) -> Response:
        webhook = self.webhooks.get(request.path_params["id"])
        if webhook is None:
            return _not_found("Webhook")
        details = self._check_webhook(body, partial=True)
        if details:
            return _validation_error(details)
        webhook.url = body.get("url", webhook.url)
        webhook.events = list(body.get("events", webhook.events))
        if "enabled" in body:
            webhook.enabled = body["enabled"]
            webhook.consecutive_failures = 0
        return JSONResponse(webhook.to_json())

    async def delete_webhook(self, request: Request, body: Any) -> Response:
        webhook = self.webhooks.pop(request.path_params["id"], None)
        if webhook is None:
            return _not_found("Webhook")
        return JSONResponse({"success": True, "id": webhook.id})

    async def test_webhook(self, request: Request, body: Any) -> Response:
        webhook = self.webhooks.get(request.path_params["id"])
        if webhook is None:
            return _not_found("Webhook")
        fired = self.emit("webhook.test", None, targets=[webhook])
        return JSONResponse({"success": True, **fired.to_json()})

    # -- events and deliveries ---------------------------------------------------------------

    def _new_event_id(self) -> str:
        # The docs' example: evt_1707500000_k8f2m9x3a
        suffix = "".join(secrets.choice(_EVENT_ID_ALPHABET) for _ in range(9))
        return f"evt_{int(self.clock())}_{suffix}"

    def _payload(
        self,
        event_id: str,
        event_type: str,
        envelope: Envelope,
        sr: SigningRequest | None,
        recipient: Recipient | None,
        extra: Mapping[str, Any] | None,
        now: float,
    ) -> JSONObject:
        workspace = {"id": self.workspace_id, "name": self.workspace_name}
        if envelope == "old":
            # Early 2026: flat ids in ``data``, ``event_id``/``event_type``/``timestamp``.
            data: JSONObject = {}
            if sr is not None:
                data.update(
                    signing_request_id=sr.id, signing_request_name=sr.name, status=sr.status
                )
            if recipient is not None:
                data.update(recipient_id=recipient.id, recipient_email=recipient.email)
            data.update(extra or {})
            return {
                "event_id": event_id,
                "event_type": event_type,
                "timestamp": _iso(now),
                "company_id": self.company_id,
                "workspace_id": self.workspace_id,
                "data": data,
            }
        data = {}
        if sr is not None:
            data["signing_request"] = {
                "id": sr.id,
                "name": sr.name,
                "workspace_id": self.workspace_id,
                "created_at": _iso(sr.created_at),
                "sent_at": _iso(sr.sent_at),
                "completed_at": _iso(sr.finished_at),
                "cancelled_at": _iso(sr.cancelled_at),
                "expires_at": _iso(sr.expires_at),
                "document_page_count": sr.page_count,
            }
            data["recipients"] = [self._recipient_json(r) for r in sr.recipients]
        if recipient is not None:
            # Not in the docs' example: which recipient a recipient.* event is about.
            data["recipient"] = {
                **self._recipient_json(recipient),
                "declined_at": _iso(recipient.declined_at),
                "decline_reason": recipient.decline_reason,
            }
        if event_type == "webhook.test":
            data["message"] = "This is a test webhook event from Firma"
        data["workspace"] = workspace
        data.update(extra or {})
        return {
            "id": event_id,
            "type": event_type,
            "created_at": _iso(now),
            "company_id": self.company_id,
            "workspace_id": self.workspace_id,
            "data": data,
        }

    def emit(
        self,
        event_type: str,
        sr: SigningRequest | None,
        *,
        recipient: Recipient | None = None,
        envelope: Envelope | None = None,
        extra: Mapping[str, Any] | None = None,
        targets: Sequence[Webhook] | None = None,
    ) -> FiredEvent:
        """Record an event and start delivering it to every subscribed webhook (or ``targets``)."""
        now = self.clock()
        event_id = self._new_event_id()
        chosen: Envelope = envelope or self.envelope
        payload = self._payload(event_id, event_type, chosen, sr, recipient, extra, now)
        body = json.dumps(payload, separators=(",", ":")).encode()
        event = FakeEvent(event_id, event_type, chosen, body, now)
        self.events[event_id] = event
        if targets is None:
            targets = [w for w in self.webhooks.values() if w.wants(event_type)]
        delivery_ids = tuple(self._schedule(event, webhook) for webhook in targets)
        return FiredEvent(event_id, event_type, delivery_ids)

    def _schedule(
        self, event: FakeEvent, webhook: Webhook, redelivery_of: str | None = None
    ) -> str:
        """Start a delivery chain in the background; return its first delivery id."""
        delivery_id = _new_delivery_id()
        task = asyncio.get_running_loop().create_task(
            self._deliver(event, webhook.id, webhook.url, delivery_id, redelivery_of)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return delivery_id

    async def _deliver(
        self,
        event: FakeEvent,
        webhook_id: str,
        url: str,
        delivery_id: str,
        redelivery_of: str | None,
    ) -> None:
        attempt = 1
        while True:
            ok = await self._attempt(event, webhook_id, url, delivery_id, attempt, redelivery_of)
            webhook = self.webhooks.get(webhook_id)
            if ok or attempt > len(self.retry_delays) or webhook is None or not webhook.enabled:
                return
            await asyncio.sleep(self.retry_delays[attempt - 1] * self.time_factor)
            attempt += 1
            delivery_id = _new_delivery_id()  # X-Firma-Delivery differs between attempts

    async def _attempt(
        self,
        event: FakeEvent,
        webhook_id: str,
        url: str,
        delivery_id: str,
        attempt: int,
        redelivery_of: str | None,
    ) -> bool:
        record = DeliveryAttempt(
            delivery_id=delivery_id,
            event_id=event.id,
            event_type=event.type,
            webhook_id=webhook_id,
            url=url,
            attempt=attempt,
            time=self.clock(),
            redelivery_of=redelivery_of,
        )
        self.deliveries.append(record)
        if self._random.random() * 100 < self.drop_webhooks_percent:
            record.dropped = record.ok = record.done = True
            record.error = "dropped by the emulator"
            return True
        timestamp = int(self.clock())
        headers = {
            "Content-Type": "application/json",
            "X-Firma-Signature": signature.sign(self.secret, event.body, timestamp),
            "X-Firma-Event": event.type,
            "X-Firma-Delivery": delivery_id,
        }
        if self.old_secret is not None:
            # Rotation grace period: the previous secret signs the same body as well.
            headers["X-Firma-Signature-Old"] = signature.sign(
                self.old_secret, event.body, timestamp
            )
        try:
            if self._client is None:
                raise RuntimeError(
                    "the fake's webhook client is not running (start the app lifespan)"
                )
            async with asyncio.timeout(self.delivery_timeout):
                response = await self._client.post(url, content=event.body, headers=headers)
        except TimeoutError:
            record.error = f"no answer within {self.delivery_timeout:g} s"
        except (httpx.HTTPError, httpx.InvalidURL, RuntimeError) as exc:
            record.error = f"{type(exc).__name__}: {exc}"
        else:
            record.status = response.status_code
            record.ok = 200 <= response.status_code < 300
            if not record.ok:
                record.error = f"HTTP {response.status_code}"
        record.done = True
        webhook = self.webhooks.get(webhook_id)
        if webhook is not None:
            webhook.consecutive_failures = 0 if record.ok else webhook.consecutive_failures + 1
            if webhook.consecutive_failures >= AUTO_DISABLE_AFTER:
                webhook.enabled = False
        return record.ok

    # -- control API -------------------------------------------------------------------------

    def _control_envelope(self, body: JSONObject) -> Envelope | Response | None:
        value = body.get("envelope")
        if value is None or value in ("current", "old"):
            return cast("Envelope | None", value)
        return _validation_error({"envelope": "Expected 'current' or 'old'"})

    async def _control_target(
        self, request: Request
    ) -> tuple[SigningRequest, JSONObject, Envelope | None] | Response:
        sr = self.signing_requests.get(request.path_params["id"])
        if sr is None:
            return _not_found()
        body = await _json_object(request)
        if isinstance(body, Response):
            return body
        envelope = self._control_envelope(body)
        if isinstance(envelope, Response):
            return envelope
        if sr.status != IN_PROGRESS:
            return _error(
                409,
                f"Signing request is {sr.status}; signers can only act on an in_progress request",
                "INVALID_STATUS",
            )
        return sr, body, envelope

    def _pick_recipient(self, sr: SigningRequest, body: JSONObject) -> Recipient | Response:
        recipient_id = body.get("recipient_id")
        if recipient_id is not None:
            found = sr.recipient(str(recipient_id))
            if found is None:
                return _not_found("Recipient")
            if found.signed_at is not None:
                return _error(409, "Recipient has already signed", "ALREADY_SIGNED")
            return found
        pending = sr.unsigned()
        if not pending:
            return _error(409, "Every signer has already signed", "ALREADY_SIGNED")
        return pending[0]

    def _control_answer(self, sr: SigningRequest, fired: Sequence[FiredEvent]) -> JSONResponse:
        return JSONResponse(
            {
                "signing_request_id": sr.id,
                "status": sr.status,
                "events": [f.to_json() for f in fired],
            }
        )

    def _sign(
        self, sr: SigningRequest, recipient: Recipient, envelope: Envelope | None
    ) -> list[FiredEvent]:
        recipient.signed_at = self.clock()
        fired = [
            self.emit(
                "signing_request.recipient.signed", sr, recipient=recipient, envelope=envelope
            )
        ]
        if not sr.unsigned():
            sr.status = FINISHED
            sr.finished_at = self.clock()
            fired.append(self.emit("signing_request.completed", sr, envelope=envelope))
        return fired

    async def control_view(self, request: Request) -> Response:
        target = await self._control_target(request)
        if isinstance(target, Response):
            return target
        sr, _, envelope = target
        fired: list[FiredEvent] = []
        if not sr.viewed:  # signing_request.viewed fires on the first view only
            sr.viewed = True
            fired.append(self.emit("signing_request.viewed", sr, envelope=envelope))
        return self._control_answer(sr, fired)

    async def control_recipient_signed(self, request: Request) -> Response:
        target = await self._control_target(request)
        if isinstance(target, Response):
            return target
        sr, body, envelope = target
        recipient = self._pick_recipient(sr, body)
        if isinstance(recipient, Response):
            return recipient
        return self._control_answer(sr, self._sign(sr, recipient, envelope))

    async def control_complete(self, request: Request) -> Response:
        target = await self._control_target(request)
        if isinstance(target, Response):
            return target
        sr, _, envelope = target
        fired: list[FiredEvent] = []
        for recipient in sr.unsigned():
            fired.extend(self._sign(sr, recipient, envelope))
        if sr.status != FINISHED:  # no signer at all: finish anyway
            sr.status = FINISHED
            sr.finished_at = self.clock()
            fired.append(self.emit("signing_request.completed", sr, envelope=envelope))
        return self._control_answer(sr, fired)

    async def control_decline(self, request: Request) -> Response:
        target = await self._control_target(request)
        if isinstance(target, Response):
            return target
        sr, body, envelope = target
        recipient = self._pick_recipient(sr, body)
        if isinstance(recipient, Response):
            return recipient
        now = self.clock()
        recipient.declined_at = now
        reason = body.get("reason")
        recipient.decline_reason = reason if isinstance(reason, str) else None
        sr.status = DECLINED
        sr.declined_at = now
        # A decline stops the request; there is no request-level declined event.
        fired = self.emit(
            "signing_request.recipient.declined", sr, recipient=recipient, envelope=envelope
        )
        return self._control_answer(sr, [fired])

    async def control_expire(self, request: Request) -> Response:
        target = await self._control_target(request)
        if isinstance(target, Response):
            return target
        sr, _, envelope = target
        sr.status = EXPIRED
        sr.expired_at = self.clock()
        return self._control_answer(
            sr, [self.emit("signing_request.expired", sr, envelope=envelope)]
        )

    async def control_event(self, request: Request) -> Response:
        body = await _json_object(request)
        if isinstance(body, Response):
            return body
        event_type = body.get("type")
        if not isinstance(event_type, str) or not event_type:
            return _validation_error({"type": "An event type is required"})
        envelope = self._control_envelope(body)
        if isinstance(envelope, Response):
            return envelope
        extra = body.get("data")
        if extra is not None and not isinstance(extra, dict):
            return _validation_error({"data": "Expected an object"})
        sr: SigningRequest | None = None
        if body.get("signing_request_id") is not None:
            sr = self.signing_requests.get(str(body["signing_request_id"]))
            if sr is None:
                return _not_found()
        recipient: Recipient | None = None
        if sr is not None and body.get("recipient_id") is not None:
            recipient = sr.recipient(str(body["recipient_id"]))
            if recipient is None:
                return _not_found("Recipient")
        targets: list[Webhook] | None = None
        if body.get("webhook_id") is not None:
            webhook = self.webhooks.get(str(body["webhook_id"]))
            if webhook is None:
                return _not_found("Webhook")
            targets = [webhook]
        elif event_type == "webhook.test":
            targets = [w for w in self.webhooks.values() if w.enabled]  # tests ignore subscriptions
        fired = self.emit(
            event_type, sr, recipient=recipient, envelope=envelope, extra=extra, targets=targets
        )
        return JSONResponse(fired.to_json())

    async def control_redeliver(self, request: Request) -> Response:
        delivery_id = request.path_params["delivery_id"]
        original = next((d for d in self.deliveries if d.delivery_id == delivery_id), None)
        if original is None:
            return _not_found("Delivery")
        webhook = self.webhooks.get(original.webhook_id)
        if webhook is None:
            return _error(409, "The webhook of this delivery no longer exists", "WEBHOOK_GONE")
        # Same event (same id, same bytes), new delivery id: what a duplicate looks like.
        new_id = self._schedule(self.events[original.event_id], webhook, redelivery_of=delivery_id)
        return JSONResponse(
            {"event_id": original.event_id, "delivery_id": new_id, "redelivery_of": delivery_id}
        )

    async def control_calls(self, request: Request) -> Response:
        return JSONResponse({"calls": self.calls})

    async def control_rate_limits(self, request: Request) -> Response:
        return JSONResponse(self.rate_limiter.report())

    async def control_create(self, request: Request) -> Response:
        """A draft made as ``POST /signing-requests`` makes it, but outside the API: no key,
        no rate limit, not in the call log. For tests whose API budget is the point."""
        body = await _json_object(request)
        if isinstance(body, Response):
            return body
        body = {"name": "Seeded request", "document": base64.b64encode(_FAKE_PDF).decode(), **body}
        built = self._build_signing_request(body)
        if isinstance(built, Response):
            return built
        self.signing_requests[built.id] = built
        self.emit("signing_request.created", built)
        return JSONResponse(
            self.signing_request_json(built, _origin(request), draft=True), status_code=201
        )

    async def control_deliveries(self, request: Request) -> Response:
        wanted_event = request.query_params.get("event_id")
        wanted_type = request.query_params.get("type")
        items = [
            d.to_json()
            for d in self.deliveries
            if (wanted_event is None or d.event_id == wanted_event)
            and (wanted_type is None or d.event_type == wanted_type)
        ]
        return JSONResponse({"deliveries": items})

    async def control_events(self, request: Request) -> Response:
        return JSONResponse(
            {
                "events": [
                    {
                        "event_id": e.id,
                        "type": e.type,
                        "envelope": e.envelope,
                        "payload": json.loads(e.body),
                    }
                    for e in self.events.values()
                ]
            }
        )

    async def control_behaviour(self, request: Request) -> Response:
        """``GET``: the emulator's unreliability; ``POST {"drop_webhooks_percent": 0 to 100}``
        sets it."""
        if request.method == "POST":
            body = await _json_object(request)
            if isinstance(body, Response):
                return body
            value = body.get("drop_webhooks_percent")
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 <= value <= 100
            ):
                return _validation_error({"drop_webhooks_percent": "a number from 0 to 100"})
            self.drop_webhooks_percent = float(value)
        dropped = sum(1 for d in self.deliveries if d.dropped)
        return JSONResponse(
            {"drop_webhooks_percent": self.drop_webhooks_percent, "dropped_deliveries": dropped}
        )

    async def control_reset(self, request: Request) -> Response:
        await self.reset()
        return JSONResponse({"reset": True})

    async def control_rotate_secret(self, request: Request) -> Response:
        body = await _json_object(request)
        if isinstance(body, Response):
            return body
        new_secret = body.get("new_secret")
        if not isinstance(new_secret, str) or not new_secret:
            return _validation_error({"new_secret": "A non-empty secret is required"})
        # Deliveries now carry the new secret's signature and, until end-rotation, the old one's.
        self.old_secret = self.secret
        self.secret = new_secret
        return JSONResponse({"rotating": True})

    async def control_end_rotation(self, request: Request) -> Response:
        self.old_secret = None
        return JSONResponse({"rotating": False})

    async def control_add_failure(self, request: Request) -> Response:
        body = await _json_object(request)
        if isinstance(body, Response):
            return body
        details: Details = {}
        status = body.get("status")
        delay = body.get("delay", 0)
        count = body.get("count", 1)
        methods = body.get("methods")
        retry_after = body.get("retry_after", 1)
        if status is not None and (not _is_int(status) or not 400 <= status <= 599):
            details["status"] = "Expected an HTTP error status (400-599)"
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
            details["delay"] = "Expected a number of seconds >= 0"
        if status is None and not delay:
            details["status"] = "Give a status, a delay, or both"
        if not _is_int(count) or count < 1:
            details["count"] = "Expected an integer >= 1"
        if methods is not None and (
            not isinstance(methods, list) or not all(isinstance(m, str) for m in methods)
        ):
            details["methods"] = "Expected a list of HTTP methods"
        if not _is_int(retry_after) or retry_after < 0:
            details["retry_after"] = "Expected an integer >= 0"
        if details:
            return _validation_error(details)
        rule = FailureRule(
            count=count,
            status=status,
            delay=float(delay),
            methods=frozenset(m.upper() for m in methods) if methods is not None else None,
            retry_after=retry_after,
        )
        self.failures.append(rule)
        return JSONResponse({"failures": [r.to_json() for r in self.failures]}, status_code=201)

    async def control_clear_failures(self, request: Request) -> Response:
        self.failures.clear()
        return JSONResponse({"failures": []})

    # -- final documents ---------------------------------------------------------------------

    def final_document(self, sr: SigningRequest) -> bytes:
        """The signed PDF (with its "certificate"): generated once per request."""
        found = self.final_documents.get(sr.id)
        if found is None:
            lines = [
                f"Signed document (Firma emulator): {sr.name}",
                f"Signing request {sr.id}",
                f"Completed {_iso(sr.finished_at)}",
                *(
                    f"Signed by {r.display_name} <{r.email}> at {_iso(r.signed_at)}"
                    for r in sr.recipients
                    if r.signed_at is not None
                ),
                "Certificate of completion: this document was signed electronically.",
            ]
            found = make_pdf(lines, padding=self.final_document_padding)
            self.final_documents[sr.id] = found
        return found

    def _new_link(self, sr: SigningRequest, origin: str) -> tuple[str, float]:
        now = self.clock()
        token = secrets.token_urlsafe(24)
        expires = now + self.download_link_seconds
        if self.expire_next_links > 0:  # as if the client took longer than the link lives
            self.expire_next_links -= 1
            expires = now - 1
        self.download_links[token] = (sr.id, expires)
        return f"{origin}{STORAGE_BASE_PATH}/{token}", expires

    def _final_link(self, sr: SigningRequest, origin: str) -> str | None:
        generated_at = (
            None if sr.finished_at is None else sr.finished_at + (self.document_generation_seconds)
        )
        if generated_at is None or self.clock() < generated_at:
            return None  # "only available when … the certificate has been generated"
        return self._new_link(sr, origin)[0]

    async def download_signing_request(self, request: Request, body: Any) -> Response:
        sr = self.signing_requests.get(request.path_params["id"])
        if sr is None:
            return _not_found()
        if sr.status != FINISHED or sr.finished_at is None:
            return _error(
                409,
                "Signing request is not completed",
                "NOT_COMPLETED",
                message="The final document exists once every signer has signed",
            )
        now = self.clock()
        ready_at = sr.finished_at + self.document_generation_seconds
        if now < ready_at:
            return _error(
                503,
                "Document is being generated",
                "DOCUMENT_GENERATING",
                message="Retry after the Retry-After interval",
                headers={"Retry-After": str(max(1, math.ceil(ready_at - now)))},
            )
        link, expires = self._new_link(sr, _origin(request))
        return JSONResponse({"download_url": link, "expires_at": _iso(expires)})

    async def audit_trail(self, request: Request, body: Any) -> Response:
        sr = self.signing_requests.get(request.path_params["id"])
        if sr is None:
            return _not_found()
        entries: list[JSONObject] = [
            {"action": "created", "actor": "admin", "timestamp": _iso(sr.created_at)}
        ]
        if sr.sent_at is not None:
            entries.append({"action": "sent", "actor": "admin", "timestamp": _iso(sr.sent_at)})
        for r in sorted(sr.recipients, key=lambda r: r.signed_at or 0):
            if r.signed_at is not None:
                entries.append(
                    {
                        "action": "signed",
                        "actor": r.email,
                        "ip_address": "203.0.113.7",
                        "timestamp": _iso(r.signed_at),
                    }
                )
        if sr.finished_at is not None:
            entries.append(
                {"action": "completed", "actor": "system", "timestamp": _iso(sr.finished_at)}
            )
        return JSONResponse({"signing_request_id": sr.id, "events": entries})

    async def storage_object(self, request: Request) -> Response:
        """A pre-signed link: no API key, valid until it expires (then 400, as storage
        services answer an expired signed URL), unknown tokens 403."""
        token = request.path_params["token"]
        found = self.download_links.get(token)
        record: JSONObject = {"time": self.clock(), "request_id": found[0] if found else None}
        self.downloads.append(record)
        if found is None:
            record["status"] = 403
            return JSONResponse({"error": "Unauthorized", "message": "invalid signature"}, 403)
        request_id, expires = found
        if self.clock() > expires:
            record["status"] = 400
            return JSONResponse(
                {"statusCode": "400", "error": "InvalidJWT", "message": "exp claim failed"}, 400
            )
        sr = self.signing_requests.get(request_id)
        if sr is None:
            record["status"] = 404
            return JSONResponse({"error": "not_found", "message": "Object not found"}, 404)
        document = self.final_document(sr)
        record["status"] = 200
        delay = self.download_chunk_delay
        broken = self.break_next_downloads > 0
        if broken:
            self.break_next_downloads -= 1
            record["broken"] = True

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(document), DOWNLOAD_CHUNK_BYTES):
                if delay and start:
                    await asyncio.sleep(delay)
                if broken and start:  # the connection drops in the middle of the body
                    raise ConnectionAbortedError("the emulator cut this download short")
                yield document[start : start + DOWNLOAD_CHUNK_BYTES]

        return StreamingResponse(
            chunks(),
            media_type="application/pdf",
            headers={"content-length": str(len(document))},
        )

    async def control_expire_links(self, request: Request) -> Response:
        """Every link handed out so far expires now."""
        now = self.clock()
        for token, (request_id, _) in list(self.download_links.items()):
            self.download_links[token] = (request_id, now - 1)
        return JSONResponse({"expired": len(self.download_links)})

    async def control_downloads(self, request: Request) -> Response:
        """Set the download behaviour (``generation_seconds``, ``link_seconds``,
        ``chunk_delay``, ``padding``, ``expire_next``: the next links handed out are expired
        already, ``break_next``: the next downloads stop after their first chunk; any of
        them), and show every use of a link."""
        if request.method == "POST":
            body = await _json_object(request)
            if isinstance(body, Response):
                return body
            for key, attribute in (
                ("generation_seconds", "document_generation_seconds"),
                ("link_seconds", "download_link_seconds"),
                ("chunk_delay", "download_chunk_delay"),
                ("padding", "final_document_padding"),
                ("expire_next", "expire_next_links"),
                ("break_next", "break_next_downloads"),
            ):
                value = body.get(key)
                if value is not None:
                    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                        return _validation_error({key: "Expected a number >= 0"})
                    whole = key in ("padding", "expire_next", "break_next")
                    setattr(self, attribute, int(value) if whole else float(value))
        return JSONResponse(
            {
                "generation_seconds": self.document_generation_seconds,
                "link_seconds": self.download_link_seconds,
                "chunk_delay": self.download_chunk_delay,
                "padding": self.final_document_padding,
                "expire_next": self.expire_next_links,
                "break_next": self.break_next_downloads,
                "downloads": self.downloads,
            }
        )

    async def control_document(self, request: Request) -> Response:
        """The uploaded document; with ``?final=true``, the final signed PDF (what the
        download links serve), once the request is finished."""
        sr = self.signing_requests.get(request.path_params["id"])
        if sr is None:
            return _not_found()
        if request.query_params.get("final") == "true":
            if sr.status != FINISHED:
                return _error(409, "Signing request is not completed", "NOT_COMPLETED")
            return Response(self.final_document(sr), media_type="application/pdf")
        return Response(sr.document, media_type="application/pdf")


# ---------------------------------------------------------------------------------------------
# Module helpers that need no state


def _new_delivery_id() -> str:
    return f"dlv_{uuid.uuid4().hex}"


def _new_recipient(data: Mapping[str, Any], *, default_order: int) -> Recipient:
    return Recipient(
        id=data.get("id") or str(uuid.uuid4()),
        email=data["email"],
        first_name=data.get("first_name"),
        last_name=data.get("last_name"),
        name=data.get("name"),
        designation=data.get("designation") or "Signer",
        order=data.get("order", default_order),
    )


def _origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def _body_for_log(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return raw.decode("utf-8", errors="replace")


async def _json_object(request: Request) -> JSONObject | Response:
    """A control route's body: empty means ``{}``."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return _error(400, "Invalid JSON body", "INVALID_JSON")
    if not isinstance(body, dict):
        return _validation_error({"body": "Expected a JSON object"})
    return body


# ---------------------------------------------------------------------------------------------
# App factory and runner


def create_app(fake: FakeFirma) -> Starlette:
    """The emulator's ASGI app. Its lifespan opens and closes the webhook client."""
    api = fake.api
    api_routes = [
        Route("/signing-requests", api(fake.list_signing_requests), methods=["GET"]),
        Route("/signing-requests", api(fake.create_signing_request), methods=["POST"]),
        Route("/signing-requests/create-and-send", api(fake.create_and_send), methods=["POST"]),
        Route("/signing-requests/{id}", api(fake.get_signing_request), methods=["GET"]),
        Route("/signing-requests/{id}", api(fake.patch_signing_request), methods=["PATCH"]),
        Route("/signing-requests/{id}", api(fake.delete_signing_request), methods=["DELETE"]),
        Route("/signing-requests/{id}/send", api(fake.send_signing_request), methods=["POST"]),
        Route("/signing-requests/{id}/cancel", api(fake.cancel_signing_request), methods=["POST"]),
        Route(
            "/signing-requests/{id}/download", api(fake.download_signing_request), methods=["GET"]
        ),
        Route("/signing-requests/{id}/audit", api(fake.audit_trail), methods=["GET"]),
        Route("/webhooks", api(fake.list_webhooks), methods=["GET"]),
        Route("/webhooks", api(fake.create_webhook), methods=["POST"]),
        Route("/webhooks/{id}", api(fake.get_webhook), methods=["GET"]),
        Route("/webhooks/{id}", api(fake.update_webhook), methods=["PUT"]),
        Route("/webhooks/{id}", api(fake.delete_webhook), methods=["DELETE"]),
        Route("/webhooks/{id}/test", api(fake.test_webhook), methods=["POST"]),
    ]
    control_routes = [
        Route("/calls", fake.control_calls, methods=["GET"]),
        Route("/rate-limits", fake.control_rate_limits, methods=["GET"]),
        Route("/signing-requests", fake.control_create, methods=["POST"]),
        Route("/deliveries", fake.control_deliveries, methods=["GET"]),
        Route("/deliveries/{delivery_id}/redeliver", fake.control_redeliver, methods=["POST"]),
        Route("/events", fake.control_events, methods=["GET"]),
        Route("/events", fake.control_event, methods=["POST"]),
        Route("/reset", fake.control_reset, methods=["POST"]),
        Route("/behaviour", fake.control_behaviour, methods=["GET", "POST"]),
        Route("/rotate-secret", fake.control_rotate_secret, methods=["POST"]),
        Route("/end-rotation", fake.control_end_rotation, methods=["POST"]),
        Route("/failures", fake.control_add_failure, methods=["POST"]),
        Route("/failures", fake.control_clear_failures, methods=["DELETE"]),
        Route("/documents/{id}", fake.control_document, methods=["GET"]),
        Route("/download-links/expire", fake.control_expire_links, methods=["POST"]),
        Route("/downloads", fake.control_downloads, methods=["GET", "POST"]),
        Route("/signing-requests/{id}/view", fake.control_view, methods=["POST"]),
        Route(
            "/signing-requests/{id}/recipient-signed",
            fake.control_recipient_signed,
            methods=["POST"],
        ),
        Route("/signing-requests/{id}/complete", fake.control_complete, methods=["POST"]),
        Route("/signing-requests/{id}/decline", fake.control_decline, methods=["POST"]),
        Route("/signing-requests/{id}/expire", fake.control_expire, methods=["POST"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await fake.start()
        try:
            yield
        finally:
            await fake.aclose()

    return Starlette(
        routes=[
            Mount(API_BASE_PATH, routes=api_routes),
            Mount(CONTROL_BASE_PATH, routes=control_routes),
            Route(f"{STORAGE_BASE_PATH}/{{token}}", fake.storage_object, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def serve(
    port: int,
    host: str = "127.0.0.1",
    api_key: str = DEFAULT_API_KEY,
    secret: str = DEFAULT_SECRET,
    time_factor: float = 1.0,
    rate_window_seconds: float = 60.0,
    drop_webhooks_percent: float = 0.0,
    document_generation_seconds: float = 0.0,
    download_link_seconds: float = DOWNLOAD_LINK_SECONDS,
) -> None:
    """Run the emulator under uvicorn until interrupted (``signback fake firma --port N``).

    ``rate_window_seconds``: the window Firma's per-minute limits apply to (60 s; shorter
    only to test a client that scales its own budgets by the same factor)."""
    import uvicorn

    fake = FakeFirma(
        api_key=api_key,
        secret=secret,
        time_factor=time_factor,
        rate_limits=RateLimits(window_seconds=rate_window_seconds),
        drop_webhooks_percent=drop_webhooks_percent,
        document_generation_seconds=document_generation_seconds,
        download_link_seconds=download_link_seconds,
    )
    print(
        f"Fake Firma: API at http://{host}:{port}{API_BASE_PATH} (Authorization: {api_key}), "
        f"control at http://{host}:{port}{CONTROL_BASE_PATH}/, webhook secret {secret}",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(create_app(fake), host=host, port=port, log_level="info")
