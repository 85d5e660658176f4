"""Standard Webhooks signatures: what a delivery's ``webhook-*`` headers say.

- ``webhook-id``: the message id, the same for every attempt and every replay of one event
  to one endpoint (the receiver's idempotency key): :func:`message_id`.
- ``webhook-timestamp``: unix seconds when this attempt was signed.
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` of ``{id}.{timestamp}.{body}`` under
  the secret's key bytes; while a rotated-out secret is still valid, its signature follows,
  space-separated (the spec lets a receiver try each until one matches).

The body is signed exactly as sent: a receiver must verify the raw bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence


def message_id(event_public_id: str, endpoint_id: int) -> str:
    """``msg_<event>_<endpoint>``: stable per (event, endpoint), different per endpoint."""
    return f"msg_{event_public_id.removeprefix('evt_')}_{endpoint_id}"


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers, signed with every key given (current first)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(k, msg_id, timestamp, body) for k in keys),
    }
