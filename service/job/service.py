"""Jobs: the scheduler's batching rules and the job lifecycle in the database (DESIGN §4, §7).

No torch here; the worker side (``workers.execution``) runs the steps and calls back into
these functions for every state change. Every function takes the caller's Session and never
commits.

Batching (:func:`schedule`): per model, a job opens when the oldest ``queued`` request is older
than ``batch_window_s``, or ``batch_size`` requests are queued, or on "run now"
(:func:`forget_now`). One active job per model: ``jobs.active_key`` (= model id while queued or
running, NULL afterwards) has a unique index, so two schedulers racing cannot both open one.
The batch's requests move to ``processing`` with ``job_id``. A batch in which any subject has
``core`` samples becomes a ``retrain`` job (Newton forgetting only removes user data); the
job's ``config.reason`` and its audit events say so.

Requests for every model (``model_id`` NULL) are resolved at scheduling time, not at intake:
such a request joins the batch of one model that holds samples of the subject at that moment
(one without an active job first). After that model publishes, the request goes back to
``queued`` (it keeps its ``held_versions`` and ``samples_removed``) until no model holds the
subject, and only then completes; a model that gets the subject's samples later is covered by
the re-ingestion guard (an open request refuses the upload; a tombstone once completed). A
subject no model holds completes at once with ``samples_removed = 0``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.audit.service import append_event
from service.core.config import Settings
from service.core.errors import Conflict, IllegalTransition, NotFound
from service.job.outbox import QUEUE_DEFAULT, QUEUE_GPU, enqueue
from service.deletion_request.service import close_request, mark_class_requests, open_for_subject_keys
from service.job import repository as repo
from service.model_registry import classes, publication
from service.model_registry import service as registry
from service.model_registry.service import get_model  # noqa: F401  (re-exported for the job routes)
from service.models import (
    ACTIVE_JOB_STATUSES,
    DeletionRequest,
    Job,
    JobKind,
    JobStatus,
    Model,
    ModelVersion,
    RequestStatus,
)
from service.models._types import utcnow
from service.webhook import events

TASK_RUN_JOB = "job.run"
TASK_PURGE = "pipeline.purge"
SYSTEM = "system:scheduler"
WORKER = "system:worker"
HOLD_PREFIX = "held:"
RETIRED_NOTE = "model retired: no version of it is served (no clean version)"
HOLD_REASON = HOLD_PREFIX + " class {label}: forgetting this class would leave fewer than two classes: retire the model"
RETRAIN_REASON = "subjects have core samples: Newton forgetting cannot remove them, so the core network and user weights are retrained without them"


class JobNotFound(NotFound):
    type, title = "job-not-found", "Unknown job"


class ActiveJobExists(Conflict):
    type, title = "active-job-exists", "The model already has an active job"


class NothingToForget(Conflict):
    type, title = "nothing-to-forget", "No queued deletion requests for this model"


class NotAcknowledgeable(Conflict):
    type, title = "job-not-acknowledgeable", "Only a failed job not yet acknowledged can be acknowledged"


class ClassNotForgettable(Conflict):
    type, title = "class-not-forgettable", "This class cannot be forgotten now"


NoClassForgetting = classes.NoClassKind  # 422 no-class-forgetting (one definition, with the mapping upload's)


class NothingToRetry(Conflict):
    type, title = "nothing-to-retry", "The job's requests were completed or taken by another job"


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def active_job(session: Session, model_id: int) -> Job | None:
    return repo.active_job(session, model_id)


def _active_conflict(model: Model, existing: Job | None) -> ActiveJobExists:
    if existing is None:
        return ActiveJobExists(f"Model '{model.name}' already has an active job")
    return ActiveJobExists(
        f"Model '{model.name}' already has an active {existing.kind} job {existing.id} ({existing.status})",
        job_id=str(existing.id),
        job_status=existing.status,
        headers={"Location": f"/v1/jobs/{existing.id}"},
    )


def enqueue_run(session: Session, job: Job) -> None:
    """Outbox message for the job's task (task id = job id, argument = job id)."""
    enqueue(session, TASK_RUN_JOB, task_id=str(job.id), args=[str(job.id)], queue=QUEUE_GPU)


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
    """Insert a queued job and its outbox message; attach the requests (``processing``).

    Raises :class:`ActiveJobExists` (409, naming the active job) when the model has one, and 409
    ``model-retired`` for a retired model. The model row is read ``FOR SHARE`` first: a
    concurrent retirement (which locks it ``FOR UPDATE``) either waits for this job and then
    refuses (an active job), or commits first and this job is refused."""
    registry.ensure_not_retired(publication.lock_model(session, model.id, share=True))
    existing = repo.active_job(session, model.id)
    if existing is not None:
        raise _active_conflict(model, existing)
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
        raise _active_conflict(model, repo.active_job(session, model.id)) from None
    if request_ids:
        for part in repo._chunks(list(request_ids)):
            session.execute(
                update(DeletionRequest)
                .where(DeletionRequest.id.in_(part))
                .values(status=RequestStatus.processing.value, job_id=job.id, updated_at=utcnow())
            )
            events.requests_changed(session, part, RequestStatus.processing.value, RequestStatus.queued.value)
    enqueue_run(session, job)
    events.job_changed(session, job, None)
    append_event(
        session,
        actor=actor,
        kind="job.created",
        payload={
            "job_id": str(job.id),
            "model": model.name,
            "kind": kind.value,
            "requests": len(request_ids or []),
            **({"reason": config["reason"]} if config and config.get("reason") else {}),
        },
    )
    return job


