"""One security suite for every provider's callback intake, over real HTTP on both databases.

Each provider supplies a *case*: how to make a genuine callback, and how each attack of the
shared table applies to it. Firma signs with an HMAC header (``t=…,v1=…``); OKdokument sends
no signature at all, its credential is the per-request token in the URL, so "bad signature"
is a forged token and the timestamp/secret rows do not exist for it (skipped, saying why).
Testsign, a provider that exists only in the tests (tests/providers/testsign, plugged in by
``SIGNBACK_PROVIDER_MODULES``), signs form-encoded bodies with numbered signature headers
and acknowledges in plain text.

Every row checks the status, the reason given in ``{"error": …}``, and that nothing reached
the inbox (``GET /api/inbox``); then the genuine version of the same callback is sent and
must be *accepted* — not reported as a duplicate, which proves the refused one left no trace.
Rows a provider accepts (Firma's second secret, its old-secret header) check the opposite.
"""

from __future__ import annotations

import json
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import httpx
import pytest

from handlers.firma.signature import sign
from receiver.providers.registry import MODULES_VARIABLE
from receiver.settings import Settings
from tests.conftest import ADMIN_TOKEN, test_settings
from tests.databases import PostgresTemplates, SqliteTemplate
from tests.harness import Receiver, running_receiver
from tests.providers.testsign.signature import headers_for as signed_form_headers

# --------------------------------------------------------------------------------------------
# What is sent, and what must come back


@dataclass(frozen=True)
class Attempt:
    """One HTTP request at an intake URL and the answer the receiver owes it."""

    path: str
    body: bytes | Callable[[], Iterator[bytes]]  # a callable: sent chunked, no Content-Length
    headers: Mapping[str, str | bytes] = field(default_factory=dict)
    method: str = "POST"
    status: int = 200
    reason: str = ""  # a substring of the refusal's reason (case-insensitive); "" if accepted

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Intake:
    """A running receiver with open HTTP clients (a new httpx client costs ~40 ms)."""

    receiver: Receiver
    http: httpx.Client
    admin: httpx.Client

    @property
    def url(self) -> str:
        return self.receiver.url


def client(receiver: Receiver, **headers: str) -> httpx.Client:
    # No keep-alive: on a kept-alive loopback connection every request after the first stalls
    # ~40 ms (Nagle's algorithm against delayed ACKs); a new connection per request is ~2 ms.
    return httpx.Client(
        base_url=receiver.url,
        headers=headers,
        timeout=10.0,
        transport=httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=0)),
    )


@contextmanager
def intake(make_settings: Callable[..., Settings], **overrides: Any) -> Iterator[Intake]:
    with (
        running_receiver(make_settings, **overrides) as receiver,
        client(receiver) as http,
        client(receiver, authorization=f"Bearer {ADMIN_TOKEN}") as admin,
    ):
        yield Intake(receiver, http, admin)


def send(target: Intake, attempt: Attempt) -> httpx.Response:
    content = attempt.body() if callable(attempt.body) else attempt.body
    headers = [
        (name.encode(), value if isinstance(value, bytes) else value.encode("latin-1"))
        for name, value in attempt.headers.items()
    ]
    return target.http.request(attempt.method, attempt.path, content=content, headers=headers)


def post_firma(
    target: Intake, path: str, body: bytes, headers: Mapping[str, str]
) -> httpx.Response:
    return target.http.post(path, content=body, headers=dict(headers))


def reason_of(response: httpx.Response) -> str:
    """The refusal's reason: ``{"error": …}``. The router's own 404 and 405 answers are plain
    text (signback does not turn them into JSON), so their text stands in for them."""
    if response.headers.get("content-type", "").startswith("application/json"):
        error = response.json().get("error")
        assert isinstance(error, str), response.text
        return error
    return response.text


def inbox_ids(target: Intake) -> set[int]:
    """Every stored callback (and registration) in the inbox, by id."""
    response = target.admin.get("/api/inbox", params={"limit": 1000})
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert len(items) < 1000, "the suite outgrew the page size"
    return {int(item["inbox_id"]) for item in items}


# --------------------------------------------------------------------------------------------
# The shared table of attacks


