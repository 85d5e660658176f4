"""Firma's ``v1`` HMAC, computed from a cached keyed HMAC (see ``signature.compute``)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from handlers.firma import signature
from receiver.errors import SignatureInvalid


def reference(secret: str, body: bytes, timestamp: int) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def test_a_documented_style_signature() -> None:
    # Computed outside Python: printf '1700000000.{"id":"evt_1"}' | openssl dgst -sha256 -hmac k
    assert signature.compute("k", b'{"id":"evt_1"}', 1_700_000_000) == (
        "f46f5472ab5c4818c3badf17a9070d2021cbcb8e2cf0128be54a364e1d7f8373"
    )


@pytest.mark.parametrize("size", [0, 1, 900, 2047, 2048, 100_000])
def test_every_body_size_matches_a_one_shot_hmac(size: int) -> None:
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert signature.compute("whsec_abc", body, 1_700_000_123) == reference(
        "whsec_abc", body, 1_700_000_123
    )


def test_the_cached_keyed_hmac_is_never_advanced() -> None:
    """Each message starts from a copy: earlier messages and other secrets leave no trace."""
    secrets_ = ["a" * 64, "b" * 64, "whsec_old"]
    for round_ in range(3):
        for secret in secrets_:
            body = f"round {round_} for {secret}".encode()
            assert signature.compute(secret, body, 1_700_000_000 + round_) == reference(
                secret, body, 1_700_000_000 + round_
            )


def test_verify_accepts_what_sign_produced_and_nothing_else() -> None:
    body = b'{"id":"evt_2","type":"signing_request.sent"}'
    header = signature.sign("s1", body, 1_700_000_000)
    assert signature.verify({"x-firma-signature": header}, body, ["s1"], now=1_700_000_010) == (
        1_700_000_000
    )
    with pytest.raises(SignatureInvalid):
        signature.verify({"x-firma-signature": header}, body + b" ", ["s1"], now=1_700_000_010)
    with pytest.raises(SignatureInvalid):
        signature.verify({"x-firma-signature": header}, body, ["s2"], now=1_700_000_010)