def _complete_at_once(session: Session, req: DeletionRequest, now: datetime, note: str, *, retired: bool = False,
                      actor: str = SYSTEM) -> None:
    """A request with nothing (left) to remove: completed now, raw subject id cleared. For a
    retired model the receipt says so (``decision_reason``) and names no clean version."""
    req.samples_removed = req.samples_removed or 0
    req.held_versions = req.held_versions or []
    req.job_id = None if req.model_id is None else req.job_id
    if retired:
        req.decision_reason = note
        req.error = None  # no longer held
    close_request(session, req, RequestStatus.completed, actor=actor, kind="request.completed", now=now,
                  payload={"request_id": str(req.id), "samples_removed": req.samples_removed, "note": note,
                           **({"model_retired": True, "clean_version": None, "held_versions": req.held_versions} if retired else {})})


def schedule(session: Session, settings: Settings, *, now: datetime | None = None, force_model_id: int | None = None) -> list[Job]:
    """Open the forget (or retrain) jobs the batching rules call for. Returns the new jobs.

    ``force_model_id`` ("run now") opens that model's job regardless of window and batch size,
    with every queued request it holds (not capped at ``batch_size``)."""
    now = now or utcnow()
    # "run now" waits for rows a concurrent scheduler tick holds instead of skipping them (skipping
    # made a run-now answer "nothing to forget" while the tick held the model's requests)
    queued = repo.queued_requests_for_update(session, wait=force_model_id is not None)
    if not queued:
        return []
    held = repo.holdings(session, {r.subject_key for r in queued})
    busy = repo.active_model_ids(session)
    retired = repo.retired_model_ids(session)
    per_model: dict[int, list[DeletionRequest]] = {}
    for req in queued:
        by_model = held.get(req.subject_key, {})
        if req.model_id is not None:
            if req.model_id in retired:
                _complete_at_once(session, req, now, RETIRED_NOTE, retired=True)
                continue
            if req.model_id not in by_model:
                _complete_at_once(session, req, now, "no samples held")
                continue
            target = req.model_id
        else:
            if not by_model:
                _complete_at_once(session, req, now, "removed from every model" if req.held_versions else "no samples held")
                continue
            free = [m for m in sorted(by_model) if m not in busy]
            if _held(req) and len(free) > 1:
                # held on a model whose class its subject is: the other models first, or it would be
                # batched for (and held on) that model every tick and the others would keep its samples
                free.sort(key=lambda m: classes.is_class_subject(session, req.subject_key, m))
            target = free[0] if free else min(by_model)
        per_model.setdefault(target, []).append(req)

    jobs: list[Job] = []
    if not per_model:
        return jobs
    # Stop the line: a model with an unacknowledged failed job is not scheduled automatically
    # (an operator's "run now" still is).
    stopped = repo.stopped_model_ids(session) if settings.pipeline.stop_the_line else set()
    models = {m.id: m for m in session.execute(select(Model).where(Model.id.in_(list(per_model)))).scalars()}
    for model_id, reqs in per_model.items():
        model = models.get(model_id)
        forced = force_model_id == model_id
        if model is None or model.state == registry.RETIRED or model_id in busy or (model_id in stopped and not forced):
            continue
        groups = _kinds_apart(session, model, reqs, now) if model.subjects_are_classes and classes.serves_classes(model) else [(reqs, {})]
        # the first due batch, oldest request first (run now: the oldest)
        due = [(b, k) for b, k in groups if forced or len(b) >= model.batch_size
               or now - min(_aware(r.created_at) for r in b) >= timedelta(seconds=model.batch_window_s)]
        if not due:
            continue
        reqs, by_key = due[0]
        if not forced:
            reqs = reqs[: max(model.batch_size, 1)]
        core = sorted({r.subject_key for r in reqs if held[r.subject_key][model_id].core})
        kind = JobKind.retrain if core else JobKind.forget
        config: dict[str, Any] = {"trigger": "run-now" if forced else "batch"}
        if core:
            config.update(reason=RETRAIN_REASON, core_subjects=len(core))
        if by_key:
            # class requests batch like sample requests: several classes in one job
            config["classes"] = sorted({by_key[r.subject_key] for r in reqs})
            mark_class_requests(reqs, set(by_key))
        try:
            jobs.append(create_job(session, settings, model, kind, actor=SYSTEM, request_ids=[r.id for r in reqs], config=config))
        except ActiveJobExists:
            continue
    return jobs


