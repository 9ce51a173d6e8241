"""The event outbox: one ``webhook_events`` row per state change, added to the caller's session
so that it commits (or rolls back) with the change itself. The domain services call these
functions at their one function per transition; the relay fans the rows out to deliveries.

Payloads carry subject keys, never raw subject ids."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from service.models import DeletionRequest, Job, Model, ModelVersion, WebhookEvent
from service.models._types import utcnow

REQUEST_STATUS = "request.status_changed"
REQUEST_EXTENDED = "request.extended"
REQUEST_HELD = "request.held"
JOB_STATUS = "job.status_changed"
JOB_FAILED = "job.failed"
JOB_ACKNOWLEDGED = "job.acknowledged"
LINE_STOPPED = "model.line_stopped"
VERSION_PUBLISHED = "version.published"
VERSION_REVOKED = "version.revoked"
BUDGET_EXHAUSTED = "model.budget_exhausted"

# What a subscription may ask for; a requester's subscription only sees its own requests.
EVENT_TYPES: dict[str, str] = {
    REQUEST_STATUS: "a deletion request changed status (filed, approved, processing, completed, …)",
    REQUEST_EXTENDED: "an operator extended a request's due date",
    REQUEST_HELD: "a queued request is held and will not be scheduled until an operator acts (the reason says why, e.g. "
                  "forgetting its class would leave fewer than two classes)",
    JOB_STATUS: "a job changed status (queued, running, succeeded, failed)",
    JOB_FAILED: "a job failed",
    LINE_STOPPED: "a failed job stopped the line of its model (approvals and scheduling blocked)",
    JOB_ACKNOWLEDGED: "an operator acknowledged a failed job (the line runs again)",
    VERSION_PUBLISHED: "a model version was published",
    VERSION_REVOKED: "a model version was revoked",
    BUDGET_EXHAUSTED: "a certified model's (ε, δ) budget ran out: the version was retrained from scratch with a fresh perturbation",
}
REQUEST_EVENT_TYPES = frozenset({REQUEST_STATUS, REQUEST_EXTENDED, REQUEST_HELD})


def emit(session: Session, event_type: str, data: dict[str, Any], *, client_id: int | None = None,
         now: datetime | None = None) -> None:
    session.add(WebhookEvent(type=event_type, client_id=client_id, data=data, created_at=now or utcnow()))


def _model_name(session: Session, model_id: int | None) -> str | None:
    if model_id is None:
        return None
    model = session.get(Model, model_id)
    return model.name if model is not None else None


def request_data(row: DeletionRequest, model: str | None, previous: str | None) -> dict[str, Any]:
    return {
        "request_id": str(row.id),
        "subject_key": row.subject_key,
        "model": model,
        "status": row.status,
        "previous_status": previous,
        "due_at": row.due_at.isoformat() if row.due_at else None,
    }


def request_changed(session: Session, row: DeletionRequest, previous: str | None, *, now: datetime | None = None) -> None:
    """``row`` has just taken its new status (``previous``: the one it left; None when filed)."""
    emit(session, REQUEST_STATUS, request_data(row, _model_name(session, row.model_id), previous),
         client_id=row.client_id, now=now)


def request_held(session: Session, row: DeletionRequest, model: str, *, now: datetime | None = None) -> None:
    """``row`` stays ``queued`` but will not be scheduled: ``reason`` says why (its ``error``)."""
    emit(session, REQUEST_HELD, request_data(row, model, row.status) | {"reason": row.error}, client_id=row.client_id, now=now)


def requests_changed(session: Session, ids: Iterable[uuid.UUID], status: str, previous: str) -> None:
    """A bulk move of many requests (a job taking its batch): one event each, in one insert."""
    ids = list(ids)
    if not ids:
        return
    now = utcnow()
    rows = session.execute(
        select(DeletionRequest.id, DeletionRequest.subject_key, DeletionRequest.client_id, DeletionRequest.model_id,
               DeletionRequest.due_at).where(DeletionRequest.id.in_(ids))
    ).all()
    names = {m: _model_name(session, m) for m in {r.model_id for r in rows}}
    session.execute(insert(WebhookEvent), [
        {"type": REQUEST_STATUS, "client_id": r.client_id, "created_at": now, "data": {
            "request_id": str(r.id), "subject_key": r.subject_key, "model": names[r.model_id], "status": status,
            "previous_status": previous, "due_at": r.due_at.isoformat() if r.due_at else None}}
        for r in rows
    ])


def job_changed(session: Session, job: Job, previous: str | None) -> None:
    data = {"job_id": str(job.id), "model": _model_name(session, job.model_id), "kind": job.kind,
            "status": job.status, "previous_status": previous, "attempts": job.attempts}
    emit(session, JOB_STATUS, data)
    if job.status == "failed":
        emit(session, JOB_FAILED, data | {"error": (job.error or "")[:500]})


def version_event(session: Session, event_type: str, version: ModelVersion, model_name: str) -> None:
    emit(session, event_type, {"model": model_name, "number": version.number, "sha256": version.sha256,
                               "state": version.state})
    bound = version.bound or {}
    if event_type == VERSION_PUBLISHED and bound.get("retrain_reason") == "budget exhausted":
        emit(session, BUDGET_EXHAUSTED, {"model": model_name, "number": version.number,
                                         "epsilon_budget": bound.get("epsilon_budget"), "delta": bound.get("delta")})
