"""Per-request callback tokens (receiver/intake/tokens.py)."""

from __future__ import annotations

import hashlib
import itertools
import re
import string
from collections.abc import Callable

import pytest

from receiver.intake.tokens import (
    hook_token_for,
    looks_like_token,
    new_nonce,
    return_token_for,
    same_hash,
    token_hash,
)

SECRET = "k" * 32
NONCE = "0123456789abcdef0123456789abcdef"
URL_SAFE = frozenset(string.ascii_letters + string.digits + "-_")
SECRETS = [
    SECRET,
    "k" * 31 + "K",
    "another-secret-key-0123456789-abcdef",
    "é-ünïcode-secret-key-32-chars!!",
]
NONCES = [NONCE, "0123456789abcdef0123456789abcdee", new_nonce(), "", "x"]


def test_token_derivation_is_pinned() -> None:
    # HMAC-SHA256(secret, label + nonce), URL-safe base64 without padding. Stored nonces must
    # keep giving the same URLs: these values must never change. The return token is the
    # token that, before the split, opened both routes: return links handed out stay valid.
    assert return_token_for(SECRET, NONCE) == "c6qqmRGAqqwY8R8uRoF7_pGKl1krHzBRWoCrDjcBxw8"
    assert hook_token_for(SECRET, NONCE) == "Hl4sId4mKh8uWwt10Pvsz8njyLbw_8xAFPtIBJ_16BE"


DERIVATIONS = [return_token_for, hook_token_for]


@pytest.mark.parametrize("derive", DERIVATIONS)
@pytest.mark.parametrize(("secret", "nonce"), list(itertools.product(SECRETS, NONCES)))
def test_token_shape_and_determinism(
    derive: Callable[[str, str], str], secret: str, nonce: str
) -> None:
    token = derive(secret, nonce)

    assert len(token) == 43
    assert set(token) <= URL_SAFE
    assert looks_like_token(token)
    assert derive(secret, nonce) == token


def test_tokens_differ_per_secret_per_nonce_and_per_route() -> None:
    # Every (secret, nonce, route) gives its own token: in particular no request's return
    # token (which every signer's browser sees) is any request's sendInfo token.
    tokens = {d(s, n) for d in DERIVATIONS for s, n in itertools.product(SECRETS, NONCES)}
    assert len(tokens) == len(DERIVATIONS) * len(SECRETS) * len(NONCES)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param((SECRET, NONCE), (SECRET + "x", NONCE), id="secret-suffix"),
        pytest.param((SECRET, NONCE), (SECRET, NONCE + "x"), id="nonce-suffix"),
        pytest.param((SECRET, NONCE), (NONCE, SECRET), id="swapped"),
        pytest.param((SECRET, NONCE), (SECRET, NONCE.upper()), id="nonce-case"),
    ],
)
def test_near_misses_give_other_tokens(first: tuple[str, str], second: tuple[str, str]) -> None:
    for derive in DERIVATIONS:
        assert derive(*first) != derive(*second)


def test_new_nonce_is_random_hex() -> None:
    nonces = {new_nonce() for _ in range(200)}
    assert len(nonces) == 200
    assert all(re.fullmatch(r"[0-9a-f]{32}", n) for n in nonces)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("c6qqmRGAqqwY8R8uRoF7_pGKl1krHzBRWoCrDjcBxw8", True, id="real"),
        pytest.param("A" * 43, True, id="all-A"),
        pytest.param("-" * 43, True, id="all-dash"),
        pytest.param("_9" * 21 + "z", True, id="mixed"),
        pytest.param("A" * 42, False, id="42"),
        pytest.param("A" * 44, False, id="44"),
        pytest.param("A" * 42 + "=", False, id="padding"),
        pytest.param("A" * 42 + "+", False, id="plus"),
        pytest.param("A" * 42 + "/", False, id="slash"),
        pytest.param("A" * 42 + ".", False, id="dot"),
        pytest.param("A" * 42 + " ", False, id="space"),
        pytest.param("A" * 42 + "é", False, id="non-ascii"),
        pytest.param("A" * 42 + "\x00", False, id="nul"),
        pytest.param("A" * 42 + "\udcff", False, id="surrogate"),
        pytest.param("", False, id="empty"),
        pytest.param("[token]", False, id="placeholder"),
    ],
)
def test_looks_like_token(value: str, expected: bool) -> None:
    assert looks_like_token(value) is expected


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        # Lone surrogates (undecodable bytes in a path) hash as those bytes, never raise.
        ("\udcff", "a8100ae6aa1940d0b663bb31cd466142ebbdbd5187131b92d93818987832eb89"),
    ],
)
def test_token_hash_known_values(token: str, expected: str) -> None:
    assert token_hash(token) == expected


@pytest.mark.parametrize("nonce", NONCES)
def test_token_hash_is_sha256_hex_of_the_token(nonce: str) -> None:
    token = return_token_for(SECRET, nonce)
    digest = token_hash(token)

    assert digest == hashlib.sha256(token.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert token not in digest


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (token_hash("x"), token_hash("x"), True),
        (token_hash("x"), token_hash("y"), False),
        (token_hash("x"), token_hash("x").upper(), False),
        (token_hash("x"), token_hash("x")[:-1], False),
        (token_hash("x"), token_hash("x") + "0", False),
        ("", "", True),
        ("", token_hash("x"), False),
    ],
)
def test_same_hash(a: str, b: str, expected: bool) -> None:
    assert same_hash(a, b) is expected
    assert same_hash(b, a) is expected


@pytest.mark.parametrize("provider", ["okdokument", "firma", "gone"])
def test_callback_urls_carry_one_token_each(provider: str) -> None:
    """What the API answers as ``callback_urls`` and the placeholders resolve to: the browser's
    URL carries the return token, OKdokument's sendInfo URL the hook token, Firma's webhook
    URL none; a request of a provider no longer installed keeps its return URL."""
    from receiver.app import build_context
    from tests.conftest import SECRET_KEY, test_settings

    ctx = build_context(test_settings("sqlite:///unused.db", public_url="https://sb.example/"))
    urls = ctx.callback_urls(provider, NONCE)
    back = f"https://sb.example/return/{return_token_for(SECRET_KEY, NONCE)}"
    token = hook_token_for(SECRET_KEY, NONCE)
    expected = {
        "okdokument": {"sendinfo_url": f"https://sb.example/hooks/okdokument/{token}"},
        "firma": {"webhook_url": "https://sb.example/hooks/firma"},
        "gone": {},
    }[provider]
    assert urls == {"return_url": back, **expected}
    assert next(iter(urls)) == "return_url"