def _kinds_apart(session: Session, model: Model, reqs: list[DeletionRequest], now: datetime) -> list[tuple[list[DeletionRequest], dict[str, int]]]:
    """One kind per job on a model whose subjects are classes: its class requests (the subjects
    mapped to a label; the method projects them away) and its sample requests (the runner falls
    back to a retrain where the method cannot forget samples) never share a batch. Returns the
    non-empty candidate batches, the one with the older request first, each with its class
    subjects (subject key -> label); the scheduler opens the first that is due, the other waits
    for a later tick (one active job per model).

    A class request joins its batch only while at least two classes would remain (the labels the
    ``user`` split holds, less those the newest version masks and the batch's classes: the
    method's own rule, so a batch the scheduler opens is one the method accepts). The rest stay ``queued`` and are HELD: ``error`` says
    why (:data:`HOLD_REASON`), and the first time it is set the request is audited and announced
    (``request.held``). A held request is looked at again every tick and joins a batch (its
    ``error`` cleared) once enough classes remain, e.g. after a consent renewal brings a class
    back."""
    by_key = classes.labels_of(session, model.id, [r.subject_key for r in reqs])
    class_reqs = [r for r in reqs if r.subject_key in by_key]
    sample_reqs = [r for r in reqs if r.subject_key not in by_key]
    labels: set[int] = set()
    if class_reqs:  # the classes the model can still tell apart: held in ``user``, not masked by the newest version
        newest = repo.newest_live_version(session, model.id)
        labels = repo.user_labels(session, model.id) - set(registry.masked_classes(newest.bound if newest else None))
    chosen: set[int] = set()
    batch: list[DeletionRequest] = []
    for req in sorted(class_reqs, key=lambda r: (_aware(r.created_at), str(r.id))):
        label = by_key[req.subject_key]
        if label in chosen or len(labels - chosen - {label}) >= 2:
            chosen.add(label)
            batch.append(req)
            req.error = None if _held(req) else req.error
        else:
            _hold(session, model, req, label, now)
    groups = [(b, {r.subject_key: by_key[r.subject_key] for r in b if r.subject_key in by_key}) for b in (batch, sample_reqs) if b]
    return sorted(groups, key=lambda g: min(_aware(r.created_at) for r in g[0]))


