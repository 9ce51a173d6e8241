"""Bearer tokens with roles, and subject keys.

Tokens are 256 random bits, so a single sha256 is a sufficient one-way hash (no slow KDF
needed for high-entropy secrets). Subject keys are HMAC-SHA256(server secret, subject_id):
the only form of a subject id that outlives its deletion request, and the only one in logs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.db import get_session
from service.core.errors import Forbidden, Unauthenticated
from service.models import ApiToken, Role

TOKEN_PREFIX = "lethe_"


def subject_key(secret: str, subject_id: str) -> str:
    return hmac.new(secret.encode(), subject_id.encode("utf-8"), hashlib.sha256).hexdigest()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    token_id: int
    name: str
    role: Role

    @property
    def actor(self) -> str:
        return f"token:{self.token_id}:{self.name}"


def create_token(session: Session, role: Role, name: str) -> tuple[ApiToken, str]:
    token = new_token()
    row = ApiToken(name=name, role=role.value, token_hash=hash_token(token), prefix=token[:12])
    session.add(row)
    session.flush()
    return row, token


def principal_for_token(session: Session, token: str) -> Principal | None:
    row = session.execute(
        select(ApiToken.id, ApiToken.name, ApiToken.role, ApiToken.revoked_at).where(
            ApiToken.token_hash == hash_token(token)
        )
    ).first()
    if row is None or row.revoked_at is not None:
        return None
    return Principal(token_id=row.id, name=row.name, role=Role(row.role))


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthenticated("Missing Authorization header; send 'Authorization: Bearer <token>'")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthenticated("Authorization header must be 'Bearer <token>'")
    return value.strip()


_CACHE_TTL_S = 10.0
_cache: dict[str, tuple[Principal, float]] = {}


def clear_token_cache() -> None:
    _cache.clear()


def authenticate(request: Request, session: Session = Depends(get_session, scope="function")) -> Principal:
    """Resolve the bearer token. Lookups are cached in-process for 10 s (a revoked token
    stops working within that time); unknown tokens are never cached."""
    token = _bearer(request)
    digest = hash_token(token)
    now = time.monotonic()
    hit = _cache.get(digest)
    if hit is not None and hit[1] > now:
        return hit[0]
    principal = principal_for_token(session, token)
    # End the lookup's transaction now: the handler (same session) starts its own, and a
    # handler that works elsewhere never waits for a lock this request holds (SQLite).
    session.commit()
    if principal is None:
        raise Unauthenticated("Unknown or revoked token")
    if len(_cache) > 10_000:
        _cache.clear()
    _cache[digest] = (principal, now + _CACHE_TTL_S)
    return principal


def require(*roles: Role):
    """Dependency: the caller's token must have one of ``roles`` (admin always passes)."""
    allowed = frozenset(roles) | {Role.admin}

    def _check(principal: Principal = Depends(authenticate)) -> Principal:
        if principal.role not in allowed:
            raise Forbidden(
                f"Role '{principal.role}' may not do this; needs one of: "
                + ", ".join(sorted(r.value for r in allowed))
            )
        return principal

    return _check
