"""Short-lived signed download links: ``/archive/<request id>/<name>?expires=…&sig=…``.

The business application (or whoever it hands the link to) can follow one without the
admin token until it expires. The signature is ``HMAC-SHA256(key, "<request id>/<name>/
<expires>")``, compared in constant time; the key is SIGNBACK_ARCHIVE_LINK_SECRET, or, when
that is unset, derived from SIGNBACK_SECRET_KEY with a label of its own (so the callback
tokens and the links never share a key, and rotating the secret key voids the links too).
A link names one file of one request and when it stops working; nothing else opens it.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import quote

from receiver.settings import Settings

_DERIVATION_LABEL = b"signback archive download links v1"
# Upper bound of an ``expires`` we accept (year 2100): beyond it the number is no time.
_LATEST = 4_102_444_800


def link_key(settings: Settings) -> bytes:
    if settings.archive_link_secret is not None:
        return settings.archive_link_secret.get_secret_value().encode()
    secret = settings.secret_key.get_secret_value().encode()
    return hmac.new(secret, _DERIVATION_LABEL, hashlib.sha256).digest()


def signature(key: bytes, request_id: int, name: str, expires: int) -> str:
    message = f"{request_id}/{name}/{expires}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def link_path(key: bytes, request_id: int, name: str, expires: int) -> str:
    sig = signature(key, request_id, name, expires)
    return f"/archive/{request_id}/{quote(name, safe='')}?expires={expires}&sig={sig}"


def link_url(settings: Settings, request_id: int, name: str, *, now: float) -> tuple[str, int]:
    """The link and when it expires (unix seconds)."""
    expires = int(now) + settings.archive_link_ttl_seconds
    path = link_path(link_key(settings), request_id, name, expires)
    return settings.public_url.rstrip("/") + path, expires


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int  # 403: not a link we made; 410: one we made, expired
    reason: str


def check(
    key: bytes, request_id: int, name: str, expires: str | None, sig: str | None, *, now: float
) -> Refusal | None:
    """None if the link is genuine and current; otherwise why not (never which part of the
    signature was wrong)."""
    if not expires or not sig:
        return Refusal(403, "a download link needs its expires and sig parameters")
    if not (expires.isascii() and expires.isdigit() and len(expires) <= 12):
        return Refusal(403, "expires must be unix seconds")
    moment = int(expires)
    if moment > _LATEST:
        return Refusal(403, "expires must be unix seconds")
    expected = signature(key, request_id, name, moment)
    if not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "replace")):
        return Refusal(403, "the link's signature is not valid")
    if moment < now:
        return Refusal(410, "the link has expired; ask signback's API for a fresh one")
    return None
