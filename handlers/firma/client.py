"""Outbound calls to the Firma.dev API, and how to read its answers.

Deliberately thin: one HTTP request per call, no retries. The core's outbox owns retrying;
it asks :func:`is_immutable_answer` (never retry), :func:`retry_after_seconds` (how long the
provider asked us to wait) and :func:`provider_message` (what to show the operator). Answers
come back as a :class:`~receiver.outbox.provider_http.HttpAnswer`; transport errors propagate as
``httpx`` exceptions. Properties are validated *before* anything is sent
(:class:`InvalidAction`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from receiver.errors import ConfigurationError, InvalidAction
from receiver.outbox.outcomes import requested_wait
from receiver.outbox.provider_http import HttpAnswer, ProviderHttpClient

__all__ = [
    "DEFAULT_BASE_URL",
    "KNOWN_SETTINGS",
    "PROPERTIES",
    "FirmaClient",
    "is_immutable_answer",
    "provider_message",
    "retry_after_seconds",
    "validate_properties",
]

DEFAULT_BASE_URL = "https://api.firma.dev/functions/v1/signing-request-api"


_MAX_ID_LENGTH = 200
_MAX_NAME_LENGTH = 255  # documented maximum for `name`
_MAX_EXCERPT_CHARS = 300
_MAX_DETAILS_CHARS = 200
_MAX_SETTING_KEY_LENGTH = 64


# --------------------------------------------------------------------------------------------
# Property validation (PATCH /signing-requests/{id}, "properties" form)
# --------------------------------------------------------------------------------------------

KNOWN_SETTINGS: frozenset[str] = frozenset(
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
"""The documented ``settings`` keys; all of them are booleans."""

_SETTING_KEY = re.compile(r"[a-z][a-z0-9_]*")
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*")

# PATCH takes one entity type per call: properties, or a single `recipient`, or a single
# `field`. These are refused here because this call only ever sends properties.
_OTHER_ENTITIES: frozenset[str] = frozenset({"recipient", "recipients", "field", "fields"})


def _fail(name: str, problem: str) -> InvalidAction:
    return InvalidAction(f"Firma property {name!r} {problem}; the update was not sent")


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(name, f"must be a string, not {type(value).__name__}")
    return value


def _name(name: str, value: Any) -> str:
    text = _string(name, value)
    if not text.strip():
        raise _fail(name, "must not be empty")
    if len(text) > _MAX_NAME_LENGTH:
        raise _fail(name, f"is {len(text)} characters long; Firma allows {_MAX_NAME_LENGTH}")
    return text


def _optional_string(name: str, value: Any) -> str | None:
    return None if value is None else _string(name, value)  # None clears the description


def _document(name: str, value: Any) -> str:
    text = _string(name, value)
    try:
        pdf = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _fail(name, "must be standard base64 (no line breaks, no data: prefix)") from None
    if not pdf.startswith(b"%PDF-"):
        raise _fail(name, "must be a base64-encoded PDF (it does not start with %PDF-)")
    return text


def _integer(name: str, value: Any, minimum: int) -> int:
    # bool is an int in Python; `True` is not an expiration of one hour.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(name, f"must be an integer, not {type(value).__name__}")
    if value < minimum:
        raise _fail(name, f"must be at least {minimum}, not {value}")
    return value


def _expiration_hours(name: str, value: Any) -> int:
    return _integer(name, value, 1)


def _redirect_delay(name: str, value: Any) -> int:
    return _integer(name, value, 0)


def _language(name: str, value: Any) -> str:
    text = _string(name, value)
    if not _LANGUAGE.fullmatch(text):
        raise _fail(name, f"must be a language code such as 'en' or 'pt-BR', not {text!r}")
    return text


def _absolute_url(name: str, value: Any) -> str:
    text = _string(name, value)
    parts = urlsplit(text)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or any(char.isspace() or not char.isprintable() for char in text)
    ):
        raise _fail(name, f"must be an absolute http(s) URL, not {text[:100]!r}")
    return text


def _settings(name: str, value: Any) -> dict[str, bool]:
    """Documented keys must be booleans. Unknown keys are allowed when they look like a
    setting (snake_case) and are boolean too: Firma's list ends with "…" and every documented
    setting is a switch, so new switches pass through; a typo is for Firma to refuse."""
    if not isinstance(value, Mapping):
        raise _fail(name, f"must be an object, not {type(value).__name__}")
    if not value:
        raise _fail(name, "must not be empty")
    checked: dict[str, bool] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not (
            key in KNOWN_SETTINGS
            or (len(key) <= _MAX_SETTING_KEY_LENGTH and _SETTING_KEY.fullmatch(key))
        ):
            raise _fail(f"{name}.{key}", "is not a setting name")
        if not isinstance(item, bool):
            raise _fail(f"{name}.{key}", f"must be true or false, not {item!r}")
        checked[key] = item
    return checked


PROPERTIES: Mapping[str, Callable[[str, Any], Any]] = {
    "name": _name,  # ≤ 255 characters
    "description": _optional_string,  # string, or null to clear it
    "document": _document,  # base64 PDF; Firma re-extracts the page count
    "expiration_hours": _expiration_hours,  # integer ≥ 1
    "settings": _settings,
    # Newer API versions only:
    "language": _language,
    "completion_title": _string,
    "completion_message": _string,
    "completion_redirect_url": _absolute_url,
    "completion_redirect_delay": _redirect_delay,  # seconds, integer ≥ 0
}
"""The properties ``PATCH /signing-requests/{id}`` accepts → their validators."""


def validate_properties(props: Mapping[str, Any]) -> dict[str, Any]:
    """Check a properties update before it is sent; return a plain copy to send.

    Raises :class:`InvalidAction` naming the offending property. Remember that Firma only
    accepts updates before a request is sent; that is the provider's answer to give (see
    :func:`is_immutable_answer`), not something this function can know.
    """
    if not isinstance(props, Mapping):
        raise InvalidAction("Firma properties must be an object; the update was not sent")
    if not props:
        raise InvalidAction("no Firma properties to update; the update was not sent")
    checked: dict[str, Any] = {}
    for key, value in props.items():
        validator = PROPERTIES.get(key) if isinstance(key, str) else None
        if validator is not None:
            checked[key] = validator(key, value)
        elif key in _OTHER_ENTITIES:
            raise InvalidAction(
                f"Firma property {key!r} is another entity type: one PATCH updates either "
                "properties, or a single recipient, or a single field; the update was not sent"
            )
        else:
            known = ", ".join(sorted(PROPERTIES))
            raise InvalidAction(
                f"Firma property {key!r} is not one Firma documents (known: {known}); "
                "the update was not sent"
            )
    return checked


# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------


_BEARER = re.compile(r"^bearer(?:\s+|$)", re.IGNORECASE)


def _api_key(api_key: str) -> str:
    # The docs accept "Bearer <key>" too; we send the raw key, so a pasted prefix is dropped.
    key = _BEARER.sub("", api_key.strip())
    if not key:
        raise ConfigurationError("a Firma API key is required (workspace settings → API keys)")
    if not all("!" <= char <= "~" for char in key):
        # Never echo the key: this message may end up in logs.
        raise ConfigurationError("the Firma API key contains spaces or non-ASCII characters")
    return key


def _segment(signing_request_id: str) -> str:
    """One quoted path segment that cannot leave ``/signing-requests/``.

    ``quote(…, safe="")`` escapes ``/ ? # %``; dots survive it, and httpx removes ``.``/``..``
    segments, so dot-only ids are refused (Firma's ids are UUIDs).
    """
    if (
        not isinstance(signing_request_id, str)
        or not signing_request_id
        or len(signing_request_id) > _MAX_ID_LENGTH
        or not signing_request_id.strip(".")
    ):
        raise InvalidAction(
            f"{signing_request_id!r:.60} is not a Firma signing request id; nothing was sent"
        )
    return quote(signing_request_id, safe="")


class FirmaClient(ProviderHttpClient):
    """The Firma.dev signing request API, authenticated with ``Authorization: <raw key>``.

    ``base_url`` includes Firma's path (``…/functions/v1/signing-request-api``); every call
    stays under it. Redirects are not followed (Firma does not redirect, and following one
    would hand the key to someone else). It does not pace anything: Firma's limits hold for
    all processes together, so every caller takes a slot of the shared budget first
    (:mod:`handlers.firma.budgets`).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        download_hosts: Sequence[str] = (),
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"the Firma base URL must be an http(s) URL: {base_url!r}")
        super().__init__(base_url, {"Authorization": _api_key(api_key)}, timeout=timeout)
        self.download_hosts = tuple(download_hosts)

    async def patch_signing_request(
        self, signing_request_id: str, properties: Mapping[str, Any]
    ) -> HttpAnswer:
        """``PATCH /signing-requests/{id}`` with validated properties.

        Only a request that was not sent yet can be updated; otherwise Firma answers 400 or
        409, which :func:`is_immutable_answer` recognises.
        """
        body = validate_properties(properties)
        path = f"signing-requests/{_segment(signing_request_id)}"
        return await self._request("PATCH", path, json=body)

    async def get_signing_request(self, signing_request_id: str) -> HttpAnswer:
        """``GET /signing-requests/{id}``: the request with its current ``status``."""
        return await self._request("GET", f"signing-requests/{_segment(signing_request_id)}")

    async def download_link(self, signing_request_id: str) -> HttpAnswer:
        """``GET /signing-requests/{id}/download``: ``{download_url, expires_at}``, a fresh
        pre-signed link on every call; ``503`` with ``Retry-After`` while the final PDF is
        still being generated."""
        path = f"signing-requests/{_segment(signing_request_id)}/download"
        return await self._request("GET", path)

    @contextlib.asynccontextmanager
    async def stream_audit(self, signing_request_id: str) -> AsyncIterator[httpx.Response]:
        """``GET /signing-requests/{id}/audit``, streamed: the audit trail (admin and signer
        actions, chronological)."""
        async with self._stream(f"signing-requests/{_segment(signing_request_id)}/audit") as a:
            yield a

    @contextlib.asynccontextmanager
    async def stream_link(self, url: str) -> AsyncIterator[httpx.Response]:
        """A pre-signed download link, streamed: only to the API's host or one of
        ``download_hosts``, and without the API key."""
        async with self._stream_link(url, self.download_hosts) as answer:
            yield answer


