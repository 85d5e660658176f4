"""Console sign-in: the admin (or viewer) token exchanged for a signed session cookie, and
the CSRF token every form carries.

The cookie is ``<payload>.<mac>``: the payload (base64url JSON) says the role, a random
nonce and the expiry; the MAC is HMAC-SHA256 under a key derived from SIGNBACK_SECRET_KEY
and the tokens themselves, so changing the secret key or either token signs every session
out. Nothing secret is in the cookie. The CSRF token is bound to the session (an HMAC of its
nonce under the same key, with a label of its own): a form posted without it, or with
another session's, is refused (compared in constant time).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from enum import StrEnum

from receiver.settings import Settings

COOKIE = "signback_console"
# Before sign-in there is no session: the sign-in form's CSRF token is double-submitted
# (this cookie and a hidden field must match).
SIGNIN_COOKIE = "signback_console_signin"


class Role(StrEnum):
    ADMIN = "admin"  # every page and every form
    VIEWER = "viewer"  # every page, no form that changes anything


@dataclass(frozen=True)
class Session:
    role: Role
    nonce: str
    expires: int  # unix seconds

    @property
    def can_act(self) -> bool:
        return self.role is Role.ADMIN


class Sessions:
    """Issues and checks console sessions for one app."""

    def __init__(self, settings: Settings) -> None:
        self.admin_token = settings.admin_token.get_secret_value().encode()
        viewer = settings.viewer_token
        self.viewer_token = viewer.get_secret_value().encode() if viewer is not None else None
        self.lifetime = int(settings.console_session_hours * 3600)
        material = hashlib.sha256(
            b"\x00".join([self.admin_token, self.viewer_token or b""])
        ).digest()
        self._key = hmac.new(
            settings.secret_key.get_secret_value().encode(),
            b"signback-console-session:" + material,
            hashlib.sha256,
        ).digest()

    def role_for(self, token: str) -> Role | None:
        """The role a presented token signs in as (both compared, each in constant time)."""
        presented = token.strip().encode()
        is_admin = hmac.compare_digest(presented, self.admin_token)
        is_viewer = self.viewer_token is not None and hmac.compare_digest(
            presented, self.viewer_token
        )
        if is_admin:
            return Role.ADMIN
        return Role.VIEWER if is_viewer else None

    def _mac(self, label: bytes, data: bytes) -> str:
        return hmac.new(self._key, label + data, hashlib.sha256).hexdigest()

    def issue(self, role: Role, *, now: float) -> tuple[Session, str]:
        session = Session(role, secrets.token_hex(16), int(now) + self.lifetime)
        payload = json.dumps(
            {"r": session.role.value, "n": session.nonce, "e": session.expires},
            separators=(",", ":"),
        ).encode()
        encoded = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        return session, f"{encoded}.{self._mac(b'cookie:', encoded.encode())}"

    def read(self, cookie: str | None, *, now: float) -> Session | None:
        """The session a cookie holds, or None (absent, forged, expired, malformed)."""
        if not cookie or len(cookie) > 512:
            return None
        encoded, _, mac = cookie.rpartition(".")
        if not encoded or not hmac.compare_digest(
            mac.encode(), self._mac(b"cookie:", encoded.encode()).encode()
        ):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
            session = Session(Role(data["r"]), str(data["n"]), int(data["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires <= now:
            return None
        if session.role is Role.VIEWER and self.viewer_token is None:
            return None  # the viewer token was removed
        return session

    def csrf(self, session: Session) -> str:
        return self._mac(b"csrf:", session.nonce.encode())

    def csrf_ok(self, session: Session, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(
            presented.encode(), self.csrf(session).encode()
        )


def signin_token() -> str:
    return secrets.token_urlsafe(24)


def signin_ok(cookie: str | None, presented: str | None) -> bool:
    """The sign-in form's double-submitted token: the cookie and the field must match."""
    if not cookie or presented is None:
        return False
    return hmac.compare_digest(cookie.encode(), presented.encode())
