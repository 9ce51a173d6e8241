"""Jobs: the scheduler's batching rules and the job lifecycle in the database (DESIGN §4, §7).

No torch here; the worker side (``workers.execution``) runs the steps and calls back into
these functions for every state change. Every function takes the caller's Session and never
commits.

Batching (``schedule``): per model, a ``forget`` job opens when the oldest ``queued`` request
is older than ``batch_window_s``, or ``batch_size`` requests are queued, or on "run now". One
active job per model: ``jobs.active_key`` (= model id while queued/running) is unique.

Requests for every model (``model_id`` NULL) are resolved at scheduling time: such a request
joins the batch of each model that holds samples of the subject, one model at a time; after a
model publishes, it goes back to ``queued`` until no model holds the subject, and only then
completes (its ``held_versions`` lists every model's versions). A subject no model holds
completes at once with ``samples_removed = 0``.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.audit.service import append_event
from service.core.config import Settings
from service.core.errors import Conflict, NotFound
from service.core.jobs import QUEUE_GPU, enqueue
from service.model_registry.service import get_model  # noqa: F401  (re-exported for the job routes)
from service.models import (
    ACTIVE_JOB_STATUSES,
    DeletionRequest,
    Job,
    JobKind,
    JobStatus,
    Model,
    RequestStatus,
    Sample,
    Split,
)
from service.models._types import utcnow

TASK_RUN_JOB = "job.run"
TASK_PURGE = "pipeline.purge"
SYSTEM = "system:scheduler"


class JobNotFound(NotFound):
    type, title = "job-not-found", "Unknown job"


class ActiveJobExists(Conflict):
    type, title = "active-job-exists", "The model already has an active job"


class NothingToForget(Conflict):
    type, title = "nothing-to-forget", "No queued deletion requests for this model"


def _aware(at: datetime) -> datetime:
    from datetime import UTC

    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def active_job(session: Session, model_id: int) -> Job | None:
    return session.execute(select(Job).where(Job.active_key == model_id)).scalar_one_or_none()


def create_job(
    session: Session,
    settings: Settings,
    model: Model,
    kind: JobKind,
    *,
    actor: str,
    request_ids: list[uuid.UUID] | None = None,
    config: dict[str, Any] | None = None,
) -> Job:
    """Insert a queued job and its outbox message. Raises :class:`ActiveJobExists`."""
    existing = active_job(session, model.id)
    if existing is not None:
        raise ActiveJobExists(
            f"Model '{model.name}' already has an active {existing.kind} job {existing.id}", job_id=str(existing.id)
        )
    job = Job(
        id=uuid.uuid4(),
        model_id=model.id,
        kind=kind.value,
        status=JobStatus.queued.value,
        active_key=model.id,
        attempts=0,
        max_attempts=settings.pipeline.job_max_attempts,
        progress={},
        config={**(config or {}), "request_ids": [str(r) for r in (request_ids or [])]},
        checkpoint={},
        metrics={},
        requested_by=actor,
    )
    try:
        with session.begin_nested():
            session.add(job)
            session.flush()
    except IntegrityError:
        other = active_job(session, model.id)
        raise ActiveJobExists(
            f"Model '{model.name}' already has an active job", job_id=str(other.id) if other else None
        ) from None
    if request_ids:
        session.execute(
            update(DeletionRequest)
            .where(DeletionRequest.id.in_(request_ids))
            .values(status=RequestStatus.processing.value, job_id=job.id, updated_at=utcnow())
        )
    enqueue(session, TASK_RUN_JOB, task_id=str(job.id), args=[str(job.id)], queue=QUEUE_GPU)
    append_event(
        session,
        actor=actor,
        kind="job.created",
        payload={"job_id": str(job.id), "model": model.name, "kind": kind.value, "requests": len(request_ids or []),
                 **({"reason": config["reason"]} if config and "reason" in config else {})},
    )
    return job


def _complete_without_samples(session: Session, req: DeletionRequest, now: datetime) -> None:
    req.status = RequestStatus.completed.value
    req.samples_removed = 0
    req.completed_at = now
    req.subject_id = None
    req.open_key = None
    req.held_versions = []
    append_event(
        session,
        actor=SYSTEM,
        kind="request.completed",
        subject_key=req.subject_key,
        payload={"request_id": str(req.id), "samples_removed": 0, "note": "no samples held"},
    )


def _models_holding(session: Session, subject_key: str) -> list[int]:
    return list(session.execute(select(Sample.model_id).where(Sample.subject_key == subject_key).distinct()).scalars())


def schedule(session: Session, settings: Settings, *, now: datetime | None = None, force_model_id: int | None = None) -> list[Job]:
    """Open the forget (or retrain) jobs the batching rules call for. Returns the new jobs."""
    now = now or utcnow()
    queued = session.execute(
        select(DeletionRequest)
        .where(DeletionRequest.status == RequestStatus.queued.value)
        .order_by(DeletionRequest.created_at)
        .with_for_update(skip_locked=True)
    ).scalars().all()
    per_model: dict[int, list[DeletionRequest]] = {}
    for req in queued:
        if req.model_id is not None:
            held = session.execute(
                select(func.count()).select_from(Sample).where(Sample.model_id == req.model_id, Sample.subject_key == req.subject_key)
            ).scalar_one()
            if held == 0:
                _complete_without_samples(session, req, now)
                continue
            per_model.setdefault(req.model_id, []).append(req)
        else:
            holders = _models_holding(session, req.subject_key)
            if not holders:
                if req.held_versions:  # already removed from every model by earlier jobs
                    req.status = RequestStatus.completed.value
                    req.completed_at = now
                    req.subject_id = None
                    req.open_key = None
                    append_event(session, actor=SYSTEM, kind="request.completed", subject_key=req.subject_key,
                                 payload={"request_id": str(req.id), "samples_removed": req.samples_removed or 0})
                else:
                    _complete_without_samples(session, req, now)
                continue
            per_model.setdefault(min(holders), []).append(req)
    jobs = []
    for model_id, reqs in per_model.items():
        model = session.get(Model, model_id)
        if model is None or active_job(session, model_id) is not None:
            continue
        oldest = min(_aware(r.created_at) for r in reqs)
        due = (
            force_model_id == model_id
            or len(reqs) >= model.batch_size
            or now - oldest >= timedelta(seconds=model.batch_window_s)
        )
        if not due:
            continue
        reqs = reqs[: max(model.batch_size, 1)] if force_model_id != model_id else reqs
        keys = {r.subject_key for r in reqs}
        core_holders = session.execute(
            select(Sample.subject_key)
            .where(Sample.model_id == model_id, Sample.split == Split.core.value, Sample.subject_key.in_(keys))
            .distinct()
        ).scalars().all()
        kind = JobKind.retrain if core_holders else JobKind.forget
        config = {"reason": "subjects have core samples: Newton forgetting cannot remove them"} if core_holders else {}
        try:
            jobs.append(create_job(session, settings, model, kind, actor=SYSTEM, request_ids=[r.id for r in reqs], config=config))
        except ActiveJobExists:
            continue
    return jobs


def forget_now(session: Session, settings: Settings, model: Model, actor: str) -> Job:
    """"Run now": a batch of every queued request for the model, regardless of the window."""
    existing = active_job(session, model.id)
    if existing is not None:
        raise ActiveJobExists(f"Model '{model.name}' already has an active {existing.kind} job {existing.id}", job_id=str(existing.id))
    has_queued = session.execute(
        select(func.count()).select_from(DeletionRequest).where(
            DeletionRequest.status == RequestStatus.queued.value,
            or_(DeletionRequest.model_id == model.id, DeletionRequest.model_id.is_(None)),
        )
    ).scalar_one()
    if not has_queued:
        raise NothingToForget(f"Model '{model.name}' has no queued deletion requests")
    jobs = schedule(session, settings, force_model_id=model.id)
    for job in jobs:
        if job.model_id == model.id:
            append_event(session, actor=actor, kind="job.run_now", payload={"job_id": str(job.id), "model": model.name})
            return job
    raise NothingToForget(f"Model '{model.name}' has no queued deletion requests it holds samples for (they completed at once)")


def requeue_requests(session: Session, settings: Settings, job: Job, error: str) -> None:
    """A failed job hands its requests back: queued again, or failed past their own attempts."""
    reqs = session.execute(select(DeletionRequest).where(DeletionRequest.job_id == job.id, DeletionRequest.status == RequestStatus.processing.value)).scalars().all()
    for req in reqs:
        req.attempts = (req.attempts or 0) + 1
        req.job_id = None
        if req.attempts >= settings.pipeline.request_max_attempts:
            req.status = RequestStatus.failed.value
            req.error = f"job {job.id} failed: {error}"[:2000]
            req.open_key = None
            append_event(session, actor="system:worker", kind="request.failed", subject_key=req.subject_key,
                         payload={"request_id": str(req.id), "job_id": str(job.id), "attempts": req.attempts})
        else:
            req.status = RequestStatus.queued.value


def fail_job(session: Session, settings: Settings, job: Job, error: str) -> None:
    job.status = JobStatus.failed.value
    job.active_key = None
    job.error = error[:4000]
    job.finished_at = utcnow()
    requeue_requests(session, settings, job, error)
    append_event(session, actor="system:worker", kind="job.failed",
                 payload={"job_id": str(job.id), "kind": job.kind, "attempts": job.attempts, "error": error[:500]})


def retry_job(session: Session, settings: Settings, job_id: uuid.UUID, actor: str) -> Job:
    job = session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
    if job is None:
        raise JobNotFound(f"No job with id {job_id}")
    if job.status != JobStatus.failed.value:
        from service.core.errors import IllegalTransition

        raise IllegalTransition(f"Job {job_id} is {job.status}; only a failed job can be retried", current_status=job.status)
    if active_job(session, job.model_id) is not None:
        raise ActiveJobExists("The model already has an active job")
    job.status = JobStatus.queued.value
    job.active_key = job.model_id
    job.attempts = 0
    job.error = None
    job.finished_at = None
    enqueue(session, TASK_RUN_JOB, task_id=str(job.id), args=[str(job.id)], queue=QUEUE_GPU)
    append_event(session, actor=actor, kind="job.retried", payload={"job_id": str(job.id)})
    return job


def get_job(session: Session, job_id: uuid.UUID) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(f"No job with id {job_id}")
    return job


def list_jobs(session: Session, *, model_id: int | None = None, status: str | None = None, limit: int = 50,
              before: tuple[datetime, uuid.UUID] | None = None) -> list[Job]:
    q = select(Job)
    if model_id is not None:
        q = q.where(Job.model_id == model_id)
    if status is not None:
        q = q.where(Job.status == status)
    if before is not None:
        q = q.where(or_(Job.created_at < before[0], and_(Job.created_at == before[0], Job.id < before[1])))
    return list(session.execute(q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)).scalars())


def is_active(job: Job) -> bool:
    return job.status in {s.value for s in ACTIVE_JOB_STATUSES}
