"""The sweeper: re-sends jobs whose heartbeat stopped, retries purges, deletes orphan files."""

from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import select

from service.core.jobs import QUEUE_DEFAULT, QUEUE_GPU, enqueue
from service.job import service as job_service
from service.models import Job, JobStatus, Model, ModelVersion, OutboxMessage
from service.models._types import utcnow
from workers.execution.purge import needs_purge
from workers.runtime import Runtime

ORPHAN_GRACE_S = 600.0


def sweep(rt: Runtime, *, orphan_grace_s: float = ORPHAN_GRACE_S) -> dict:
    s = rt.settings
    now = utcnow()
    stale = timedelta(seconds=s.pipeline.heartbeat_timeout_s)
    out = {"requeued": 0, "failed": 0, "purges": 0, "orphans": 0}
    with rt.session_factory.begin() as session:
        jobs = session.execute(
            select(Job).where(Job.status.in_([JobStatus.running.value, JobStatus.queued.value])).with_for_update(skip_locked=True)
        ).scalars().all()
        for job in jobs:
            if job.status == JobStatus.running.value:
                beat = job.heartbeat_at or job.started_at or job.created_at
                if now - job_service._aware(beat) < stale:
                    continue
            else:
                # queued: was it sent long ago and never started (a lost message)?
                last = session.execute(
                    select(OutboxMessage.sent_at).where(OutboxMessage.task_id == str(job.id)).order_by(OutboxMessage.id.desc()).limit(1)
                ).scalar()
                if last is None or now - job_service._aware(last) < stale:
                    continue
            if job.attempts >= job.max_attempts:
                job_service.fail_job(session, s, job, job.error or f"the worker died {job.attempts} times running this job")
                out["failed"] += 1
                continue
            job.status = JobStatus.queued.value
            job.error = "worker lost (heartbeat stopped); re-sent by the sweeper"
            enqueue(session, job_service.TASK_RUN_JOB, task_id=str(job.id), args=[str(job.id)], queue=QUEUE_GPU)
            out["requeued"] += 1
        for model_id in session.execute(select(Model.id)).scalars():
            if needs_purge(session, model_id):
                pending = session.execute(
                    select(OutboxMessage.id).where(OutboxMessage.task_name == job_service.TASK_PURGE, OutboxMessage.sent_at.is_(None))
                ).first()
                if pending is None:
                    enqueue(session, job_service.TASK_PURGE, task_id=f"purge-sweep-{model_id}-{int(time.time())}", args=[model_id], queue=QUEUE_DEFAULT)
                    out["purges"] += 1
        referenced = set()
        for a, p in session.execute(select(ModelVersion.artifact_uri, ModelVersion.private_uri)):
            referenced.update(u for u in (a, p) if u)
        running_private = set()
        for cp in session.execute(select(Job.checkpoint).where(Job.status.in_([JobStatus.running.value, JobStatus.queued.value]))).scalars():
            for step in (cp or {}).values():
                if isinstance(step, dict):
                    running_private.update(v for k, v in step.items() if k.endswith("uri") and isinstance(v, str))
    cutoff = time.time() - orphan_grace_s
    for prefix in ("weights", "private"):
        for uri in rt.store.list_uris(prefix):
            if uri in referenced or uri in running_private:
                continue
            try:
                if rt.store.path(uri).stat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:
                continue
            if rt.store.delete(uri):
                out["orphans"] += 1
    return out
