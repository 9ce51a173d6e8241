"""HTTP routes for deletion requests; thin: the logic is in :mod:`service.deletion_request.service`."""

from __future__ import annotations

import uuid
from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.core.db import get_session
from service.core.errors import UnsupportedMediaType
from service.client.tokens import Principal, authenticate, require
from service.core.types import LIMIT_DESCRIPTION, LIMIT_MAX, SubjectId
from service.deletion_request import service
from service.deletion_request.schemas import (
    DeletionRequestCreate,
    DeletionRequestDeny,
    DeletionRequestExtend,
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


_may_file = require(Role.requester)
# Readers of requests. A requester reads only its client's; an auditor reads no raw subject id.
_may_read = require(Role.requester, Role.operator, Role.auditor)


def _owner(principal: Principal) -> int | None:
    """The client whose requests ``principal`` is confined to (``None``: every request)."""
    return None if principal.sees_everything else principal.client_id


def _redact(principal: Principal) -> bool:
    return principal.role is Role.auditor

# At most this many creates run their database work at once per process; the others wait on
# the event loop (cheaply). Profiling under load (bench/api_intake.py) showed that letting the
# 40 default worker threads take the GIL in turn cost more CPU than the create itself; a small
# bound also keeps intake from holding more than this many pooled connections per process.
INTAKE_CONCURRENCY = 4


def _intake_limiter(request: Request) -> anyio.CapacityLimiter:
    # One per application, created inside its event loop on first use.
    limiter = getattr(request.app.state, "deletion_intake_limiter", None)
    if limiter is None:
        limiter = request.app.state.deletion_intake_limiter = anyio.CapacityLimiter(INTAKE_CONCURRENCY)
    return limiter


def _create_in_one_transaction(
    request: Request, body: DeletionRequestCreate, idempotency_key: str | None
) -> service.CreateResult:
    """Authenticate, authorise and insert in one worker-thread hop. Every transaction is
    committed here, before the response is sent."""
    factory: sessionmaker[Session] = request.app.state.session_factory
    with factory() as session:
        principal = authenticate(request, session)
        _may_file(principal)
        session.commit()  # ends the token lookup's read (if the cache missed): one connection at a time
        bind = session.get_bind()
        engine = bind if isinstance(bind, Engine) and bind.dialect.name == "postgresql" else None
        result = service.create_request(
            session, secret=_secret(request), data=body, idempotency_key=idempotency_key, autocommit_engine=engine,
            client_id=principal.client_id,
        )
        session.commit()
        return result


@router.post(
    "",
    status_code=202,
    response_model=DeletionRequestRead,
    responses={
        200: {"description": "Idempotent replay, or merged with the open request", "model": DeletionRequestRead},
        401: {"description": "Missing or unknown bearer token"},
        403: {"description": "The token's role may not file requests (requester and admin may)"},
    },
)
async def create_deletion_request(
    request: Request,
    response: Response,
    _json: Annotated[None, Depends(require_json)],
    body: DeletionRequestCreate,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> DeletionRequestRead:
    """File a deletion request (roles requester, admin); it belongs to the token's client.
    ``202`` for a new one; ``200`` with the existing request for an idempotent replay (keys are
    per client) or when the same client has an open request for the same subject and model.

    The hot path (DESIGN §9 asks for >= 1,000/s on 2 cores). The usual ``get_session`` +
    ``require`` dependencies cost four thread-pool hops per request (session enter, token,
    role check, session exit) besides the endpoint's; profiling showed those hops as the
    largest CPU cost after the database. So this route does the same things — the same
    ``authenticate`` (with its token cache) and ``require`` check, one transaction committed
    before the response — in a single hop. A consequence: a body that fails validation is a
    422 even without a valid token (the schema is public anyway); nothing is written.
    """
    result = await anyio.to_thread.run_sync(
        _create_in_one_transaction, request, body, idempotency_key, limiter=_intake_limiter(request)
    )
    response.status_code = 202 if result.created else 200
    response.headers["Location"] = _PATH + str(result.request.id)
    response.headers["Lethe-Outcome"] = result.outcome
    return result.request


@router.get("", response_model=DeletionRequestPage)
def list_deletion_requests(
    request: Request,
    session: SessionDep,
    principal: Annotated[Principal, Depends(_may_read)],
    status: Annotated[list[RequestStatus] | None, Query(description="Repeat to match several")] = None,
    model: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    subject_id: Annotated[SubjectId | None, Query()] = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int | None, Query(ge=1, le=LIMIT_MAX, description=LIMIT_DESCRIPTION)] = None,
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
        owner=_owner(principal),
        redact=_redact(principal),
    )


@router.get("/{request_id}", response_model=DeletionRequestRead)
def get_deletion_request(
    request_id: uuid.UUID,
    session: SessionDep,
    principal: Annotated[Principal, Depends(_may_read)],
) -> DeletionRequestRead:
    """A requester reads only its client's requests (another client's id is ``404``)."""
    return service.get(session, request_id, owner=_owner(principal), redact=_redact(principal))


@router.post("/{request_id}/cancel", response_model=DeletionRequestRead)
def cancel_deletion_request(
    request_id: uuid.UUID,
    session: SessionDep,
    principal: Annotated[Principal, Depends(_may_file)],
) -> DeletionRequestRead:
    """Requesters cancel their client's requests (another client's id is ``404``); admins any."""
    return service.transition(session, request_id, "cancel", actor=principal.actor, owner=_owner(principal))


@router.post("/{request_id}/approve", response_model=DeletionRequestRead)
def approve_deletion_request(
    request_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Role.operator))],
) -> DeletionRequestRead:
    """409 ``line-stopped`` while a failed job of the model awaits an acknowledgement."""
    return service.transition(session, request_id, "approve", actor=principal.actor,
                              stop_the_line=request.app.state.settings.pipeline.stop_the_line)


@router.post("/{request_id}/deny", response_model=DeletionRequestRead)
def deny_deletion_request(
    request_id: uuid.UUID,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Role.operator))],
    _json: Annotated[None, Depends(require_json)],
    body: DeletionRequestDeny,
) -> DeletionRequestRead:
    return service.transition(session, request_id, "deny", actor=principal.actor, reason=body.reason)


@router.post("/{request_id}/extend", response_model=DeletionRequestRead)
def extend_deletion_request(
    request_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Role.operator))],
    _json: Annotated[None, Depends(require_json)],
    body: DeletionRequestExtend,
) -> DeletionRequestRead:
    """Extend the due date once, before it passes, by at most ``pipeline.sla_extension_max_days``."""
    return service.extend_due(session, request_id, days=body.days, reason=body.reason.strip(), actor=principal.actor,
                              max_days=request.app.state.settings.pipeline.sla_extension_max_days)


@router.post("/{request_id}/retry", response_model=DeletionRequestRead)
def retry_deletion_request(
    request_id: uuid.UUID,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Role.operator))],
) -> DeletionRequestRead:
    return service.transition(session, request_id, "retry", actor=principal.actor)