def _held(req: DeletionRequest) -> bool:
    return bool(req.error) and req.error.startswith(HOLD_PREFIX)


def _hold(session: Session, model: Model, req: DeletionRequest, label: int, now: datetime) -> None:
    """Hold a class request (status stays ``queued``: it is open, the ingest guard keeps refusing
    its subject's samples and its due date keeps running); audited and announced once."""
    if _held(req):
        return
    req.error = HOLD_REASON.format(label=label)
    req.updated_at = now
    append_event(session, actor=SYSTEM, kind="request.held", subject_key=req.subject_key,
                 payload={"request_id": str(req.id), "model": model.name, "label": label, "reason": req.error})
    events.request_held(session, req, model.name, now=now)


def forget_now(session: Session, settings: Settings, model: Model, actor: str) -> Job:
    """"Run now": one batch of every queued request the model holds, regardless of the window.

    409 :class:`ActiveJobExists` when the model already has a job (it names the job), 409
    :class:`NothingToForget` when no queued request needs this model (requests whose subject
    it does not hold complete at once, and that is committed)."""
    registry.ensure_not_retired(model)
    existing = repo.active_job(session, model.id)
    if existing is not None:
        raise _active_conflict(model, existing)
    if not repo.count_queued_for_model(session, model.id):
        raise NothingToForget(f"Model '{model.name}' has no queued deletion requests")
    for job in schedule(session, settings, force_model_id=model.id):
        if job.model_id == model.id:
            append_event(session, actor=actor, kind="job.run_now", payload={"job_id": str(job.id), "model": model.name})
            return job
    existing = repo.active_job(session, model.id)
    if existing is not None:  # a concurrent tick opened the model's batch first
        raise _active_conflict(model, existing)
    held = repo.count_held_for_model(session, model.id, HOLD_PREFIX)
    if held:  # what is left queued is held (class requests that would leave fewer than two classes)
        raise NothingToForget(f"Model '{model.name}' has {held} held request(s): forgetting their classes would leave fewer "
                              "than two classes: retire the model")
    raise NothingToForget(
        f"Model '{model.name}' holds no samples of its queued requests' subjects (they completed at once)"
    )


def forget_class(session: Session, settings: Settings, model: Model, label: int, reason: str, actor: str) -> Job:
    """An operator forgets class ``label``: one request per subject holding its ``user`` samples
    (the subjects who are the class), approved by the operator, and a forget job for them now.

    422 :class:`NoClassForgetting` when the model's method does not serve the ``class`` kind;
    409 :class:`ClassNotForgettable` when no ``user`` sample carries the label (it never existed
    or is already forgotten), when a subject of it holds samples of another label (a class
    subject owns its class only), or when fewer than two classes would remain; 409 for an
    active job or an open request of one of its subjects. Nothing is written then."""
    registry.ensure_not_retired(model)
    if not classes.serves_classes(model):
        raise NoClassForgetting(f"model '{model.name}' uses {model.method!r}, which forgets samples, not classes")
    existing = repo.active_job(session, model.id)
    if existing is not None:
        raise _active_conflict(model, existing)
    owners, mixed, others = repo.label_owners(session, model.id, label)
    if not owners:
        raise ClassNotForgettable(f"model '{model.name}' holds no training sample of class {label}: it does not exist or is already forgotten")
    if mixed:
        raise ClassNotForgettable(f"{len(mixed)} subject(s) of class {label} hold samples of other classes too: a class is forgotten "
                                  "only when its subjects are the class (file deletion requests for samples instead)")
    if others < 2:
        raise ClassNotForgettable(f"forgetting class {label} would leave {others} class(es); at least two must remain")
    request_ids = open_for_subject_keys(session, model, owners, reason=reason, source=f"class:{label}", actor=actor, kind="class")
    job = create_job(session, settings, model, JobKind.forget, actor=actor, request_ids=request_ids,
                     config={"reason": reason, "class_label": label, "classes": [label]})
    append_event(session, actor=actor, kind="class.forget", payload={"model": model.name, "label": label, "subjects": len(owners),
                                                                     "job_id": str(job.id), "reason": reason})
    return job


