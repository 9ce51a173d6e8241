"""Jobs API and the model actions that start a job now (train, forget-now, zero)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.db import get_session
from service.core.pagination import decode_cursor, encode_cursor
from service.core.security import Principal, require
from service.job import service
from service.job.schemas import JobPage, JobRead, ZeroCreate
from service.models import Job, JobKind, JobStatus, Model, ModelVersion, Role

router = APIRouter(tags=["jobs"])
CURSOR_SCOPE = "jobs"


def _version_number(session: Session, version_id: int | None) -> int | None:
    return None if version_id is None else session.execute(select(ModelVersion.number).where(ModelVersion.id == version_id)).scalar()


def to_read(session: Session, job: Job) -> JobRead:
    return JobRead(
        id=job.id,
        model=session.execute(select(Model.name).where(Model.id == job.model_id)).scalar_one(),
        kind=job.kind,
        status=job.status,
        step=job.step,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        progress=job.progress or {},
        metrics=job.metrics or {},
        error=job.error,
        requests=len((job.config or {}).get("request_ids", [])),
        parent_version=_version_number(session, job.parent_version_id),
        result_version=_version_number(session, job.result_version_id),
        heartbeat_at=job.heartbeat_at,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


@router.get("/v1/jobs", response_model=JobPage)
def list_jobs(
    request: Request,
    model: str | None = None,
    status: JobStatus | None = None,
    cursor: str | None = None,
    limit: int = Query(50, ge=1, le=500),
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
    return JobPage(items=[to_read(session, j) for j in rows], next_cursor=nxt)


@router.get("/v1/jobs/{job_id}", response_model=JobRead)
def get_job(
    job_id: uuid.UUID,
    session: Session = Depends(get_session, scope="function"),
    _: Principal = Depends(require(Role.operator, Role.auditor)),
) -> JobRead:
    return to_read(session, service.get_job(session, job_id))


@router.post("/v1/jobs/{job_id}/retry", response_model=JobRead, status_code=202)
def retry_job(
    job_id: uuid.UUID,
    request: Request,
    session: Session = Depends(get_session, scope="function"),
    who: Principal = Depends(require(Role.operator)),
) -> JobRead:
    return to_read(session, service.retry_job(session, request.app.state.settings, job_id, who.actor))


def _started(session: Session, job: Job, response: Response) -> JobRead:
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return to_read(session, job)


@router.post("/v1/models/{name}/train", response_model=JobRead, status_code=202)
def train(
    name: str,
    request: Request,
    response: Response,
    session: Session = Depends(get_session, scope="function"),
    who: Principal = Depends(require(Role.operator)),
) -> JobRead:
    model = service.get_model(session, name)
    job = service.create_job(session, request.app.state.settings, model, JobKind.train, actor=who.actor)
    return _started(session, job, response)


@router.post("/v1/models/{name}/forget-now", response_model=JobRead, status_code=202)
def forget_now(
    name: str,
    request: Request,
    response: Response,
    session: Session = Depends(get_session, scope="function"),
    who: Principal = Depends(require(Role.operator)),
) -> JobRead:
    model = service.get_model(session, name)
    return _started(session, service.forget_now(session, request.app.state.settings, model, who.actor), response)


@router.post("/v1/models/{name}/zero", response_model=JobRead, status_code=202)
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
