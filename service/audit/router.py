"""The auditor's view of the audit log: events in seq order, and chain verification (DESIGN §7)."""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.orm import Session

from service.audit import keys as audit_keys
from service.audit import repository
from service.audit.schemas import AuditEventRead, AuditPage, ChainVerificationRead, CheckpointRead, PublicKeyRead
from service.audit.service import checkpoint_dict, latest_checkpoint, verify_chain
from service.core.db import get_session
from service.core.errors import NotFound
from service.client.tokens import Principal, require
from service.core.security import subject_key
from service.core.types import INT64_MAX, SubjectId
from service.models import Role

router = APIRouter(prefix="/v1/audit", tags=["audit"])
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def list_events(session: Session, *, since: int, kind: str | None, key: str | None, limit: int) -> AuditPage:
    """One page of events with ``seq > since`` (also used by the admin dashboard)."""
    rows = repository.events_after(session, since=since, limit=limit, kind=kind, subject_key=key)
    page = rows[:limit]
    return AuditPage(
        items=[AuditEventRead.model_validate(e, from_attributes=True) for e in page],
        next_since=page[-1].seq if len(rows) > limit else None,
    )


@router.get("", response_model=AuditPage)
def audit_events(
    request: Request,
    session: SessionDep,
    since: Annotated[int, Query(ge=0, le=INT64_MAX, description="Return events with seq greater than this")] = 0,
    kind: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    subject_id: Annotated[SubjectId | None, Query(description="Matched by its subject key")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    _: Principal = Depends(require(Role.auditor)),
) -> AuditPage:
    key = subject_key(request.app.state.settings.security.secret_key, subject_id) if subject_id is not None else None
    return list_events(session, since=since, kind=kind, key=key, limit=limit)


@router.get("/verify", response_model=ChainVerificationRead)
def audit_verify(session: SessionDep, _: Principal = Depends(require(Role.auditor))) -> ChainVerificationRead:
    """Server-side verification with the HMAC key: edited, deleted, reordered events, a chain
    truncated before the latest checkpoint, and checkpoints whose head no longer matches."""
    return ChainVerificationRead(**verify_chain(session).to_dict())


class CheckpointNotFound(NotFound):
    type, title = "audit-checkpoint-not-found", "No checkpoint has been signed yet"


@router.get("/checkpoint", response_model=CheckpointRead)
def audit_checkpoint(session: SessionDep, _: Principal = Depends(require(Role.auditor, Role.serving))) -> CheckpointRead:
    """The latest signed checkpoint: keep a copy outside Lethe, and verify exports against it."""
    cp = latest_checkpoint(session)
    if cp is None:
        raise CheckpointNotFound("No audit checkpoint has been signed yet")
    return CheckpointRead(**checkpoint_dict(cp))


@router.get("/public-key", response_model=PublicKeyRead)
def audit_public_key() -> PublicKeyRead:
    """The Ed25519 public key that checkpoints are signed with. Public: no token needed."""
    public = audit_keys.current().public_key
    return PublicKeyRead(
        key_id=audit_keys.public_key_id(public),
        algorithm=audit_keys.ALGORITHM,
        public_key_pem=audit_keys.public_key_pem(public),
        public_key_b64=base64.b64encode(audit_keys.raw_public(public)).decode(),
    )