# --------------------------------------------------------------------------------------------
# Reading answers
# --------------------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _json_object(response: HttpAnswer) -> Mapping[str, Any] | None:
    try:
        data: Any = json.loads(response.content) if response.content else None
    except (ValueError, RecursionError, httpx.ResponseNotRead):
        return None
    return data if isinstance(data, dict) else None


def _body_text(response: HttpAnswer) -> str:
    try:
        return response.text
    except httpx.ResponseNotRead:
        return ""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def provider_message(response: HttpAnswer) -> str:
    """Firma's own words about an answer, for the operator.

    Firma errors are ``{"error", "code", "message"?, "details"?}`` and become
    ``"<error>: <message> [<code>]"`` (plus a short ``details`` excerpt: validation errors
    name the field there). Anything else becomes the start of the body (≤ 300 characters) or,
    for an empty body, the status line.
    """
    data = _json_object(response)
    if data is not None and _text(data.get("error")):
        error = str(data["error"])
        message = _text(data.get("message"))
        code = _text(data.get("code"))
        text = error if message is None or message == error else f"{error}: {message}"
        if code is not None:
            text += f" [{code}]"
        details = data.get("details")
        if details not in (None, "", [], {}):
            shown = details if isinstance(details, str) else json.dumps(details)
            text += f" (details: {_one_line(shown)[:_MAX_DETAILS_CHARS]})"
        return _one_line(text)
    excerpt = _one_line(_body_text(response))[:_MAX_EXCERPT_CHARS]
    if excerpt:
        return excerpt
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()