ATTACKS: tuple[str, ...] = (
    "bad_signature",  # a credential that is well-formed but not ours
    "missing_signature",  # no credential at all
    "malformed_signature",  # a credential that cannot even be parsed (a table of variants)
    "stale_timestamp",  # signed, but longer ago than the tolerance (a replay)
    "future_timestamp",  # signed with a timestamp beyond the tolerance ahead
    "rotated_secret",  # our side rotates: a delivery signed with our *other* secret
    "old_secret_header",  # their side rotates: only the old-secret header is verifiable
    "oversized_body",  # more bytes than SIGNBACK_MAX_BODY_BYTES
    "wrong_content_type",
    "missing_content_type",
    "wrong_method",
    "foreign_body",  # a genuine credential, but the body speaks of another request/document
)

OKDOKUMENT_HAS_NO_SIGNATURE = (
    "OKdokument callbacks carry no signature or timestamp: the URL token is the credential"
)

JSON = "application/json"


class Case(ABC):
    """How one provider's intake is called, and how each attack of :data:`ATTACKS` applies.

    ``variants`` lists the sub-cases of an attack (e.g. each malformed header); ``skipped``
    names the attacks that cannot apply to this provider, with the structural reason.
    """

    name: ClassVar[str]
    skipped: ClassVar[Mapping[str, str]] = {}
    variants: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    limit: ClassVar[int] = 1024 * 1024  # the default SIGNBACK_MAX_BODY_BYTES

    def __init__(self, target: Intake) -> None:
        self.target = target

    @abstractmethod
    def genuine(self) -> Attempt:
        """A callback the receiver must accept. Each call makes a new one."""

    @abstractmethod
    def attack(self, attack: str, variant: str) -> tuple[Attempt, Attempt]:
        """The attack, and the genuine callback it was made from (sent afterwards)."""

    def assert_accepted(self, response: httpx.Response) -> None:
        """The provider's acknowledgement of a new callback (JSON unless it demands other)."""
        assert response.json() == {"status": "accepted"}


# --------------------------------------------------------------------------------------------
# Firma.dev: HMAC-SHA256 over "{t}.{raw body}", X-Firma-Signature and X-Firma-Signature-Old


FIRMA_SECRET = "a" * 32 + "firma-current-secret"
FIRMA_SECOND_SECRET = "b" * 32 + "firma-previous-secret"  # still configured: rotation
UNKNOWN_SECRET = "c" * 32 + "not-a-secret-of-ours"
FIRMA_TOLERANCE = 300  # the default SIGNBACK_FIRMA_SIGNATURE_TOLERANCE_SECONDS
WS_LEGAL_SECRETS = ["d" * 32 + "legal-new", "e" * 32 + "legal-old"]
WS_SALES_SECRET = "f" * 32 + "sales"


def firma_event(*, size: int = 0, event_id: str | None = None) -> bytes:
    """A current-envelope event as Firma documents it; ``size`` pads it with whitespace."""
    body = json.dumps(
        {
            "id": event_id or f"evt_{int(time.time())}_{uuid.uuid4().hex[:9]}",
            "type": "signing_request.completed",
            "created_at": "2025-10-03T14:30:00Z",
            "company_id": "comp_123",
            "workspace_id": "ws_456",
            "data": {
                "signing_request": {"id": f"sr_{uuid.uuid4().hex[:8]}", "workspace_id": "ws_456"},
                "recipients": [{"id": "rec_abc", "email": "alice@example.com"}],
                "workspace": {"id": "ws_456", "name": "Legal"},
            },
        }
    ).encode()
    return body + b" " * max(0, size - len(body))


def firma_headers(
    body: bytes, secret: str = FIRMA_SECRET, *, at: int | None = None
) -> dict[str, str]:
    return {
        "content-type": JSON,
        "x-firma-signature": sign(secret, body, int(time.time()) if at is None else at),
        "x-firma-event": "signing_request.completed",
        "x-firma-delivery": f"dlv_{uuid.uuid4().hex}",
    }


