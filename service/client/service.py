"""Clients and tokens: creation, listing and revocation, each audited. Used by the admin routes
and by the ``lethe client`` / ``lethe token`` commands. Never commits (the boundary does)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.audit.service import append_event
from service.client.schemas import ClientRead, TokenCreated, TokenRead
from service.core.errors import Conflict, NotFound
from service.client.tokens import create_token, revoke_token
from service.models import ApiToken, Client, Role
from service.models._types import utcnow


class ClientNotFound(NotFound):
    type, title = "client-not-found", "Unknown client"


class ClientExists(Conflict):
    type, title = "client-exists", "A client with this name exists"


class TokenNotFound(NotFound):
    type, title = "token-not-found", "Unknown token"


def _active_counts(session: Session, ids: Sequence[int]) -> dict[int, int]:
    if not ids:
        return {}
    rows = session.execute(
        select(ApiToken.client_id, func.count()).where(ApiToken.client_id.in_(list(ids)), ApiToken.revoked_at.is_(None))
        .group_by(ApiToken.client_id)
    ).all()
    return {r[0]: int(r[1]) for r in rows}


def _client_read(c: Client, active: int) -> ClientRead:
    return ClientRead(id=c.id, name=c.name, created_at=c.created_at, active_tokens=active)


def create_client(session: Session, name: str, *, actor: str) -> ClientRead:
    try:
        with session.begin_nested():
            row = Client(name=name, created_at=utcnow())
            session.add(row)
            session.flush()
    except IntegrityError:
        raise ClientExists(f"A client named '{name}' exists", name=name) from None
    append_event(session, actor=actor, kind="client.created", payload={"client_id": row.id, "name": name})
    return _client_read(row, 0)


def list_clients(session: Session) -> list[ClientRead]:
    rows = session.execute(select(Client).order_by(Client.id)).scalars().all()
    counts = _active_counts(session, [c.id for c in rows])
    return [_client_read(c, counts.get(c.id, 0)) for c in rows]


def find_client(session: Session, ref: str | int) -> Client:
    """A client by id, or by name when ``ref`` is not a number."""
    if isinstance(ref, int) or str(ref).isdigit():
        row = session.get(Client, int(ref))
    else:
        row = session.execute(select(Client).where(Client.name == ref)).scalar()
    if row is None:
        raise ClientNotFound(f"No client {ref!r}", client=str(ref))
    return row


def _token_read(t: ApiToken, client_name: str) -> TokenRead:
    return TokenRead(id=t.id, name=t.name, role=Role(t.role), client_id=t.client_id, client=client_name,
                     prefix=t.prefix, created_at=t.created_at, revoked_at=t.revoked_at)


def issue_token(session: Session, *, role: Role, name: str, client: Client | None, actor: str) -> TokenCreated:
    """A new token for ``client`` (``None``: the client named ``name``, created when missing)."""
    row, secret = create_token(session, role, name, client_id=client.id if client is not None else None)
    client_name = client.name if client is not None else session.get(Client, row.client_id).name
    append_event(session, actor=actor, kind="token.created",
                 payload={"token_id": row.id, "name": name, "role": role.value, "client_id": row.client_id})
    return TokenCreated(**_token_read(row, client_name).model_dump(), token=secret)


def list_tokens(session: Session, *, client_id: int | None = None, include_revoked: bool = True) -> list[TokenRead]:
    q = select(ApiToken, Client.name).join(Client, Client.id == ApiToken.client_id).order_by(ApiToken.id)
    if client_id is not None:
        q = q.where(ApiToken.client_id == client_id)
    if not include_revoked:
        q = q.where(ApiToken.revoked_at.is_(None))
    return [_token_read(t, name) for t, name in session.execute(q).all()]


def revoke(session: Session, token_id: int, *, actor: str) -> TokenRead:
    """Revoke a token (audited once; revoking again changes nothing). It stops working at once
    in this process and within ``security.token_cache_ttl_s`` in every other."""
    before = session.execute(select(ApiToken.revoked_at).where(ApiToken.id == token_id)).first()
    row = revoke_token(session, token_id)
    if row is None or before is None:
        raise TokenNotFound(f"No token with id {token_id}", token_id=token_id)
    if before.revoked_at is None:
        append_event(session, actor=actor, kind="token.revoked",
                     payload={"token_id": row.id, "name": row.name, "role": row.role, "client_id": row.client_id})
    return _token_read(row, session.get(Client, row.client_id).name)
