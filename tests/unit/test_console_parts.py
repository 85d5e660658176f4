"""The console's pure parts: sessions and CSRF tokens, the rejection log's buffer and body
excerpt, and the Firma signature refusal's details."""

from __future__ import annotations

from typing import Any

import pytest

from handlers.firma import signature
from receiver.console.session import Role, Sessions, signin_ok
from receiver.errors import SignatureInvalid
from receiver.intake.rejections import body_head
from receiver.settings import Settings
from tests.conftest import ADMIN_TOKEN, test_settings

VIEWER = "viewer-token-0123456789"


def settings(**overrides: Any) -> Settings:
    return test_settings("sqlite:///unused.db", **{"viewer_token": VIEWER, **overrides})


def test_a_session_round_trips_and_expires() -> None:
    sessions = Sessions(settings(console_session_hours=1))
    session, cookie = sessions.issue(Role.ADMIN, now=1000.0)
    assert sessions.read(cookie, now=1000.0 + 3599) == session
    assert sessions.read(cookie, now=1000.0 + 3600) is None
    assert session.can_act


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c: c[:-1] + ("0" if c[-1] != "0" else "1"),  # the MAC
        lambda c: "e" + c,  # the payload
        lambda c: c.replace(".", ""),
        lambda c: "",
        lambda c: c + "x" * 600,
    ],
)
def test_a_forged_or_malformed_cookie_is_no_session(tamper: Any) -> None:
    sessions = Sessions(settings())
    _, cookie = sessions.issue(Role.ADMIN, now=0.0)
    assert sessions.read(tamper(cookie), now=1.0) is None


def test_another_key_or_token_signs_everybody_out() -> None:
    _, cookie = Sessions(settings()).issue(Role.ADMIN, now=0.0)
    assert Sessions(settings(admin_token="another-admin-token-000")).read(cookie, now=1.0) is None
    assert Sessions(settings(secret_key="k" * 40)).read(cookie, now=1.0) is None


def test_roles_and_the_viewer_token() -> None:
    sessions = Sessions(settings())
    assert sessions.role_for(ADMIN_TOKEN) is Role.ADMIN
    assert sessions.role_for(VIEWER) is Role.VIEWER
    assert sessions.role_for("nope") is None
    session, cookie = sessions.issue(Role.VIEWER, now=0.0)
    assert not session.can_act
    # The viewer token removed: its sessions end (the key changes with it, too).
    assert Sessions(settings(viewer_token=None)).read(cookie, now=1.0) is None


def test_csrf_tokens_are_bound_to_their_session() -> None:
    sessions = Sessions(settings())
    one, _ = sessions.issue(Role.ADMIN, now=0.0)
    two, _ = sessions.issue(Role.ADMIN, now=0.0)
    assert sessions.csrf_ok(one, sessions.csrf(one))
    assert not sessions.csrf_ok(one, sessions.csrf(two))
    assert not sessions.csrf_ok(one, None)
    assert not sessions.csrf_ok(one, "")
    assert signin_ok("abc", "abc")
    assert not signin_ok("abc", "abd")
    assert not signin_ok(None, "abc")
    assert not signin_ok("", "")


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        (b'{"a": 1}', '{"a": 1}'),
        (b"line\nnext\ttab", "line\nnext\ttab"),
        (b"\x00\x1b[31m", "\\x00\\x1b[31m"),
        (b"\xff\xfe", "\\xff\\xfe"),
        (b"x" * 1000, "x" * 256),
    ],
)
def test_a_body_excerpt_is_escaped_and_bounded(body: bytes, shown: str) -> None:
    assert body_head(body) == shown


def test_a_signature_refusal_says_why_without_a_secret() -> None:
    body = b"{}"
    now = 10_000.0
    headers = {
        "x-firma-signature": signature.sign("wrong", body, int(now) - 42),
        "x-firma-signature-old": "t=1,v1=nothex",
    }
    with pytest.raises(SignatureInvalid) as refused:
        signature.verify(headers, body, ["s1", "s2"], now=now)
    assert dict(refused.value.details) == {
        "secrets_tried": 2,
        "signature_header_present": True,
        "old_header_present": True,
        "tolerance_seconds": 300,
        "timestamp_skew_seconds": 42,
        "current_header": "no match",
        "old_header": "malformed",
    }
    good = {"x-firma-signature": signature.sign("s2", body, int(now) - 400)}
    with pytest.raises(SignatureInvalid, match="too old") as stale:
        signature.verify(good, body, ["s1", "s2"], now=now)
    assert stale.value.details["current_header"] == "match"
    assert stale.value.details["timestamp_skew_seconds"] == 400
    assert "s2" not in str(dict(stale.value.details).values())
