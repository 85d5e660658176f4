"""Testsign's signatures: ``X-Testsign-Timestamp: <unix seconds>`` and, for each secret the
sender holds, ``X-Testsign-Signature-<n>: <hex HMAC-SHA256(secret, "<timestamp>.<body>")>``
(DocuSign-style numbered headers). A callback is genuine when any signature header matches
any of our secrets, within the timestamp tolerance."""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping, Sequence

from receiver.errors import SignatureInvalid

TIMESTAMP_HEADER = "x-testsign-timestamp"
SIGNATURE_PATTERN = r"x-testsign-signature-\d+"
_SIGNATURE = re.compile(SIGNATURE_PATTERN)
_HEX = re.compile(r"[0-9a-f]{64}")


def compute(secret: str, body: bytes, timestamp: int) -> str:
    return hmac.new(secret.encode(), b"%d." % timestamp + body, "sha256").hexdigest()


def headers_for(body: bytes, secrets: Sequence[str], timestamp: int) -> dict[str, str]:
    """The headers a sender holding ``secrets`` puts on ``body``."""
    signed = {
        f"X-Testsign-Signature-{n}": compute(secret, body, timestamp)
        for n, secret in enumerate(secrets, start=1)
    }
    return {"X-Testsign-Timestamp": str(timestamp), **signed}


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[str],
    *,
    now: float,
    tolerance: float,
) -> None:
    """Raise SignatureInvalid (401) unless a signature header matches one of ``secrets``."""
    if not secrets:
        raise SignatureInvalid("no Testsign secret is configured")
    candidates = [value for name, value in headers.items() if _SIGNATURE.fullmatch(name)]
    if not candidates:
        raise SignatureInvalid("missing X-Testsign-Signature-1 header")
    stamp = headers.get(TIMESTAMP_HEADER, "")
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
        raise SignatureInvalid("X-Testsign-Timestamp is not a unix time in seconds")
    timestamp = int(stamp)
    if not all(_HEX.fullmatch(value) for value in candidates):
        raise SignatureInvalid("a signature header is not a 64-character lower-case hex digest")
    matched = False
    for secret in secrets:
        expected = compute(secret, body, timestamp)
        for value in candidates:
            matched |= hmac.compare_digest(expected, value)  # no early exit
    if not matched:
        raise SignatureInvalid("signature does not match")
    if now - timestamp > tolerance:
        raise SignatureInvalid(f"signature timestamp is too old ({int(now - timestamp)} s)")
    if timestamp - now > tolerance:
        raise SignatureInvalid(f"signature timestamp is in the future ({int(timestamp - now)} s)")
