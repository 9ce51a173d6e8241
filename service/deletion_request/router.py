"""HTTP routes for deletion requests; thin: the logic is in :mod:`service.deletion_request.service`."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from sqlalchemy.orm import Session

from service.core.db import get_session
from service.core.errors import UnsupportedMediaType
from service.core.security import Principal, require
from service.deletion_request import service
from service.deletion_request.schemas import (
    DeletionRequestCreate,
    DeletionRequestDeny,
    DeletionRequestPage,
    DeletionRequestRead,
)
from service.models import RequestStatus, Role

router = APIRouter(prefix="/v1/deletion-requests", tags=["deletion requests"])

SessionDep = Annotated[Session, Depends(get_session, scope="function")]
_PATH = "/v1/deletion-requests/"


async def require_json(request: Request) -> None:
    """A body must be declared JSON (``application/json`` or ``application/*+json``)."""
    ctype = request.headers.get("content-type", "")
    media = ctype.split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {media or 'none'!r}", accepted=["application/json"]
        )


def _secret(request: Request) -> str:
    return request.app.state.settings.security.secret_key


@router.post(
    "",
    status_code=202,
    response_model=DeletionRequestRead,
    responses={200: {"description": "Idempotent replay, or merged with the open request", "model": DeletionRequestRead}},
)
def create_deletion_request(
    request: Request,
    response: Response,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Role.requester, Role.operator))],
    _json: Annotated[None, Depends(require_json)],
    body: DeletionRequestCreate,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> DeletionRequestRead:
    """File a deletion request. ``202`` for a new one; ``200`` with the existing request for an
    idempotent replay or when an open request for the same subject and model exists."""
    result = service.create_request(session, secret=_secret(request), data=body, idempotency_key=idempotency_key)
    response.status_code = 202 if result.created else 200
    response.headers["Location"] = _PATH + str(result.request.id)
    response.headers["Lethe-Outcome"] = result.outcome
    return result.request


@router.get("", response_model=DeletionRequestPage)
def list_deletion_requests(
    request: Request,
    session: SessionDep,
    _principal: Annotated[Principal, Depends(require(Role.requester, Role.operator, Role.auditor))],
    status: Annotated[list[RequestStatus] | None, Query(description="Repeat to match several")] = None,
    model: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    subject_id: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> DeletionRequestPage:
    api = request.app.state.settings.api
    return service.list_requests(
        session,
        secret=_secret(request),
        statuses=status,
        model=model,
        subject_id=subject_id,
        cursor=cursor,
        limit=min(limit or api.page_size_default, api.page_size_max),
    )


@router.get("/{request_id}", response_model=DeletionRequestRead)
def get_deletion_request(
    request_id: uuid.UUID,
    session: SessionDep,
    _principal: Annotated[Principal, Depends(require(Role.requester, Role.operator, Role.auditor))],
) -> DeletionRequestRead:
    return service.get(session, request_id)


@router.post("/{request_id}/cancel", response_model=DeletionRequestRead)
def cancel_deletion_request(
    request_id: uuid.UUID,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Role.requester, Role.operator))],
) -> DeletionRequestRead:
    return service.transition(session, request_id, "cancel", actor=principal.actor)


@router.post("/{request_id}/approve", response_model=DeletionRequestRead)
def approve_deletion_request(
    request_id: uuid.UUID,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Role.operator))],
) -> DeletionRequestRead:
    return service.transition(session, request_id, "approve", actor=principal.actor)


@router.post("/{request_id}/deny", response_model=DeletionRequestRead)
def deny_deletion_request(
    request_id: uuid.UUID,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Role.operator))],
    _json: Annotated[None, Depends(require_json)],
    body: DeletionRequestDeny,
) -> DeletionRequestRead:
    return service.transition(session, request_id, "deny", actor=principal.actor, reason=body.reason)


@router.post("/{request_id}/retry", response_model=DeletionRequestRead)
def retry_deletion_request(
    request_id: uuid.UUID,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Role.operator))],
) -> DeletionRequestRead:
    return service.transition(session, request_id, "retry", actor=principal.actor)
