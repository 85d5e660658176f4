"""Per-request callback tokens: the URL is the credential (OKdokument sends no signature).

A token is ``HMAC-SHA256(secret_key, nonce)`` (256 bits, URL-safe base64). The database keeps
only the random nonce and ``SHA-256(token)``: a copy of the database does not reveal any
callback URL, yet signback can rebuild a request's URLs when its public address changes.
Lookups go through the hash, and the hash is compared with ``hmac.compare_digest``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

TOKEN_BYTES = 32
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")


def new_nonce() -> str:
    return secrets.token_hex(16)


def token_for(secret_key: str, nonce: str) -> str:
    digest = hmac.new(secret_key.encode(), b"callback-token:" + nonce.encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode("ascii")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def looks_like_token(value: str) -> bool:
    """Cheap shape check before touching the database (43 URL-safe base64 characters)."""
    return len(value) == 43 and _TOKEN_SHAPE.fullmatch(value) is not None


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