def requeue_requests(session: Session, settings: Settings, job: Job, error: str) -> None:
    """A failed job hands its requests back: ``queued`` again, or ``failed`` once a request's
    own attempts reach ``pipeline.request_max_attempts`` (then it is retryable by hand)."""
    for req in repo.processing_requests(session, job.id):
        req.attempts = (req.attempts or 0) + 1
        req.job_id = None
        previous = req.status
        if req.attempts >= settings.pipeline.request_max_attempts:
            req.status = RequestStatus.failed.value
            req.error = f"job {job.id} failed: {error}"[:2000]
            req.open_key = None
            append_event(session, actor=WORKER, kind="request.failed", subject_key=req.subject_key,
                         payload={"request_id": str(req.id), "job_id": str(job.id), "attempts": req.attempts})
        else:
            req.status = RequestStatus.queued.value
        events.request_changed(session, req, previous)


def fail_job(session: Session, settings: Settings, job: Job, error: str) -> None:
    """End a job ``failed`` (visible, with its error) and hand its requests back. With
    ``pipeline.stop_the_line`` the model's line stops until an operator acknowledges it."""
    previous = job.status
    job.status = JobStatus.failed.value
    job.active_key = None
    job.error = error[:4000]
    job.finished_at = utcnow()
    job.progress = {**(job.progress or {}), "failed": True}
    requeue_requests(session, settings, job, error)
    append_event(session, actor=WORKER, kind="job.failed",
                 payload={"job_id": str(job.id), "kind": job.kind, "attempts": job.attempts, "error": error[:500]})
    events.job_changed(session, job, previous)
    if settings.pipeline.stop_the_line:
        events.emit(session, events.LINE_STOPPED, {"job_id": str(job.id), "model": events._model_name(session, job.model_id)})


def retry_job(session: Session, settings: Settings, job_id: uuid.UUID, actor: str) -> Job:
    """failed → queued, from the first step (its checkpoint files may have been swept).

    A forget/retrain job takes back those of its requests that are still ``queued`` (the others
    completed or joined another job meanwhile); with none left it is 409 :class:`NothingToRetry`."""
    job = repo.job_for_update(session, job_id)
    if job is None:
        raise JobNotFound(f"No job with id {job_id}", job_id=str(job_id))
    if job.status != JobStatus.failed.value:
        raise IllegalTransition(f"Job {job_id} is {job.status}; only a failed job can be retried", current_status=job.status)
    model = session.get(Model, job.model_id)
    if repo.active_job(session, job.model_id) is not None:
        raise _active_conflict(model, repo.active_job(session, job.model_id))
    config = dict(job.config or {})
    ids = [uuid.UUID(r) for r in config.get("request_ids", [])]
    if ids:
        reqs = repo.requests_by_ids(session, ids, status=RequestStatus.queued.value, for_update=True)
        if not reqs:
            raise NothingToRetry(
                f"None of job {job_id}'s requests is still queued; the scheduler or run-now will batch new ones"
            )
        for r in reqs:
            r.status = RequestStatus.processing.value
            r.job_id = job.id
            events.request_changed(session, r, RequestStatus.queued.value)
        config["request_ids"] = [str(r.id) for r in reqs]
    job.config = config
    job.status = JobStatus.queued.value
    job.active_key = job.model_id
    job.attempts = 0
    job.error = None
    job.finished_at = None
    job.heartbeat_at = None
    job.step = None
    job.checkpoint = {}
    job.progress = {}
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise _active_conflict(model, None) from None
    enqueue_run(session, job)
    events.job_changed(session, job, JobStatus.failed.value)
    append_event(session, actor=actor, kind="job.retried", payload={"job_id": str(job.id), "requests": len(config.get("request_ids", []))})
    return job