# The spec's wording for "this request was sent/completed/cancelled and is read-only now".
_IMMUTABLE_PHRASES = ("already been sent", "cannot be modified")


def is_immutable_answer(response: HttpAnswer) -> bool:
    """True when Firma refused an update because the request is no longer editable.

    Quirk: the docs disagree on how. The API spec answers **400** ``{"error": "Cannot update
    signing request", "message": "Signing request has already been sent and cannot be
    modified"}``; a guide says **409** with ``"code": "ALREADY_SENT"``. Either is final: the
    update must not be retried.
    """
    if response.status_code not in (400, 409):
        return False
    data = _json_object(response)
    if data is None:
        return False
    if data.get("code") == "ALREADY_SENT":
        return True
    words = " ".join(
        text.lower() for text in (_text(data.get("error")), _text(data.get("message"))) if text
    )
    return any(phrase in words for phrase in _IMMUTABLE_PHRASES)


def retry_after_seconds(response: HttpAnswer, *, now: float) -> float | None:
    """How long Firma asked us to wait, in seconds (never negative); None when it did not say.

    ``Retry-After`` (seconds or an HTTP date) wins. Otherwise ``X-RateLimit-Reset`` (a unix
    time) minus ``now`` — but only when the limit is actually hit (429, or
    ``X-RateLimit-Remaining: 0``): Firma sends that header on *every* response, and a 500
    should not wait for the end of the rate-limit window. (The reading is the core's, shared
    by every provider: :func:`receiver.outbox.outcomes.requested_wait`.)
    """
    return requested_wait(response, now=now)