# Header value (given now, and the genuine v1 digest for a timestamp) → the refusal's reason.
Malformed = Callable[[int, Callable[[int], str]], str | bytes]
FIRMA_MALFORMED: Mapping[str, tuple[Malformed, str]] = {
    "empty": (lambda now, v1: "", "malformed"),
    "garbage": (lambda now, v1: "garbage", "malformed"),
    "no_t": (lambda now, v1: f"v1={v1(now)}", "no timestamp"),
    "no_v1": (lambda now, v1: f"t={now}", "no v1 signature"),
    "only_other_scheme": (lambda now, v1: f"t={now},v0={v1(now)}", "no v1 signature"),
    "uppercase_keys": (lambda now, v1: f"T={now},V1={v1(now)}", "no timestamp"),
    "semicolons": (lambda now, v1: f"t={now};v1={v1(now)}", "not a unix time"),
    "v1_not_hex": (lambda now, v1: f"t={now},v1={'z' * 64}", "64-character hex"),
    "v1_too_short": (lambda now, v1: f"t={now},v1={v1(now)[:-1]}", "64-character hex"),
    "v1_too_long": (lambda now, v1: f"t={now},v1={v1(now)}0", "64-character hex"),
    "v1_base64": (lambda now, v1: f"t={now},v1=" + "q" * 43 + "=", "64-character hex"),
    "v1_empty": (lambda now, v1: f"t={now},v1=", "64-character hex"),
    "t_not_a_number": (lambda now, v1: f"t=yesterday,v1={v1(now)}", "not a unix time"),
    "t_negative": (lambda now, v1: f"t=-{now},v1={v1(now)}", "not a unix time"),
    "t_fraction": (lambda now, v1: f"t={now}.5,v1={v1(now)}", "not a unix time"),
    "t_forty_digits": (lambda now, v1: f"t={'9' * 40},v1={v1(now)}", "not a unix time"),
    "t_non_ascii_digit": (lambda now, v1: f"t=\u00b2{now},v1={v1(now)}".encode("latin-1"), "unix"),
    "huge_header": (lambda now, v1: f"t={now},v1={v1(now)}," + "x=" + "y" * 8000, "too long"),
    "many_v1_values": (lambda now, v1: f"t={now}" + f",v1={'0' * 64}" * 200, "too long"),
    # Duplicate keys cannot stretch a captured (stale) signature past the tolerance: a header
    # with two timestamps is refused as malformed, whichever order they come in.
    "duplicate_t_fresh_last": (
        lambda now, v1: f"t={now - 3600},v1={v1(now - 3600)},t={now}",
        "more than one timestamp",
    ),
    "duplicate_t_stale_last": (
        lambda now, v1: f"t={now},t={now - 3600},v1={v1(now - 3600)}",
        "more than one timestamp",
    ),
}


class FirmaCase(Case):
    name = "firma"
    skipped: ClassVar[Mapping[str, str]] = {
        "foreign_body": "a Firma signature covers the whole body and belongs to the account,"
        " not to one request: there is no per-request credential for a body to disagree with",
    }
    variants: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "malformed_signature": tuple(FIRMA_MALFORMED),
        "bad_signature": ("unknown_secret", "other_body", "other_timestamp", "flipped_digit"),
        "oversized_body": ("content_length", "chunked"),
        "wrong_content_type": ("text/plain", "application/x-www-form-urlencoded", "text/json"),
        "wrong_method": ("GET", "PUT", "DELETE"),
    }
    path = "/hooks/firma"

    def genuine(self) -> Attempt:
        body = firma_event()
        return Attempt(self.path, body, firma_headers(body))

    def attack(self, attack: str, variant: str) -> tuple[Attempt, Attempt]:
        now = int(time.time())
        body = firma_event()
        genuine = Attempt(self.path, body, firma_headers(body))

        def make(headers: Mapping[str, str | bytes], *, reason: str, status: int = 401) -> Attempt:
            return Attempt(self.path, body, headers, status=status, reason=reason)

        base = {k: v for k, v in firma_headers(body).items() if k != "x-firma-signature"}
        if attack == "bad_signature":
            header = {
                "unknown_secret": sign(UNKNOWN_SECRET, body, now),
                "other_body": sign(FIRMA_SECRET, body + b" ", now),
                "other_timestamp": f"t={now},v1={sign(FIRMA_SECRET, body, now - 1)[-64:]}",
                "flipped_digit": flip_last_hex(sign(FIRMA_SECRET, body, now)),
            }[variant]
            return make({**base, "x-firma-signature": header}, reason="does not match"), genuine
        if attack == "missing_signature":
            return make(base, reason="missing X-Firma-Signature header"), genuine
        if attack == "malformed_signature":
            build, reason = FIRMA_MALFORMED[variant]

            def v1(at: int) -> str:
                return sign(FIRMA_SECRET, body, at).rsplit("v1=", 1)[1]

            return make({**base, "x-firma-signature": build(now, v1)}, reason=reason), genuine
        if attack == "stale_timestamp":
            stale = now - FIRMA_TOLERANCE - 60
            return make(firma_headers(body, at=stale), reason="too old"), genuine
        if attack == "future_timestamp":
            ahead = now + FIRMA_TOLERANCE + 60
            return make(firma_headers(body, at=ahead), reason="in the future"), genuine
        if attack == "rotated_secret":
            # Both of our secrets verify; a third does not (that is bad_signature).
            accepted = Attempt(self.path, body, firma_headers(body, FIRMA_SECOND_SECRET))
            return accepted, self.genuine()
        if attack == "old_secret_header":
            # Firma rotates: the current header is made with a secret we do not know yet,
            # the old header with the one we hold. Falling back to the old header must work.
            headers = {
                **base,
                "x-firma-signature": sign(UNKNOWN_SECRET, body, now),
                "x-firma-signature-old": sign(FIRMA_SECRET, body, now),
            }
            return Attempt(self.path, body, headers), self.genuine()
        if attack == "oversized_body":
            big = firma_event(size=self.limit + 1)
            headers = firma_headers(big)  # correctly signed: the size alone is the problem
            if variant == "chunked":
                return Attempt(
                    self.path, chunks_of(big), headers, status=413, reason="larger than"
                ), genuine
            return Attempt(self.path, big, headers, status=413, reason="larger than"), genuine
        if attack == "wrong_content_type":
            headers = {**firma_headers(body), "content-type": variant}
            return make(headers, status=415, reason="content type must be application/json"), (
                genuine
            )
        if attack == "missing_content_type":
            headers = {k: v for k, v in firma_headers(body).items() if k != "content-type"}
            return make(headers, status=415, reason="not 'missing'"), genuine
        if attack == "wrong_method":
            return Attempt(
                self.path,
                body,
                firma_headers(body),
                method=variant,
                status=405,
                reason="method not allowed",
            ), genuine
        raise AssertionError(f"no such attack: {attack}")


