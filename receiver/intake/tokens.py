"""Per-request callback tokens: the URL is the credential (for providers whose callbacks
carry no signature).

Each request has two tokens, one per URL, both ``HMAC-SHA256(secret_key, label + nonce)``
(256 bits, URL-safe base64) with a label of their own:

- the **return token** opens ``/return/<token>``, the page a provider sends the signer's
  *browser* to. Every signer sees it, so it must open nothing else.
- the **hook token** opens the request's own hook route (``/hooks/<provider>/{hook_token}``),
  a provider's server-to-server callback. It only ever goes to the provider (in a PATCH),
  never to a browser.

The return token keeps the label of the single token signback used to hand out for both
URLs, so return links given to signers before the split keep working. The database keeps
only the random nonce and ``SHA-256`` of each token: a copy of the database reveals no
callback URL, yet signback can rebuild a request's URLs when its public address changes.
Lookups go through a hash, and the hash is compared with ``hmac.compare_digest``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

TOKEN_BYTES = 32
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")
# Never change these: stored nonces must keep giving the same URLs. "callback-token:" is the
# label of the token that once opened both routes; it now derives the return token only.
# "sendinfo-token:" is the hook token's label from when only one provider had such a route.
RETURN_LABEL = b"callback-token:"
HOOK_LABEL = b"sendinfo-token:"


def new_nonce() -> str:
    return secrets.token_hex(16)


def _derive(secret_key: str, label: bytes, nonce: str) -> str:
    digest = hmac.new(secret_key.encode(), label + nonce.encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode("ascii")


def return_token_for(secret_key: str, nonce: str) -> str:
    """The token of ``/return/<token>`` (the signer's browser)."""
    return _derive(secret_key, RETURN_LABEL, nonce)


def hook_token_for(secret_key: str, nonce: str) -> str:
    """The token of the request's own hook route (``/hooks/<provider>/<token>``)."""
    return _derive(secret_key, HOOK_LABEL, nonce)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def looks_like_token(value: str) -> bool:
    """Cheap shape check before touching the database (43 URL-safe base64 characters)."""
    return len(value) == 43 and _TOKEN_SHAPE.fullmatch(value) is not None


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
