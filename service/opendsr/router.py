"""OpenDSR processor endpoints. Controllers use a bearer token of role ``requester`` (their
client owns the requests); discovery and the certificate are public. Responses carry
``X-OpenDSR-Signature`` (RSA-SHA256 over the raw body) and ``X-OpenDSR-Processor-Domain``."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from service.core.db import get_session
from service.client.tokens import Principal, require
from service.models import Role
from service.models._types import utcnow
from service.opendsr import callbacks, service
from service.opendsr.schemas import (
    Discovery,
    OpenDsrCancelled,
    OpenDsrCreate,
    OpenDsrReceipt,
    OpenDsrStatus,
    SupportedIdentity,
)

router = APIRouter(prefix="/opendsr", tags=["OpenDSR"])
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ControllerDep = Annotated[Principal, Depends(require(Role.requester))]


def _signed(request: Request, body: BaseModel, status_code: int = 200) -> Response:
    raw = json.dumps(body.model_dump(mode="json"), separators=(",", ":")).encode()
    return Response(raw, status_code=status_code, media_type="application/json",
                    headers=callbacks.headers(request.app.state.settings, raw))


def _owner(who: Principal) -> int | None:
    return None if who.role is Role.admin else who.client_id


@router.get("/discovery", response_model=Discovery)
def discovery(request: Request) -> Discovery:
    """What this processor supports: erasure, the identities and how each maps to a subject id,
    the status mapping, and where the callback-signing certificate is."""
    settings = request.app.state.settings
    return Discovery(
        api_version=callbacks.API_VERSION,
        supported_identities=[SupportedIdentity(identity_type=t, identity_format=f, maps_to=how)
                              for (t, f), how in service.SUPPORTED_IDENTITIES.items()],
        supported_subject_request_types=list(service.SUPPORTED_TYPES),
        processor_certificate=settings.opendsr.public_url.rstrip("/") + "/opendsr/cert.pem",
        status_mapping=callbacks.STATUS_MAP,
    )


@router.get("/cert.pem", response_class=Response, responses={200: {"content": {"application/x-pem-file": {}}}})
def certificate(request: Request) -> Response:
    """The certificate of the key that signs responses and callbacks."""
    return Response(callbacks.certificate_pem(request.app.state.settings), media_type="application/x-pem-file")


_SIGNED = "Signed: X-OpenDSR-Signature (base64 RSA-SHA256 of the body), X-OpenDSR-Processor-Domain"


@router.post("/requests", status_code=201, response_class=Response,
             responses={201: {"model": OpenDsrReceipt, "description": "Filed. " + _SIGNED},
                        200: {"model": OpenDsrReceipt, "description": "An idempotent replay: the request this subject_request_id filed"}})
async def create_request(body: OpenDsrCreate, request: Request, session: SessionDep, who: ControllerDep) -> Response:
    """File an erasure request; ``subject_request_id`` is the idempotency key."""
    callbacks.signing_key(request.app.state.settings)  # 503 before anything is written when unconfigured
    raw = await request.body()
    filed = await run_in_threadpool(service.create, session, request.app.state.settings, body, who.client_id)
    answer = OpenDsrReceipt(
        api_version=callbacks.API_VERSION, controller_id=str(filed.od.client_id),
        expected_completion_time=filed.request.due_at, received_time=filed.od.received_time,
        encoded_request=base64.b64encode(raw).decode(), subject_request_id=filed.od.subject_request_id,
    )
    return _signed(request, answer, 201 if filed.created else 200)


@router.get("/requests/{subject_request_id}", response_class=Response,
            responses={200: {"model": OpenDsrStatus, "description": _SIGNED}})
def get_request(subject_request_id: uuid.UUID, request: Request, session: SessionDep, who: ControllerDep) -> Response:
    od = service.find(session, subject_request_id, _owner(who))
    return _signed(request, OpenDsrStatus(**service.status_body(session, od)))


@router.delete("/requests/{subject_request_id}", status_code=202, response_class=Response,
               responses={202: {"model": OpenDsrCancelled, "description": "Cancelled. " + _SIGNED}})
def cancel_request(subject_request_id: uuid.UUID, request: Request, session: SessionDep, who: ControllerDep) -> Response:
    """Cancel while pending (409 once processing has begun)."""
    od = service.find(session, subject_request_id, _owner(who))
    service.cancel(session, od, who.actor)
    return _signed(request, OpenDsrCancelled(api_version=callbacks.API_VERSION, controller_id=str(od.client_id),
                                             subject_request_id=od.subject_request_id, received_time=utcnow()), 202)