def acknowledge_failure(session: Session, job_id: uuid.UUID, *, actor: str, reason: str) -> Job:
    """An operator has looked at a failed job: the model's line runs again (approvals and
    scheduling), audited and announced. 409 :class:`NotAcknowledgeable` unless the job is failed
    and not acknowledged yet."""
    job = repo.job_for_update(session, job_id)
    if job is None:
        raise JobNotFound(f"No job with id {job_id}", job_id=str(job_id))
    if job.status != JobStatus.failed.value or job.acknowledged_at is not None:
        raise NotAcknowledgeable(
            f"Job {job_id} is {job.status}" + (f", acknowledged by {job.acknowledged_by}" if job.acknowledged_at else ""),
            current_status=job.status,
        )
    job.acknowledged_at = utcnow()
    job.acknowledged_by = actor
    job.acknowledge_reason = reason
    session.flush()
    model = events._model_name(session, job.model_id)
    append_event(session, actor=actor, kind="job.acknowledged", payload={"job_id": str(job.id), "model": model, "reason": reason})
    events.emit(session, events.JOB_ACKNOWLEDGED, {"job_id": str(job.id), "model": model, "reason": reason,
                                                   "line_stopped": repo.unacknowledged_failure(session, job.model_id) is not None})
    return job


def get_job(session: Session, job_id: uuid.UUID) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(f"No job with id {job_id}", job_id=str(job_id))
    return job


def list_jobs(session: Session, *, model_id: int | None = None, status: str | None = None, limit: int = 50,
              before: tuple[datetime, uuid.UUID] | None = None) -> list[Job]:
    return repo.list_jobs(session, model_id=model_id, status=status, limit=limit, before=before)


def is_active(job: Job) -> bool:
    return job.status in {s.value for s in ACTIVE_JOB_STATUSES}


# ----------------------------------------------------------------------------- worker lifecycle
# The worker (``workers.execution``) computes; these functions are every state change it makes
# to a job. The attempt number is the fencing token: a write names the attempt it belongs to and
# changes nothing when another attempt owns the job.
def exhausted(job: Job) -> bool:
    """The one rule: a job that has used ``max_attempts`` is not run again (it ends ``failed``)."""
    return job.attempts >= job.max_attempts


def owned_by(job: Job | None, attempt: int) -> bool:
    return job is not None and job.status == JobStatus.running.value and job.attempts == attempt


def lock_owned(session: Session, job_id: uuid.UUID, attempt: int) -> Job | None:
    """The job row, locked, when ``attempt`` still owns it; else None (abandon the work)."""
    job = repo.job_for_update(session, job_id)
    return job if owned_by(job, attempt) else None


def claimable(job: Job | None, settings: Settings, now: datetime) -> bool:
    """Whether a delivery of this job has anything to do: it exists, is not finished, and no live
    worker holds it (a running job whose heartbeat is fresh). ``claim`` decides under the row
    lock; the isolated runner asks first, without a lock, so a duplicate delivery starts no process."""
    if job is None or job.status not in (JobStatus.queued.value, JobStatus.running.value):
        return False
    if job.status == JobStatus.running.value and job.heartbeat_at is not None:
        return (now - _aware(job.heartbeat_at)).total_seconds() >= settings.pipeline.heartbeat_timeout_s
    return True


