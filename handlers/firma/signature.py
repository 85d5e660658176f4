"""Firma.dev webhook signatures: ``X-Firma-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>``.

The signed string is ``"{t}.{raw body}"``; the key is the signing secret's UTF-8 bytes (a
64-char hex string, or ``whsec_…`` in old examples: used as-is either way). During a secret
rotation Firma also sends ``X-Firma-Signature-Old`` made with the previous secret, and we may
hold several secrets of our own (rotation on our side), so every header is tried against
every secret. Every malformed header becomes one :class:`SignatureInvalid` with a reason,
never a ValueError escaping as a 500.
"""

from __future__ import annotations

import functools
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from receiver.errors import SignatureInvalid

SIGNATURE_HEADER = "x-firma-signature"
OLD_SIGNATURE_HEADER = "x-firma-signature-old"
DEFAULT_TOLERANCE_SECONDS = 300.0
_MAX_HEADER_LENGTH = 2048  # a real header is ~80 chars; refuse to parse megabytes
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")


@functools.lru_cache(maxsize=64)
def _keyed(secret: str) -> hmac.HMAC:
    """An HMAC-SHA256 already keyed with ``secret``, to be copied for each message."""
    return hmac.new(secret.encode("utf-8"), digestmod="sha256")


def compute(secret: str, body: bytes, timestamp: int) -> str:
    """The hex HMAC-SHA256 Firma puts in ``v1``.

    A copy of a keyed HMAC, not ``hmac.digest``: the one-shot call lets go of the GIL for
    every message, however small, and on a busy process the serving thread then waits to get
    it back from whichever thread took it, which cost far more than the hashing itself.
    ``update`` lets go of it only for messages of 2 KiB and more."""
    mac = _keyed(secret).copy()
    mac.update(b"%d." % timestamp)
    mac.update(body)
    return mac.hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """A complete ``X-Firma-Signature`` header value, as Firma would send it."""
    return f"t={timestamp},v1={compute(secret, body, timestamp)}"


@dataclass(frozen=True, slots=True)
class ParsedSignature:
    timestamp: int
    signatures: tuple[str, ...]  # every v1 value (normally one)


def parse_header(value: str) -> ParsedSignature:
    """Parse ``t=…,v1=…`` (spaces tolerated, several ``v1`` allowed, unknown keys ignored)."""
    if len(value) > _MAX_HEADER_LENGTH:
        raise SignatureInvalid("signature header is too long")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in value.split(","):
        key, sep, item = part.strip().partition("=")
        if not sep:
            raise SignatureInvalid("signature header is malformed: expected t=<seconds>,v1=<hex>")
        key, item = key.strip(), item.strip()
        if key == "t":
            if timestamp is not None:
                raise SignatureInvalid("signature header has more than one timestamp (t=)")
            if not item.isascii() or not item.isdigit() or len(item) > 12:
                raise SignatureInvalid("signature timestamp is not a unix time in seconds")
            timestamp = int(item)
        elif key == "v1":
            if not _HEX_DIGEST.fullmatch(item):
                raise SignatureInvalid("signature v1 is not a 64-character hex digest")
            signatures.append(item.lower())
    if timestamp is None:
        raise SignatureInvalid("signature header has no timestamp (t=)")
    if not signatures:
        raise SignatureInvalid("signature header has no v1 signature")
    return ParsedSignature(timestamp, tuple(signatures))


def _matches(parsed: ParsedSignature, body: bytes, secrets: Sequence[str]) -> bool:
    matched = False
    for secret in secrets:
        expected = compute(secret, body, parsed.timestamp)
        for candidate in parsed.signatures:
            # No early exit: every comparison runs, each in constant time.
            matched |= hmac.compare_digest(expected, candidate)
    return matched


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[str],
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
) -> int:
    """Check a delivery; return its signed timestamp or raise :class:`SignatureInvalid`.

    ``headers`` must have lower-case names. The timestamp is checked only once a signature
    matched, so a stale but authentic delivery is reported as stale, not as forged.

    The refusal's ``details`` explain it without revealing anything secret: the timestamp's
    skew against our clock in seconds (positive: signed in the past), how many secrets were
    tried, which headers were present (``old_header_present``: Firma's rotation header), and
    for each header whether it parsed and matched."""
    current = headers.get(SIGNATURE_HEADER)
    old = headers.get(OLD_SIGNATURE_HEADER)
    details: dict[str, object] = {
        "secrets_tried": len(secrets),
        "signature_header_present": current is not None,
        "old_header_present": old is not None,
        "tolerance_seconds": int(tolerance),
    }
    if not secrets:
        raise SignatureInvalid("no Firma signing secret is configured", details=details)
    if current is None and old is None:
        raise SignatureInvalid("missing X-Firma-Signature header", details=details)
    problems: list[str] = []
    for name, value in ((SIGNATURE_HEADER, current), (OLD_SIGNATURE_HEADER, old)):
        if value is None:
            continue
        label = "old" if name == OLD_SIGNATURE_HEADER else "current"
        try:
            parsed = parse_header(value)
        except SignatureInvalid as exc:
            problems.append(f"{name}: {exc}")
            details[f"{label}_header"] = "malformed"
            continue
        age = now - parsed.timestamp
        details.setdefault("timestamp_skew_seconds", int(age))
        if not _matches(parsed, body, secrets):
            problems.append(f"{name}: signature does not match")
            details[f"{label}_header"] = "no match"
            continue
        details[f"{label}_header"] = "match"
        details["timestamp_skew_seconds"] = int(age)
        if age > tolerance:
            raise SignatureInvalid(
                f"signature timestamp is too old ({int(age)} s > {int(tolerance)} s)",
                details=details,
            )
        if -age > tolerance:
            raise SignatureInvalid(
                f"signature timestamp is in the future ({int(-age)} s ahead)", details=details
            )
        return parsed.timestamp
    raise SignatureInvalid("; ".join(problems), details=details)