def flip_last_hex(header: str) -> str:
    last = header[-1]
    return header[:-1] + ("0" if last != "0" else "1")


def chunks_of(body: bytes, size: int = 65536) -> Callable[[], Iterator[bytes]]:
    def generate() -> Iterator[bytes]:
        for start in range(0, len(body), size):
            yield body[start : start + size]

    return generate


# --------------------------------------------------------------------------------------------
# OKdokument: POST /hooks/okdokument/{token}, the token (256 bits) is the credential


class OkdokumentCase(Case):
    name = "okdokument"
    skipped: ClassVar[Mapping[str, str]] = {
        "stale_timestamp": OKDOKUMENT_HAS_NO_SIGNATURE,
        "future_timestamp": OKDOKUMENT_HAS_NO_SIGNATURE,
        "rotated_secret": OKDOKUMENT_HAS_NO_SIGNATURE,
        "old_secret_header": OKDOKUMENT_HAS_NO_SIGNATURE,
    }
    variants: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "bad_signature": (
            "forged_token",
            "other_requests_token",
            "token_case_changed",
            # What the signer's browser holds (/return/<token>) opens no intake route.
            "return_token",
            "other_requests_return_token",
        ),
        "missing_signature": ("no_token", "short_token", "one_character"),
        "malformed_signature": (
            "42_characters",
            "44_characters",
            "not_url_safe_base64",
            "base64_padding",
            "non_ascii",
            "huge",
        ),
        "oversized_body": ("content_length", "chunked"),
        "wrong_content_type": ("text/plain", "application/x-www-form-urlencoded", "text/html"),
        "wrong_method": ("GET", "PUT", "DELETE"),
        "foreign_body": ("other_document", "document_not_text"),
    }

    def __init__(self, target: Intake) -> None:
        super().__init__(target)
        self.sr_id = f"sr-{uuid.uuid4().hex[:8]}"
        urls = self.register(self.sr_id)
        self.path = urls["sendinfo_url"].removeprefix(target.url)
        self.token = self.path.rsplit("/", 1)[1]
        self.return_token = urls["return_url"].rsplit("/", 1)[1]

    def register(self, sr_id: str) -> dict[str, str]:
        """Register a request; its callback URLs."""
        response = self.target.admin.post(
            "/api/requests",
            json={"provider": "okdokument", "signatureRequestId": sr_id, "documentId": "doc-1"},
        )
        assert response.status_code == 201, response.text
        urls: dict[str, str] = response.json()["callback_urls"]
        return urls

    def other_token(self, url: str = "sendinfo_url") -> str:
        """The genuine token of another registered request."""
        return self.register(self.sr_id + "-other")[url].rsplit("/", 1)[1]

    def body(self, state: str = "signed") -> bytes:
        return json.dumps(
            {"state": state, "id": "doc-1", "signatureRequestId": self.sr_id, "n": uuid.uuid4().hex}
        ).encode()

    def genuine(self) -> Attempt:
        return Attempt(self.path, self.body(), {"content-type": JSON})

    def at(self, token: str) -> str:
        return f"/hooks/okdokument/{token}"

    def attack(self, attack: str, variant: str) -> tuple[Attempt, Attempt]:
        body = self.body()
        genuine = Attempt(self.path, body, {"content-type": JSON})
        json_headers = {"content-type": JSON}
        if attack == "foreign_body":
            # The request's own sendInfo URL, but a body naming another document: refused, so
            # the body cannot choose what Document info is asked about.
            other, status, reason = {
                "other_document": ("doc-of-someone-else", 409, "not the document registered"),
                "document_not_text": (1, 400, "must be a string"),
            }[variant]
            forged = json.loads(body)
            forged["id"] = other
            return Attempt(
                self.path, json.dumps(forged).encode(), json_headers, status=status, reason=reason
            ), genuine
        if attack in ("bad_signature", "missing_signature", "malformed_signature"):
            if variant == "other_requests_token":
                return Attempt(
                    self.at(self.other_token()),
                    body,
                    json_headers,
                    status=409,
                    reason="does not belong to this callback URL",
                ), genuine
            token = {
                # The right shape, but no request has it.
                "forged_token": self.token[:-4] + ("AAAA" if self.token[-4:] != "AAAA" else "BBBB"),
                "token_case_changed": self.token.swapcase(),
                "return_token": self.return_token,
                "other_requests_return_token": self.other_token("return_url"),
                "no_token": "",
                "short_token": "short",
                "one_character": "x",
                "42_characters": self.token[:-1],
                "44_characters": self.token + "A",
                "not_url_safe_base64": self.token[:-1] + "+",
                "base64_padding": self.token + "=",
                "non_ascii": self.token[:-1] + "\u00e9",
                "huge": "A" * 5000,
            }[variant]
            # Without any token the path matches no route: the router's own 404 answers.
            reason = "not found" if not token else "unknown callback URL"
            return Attempt(self.at(token), body, json_headers, status=404, reason=reason), genuine
        if attack == "oversized_body":
            big = body + b" " * (self.limit + 1 - len(body))
            content: bytes | Callable[[], Iterator[bytes]] = (
                chunks_of(big) if variant == "chunked" else big
            )
            return Attempt(
                self.path, content, json_headers, status=413, reason="larger than"
            ), genuine
        if attack == "wrong_content_type":
            return Attempt(
                self.path,
                body,
                {"content-type": variant},
                status=415,
                reason="content type must be application/json",
            ), genuine
        if attack == "missing_content_type":
            # OKdokument documents no content type; the body must still be a JSON object.
            return Attempt(self.path, body, {}), self.genuine()
        if attack == "wrong_method":
            return Attempt(
                self.path, body, json_headers, method=variant, status=405, reason="not allowed"
            ), genuine
        raise AssertionError(f"{attack} does not apply to OKdokument")


