"""Endpoint signing secrets: made here, stored encrypted, shown in full only once.

A secret is ``whsec_`` + base64 of 32 random bytes (Standard Webhooks: 24 to 64 bytes). The
database holds it encrypted with AES-256-GCM under a key derived from
``SIGNBACK_SECRET_KEY`` (HKDF-SHA256 with an info string of its own, so the key is not the
one that derives callback tokens), so a dump of the database alone reveals no secret. The
stored text is ``v1:`` + base64(12-byte nonce + ciphertext + tag).

Changing ``SIGNBACK_SECRET_KEY`` makes the stored secrets unreadable: deliveries then fail
with a message saying so, and each endpoint needs ``rotate-secret``.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from receiver.errors import SignbackError

PREFIX = "whsec_"
SECRET_BYTES = 32
_VERSION = "v1:"
_INFO = b"signback endpoint secrets v1"
_AAD = b"signback endpoint secret"


class SecretUnreadable(SignbackError):
    """The endpoint's stored secret cannot be decrypted: SIGNBACK_SECRET_KEY changed since
    it was made. Rotate the endpoint's secret (rotate-secret), then re-send its dead
    deliveries (retry-dead)."""


def new_secret() -> str:
    return PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode("ascii")


def key_bytes(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret: its base64 part, decoded (as the Standard
    Webhooks libraries read it)."""
    return base64.b64decode(secret.removeprefix(PREFIX))


class SecretBox:
    """Encrypts and decrypts endpoint secrets with the key derived from the secret key."""

    __slots__ = ("_aead",)

    def __init__(self, secret_key: str) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
            secret_key.encode()
        )
        self._aead = AESGCM(key)

    def seal(self, secret: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, secret.encode(), _AAD)
        return _VERSION + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, stored: str) -> str:
        if not stored.startswith(_VERSION):
            raise SecretUnreadable()
        try:
            raw = base64.b64decode(stored[len(_VERSION) :], validate=True)
            return self._aead.decrypt(raw[:12], raw[12:], _AAD).decode()
        except (InvalidTag, ValueError) as exc:
            raise SecretUnreadable() from exc

    def readable(self, stored: str) -> bool:
        """Whether this key opens ``stored`` (False after ``SIGNBACK_SECRET_KEY`` changed)."""
        try:
            self.open(stored)
        except SecretUnreadable:
            return False
        return True

    def __repr__(self) -> str:
        return "SecretBox(…)"