def claim(session: Session, settings: Settings, job_id: uuid.UUID, *, now: datetime | None = None) -> int | None:
    """Take the job (running, attempts + 1) and return the attempt number, or None when there is
    nothing to do: unknown or finished job, or a live worker holds it (a duplicate delivery). A
    job already at ``max_attempts`` ends ``failed`` and its requests go back to the queue."""
    job = repo.job_for_update(session, job_id)
    now = now or utcnow()
    if not claimable(job, settings, now):
        return None
    if exhausted(job):
        fail_job(session, settings, job, job.error or f"gave up after {job.attempts} attempts (the worker kept dying)")
        return None
    previous = job.status
    job.attempts += 1
    job.status = JobStatus.running.value
    job.started_at = job.started_at or now
    job.heartbeat_at = now
    if previous != job.status:
        events.job_changed(session, job, previous)
    return job.attempts


def beat(session: Session, job_id: uuid.UUID, attempt: int, *, progress: dict | None = None) -> None:
    """Heartbeat (and progress) of the attempt that owns the job; nothing for a superseded one."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = progress
    session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.running.value, Job.attempts == attempt).values(**values)
    )


def drop_steps(session: Session, job_id: uuid.UUID, attempt: int, steps: list[str], resume_at: str) -> None:
    """Forget checkpointed steps whose output turned out unusable (a corrupt artifact): the next
    attempt recomputes them, starting at ``resume_at``. Nothing when ``attempt`` lost the job."""
    job = lock_owned(session, job_id, attempt)
    if job is None:
        return
    job.checkpoint = {k: v for k, v in (job.checkpoint or {}).items() if k not in steps}
    job.step = resume_at


def save_step(session: Session, job_id: uuid.UUID, attempt: int, step: str, output: dict) -> dict | None:
    """Record a finished step's output in the checkpoint; None when ``attempt`` lost the job."""
    job = lock_owned(session, job_id, attempt)
    if job is None:
        return None
    cp = dict(job.checkpoint or {})
    cp[step] = output
    job.checkpoint = cp
    job.step = step
    job.progress = {"step": step, "done": True}
    return cp


def record_failure(session: Session, settings: Settings, job_id: uuid.UUID, attempt: int, error: str, detail: str,
                   *, permanent: bool) -> str:
    """Back to ``queued`` (re-sent through the outbox) or, past ``max_attempts`` or for an error
    that retrying cannot fix (``permanent``), ``failed``. "abandoned" when the attempt lost the job."""
    job = lock_owned(session, job_id, attempt)
    if job is None:
        return "abandoned"
    job.error = (error + "\n" + detail)[-4000:]
    if exhausted(job) or permanent:
        fail_job(session, settings, job, error)
        return JobStatus.failed.value
    job.status = JobStatus.queued.value
    job.progress = {**(job.progress or {}), "retrying": True}
    enqueue_run(session, job)
    events.job_changed(session, job, JobStatus.running.value)
    return "retrying"


def requeue_stale(session: Session, settings: Settings, now: datetime) -> dict[str, int]:
    """The sweeper's job round: ``running`` jobs whose heartbeat stopped and ``queued`` jobs whose
    message was lost go back to ``queued`` (re-sent); at ``max_attempts`` they end ``failed``."""
    out = {"requeued": 0, "failed": 0}
    stale = timedelta(seconds=settings.pipeline.heartbeat_timeout_s)
    for job in repo.unfinished_jobs_for_update(session):
        if job.status == JobStatus.running.value:
            beat_at = job.heartbeat_at or job.started_at or job.created_at
            if now - _aware(beat_at) < stale:
                continue
            why = "worker lost (heartbeat stopped)"
        else:
            last = repo.last_outbox_message(session, str(job.id))
            if last is not None and (last.sent_at is None or now - _aware(last.sent_at) < stale):
                continue  # not sent yet, or sent recently
            if last is None and now - _aware(job.updated_at or job.created_at) < stale:
                continue
            why = "message lost (sent but never started)"
        if exhausted(job):
            fail_job(session, settings, job, job.error or f"{why}; gave up after {job.attempts} attempts")
            out["failed"] += 1
            continue
        previous = job.status
        job.status = JobStatus.queued.value
        job.error = f"{why}; re-sent by the sweeper"
        enqueue_run(session, job)
        if previous != job.status:
            events.job_changed(session, job, previous)
        out["requeued"] += 1
    return out


