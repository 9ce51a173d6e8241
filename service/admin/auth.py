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
* Tokens are checked by the API's own lookup (:mod:`service.client.tokens`): by secret at sign-in,
  by id on every later page. Nothing here reads the tokens table.
* Every POST carries the session's CSRF token in a hidden field (:func:`check_post`); auditors
  see every page but may act on nothing.
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
from sqlalchemy.orm import sessionmaker

from service.admin.web import factory, settings
from service.client.tokens import Principal, principal_for_id, principal_for_token
from service.core.db import read_session
from service.models import Role

COOKIE = "lethe_admin"
PRE_COOKIE = "lethe_admin_login"
PRE_MAX_AGE_S = 3600
DASHBOARD_ROLES = frozenset({Role.operator, Role.auditor, Role.admin})
ACTION_ROLES = frozenset({Role.operator, Role.admin})


class Forbidden(Exception):
    """Shown as a 403 page with the message."""


class SignInFirst(Exception):
    """Sends the browser to the sign-in form, and back here afterwards."""


@dataclass(frozen=True)
class AdminSession(Principal):
    """A signed-in dashboard user: the token's principal and this session's CSRF secret."""

    csrf: str

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


def _session(p: Principal, csrf: str) -> AdminSession:
    return AdminSession(token_id=p.token_id, name=p.name, role=p.role, client_id=p.client_id, csrf=csrf)


def new_session(p: Principal) -> AdminSession:
    return _session(p, secrets.token_urlsafe(24))


def lookup(session_factory: sessionmaker, token: str) -> Principal | None:
    """Who a token presented at sign-in belongs to (None: unknown or revoked), by the API's lookup."""
    with read_session(session_factory) as db:
        return principal_for_token(db, token)


def new_login_csrf(secret: str) -> tuple[str, str]:
    """(token for the hidden field, cookie value)."""
    token = secrets.token_urlsafe(24)
    return token, sign(secret, "admin-login", {"c": token})


def login_csrf_ok(secret: str, cookie: str | None, field: str | None) -> bool:
    doc = unsign(secret, "admin-login", cookie, PRE_MAX_AGE_S)
    return bool(doc and field and isinstance(doc.get("c"), str) and hmac.compare_digest(doc["c"], field))


def current(request: Request, session_factory: sessionmaker, secret: str, max_age_s: int) -> AdminSession | None:
    """The session the cookie holds, while its token is unrevoked and its role may use the dashboard."""
    doc = unsign(secret, "admin-session", request.cookies.get(COOKIE), max_age_s)
    if doc is None or not isinstance(doc.get("t"), int) or not isinstance(doc.get("c"), str):
        return None
    with read_session(session_factory) as db:
        p = principal_for_id(db, doc["t"])
    if p is None or p.role not in DASHBOARD_ROLES:
        return None
    return _session(p, doc["c"])


def who(request: Request) -> AdminSession | None:
    """The signed-in user of this request, if any."""
    security = settings(request).security
    return current(request, factory(request), security.secret_key, security.session_max_age_s)


def need(request: Request) -> AdminSession:
    """The signed-in user of a page; without one the browser goes to the sign-in form."""
    me = who(request)
    if me is None:
        raise SignInFirst()
    return me


async def check_post(request: Request, act: bool = True) -> tuple[AdminSession, Any]:
    """The signed-in session and the form, after the CSRF check (and the role check for actions)."""
    me = who(request)
    if me is None:
        raise Forbidden("Sign in first.")
    form = await request.form()
    token = form.get("csrf")
    if not isinstance(token, str) or not token or not hmac.compare_digest(token, me.csrf):
        raise Forbidden("Missing or wrong CSRF token: reload the page and try again.")
    if act and not me.can_act:
        raise Forbidden(f"The {me.role.value} role is read-only here.")
    return me, form