# --------------------------------------------------------------------------------------------
# Testsign (tests/providers/testsign): form-encoded, X-Testsign-Signature-<n> per secret over
# "<X-Testsign-Timestamp>.<body>", acknowledged with the plain text Testsign demands


TESTSIGN_SECRET = "g" * 32 + "testsign-current"
TESTSIGN_SECOND_SECRET = "h" * 32 + "testsign-previous"  # ours too: rotation on our side
FORM = "application/x-www-form-urlencoded"
TESTSIGN_ACK = "Hello API Event Received"


class TestsignCase(Case):
    __test__ = False
    name = "testsign"
    skipped: ClassVar[Mapping[str, str]] = {
        "foreign_body": "a Testsign signature covers the whole body and belongs to the account,"
        " not to one request: there is no per-request credential for a body to disagree with",
    }
    variants: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "bad_signature": ("unknown_secret", "other_body", "other_timestamp"),
        "malformed_signature": ("not_hex", "upper_case", "too_short", "empty", "no_timestamp"),
        "oversized_body": ("content_length", "chunked"),
        "wrong_content_type": ("application/json", "text/plain", "multipart/form-data"),
        "wrong_method": ("GET", "PUT"),
    }
    path = "/hooks/testsign"

    @staticmethod
    def body(size: int = 0) -> bytes:
        fields = f"event_id=evt-{uuid.uuid4().hex}&envelope_id=env-{uuid.uuid4().hex[:8]}"
        body = f"{fields}&status=completed&occurred_at={int(time.time())}".encode()
        return body + b"&pad=" + b"x" * max(0, size - len(body) - 5) if size else body

    @staticmethod
    def headers(body: bytes, *secrets: str, at: int | None = None) -> dict[str, str]:
        stamp = int(time.time()) if at is None else at
        return {
            "content-type": FORM,
            **signed_form_headers(body, secrets or (TESTSIGN_SECRET,), stamp),
        }

    def genuine(self) -> Attempt:
        body = self.body()
        return Attempt(self.path, body, self.headers(body))

    def assert_accepted(self, response: httpx.Response) -> None:
        assert response.text == TESTSIGN_ACK
        assert response.headers["content-type"].startswith("text/plain")

    def attack(self, attack: str, variant: str) -> tuple[Attempt, Attempt]:
        body = self.body()
        now = int(time.time())
        genuine = Attempt(self.path, body, self.headers(body))

        def refused(headers: Mapping[str, str], reason: str, status: int = 401) -> Attempt:
            return Attempt(self.path, body, headers, status=status, reason=reason)

        if attack == "bad_signature":
            headers = {
                "unknown_secret": self.headers(body, UNKNOWN_SECRET),
                "other_body": {**self.headers(body + b"&x=1"), "content-type": FORM},
                "other_timestamp": {
                    **self.headers(body, at=now - 1),
                    "X-Testsign-Timestamp": str(now),
                },
            }[variant]
            return refused(headers, "does not match"), genuine
        if attack == "missing_signature":
            headers = {"content-type": FORM, "X-Testsign-Timestamp": str(now)}
            return refused(headers, "missing X-Testsign-Signature-1"), genuine
        if attack == "malformed_signature":
            digest = self.headers(body)["X-Testsign-Signature-1"]
            header, reason = {
                "not_hex": ("z" * 64, "hex digest"),
                "upper_case": (digest.upper(), "hex digest"),
                "too_short": (digest[:-1], "hex digest"),
                "empty": ("", "hex digest"),
                "no_timestamp": (digest, "not a unix time"),
            }[variant]
            headers = {**self.headers(body), "X-Testsign-Signature-1": header}
            if variant == "no_timestamp":
                headers.pop("X-Testsign-Timestamp")
            return refused(headers, reason), genuine
        if attack == "stale_timestamp":
            return refused(self.headers(body, at=now - 360), "too old"), genuine
        if attack == "future_timestamp":
            return refused(self.headers(body, at=now + 360), "in the future"), genuine
        if attack == "rotated_secret":
            accepted = Attempt(self.path, body, self.headers(body, TESTSIGN_SECOND_SECRET))
            return accepted, self.genuine()
        if attack == "old_secret_header":
            # The sender rotates: -1 made with a secret we do not hold yet, -2 with ours.
            headers = self.headers(body, UNKNOWN_SECRET, TESTSIGN_SECRET)
            return Attempt(self.path, body, headers), self.genuine()
        if attack == "oversized_body":
            big = self.body(size=self.limit + 1)
            content: bytes | Callable[[], Iterator[bytes]] = (
                chunks_of(big) if variant == "chunked" else big
            )
            return Attempt(
                self.path, content, self.headers(big), status=413, reason="larger than"
            ), genuine
        if attack == "wrong_content_type":
            headers = {**self.headers(body), "content-type": variant}
            return refused(headers, f"must be {FORM}", 415), genuine
        if attack == "missing_content_type":
            headers = {k: v for k, v in self.headers(body).items() if k != "content-type"}
            return refused(headers, "not 'missing'", 415), genuine
        if attack == "wrong_method":
            return Attempt(
                self.path, body, self.headers(body), method=variant, status=405, reason="allowed"
            ), genuine
        raise AssertionError(f"no such attack: {attack}")


