"""Dashboard sign-in: a bearer token once, then a signed session cookie with a CSRF token.

The cookie holds the token row id, role and a random CSRF secret, signed with HMAC-SHA256 of the
server secret and time-stamped; every request re-checks that the token is not revoked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import select

from service.models import ApiToken, Role

COOKIE = "lethe_admin"
DASHBOARD_ROLES = {Role.operator, Role.auditor, Role.admin}
ACTION_ROLES = {Role.operator, Role.admin}


@dataclass
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


def _sign(secret: str, payload: bytes) -> str:
    return hmac.new(secret.encode(), b"admin-session|" + payload, hashlib.sha256).hexdigest()


def encode(secret: str, s: AdminSession) -> str:
    payload = base64.urlsafe_b64encode(json.dumps({"t": s.token_id, "n": s.name, "r": s.role.value, "c": s.csrf, "at": int(time.time())}).encode())
    return payload.decode() + "." + _sign(secret, payload)


def decode(secret: str, value: str | None, max_age_s: int) -> dict | None:
    if not value or "." not in value:
        return None
    payload, sig = value.rsplit(".", 1)
    if not hmac.compare_digest(sig, _sign(secret, payload.encode())):
        return None
    try:
        doc = json.loads(base64.urlsafe_b64decode(payload.encode()))
    except (ValueError, json.JSONDecodeError):
        return None
    if time.time() - doc.get("at", 0) > max_age_s:
        return None
    return doc


def new_session(token: ApiToken) -> AdminSession:
    return AdminSession(token_id=token.id, name=token.name, role=Role(token.role), csrf=secrets.token_urlsafe(24))


def current(request: Request, session_factory, secret: str, max_age_s: int) -> AdminSession | None:
    doc = decode(secret, request.cookies.get(COOKIE), max_age_s)
    if doc is None:
        return None
    with session_factory() as db:
        row = db.execute(select(ApiToken.role, ApiToken.revoked_at).where(ApiToken.id == doc["t"])).first()
    if row is None or row.revoked_at is not None or Role(row.role) not in DASHBOARD_ROLES:
        return None
    return AdminSession(token_id=doc["t"], name=doc["n"], role=Role(row.role), csrf=doc["c"])
