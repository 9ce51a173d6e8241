"""Admin routes for clients and tokens (DESIGN §10). Every route needs the admin role."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from sqlalchemy.orm import Session

from service.client import service
from service.client.schemas import ClientCreate, ClientRead, TokenCreate, TokenCreated, TokenRead
from service.core.db import get_session
from service.client.tokens import Principal, require

router = APIRouter(tags=["clients and tokens"])
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
AdminDep = Annotated[Principal, Depends(require())]


@router.post("/v1/clients", response_model=ClientRead, status_code=201)
def create_client(body: ClientCreate, session: SessionDep, who: AdminDep) -> ClientRead:
    """A client: a product backend or a team. Its tokens file requests that belong to it."""
    return service.create_client(session, body.name, actor=who.actor)


@router.get("/v1/clients", response_model=list[ClientRead])
def list_clients(session: SessionDep, _: AdminDep) -> list[ClientRead]:
    return service.list_clients(session)


@router.post("/v1/tokens", response_model=TokenCreated, status_code=201)
def create_token(body: TokenCreate, session: SessionDep, who: AdminDep) -> TokenCreated:
    """A token for a client; the secret is in the answer once and never again."""
    client = service.find_client(session, body.client_id)
    return service.issue_token(session, role=body.role, name=body.name, client=client, actor=who.actor)


@router.get("/v1/tokens", response_model=list[TokenRead])
def list_tokens(
    session: SessionDep,
    _: AdminDep,
    client_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    include_revoked: bool = True,
) -> list[TokenRead]:
    return service.list_tokens(session, client_id=client_id, include_revoked=include_revoked)


@router.post("/v1/tokens/{token_id}/revoke", response_model=TokenRead)
def revoke_token(
    token_id: Annotated[int, Path(ge=1, le=2**31 - 1)], session: SessionDep, who: AdminDep
) -> TokenRead:
    """Revoke a token (audited). It stops working at once in this process and within
    ``security.token_cache_ttl_s`` (default 10 s) in every other API process."""
    return service.revoke(session, token_id, actor=who.actor)