# --------------------------------------------------------------------------------------------
# The suite


CASES: tuple[type[Case], ...] = (FirmaCase, OkdokumentCase, TestsignCase)


def suite_params() -> list[Any]:
    params: list[Any] = []
    for case in CASES:
        for attack in ATTACKS:
            if attack in case.skipped:
                params.append(
                    pytest.param(
                        case,
                        attack,
                        "",
                        id=f"{case.name}-{attack}",
                        marks=pytest.mark.skip(reason=case.skipped[attack]),
                    )
                )
                continue
            for variant in case.variants.get(attack, ("",)):
                suffix = f"-{variant}" if variant else ""
                params.append(
                    pytest.param(case, attack, variant, id=f"{case.name}-{attack}{suffix}")
                )
    return params


# Everything the table needs, in one receiver: both of our Firma secrets (our side's
# rotation), two workspaces with their own secrets, and OKdokument pointed nowhere (the
# registration's attach PATCH fails in the background, which is irrelevant here).
SUITE_SETTINGS: Mapping[str, Any] = {
    "firma_webhook_secrets": [FIRMA_SECRET, FIRMA_SECOND_SECRET],
    "firma_workspace_secrets": {"ws_legal": WS_LEGAL_SECRETS, "ws_sales": [WS_SALES_SECRET]},
    "okdokument_base_url": "http://127.0.0.1:9",
    "outbox_max_attempts": 1,  # … and is not retried
    "testsign_secrets": [TESTSIGN_SECRET, TESTSIGN_SECOND_SECRET],
}
TESTSIGN_MODULE = "tests.providers.testsign"


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def shared(
    request: pytest.FixtureRequest,
    sqlite_template: SqliteTemplate,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Intake]:
    """One receiver per database (each on a fresh database) for the table-driven tests.

    Starting a receiver per row would spend most of the suite's time starting and stopping
    servers. Rows cannot see each other's traces: each compares the inbox right before and
    right after its own request, and each uses fresh event ids, bodies and requests.
    """
    # Testsign is found the way an in-house provider would be: by the environment variable.
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv(MODULES_VARIABLE, TESTSIGN_MODULE)
        if request.param == "sqlite":
            url = sqlite_template.fresh(tmp_path_factory.mktemp("security"))
            with intake(partial(test_settings, url), **SUITE_SETTINGS) as running:
                yield running
            return
        templates: PostgresTemplates = request.getfixturevalue("postgres_templates")
        url = templates.fresh()
        try:
            with intake(partial(test_settings, url), **SUITE_SETTINGS) as running:
                yield running
        finally:
            templates.drop(url)


