"""Jobs API and the model actions that start a job now (train, forget-now, zero, forget a class).

Starting a job writes the job row and its outbox message in the request's transaction and
answers ``202`` with the job (``Location: /v1/jobs/{id}``); the relay sends the task after the
commit. A model has at most one active job: a second start is ``409 active-job-exists`` whose
body names the active job (``job_id``, ``job_status``) and whose ``Location`` points at it,
rather than silently returning it, so the caller knows its own request did not start anything.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from sqlalchemy.orm import Session

from service.core.db import get_session
from service.core.types import LIMIT_DESCRIPTION, LIMIT_MAX
from service.core.pagination import decode_cursor, encode_cursor
from service.client.tokens import Principal, require
from service.job import repository as repo
from service.job import service
from service.job.schemas import ClassForget, JobAcknowledge, JobPage, JobRead, ModelRetire, RetireResult, ZeroCreate
from service.models import Job, JobKind, JobStatus, Role

router = APIRouter(tags=["jobs"])
CONFLICT = {409: {"description": "The model already has an active job (named in the body), or nothing to do"}}
NOT_FOUND = {404: {"description": "Unknown model or job"}}
CURSOR_SCOPE = "jobs"


def to_reads(session: Session, jobs: list[Job]) -> list[JobRead]:
    """Read models for a page of jobs: one query for model names, one for version numbers."""
    names = repo.model_names(session, (j.model_id for j in jobs))
    numbers = repo.version_numbers(session, [v for j in jobs for v in (j.parent_version_id, j.result_version_id)])
    return [
        JobRead(
            id=job.id,
            model=names[job.model_id],
            kind=job.kind,
            status=job.status,
            step=job.step,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            progress=job.progress or {},
            metrics=job.metrics or {},
            error=job.error,
            requests=len((job.config or {}).get("request_ids", [])),
            reason=(job.config or {}).get("reason"),
            parent_version=numbers.get(job.parent_version_id) if job.parent_version_id else None,
            result_version=numbers.get(job.result_version_id) if job.result_version_id else None,
            heartbeat_at=job.heartbeat_at,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            acknowledged_at=job.acknowledged_at,
            acknowledged_by=job.acknowledged_by,
            acknowledge_reason=job.acknowledge_reason,
        )
        for job in jobs
    ]


def to_read(session: Session, job: Job) -> JobRead:
    return to_reads(session, [job])[0]


@router.get("/v1/jobs", response_model=JobPage)
def list_jobs(
    request: Request,
    model: str | None = None,
    status: JobStatus | None = None,
    cursor: str | None = None,
    limit: int = Query(50, ge=1, le=LIMIT_MAX, description=LIMIT_DESCRIPTION),
    session: Session = Depends(get_session, scope="function"),
    _: Principal = Depends(require(Role.operator, Role.auditor)),
) -> JobPage:
    secret = request.app.state.settings.security.secret_key
    before = None
    if cursor is not None:
        pos = decode_cursor(cursor, secret=secret, scope=CURSOR_SCOPE)
        before = (pos.at, uuid.UUID(str(pos.id)))
    model_id = service.get_model(session, model).id if model else None
    rows = service.list_jobs(session, model_id=model_id, status=status.value if status else None, limit=limit + 1, before=before)
    nxt = None
    if len(rows) > limit:
        rows = rows[:limit]
        nxt = encode_cursor(rows[-1].created_at, rows[-1].id, secret=secret, scope=CURSOR_SCOPE)
    return JobPage(items=to_reads(session, rows), next_cursor=nxt)


@router.get("/v1/jobs/{job_id}", response_model=JobRead)
def get_job(
    job_id: uuid.UUID,
    session: Session = Depends(get_session, scope="function"),
    _: Principal = Depends(require(Role.operator, Role.auditor)),
) -> JobRead:
    return to_read(session, service.get_job(session, job_id))


@router.post("/v1/jobs/{job_id}/retry", response_model=JobRead, status_code=202, responses={**CONFLICT, **NOT_FOUND})
def retry_job(
    job_id: uuid.UUID,
    request: Request,
    session: Session = Depends(get_session, scope="function"),
    who: Principal = Depends(require(Role.operator)),
) -> JobRead:
    return to_read(session, service.retry_job(session, request.app.state.settings, job_id, who.actor))


@router.post("/v1/jobs/{job_id}/acknowledge", response_model=JobRead, responses={**CONFLICT, **NOT_FOUND})
def acknowledge_job(
    job_id: uuid.UUID,
    body: JobAcknowledge,
    session: Session = Depends(get_session, scope="function"),
    who: Principal = Depends(require(Role.operator)),
) -> JobRead:
    """Acknowledge a failed job (reason required): with ``pipeline.stop_the_line`` its model's
    approvals and automatic scheduling resume. Audited; a ``job.acknowledged`` webhook event."""
    return to_read(session, service.acknowledge_failure(session, job_id, actor=who.actor, reason=body.reason.strip()))


def _started(session: Session, job: Job, response: Response) -> JobRead:
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return to_read(session, job)


@router.post("/v1/models/{name}/train", response_model=JobRead, status_code=202, responses={**CONFLICT, **NOT_FOUND})
def train(
    name: str,
    request: Request,
    response: Response,
    session: Session = Depends(get_session, scope="function"),
    who: Principal = Depends(require()),  # training is for admins only (DESIGN §10)
) -> JobRead:
    model = service.get_model(session, name)
    job = service.create_job(session, request.app.state.settings, model, JobKind.train, actor=who.actor)
    return _started(session, job, response)


@router.post("/v1/models/{name}/forget-now", response_model=JobRead, status_code=202, responses={**CONFLICT, **NOT_FOUND})
def forget_now(
    name: str,
    request: Request,
    response: Response,
    session: Session = Depends(get_session, scope="function"),
    who: Principal = Depends(require(Role.operator)),
) -> JobRead:
    model = service.get_model(session, name)
    return _started(session, service.forget_now(session, request.app.state.settings, model, who.actor), response)


@router.post("/v1/models/{name}/classes/{label}/forget", response_model=JobRead, status_code=202, responses={**CONFLICT, **NOT_FOUND})
def forget_class(
    name: str,
    label: Annotated[int, Path(ge=0, le=2**31 - 1, description="the class index")],
    request: Request,
    response: Response,
    body: ClassForget,
    session: Session = Depends(get_session, scope="function"),
    who: Principal = Depends(require(Role.operator)),
) -> JobRead:
    """Forget a whole class now (a model whose subjects are its classes; method of kind ``class``)."""
    model = service.get_model(session, name)
    return _started(session, service.forget_class(session, request.app.state.settings, model, label, body.reason, who.actor), response)


@router.post("/v1/models/{name}/retire", response_model=RetireResult, responses={**CONFLICT, **NOT_FOUND})
def retire(
    name: str,
    body: ModelRetire,
    session: Session = Depends(get_session, scope="function"),
    who: Principal = Depends(require(Role.operator)),
) -> RetireResult:
    """Retire a model (operator, reason required): every live version revoked (``410`` on its
    manifest and weights), its aliases cleared, its samples purged, and every open deletion
    request for it (held ones included) completed with a receipt saying the model was retired and
    no version of it is served. It then accepts no samples, mapping, checkpoint or job (``409
    model-retired``). ``409`` when it has an active job or is already retired; nothing is written then."""
    model = service.get_model(session, name)
    numbers, closed = service.retire_model(session, model, body.reason.strip() or body.reason, who.actor)
    return RetireResult(model=model.name, state=model.state, state_reason=model.state_reason, versions_revoked=numbers,
                        requests_completed=closed)


@router.post("/v1/models/{name}/zero", response_model=JobRead, status_code=202, responses={**CONFLICT, **NOT_FOUND})
def zero(
    name: str,
    request: Request,
    response: Response,
    body: ZeroCreate = Body(default_factory=ZeroCreate),
    session: Session = Depends(get_session, scope="function"),
    who: Principal = Depends(require(Role.operator)),
) -> JobRead:
    model = service.get_model(session, name)
    job = service.create_job(
        session, request.app.state.settings, model, JobKind.zero, actor=who.actor,
        config={"then_retrain": body.retrain, "reason": body.reason or "emergency forget-everyone"},
    )
    return _started(session, job, response)
