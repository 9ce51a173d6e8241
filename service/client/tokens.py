"""Bearer tokens with roles: issue, revoke, look up, and the dependencies that authenticate a request.

Tokens are 256 random bits, so a single sha256 is a sufficient one-way hash (no slow KDF
needed for high-entropy secrets). The API (:func:`authenticate`) and the dashboard's sign-in
(``service.admin.auth``) check a token through the same lookup, :func:`principal_for_token`.

Every token belongs to a *client* (DESIGN §10); what a requester files belongs to its client,
so a token can be rotated or revoked without orphaning anything. Lookups are cached per process
for ``security.token_cache_ttl_s`` (default 10 s): a revoked token stops working within that
time everywhere, and at once in the process that revoked it.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from fastapi import Depends, Request
from sqlalchemy import ColumnElement, event, select
from sqlalchemy.orm import Session

from service.core.db import get_session
from service.core.errors import Forbidden, Unauthenticated
from service.models import ApiToken, Client, Role
from service.models._types import utcnow

TOKEN_PREFIX = "lethe_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    token_id: int
    name: str
    role: Role
    client_id: int

    @property
    def actor(self) -> str:
        return f"token:{self.token_id}:{self.name}"

    @property
    def sees_everything(self) -> bool:
        """Only a requester is confined to its own client's requests."""
        return self.role is not Role.requester


def client_named(session: Session, name: str, *, create: bool) -> Client | None:
    row = session.execute(select(Client).where(Client.name == name)).scalar()
    if row is None and create:
        row = Client(name=name)
        session.add(row)
        session.flush()
    return row


def create_token(session: Session, role: Role, name: str, *, client_id: int | None = None) -> tuple[ApiToken, str]:
    """A new token for ``client_id``; without one, the token joins the client named ``name``
    (created when missing), so two tokens made with the same name share their requests."""
    if client_id is None:
        client = client_named(session, name, create=True)
        assert client is not None
        client_id = client.id
    token = new_token()
    row = ApiToken(name=name, role=role.value, token_hash=hash_token(token), prefix=token[:12], client_id=client_id)
    session.add(row)
    session.flush()
    return row, token


def revoke_token(session: Session, token_id: int) -> ApiToken | None:
    """Mark a token revoked (idempotent: the first revocation time is kept) and drop it from this
    process's cache. ``None`` when there is no such token. The caller appends the audit event."""
    row = session.get(ApiToken, token_id, with_for_update=True)
    if row is None:
        return None
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    forget_token(token_id)
    # and once it is committed: a lookup that read the row before may have cached it meanwhile
    event.listen(session, "after_commit", lambda _s: forget_token(token_id), once=True)
    return row


def _lookup(session: Session, which: ColumnElement[bool]) -> Principal | None:
    """The one token check: the token row ``which`` selects, unless there is none or it is revoked."""
    row = session.execute(
        select(ApiToken.id, ApiToken.name, ApiToken.role, ApiToken.revoked_at, ApiToken.client_id).where(which)
    ).first()
    if row is None or row.revoked_at is not None:
        return None
    return Principal(token_id=row.id, name=row.name, role=Role(row.role), client_id=row.client_id)


def principal_for_token(session: Session, token: str) -> Principal | None:
    """Who a presented secret belongs to (API bearer tokens and the dashboard's sign-in alike)."""
    return _lookup(session, ApiToken.token_hash == hash_token(token))


def principal_for_id(session: Session, token_id: int) -> Principal | None:
    """A token already verified once, re-checked by id (a dashboard session on every page)."""
    return _lookup(session, ApiToken.id == token_id)


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthenticated("Missing Authorization header; send 'Authorization: Bearer <token>'")
    token = _bearer_token(header)
    if token is None:
        raise Unauthenticated("Authorization header must be 'Bearer <token>'")
    return token


def _bearer_token(header: str) -> str | None:
    """The token of an ``Authorization`` value ``Bearer <token>``; None when it is not one."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


DEFAULT_CACHE_TTL_S = 10.0
_cache: dict[str, tuple[Principal, float]] = {}
_forgotten = 0  # forget_token calls so far: a lookup that began before one is not cached


def clear_token_cache() -> None:
    _cache.clear()


def forget_token(token_id: int) -> None:
    """Drop a token's cached lookups in this process (revocation takes effect here at once)."""
    global _forgotten
    _forgotten += 1
    for digest, (principal, _) in list(_cache.items()):
        if principal.token_id == token_id:
            _cache.pop(digest, None)


def _ttl(request: Request) -> float:
    settings = getattr(request.app.state, "settings", None)
    return settings.security.token_cache_ttl_s if settings is not None else DEFAULT_CACHE_TTL_S


def authenticate(request: Request, session: Session = Depends(get_session, scope="function")) -> Principal:
    """Resolve the bearer token. Lookups are cached in-process for ``security.token_cache_ttl_s``
    (a revoked token stops working within that time); unknown tokens are never cached."""
    token = _bearer(request)
    digest = hash_token(token)
    now = time.monotonic()
    hit = _cache.get(digest)
    if hit is not None and hit[1] > now:
        return hit[0]
    forgotten = _forgotten
    principal = principal_for_token(session, token)
    # End the lookup's transaction now: the handler (same session) starts its own, and a
    # handler that works elsewhere never waits for a lock this request holds (SQLite).
    session.commit()
    if principal is None:
        raise Unauthenticated("Unknown or revoked token")
    ttl = _ttl(request)
    if ttl > 0 and forgotten == _forgotten:  # else a revocation may have committed since the read
        if len(_cache) > 10_000:
            _cache.clear()
        _cache[digest] = (principal, now + ttl)
    return principal


def cached_principal(request: Request) -> Principal | None:
    """The caller's principal from this process's token cache, without the database (for hot
    async routes); None when it must be looked up (:func:`authenticate`). A missing or malformed
    header is refused here."""
    return _cached(_bearer(request))


def principal_from_cache(authorization: str) -> Principal | None:
    """:func:`cached_principal` for a raw ``Authorization`` header value (a pure-ASGI path):
    None when the token is not cached *or* the header is malformed; the caller then takes the
    full path, which answers those."""
    token = _bearer_token(authorization)
    return None if token is None else _cached(token)


def _cached(token: str) -> Principal | None:
    hit = _cache.get(hash_token(token))
    return hit[0] if hit is not None and hit[1] > time.monotonic() else None


def may(principal: Principal, *roles: Role) -> bool:
    """Whether ``principal`` has one of ``roles`` (admin always has)."""
    return principal.role in roles or principal.role is Role.admin


def require(*roles: Role):
    """Dependency: the caller's token must have one of ``roles`` (admin always passes)."""
    allowed = frozenset(roles) | {Role.admin}

    def _check(principal: Principal = Depends(authenticate)) -> Principal:
        if not may(principal, *roles):
            raise Forbidden(
                f"Role '{principal.role}' may not do this; needs one of: "
                + ", ".join(sorted(r.value for r in allowed))
            )
        return principal

    return _check
