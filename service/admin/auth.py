"""Dashboard sign-in: a bearer token once, then a signed session cookie with a CSRF token.

* The session cookie holds the token row id, name, role, a random CSRF secret and the time it
  was issued, signed with HMAC-SHA256 of the server secret (purpose-separated from every other
  use of the secret). It is HttpOnly, SameSite=Lax, scoped to ``/admin`` and expires after
  ``security.session_max_age_s`` (checked server-side too, not only by the browser).
* Every request re-reads the token row: a revoked token, or one whose role no longer allows the
  dashboard, ends the session at once.
* The sign-in form itself is a POST, so it carries a CSRF token too: ``GET /login`` sets a short-
  lived signed pre-session cookie and the form echoes its value (double submit). This stops a
  third-party page from signing a browser into someone else's session (login CSRF).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from sqlalchemy import select

from service.core.db import read_session
from service.models import ApiToken, Role

COOKIE = "lethe_admin"
PRE_COOKIE = "lethe_admin_login"
PRE_MAX_AGE_S = 3600
DASHBOARD_ROLES = frozenset({Role.operator, Role.auditor, Role.admin})
ACTION_ROLES = frozenset({Role.operator, Role.admin})


@dataclass(frozen=True)
class AdminSession:
    token_id: int
    name: str
    role: Role
    csrf: str

    @property
    def actor(self) -> str:
        return f"token:{self.token_id}:{self.name}"

    @property
    def can_act(self) -> bool:
        return self.role in ACTION_ROLES


def _sign(secret: str, purpose: str, payload: bytes) -> str:
    return hmac.new(secret.encode(), purpose.encode() + b"|" + payload, hashlib.sha256).hexdigest()


def sign(secret: str, purpose: str, doc: dict[str, Any]) -> str:
    payload = base64.urlsafe_b64encode(json.dumps({**doc, "at": int(time.time())}, separators=(",", ":")).encode())
    return payload.decode() + "." + _sign(secret, purpose, payload)


def unsign(secret: str, purpose: str, value: str | None, max_age_s: int) -> dict[str, Any] | None:
    """The signed document, or None when missing, tampered with, malformed or older than max_age_s."""
    if not value or "." not in value:
        return None
    payload, sig = value.rsplit(".", 1)
    if not hmac.compare_digest(sig, _sign(secret, purpose, payload.encode())):
        return None
    try:
        doc = json.loads(base64.urlsafe_b64decode(payload.encode()))
    except (ValueError, json.JSONDecodeError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("at"), int) or time.time() - doc["at"] > max_age_s:
        return None
    return doc


def encode(secret: str, s: AdminSession) -> str:
    return sign(secret, "admin-session", {"t": s.token_id, "n": s.name, "r": s.role.value, "c": s.csrf})


def new_session(token: ApiToken) -> AdminSession:
    return AdminSession(token_id=token.id, name=token.name, role=Role(token.role), csrf=secrets.token_urlsafe(24))


def new_login_csrf(secret: str) -> tuple[str, str]:
    """(token for the hidden field, cookie value)."""
    token = secrets.token_urlsafe(24)
    return token, sign(secret, "admin-login", {"c": token})


def login_csrf_ok(secret: str, cookie: str | None, field: str | None) -> bool:
    doc = unsign(secret, "admin-login", cookie, PRE_MAX_AGE_S)
    return bool(doc and field and isinstance(doc.get("c"), str) and hmac.compare_digest(doc["c"], field))


def current(request: Request, session_factory, secret: str, max_age_s: int) -> AdminSession | None:
    doc = unsign(secret, "admin-session", request.cookies.get(COOKIE), max_age_s)
    if doc is None or not isinstance(doc.get("t"), int) or not isinstance(doc.get("c"), str):
        return None
    with read_session(session_factory) as db:
        row = db.execute(select(ApiToken.role, ApiToken.revoked_at).where(ApiToken.id == doc["t"])).first()
    if row is None or row.revoked_at is not None or Role(row.role) not in DASHBOARD_ROLES:
        return None
    return AdminSession(token_id=doc["t"], name=str(doc.get("n", "")), role=Role(row.role), csrf=doc["c"])