def succeed_job(session: Session, settings: Settings, job: Job, version_id: int, number: int, *, parent_version_id: int | None,
                metrics: dict, now: datetime, actor: str) -> None:
    """The job published ``version_id``: ``succeeded``; a zero job asked to be followed by a
    retrain gets it now (the model's active slot is free from here)."""
    job.status = JobStatus.succeeded.value
    job.active_key = None
    job.step = "publish"
    job.result_version_id = version_id
    job.parent_version_id = parent_version_id
    job.metrics = metrics
    job.finished_at = now
    job.progress = {"step": "publish", "done": True, "version": number}
    events.job_changed(session, job, JobStatus.running.value)
    if job.kind == JobKind.zero.value and (job.config or {}).get("then_retrain"):
        session.flush()
        model = session.get(Model, job.model_id)
        create_job(session, settings, model, JobKind.retrain, actor=actor, config={"reason": f"refit user weights after zero job {job.id}"})


def enqueue_purge(session: Session, model_id: int, task_id: str) -> None:
    enqueue(session, TASK_PURGE, task_id=task_id, args=[model_id], queue=QUEUE_DEFAULT)


def retire_model(session: Session, model: Model, reason: str, actor: str) -> tuple[list[int], int]:
    """Retire a model (operator): it stops serving and accepts nothing new; nothing is written
    unless it succeeds. Returns (numbers of the versions revoked, requests completed).

    409 ``model-retired`` when it already is; 409 :class:`ActiveJobExists` (naming the job) when
    it has an active job (the model row is locked first, so no job opens meanwhile). Then, in
    this transaction: every live version revoked and every alias cleared, the samples and class
    mapping deleted, state ``retired`` (:func:`publication.retire`); every open request for this
    model (received, awaiting approval, queued — held ones included) completed with a receipt
    that says the model was retired and names no clean version (``decision_reason``), with the
    versions that held the subject and its sample count; a request for every model whose subject
    the model held records the same and stays queued for the other models (the scheduler then
    completes or routes it); audited ``model.retired``; the purge (chunk rewrite, revoked files)
    sent through the outbox."""
    now = utcnow()
    # the requests first, then the model: the scheduler's order (queued rows, then the model row
    # FOR SHARE in create_job), so the two never wait on each other in a cycle
    reqs = repo.open_requests_touching(session, model.id)
    model = publication.lock_model(session, model.id)
    registry.ensure_not_retired(model)
    existing = repo.active_job(session, model.id)
    if existing is not None:
        raise _active_conflict(model, existing)
    versions = list(session.execute(select(ModelVersion).where(ModelVersion.model_id == model.id)).scalars())
    holdings = repo.subject_holdings(session, model.id, sorted({r.subject_key for r in reqs}))
    for req in reqs:
        holding = holdings[req.subject_key]
        if holding["samples"]:
            req.held_versions = list(req.held_versions or []) + [
                {"model": model.name, "number": v.number} for v in publication.held_versions(versions, holding)]
            req.samples_removed = (req.samples_removed or 0) + holding["samples"]
    revoked = publication.retire(session, model, reason, actor, now)
    closed = 0
    for req in reqs:
        if req.model_id == model.id:
            _complete_at_once(session, req, now, f"{RETIRED_NOTE}; reason: {reason}"[:2000], retired=True, actor=actor)
            closed += 1
    append_event(session, actor=actor, kind="model.retired", payload={
        "model": model.name, "reason": reason, "versions_revoked": [v.number for v in revoked], "requests_completed": closed})
    for v in revoked:
        append_event(session, actor=actor, kind="version.revoked", payload={"model": model.name, "number": v.number, "reason": "model retired"})
    enqueue_purge(session, model.id, task_id=f"purge-retire-{model.id}")
    return [v.number for v in revoked], closed
