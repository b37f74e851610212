"""The worklist's sign-in sessions: a signed cookie and the CSRF token that goes with it.

A radiologist signs in once (an API key or a JWT from a configured issuer, checked by the
API's own Authenticator) and the browser then holds a session cookie: HttpOnly (no script
reads it), SameSite=Strict (no other site's page sends it), Path=/worklist (the API never
accepts it). The cookie is `base64url(JSON claims) "." base64url(HMAC-SHA256(secret,
claims))`: nothing is stored server-side, so any replica holding the same
`security.session_secret` accepts it, and it ends at its expiry (`session_ttl_seconds`).

Every state-changing request made with the cookie must carry the session's CSRF token (in
the page, sent back as the `X-CSRF-Token` header): the token is an HMAC of the session id
under a separate derived key, so it cannot be computed without the secret and is bound to
one session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from http.cookies import SimpleCookie

from radproto.adapter.security.principal import Principal

COOKIE_NAME = "radproto_session"
COOKIE_PATH = "/worklist"
CSRF_HEADER = "x-csrf-token"
#: The Principal.auth of a caller authenticated by the session cookie.
SESSION_AUTH = "session"


@dataclass(frozen=True)
class Session:
    id: str
    actor: str
    roles: frozenset[str]
    method: str  # how the user signed in: "api-key" | "jwt"
    expires: float

    def principal(self) -> Principal:
        return Principal(actor=self.actor, roles=self.roles, auth=SESSION_AUTH)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionManager:
    """Issues and checks session cookies and their CSRF tokens under one secret."""

    def __init__(self, secret: str | bytes = b"", *, ttl_seconds: float = 8 * 3600,
                 secure: bool = False) -> None:
        key = secret.encode() if isinstance(secret, str) else secret
        key = key or secrets.token_bytes(32)  # no configured secret: valid for this process
        self._sign_key = hmac.new(key, b"radproto session cookie", hashlib.sha256).digest()
        self._csrf_key = hmac.new(key, b"radproto csrf token", hashlib.sha256).digest()
        self.ttl_seconds = ttl_seconds
        self.secure = secure

    def issue(self, principal: Principal, *, now: float | None = None) -> tuple[str, Session]:
        """A new session for a signed-in caller: (the cookie value, the session)."""
        session = Session(id=secrets.token_urlsafe(18), actor=principal.actor,
                          roles=frozenset(principal.roles), method=principal.auth,
                          expires=(now or time.time()) + self.ttl_seconds)
        claims = json.dumps({"sid": session.id, "sub": session.actor,
                             "roles": sorted(session.roles), "via": session.method,
                             "exp": int(session.expires)}, separators=(",", ":")).encode()
        return f"{_b64(claims)}.{self._sign(claims)}", session

    def verify(self, value: str | None, *, now: float | None = None) -> Session | None:
        """The session a cookie value holds, or None (missing, forged, altered, expired)."""
        if not value or value.count(".") != 1:
            return None
        body, signature = value.split(".")
        try:
            claims_bytes = _unb64(body)
        except ValueError:
            return None
        if not hmac.compare_digest(self._sign(claims_bytes), signature):
            return None
        try:
            claims = json.loads(claims_bytes)
            session = Session(id=str(claims["sid"]), actor=str(claims["sub"]),
                              roles=frozenset(str(r) for r in claims["roles"]),
                              method=str(claims["via"]), expires=float(claims["exp"]))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires > (now or time.time()) else None

    def from_cookie_header(self, header: str | None) -> Session | None:
        """The session of a request's Cookie header, or None."""
        if not header:
            return None
        cookies = SimpleCookie()
        try:
            cookies.load(header)
        except Exception:  # a malformed Cookie header: no session
            return None
        morsel = cookies.get(COOKIE_NAME)
        return self.verify(morsel.value if morsel else None)

    def csrf_token(self, session: Session) -> str:
        return _b64(hmac.new(self._csrf_key, session.id.encode(), hashlib.sha256).digest())

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(session), str(token))

    def cookie_header(self, value: str, *, secure: bool = False) -> str:
        """The Set-Cookie value that stores a session."""
        flags = "; Secure" if secure or self.secure else ""
        return (f"{COOKIE_NAME}={value}; Path={COOKIE_PATH}; Max-Age={int(self.ttl_seconds)}; "
                f"HttpOnly; SameSite=Strict{flags}")

    @staticmethod
    def clearing_cookie_header() -> str:
        return (f"{COOKIE_NAME}=; Path={COOKIE_PATH}; Max-Age=0; HttpOnly; SameSite=Strict")

    def _sign(self, claims: bytes) -> str:
        return _b64(hmac.new(self._sign_key, claims, hashlib.sha256).digest())
