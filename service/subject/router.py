"""GET /v1/subjects/{subject_id}: the deletion receipt an auditor asks for."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from sqlalchemy.orm import Session

from service.core.db import get_session
from service.core.security import Principal, require
from service.models import Role
from service.subject.schemas import SubjectReceipt
from service.subject.service import receipt

router = APIRouter(tags=["subjects"])


@router.get("/v1/subjects/{subject_id}", response_model=SubjectReceipt)
def subject_receipt(
    request: Request,
    session: Annotated[Session, Depends(get_session, scope="function")],
    subject_id: str = Path(min_length=1, max_length=256),
    model: str | None = None,
    _: Principal = Depends(require(Role.auditor)),
) -> SubjectReceipt:
    return receipt(session, request.app.state.settings.security.secret_key, subject_id, model)