@pytest.mark.parametrize(("case_type", "attack", "variant"), suite_params())
def test_intake_security(shared: Intake, case_type: type[Case], attack: str, variant: str) -> None:
    case = case_type(shared)
    attempt, genuine = case.attack(attack, variant)
    before = inbox_ids(shared)
    response = send(shared, attempt)
    assert response.status_code == attempt.status, response.text
    after = inbox_ids(shared)
    if attempt.accepted:
        case.assert_accepted(response)
        assert len(after - before) == 1, "an accepted callback is stored exactly once"
    else:
        assert attempt.reason.lower() in reason_of(response).lower(), response.text
        assert after == before, "a refused callback must leave nothing in the inbox"
    # The genuine callback (for a refusal: the very same one, properly sent) is accepted as
    # new: the refused attempt did not even occupy its deduplication key.
    answer = send(shared, genuine)
    assert answer.status_code == 200, answer.text
    case.assert_accepted(answer)
    assert len(inbox_ids(shared) - after) == 1, "stored as new, not taken for a duplicate"


# --------------------------------------------------------------------------------------------
# Firma only: configuration-dependent answers


def test_firma_without_a_secret_fails_closed(make_settings: Callable[..., Settings]) -> None:
    with intake(make_settings, firma_webhook_secrets=[]) as target:
        body = firma_event()
        for headers in (firma_headers(body), {"content-type": JSON}):
            response = post_firma(target, "/hooks/firma", body, headers)
            assert response.status_code == 401, response.text
            assert "no Firma signing secret is configured" in response.json()["error"]
        assert inbox_ids(target) == set()


def test_firma_insecure_dev_setting_accepts_unsigned(
    make_settings: Callable[..., Settings],
) -> None:
    with intake(
        make_settings, firma_webhook_secrets=[], firma_insecure_skip_verification=True
    ) as target:
        body = firma_event()
        response = post_firma(target, "/hooks/firma", body, {"content-type": JSON})
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "accepted"}
        assert len(inbox_ids(target)) == 1
        # Still no 500 and no storing for what is not a Firma event at all.
        bad = post_firma(target, "/hooks/firma", b'{"type":"x"}', {"content-type": JSON})
        assert bad.status_code == 400
        assert "no id" in bad.json()["error"]
        assert len(inbox_ids(target)) == 1


