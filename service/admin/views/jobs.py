"""Jobs: the filtered list, one job's pipeline steps and progress (both also polled fragments),
and retrying a failed job."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from service.admin.auth import check_post, need, who
from service.admin.web import PREFIX, BadInput, factory, fragment, redirect, render, settings
from service.core.db import read_session
from service.job import service as job_service
from service.job.router import to_read as job_read
from service.job.router import to_reads as job_reads
from service.model_registry import service as registry
from service.models import JobStatus, JobStep

router = APIRouter()
NAV = ("/jobs", "Jobs")
JOB_STEPS = [s.value for s in JobStep]


def step_states(job) -> list[tuple[str, str]]:
    """(step, done | current | failed | pending) for the job's pipeline steps."""
    done_upto = JOB_STEPS.index(job.step) if job.step in JOB_STEPS else -1
    current = (job.progress or {}).get("step")
    out = []
    for i, name in enumerate(JOB_STEPS):
        if job.status == JobStatus.succeeded.value or i <= done_upto:
            state = "done"
        elif name == current and job.status == JobStatus.running.value:
            state = "current"
        elif job.status == JobStatus.failed.value and i == done_upto + 1:
            state = "failed"
        else:
            state = "pending"
        out.append((name, state))
    return out


def _list_data(db: Session, status: str, model: str) -> dict:
    if status and status not in {s.value for s in JobStatus}:
        raise BadInput(f"'{status}' is not a job status")
    models = registry.list_models(db, after=None, limit=500)[:500]
    model_id = registry.get_model(db, model).id if model else None
    jobs = job_reads(db, job_service.list_jobs(db, model_id=model_id, status=status or None, limit=100))
    return {"jobs": jobs, "models": models, "job_status": status, "job_model": model,
            "statuses": [s.value for s in JobStatus]}


def _job_data(db: Session, job_id: uuid.UUID) -> dict:
    job = job_read(db, job_service.get_job(db, job_id))
    return {"job": job, "steps": step_states(job)}


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, status: str = "", model: str = ""):
    me = need(request)
    with read_session(factory(request)) as db:
        return render(request, "jobs.html", me, **_list_data(db, status, model))


@router.get("/fragments/jobs", response_class=HTMLResponse)
def jobs_fragment(request: Request, status: str = "", model: str = ""):
    me = who(request)
    if me is None:
        return HTMLResponse("", status_code=401)
    with read_session(factory(request)) as db:
        return fragment(request, "_jobs_table.html", me, **_list_data(db, status, model))


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_detail(request: Request, job_id: uuid.UUID):
    me = need(request)
    with read_session(factory(request)) as db:
        return render(request, "job_detail.html", me, **_job_data(db, job_id))


@router.get("/fragments/jobs/{job_id}", response_class=HTMLResponse)
def job_fragment(request: Request, job_id: uuid.UUID):
    me = who(request)
    if me is None:
        return HTMLResponse("", status_code=401)
    with read_session(factory(request)) as db:
        return fragment(request, "_job.html", me, **_job_data(db, job_id))


@router.post("/jobs/{job_id}/retry")
async def job_retry(request: Request, job_id: uuid.UUID):
    me, _ = await check_post(request)
    with factory(request).begin() as db:
        job_service.retry_job(db, settings(request), job_id, me.actor)
    return redirect(f"{PREFIX}/jobs/{job_id}", "Job queued again.")
