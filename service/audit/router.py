"""The audit log: events in seq order, and chain verification."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.audit.schemas import AuditEventRead, AuditPage, ChainVerificationRead
from service.audit.service import verify_chain
from service.core.db import get_session
from service.core.security import Principal, require, subject_key
from service.models import AuditEvent, Role

router = APIRouter(prefix="/v1/audit", tags=["audit"])
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def list_events(session: Session, *, since: int, kind: str | None, key: str | None, limit: int) -> AuditPage:
    q = select(AuditEvent).where(AuditEvent.seq > since)
    if kind:
        q = q.where(AuditEvent.kind == kind)
    if key:
        q = q.where(AuditEvent.subject_key == key)
    rows = session.execute(q.order_by(AuditEvent.seq).limit(limit + 1)).scalars().all()
    page = rows[:limit]
    return AuditPage(
        items=[AuditEventRead.model_validate(e, from_attributes=True) for e in page],
        next_since=page[-1].seq if len(rows) > limit else None,
    )


@router.get("", response_model=AuditPage)
def audit_events(
    request: Request,
    session: SessionDep,
    since: int = Query(0, ge=0),
    kind: str | None = None,
    subject_id: str | None = Query(None, min_length=1, max_length=256),
    limit: int = Query(100, ge=1, le=1000),
    _: Principal = Depends(require(Role.auditor)),
) -> AuditPage:
    key = subject_key(request.app.state.settings.security.secret_key, subject_id) if subject_id else None
    return list_events(session, since=since, kind=kind, key=key, limit=limit)


@router.get("/verify", response_model=ChainVerificationRead)
def audit_verify(session: SessionDep, _: Principal = Depends(require(Role.auditor))) -> ChainVerificationRead:
    return ChainVerificationRead(**verify_chain(session).to_dict())