def test_firma_insecure_setting_does_not_switch_off_configured_secrets(
    make_settings: Callable[..., Settings],
) -> None:
    with intake(
        make_settings, firma_webhook_secrets=[FIRMA_SECRET], firma_insecure_skip_verification=True
    ) as target:
        response = post_firma(target, "/hooks/firma", firma_event(), {"content-type": JSON})
        assert response.status_code == 401
        assert "missing X-Firma-Signature" in response.json()["error"]
        assert inbox_ids(target) == set()


@pytest.mark.parametrize(
    ("path", "secret", "status", "reason"),
    [
        ("/hooks/firma/ws_legal", WS_LEGAL_SECRETS[0], 200, ""),
        ("/hooks/firma/ws_legal", WS_LEGAL_SECRETS[1], 200, ""),  # the workspace rotates too
        ("/hooks/firma/ws_sales", WS_SALES_SECRET, 200, ""),
        ("/hooks/firma", FIRMA_SECRET, 200, ""),
        # Secrets never cross: each URL verifies with its own set only.
        ("/hooks/firma/ws_legal", WS_SALES_SECRET, 401, "does not match"),
        ("/hooks/firma/ws_legal", FIRMA_SECRET, 401, "does not match"),
        ("/hooks/firma", WS_LEGAL_SECRETS[0], 401, "does not match"),
        ("/hooks/firma/ws_unknown", FIRMA_SECRET, 404, "no secrets configured for workspace"),
        ("/hooks/firma/ws_unknown", WS_LEGAL_SECRETS[0], 404, "'ws_unknown'"),
    ],
)
def test_firma_workspace_urls_have_their_own_secrets(
    shared: Intake, path: str, secret: str, status: int, reason: str
) -> None:
    body = firma_event()
    before = inbox_ids(shared)
    response = post_firma(shared, path, body, firma_headers(body, secret))
    assert response.status_code == status, response.text
    after = inbox_ids(shared)
    if status == 200:
        assert response.json() == {"status": "accepted"}
        assert len(after - before) == 1
    else:
        assert reason in response.json()["error"]
        assert after == before


def test_firma_workspace_route_checks_everything_the_company_route_does(
    shared: Intake,
) -> None:
    path = "/hooks/firma/ws_legal"
    body = firma_event()
    secret = WS_LEGAL_SECRETS[0]
    now = int(time.time())
    refused = [
        ({"content-type": JSON}, 401, "missing X-Firma-Signature"),
        ({**firma_headers(body, secret), "x-firma-signature": "t=1"}, 401, "no v1"),
        (firma_headers(body, secret, at=now - 3600), 401, "too old"),
        (firma_headers(body, secret, at=now + 3600), 401, "in the future"),
        ({**firma_headers(body, secret), "content-type": "text/plain"}, 415, "application/json"),
    ]
    before = inbox_ids(shared)
    for headers, status, reason in refused:
        response = post_firma(shared, path, body, headers)
        assert response.status_code == status, (headers, response.text)
        assert reason in response.json()["error"]
    assert inbox_ids(shared) == before
    assert shared.http.get(path).status_code == 405
    assert post_firma(shared, path, body, firma_headers(body, secret)).json() == {
        "status": "accepted"
    }


def test_firma_timestamps_inside_the_tolerance_are_accepted(
    make_settings: Callable[..., Settings],
) -> None:
    with intake(
        make_settings, firma_webhook_secrets=[FIRMA_SECRET], firma_signature_tolerance_seconds=60
    ) as target:
        now = int(time.time())
        for offset, status in ((-45, 200), (45, 200), (-120, 401), (120, 401)):
            body = firma_event()
            response = post_firma(
                target, "/hooks/firma", body, firma_headers(body, at=now + offset)
            )
            assert response.status_code == status, (offset, response.text)


def test_firma_secrets_and_signatures_never_reach_the_log(
    make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    with intake(make_settings, firma_webhook_secrets=[FIRMA_SECRET]) as target:
        body = firma_event()
        headers = firma_headers(body)
        digest = headers["x-firma-signature"].rsplit("v1=", 1)[1]
        assert post_firma(target, "/hooks/firma", body, headers).status_code == 200
        forged = {**headers, "x-firma-signature": sign(UNKNOWN_SECRET, body, int(time.time()))}
        forged_digest = forged["x-firma-signature"].rsplit("v1=", 1)[1]
        assert post_firma(target, "/hooks/firma", body, forged).status_code == 401
    out, err = capsys.readouterr()
    assert "callback refused" in out + err  # the refusal itself is logged …
    for secret in (digest, forged_digest, FIRMA_SECRET):
        assert secret not in out + err  # … without the signature or the secret
