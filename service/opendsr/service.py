"""OpenDSR requests mapped onto deletion requests (DESIGN §12).

* Erasure only; the subject id is taken from the first identity of a supported (type, format):
  ``controller_customer_id`` then ``email``, both ``raw``, used as given (it must be the id the
  product used when it ingested the subject's samples). Hashed formats cannot be mapped.
* ``subject_request_id`` is the idempotency key: the same id again (same client) answers the
  request it created; another client's id is a 409.
* One OpenDSR request files one deletion request for every model (``model`` null), owned by the
  controller's client, with ``source = "opendsr"``; callback URLs pass the same SSRF guard as
  webhooks and are called through the same delivery machinery, signed with RSA-SHA256.
* Statuses: see :mod:`service.opendsr.callbacks`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.core.config import Settings
from service.core.errors import BadRequest, Conflict, NotFound
from service.deletion_request import service as requests_service
from service.deletion_request.schemas import DeletionRequestCreate, DeletionRequestRead
from service.models import DeletionRequest, OpenDsrRequest
from service.models._types import utcnow
from service.opendsr.callbacks import API_VERSION, opendsr_status
from service.opendsr.schemas import OpenDsrCreate
from service.webhook import targets

SUPPORTED_TYPES = ("erasure",)
# (identity_type, identity_format) -> how it maps, in order of preference
SUPPORTED_IDENTITIES = {
    ("controller_customer_id", "raw"): "the subject id, as given",
    ("email", "raw"): "the subject id, as given (use it when the product keyed its samples by email)",
}


class OpenDsrBadRequest(BadRequest):
    type, title = "opendsr-bad-request", "OpenDSR request not supported"

    def __init__(self, detail: str, **extra) -> None:
        # The specification's error object alongside the problem fields.
        super().__init__(detail, error={"code": 400, "message": detail}, **extra)


class OpenDsrNotFound(NotFound):
    type, title = "opendsr-request-not-found", "Unknown OpenDSR request"


class OpenDsrIdTaken(Conflict):
    type, title = "opendsr-id-taken", "subject_request_id is used by another controller"


def _subject_id(data: OpenDsrCreate) -> str:
    for wanted in SUPPORTED_IDENTITIES:
        for ident in data.subject_identities:
            if (ident.identity_type, ident.identity_format) == wanted:
                return ident.identity_value
    offered = sorted({f"{i.identity_type}/{i.identity_format}" for i in data.subject_identities})
    raise OpenDsrBadRequest(
        f"No supported identity (offered: {', '.join(offered)}); supported: "
        + ", ".join(f"{t}/{f}" for t, f in SUPPORTED_IDENTITIES),
    )


@dataclass(frozen=True)
class Filed:
    od: OpenDsrRequest
    request: DeletionRequestRead
    created: bool


def create(session: Session, settings: Settings, data: OpenDsrCreate, client_id: int) -> Filed:
    """File (or replay) an OpenDSR erasure request; 400 for what cannot be honoured, nothing written."""
    existing = session.get(OpenDsrRequest, data.subject_request_id)
    if existing is not None:
        if existing.client_id != client_id:
            raise OpenDsrIdTaken("This subject_request_id belongs to another controller; generate a new UUID")
        return Filed(existing, requests_service.get(session, existing.request_id), False)
    if data.subject_request_type not in SUPPORTED_TYPES:
        raise OpenDsrBadRequest(
            f"subject_request_type '{data.subject_request_type}' is not supported; Lethe processes erasure only",
            supported=list(SUPPORTED_TYPES),
        )
    subject_id = _subject_id(data)
    for url in data.status_callback_urls:
        try:
            targets.resolve(url, allow_private=settings.webhooks.allow_private_targets)
        except targets.UnsafeTarget as exc:
            raise OpenDsrBadRequest(f"status_callback_url {url!r} refused: {exc.detail}") from None
    try:
        body = DeletionRequestCreate(subject_id=subject_id, source="opendsr")
    except ValueError as exc:
        raise OpenDsrBadRequest(f"The identity value is not a valid subject id: {exc}") from None
    result = requests_service.create_request(session, secret=settings.security.secret_key, data=body,
                                             idempotency_key=f"opendsr:{data.subject_request_id}", client_id=client_id)
    od = OpenDsrRequest(subject_request_id=data.subject_request_id, client_id=client_id, request_id=result.request.id,
                        status_callback_urls=list(dict.fromkeys(data.status_callback_urls)), regulation=data.regulation,
                        submitted_time=data.submitted_time, received_time=utcnow())
    try:
        with session.begin_nested():
            session.add(od)
            session.flush()
    except IntegrityError:  # a concurrent filing of the same id won: answer it
        winner = session.get(OpenDsrRequest, data.subject_request_id)
        if winner is None or winner.client_id != client_id:
            raise OpenDsrIdTaken("This subject_request_id belongs to another controller; generate a new UUID") from None
        return Filed(winner, requests_service.get(session, winner.request_id), False)
    return Filed(od, result.request, True)


def find(session: Session, subject_request_id: uuid.UUID, client_id: int | None) -> OpenDsrRequest:
    """``client_id`` None: any controller's (an admin)."""
    od = session.get(OpenDsrRequest, subject_request_id)
    if od is None or (client_id is not None and od.client_id != client_id):
        raise OpenDsrNotFound(f"No OpenDSR request {subject_request_id}")
    return od


def status_body(session: Session, od: OpenDsrRequest) -> dict:
    row = session.execute(select(DeletionRequest.status, DeletionRequest.due_at)
                          .where(DeletionRequest.id == od.request_id)).one()
    return {
        "api_version": API_VERSION,
        "controller_id": str(od.client_id),
        "expected_completion_time": requests_service._utc(row.due_at).isoformat(),
        "subject_request_id": str(od.subject_request_id),
        "request_status": opendsr_status(row.status),
        "lethe_request_id": str(od.request_id),
    }


def cancel(session: Session, od: OpenDsrRequest, actor: str) -> None:
    """Cancel the deletion request behind it (409 once it is being processed or done)."""
    requests_service.transition(session, od.request_id, "cancel", actor=actor, reason="cancelled by the OpenDSR controller")
