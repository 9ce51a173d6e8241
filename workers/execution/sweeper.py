"""The sweeper (task ``pipeline.sweep``, beat every ``sweeper_interval_s``).

Entry point :func:`sweep(rt, orphan_grace_s=...) <sweep>`. One round:

* ``running`` jobs whose heartbeat is older than ``pipeline.heartbeat_timeout_s`` (the worker
  died or hangs) go back to ``queued`` and are re-sent through the outbox with the same task id;
  ``queued`` jobs whose last message was sent that long ago and never started (a lost message)
  are re-sent too. A job already at ``max_attempts`` ends ``failed`` instead, visibly, and its
  requests go back to the queue. The attempt counter is the fencing token: a worker that was
  only slow finds its attempt superseded and abandons its work.
* models with something left to purge get a ``pipeline.purge`` message (at most one per model
  per ``heartbeat_timeout_s``);
* weights, private weights, sample chunks and temp files that no row references and that were
  last written more than ``orphan_grace_s`` ago (default ``storage.delete_grace_s``) are deleted,
  every object version in a versioned bucket (a crash between writing a file and committing the
  row that names it leaves such files; so does a purge that found a file written too recently);
* sent outbox rows older than a day are deleted.
"""

from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import delete, select

from service.core.jobs import QUEUE_DEFAULT, enqueue
from service.job import service as job_service
from service.models import Job, JobStatus, Model, ModelVersion, OutboxMessage, SampleChunk
from service.models._types import utcnow
from workers.execution.purge import needs_purge
from workers.execution.run import PRIVATE_PREFIX, WEIGHTS_PREFIX
from workers.runtime import Runtime

ORPHAN_GRACE_S = 600.0  # the default of storage.delete_grace_s
OUTBOX_RETENTION = timedelta(days=1)
PURGE_TASK_PREFIX = "purge-sweep-"


def _requeue_stale_jobs(session, rt: Runtime, now, out: dict) -> None:
    s = rt.settings
    stale = timedelta(seconds=s.pipeline.heartbeat_timeout_s)
    jobs = session.execute(
        select(Job).where(Job.status.in_([JobStatus.running.value, JobStatus.queued.value])).with_for_update(skip_locked=True)
    ).scalars().all()
    for job in jobs:
        if job.status == JobStatus.running.value:
            beat = job.heartbeat_at or job.started_at or job.created_at
            if now - job_service._aware(beat) < stale:
                continue
            why = "worker lost (heartbeat stopped)"
        else:
            last = session.execute(
                select(OutboxMessage).where(OutboxMessage.task_id == str(job.id)).order_by(OutboxMessage.id.desc()).limit(1)
            ).scalar_one_or_none()
            if last is not None and (last.sent_at is None or now - job_service._aware(last.sent_at) < stale):
                continue  # not sent yet, or sent recently
            if last is None and now - job_service._aware(job.updated_at or job.created_at) < stale:
                continue
            why = "message lost (sent but never started)"
        if job.attempts >= job.max_attempts:
            job_service.fail_job(session, s, job, job.error or f"{why}; gave up after {job.attempts} attempts")
            out["failed"] += 1
            continue
        job.status = JobStatus.queued.value
        job.error = f"{why}; re-sent by the sweeper"
        job_service.enqueue_run(session, job)
        out["requeued"] += 1


def _schedule_purges(session, rt: Runtime, now, out: dict) -> None:
    recent = now - timedelta(seconds=rt.settings.pipeline.heartbeat_timeout_s)
    for model_id in session.execute(select(Model.id)).scalars():
        if not needs_purge(session, model_id):
            continue
        prefix = f"{PURGE_TASK_PREFIX}{model_id}-"
        pending = session.execute(
            select(OutboxMessage.id).where(OutboxMessage.task_id.startswith(prefix), OutboxMessage.created_at > recent).limit(1)
        ).first()
        if pending is None:
            enqueue(session, job_service.TASK_PURGE, task_id=f"{prefix}{int(time.time())}", args=[model_id], queue=QUEUE_DEFAULT)
            out["purges"] += 1


def _referenced_uris(session) -> set[str]:
    refs: set[str] = set()
    for a, p in session.execute(select(ModelVersion.artifact_uri, ModelVersion.private_uri)):
        refs.update(u for u in (a, p) if u)
    refs.update(session.execute(select(SampleChunk.uri)).scalars())
    # Files of jobs in flight (their checkpoints name them before any version does).
    for cp in session.execute(select(Job.checkpoint).where(Job.status.in_([JobStatus.running.value, JobStatus.queued.value]))).scalars():
        for step in (cp or {}).values():
            if isinstance(step, dict):
                refs.update(v for k, v in step.items() if k.endswith("uri") and isinstance(v, str))
    return refs


def _delete_orphans(rt: Runtime, refs: set[str], grace_s: float) -> int:
    cutoff = time.time() - grace_s
    removed = 0
    for prefix in (WEIGHTS_PREFIX, PRIVATE_PREFIX, "samples", "tmp"):
        for uri in rt.store.list_uris(prefix):
            if uri in refs:
                continue
            modified = rt.store.modified_at(uri)
            if modified is None or modified > cutoff:
                continue
            if rt.store.delete(uri):
                removed += 1
    return removed


def sweep(rt: Runtime, *, orphan_grace_s: float | None = None) -> dict:
    if orphan_grace_s is None:
        orphan_grace_s = rt.settings.storage.delete_grace_s
    now = utcnow()
    out = {"requeued": 0, "failed": 0, "purges": 0, "orphans": 0}
    with rt.session_factory.begin() as session:
        _requeue_stale_jobs(session, rt, now, out)
    with rt.session_factory.begin() as session:
        _schedule_purges(session, rt, now, out)
        session.execute(delete(OutboxMessage).where(OutboxMessage.sent_at < now - OUTBOX_RETENTION))
    with rt.session_factory() as session:
        refs = _referenced_uris(session)
    out["orphans"] = _delete_orphans(rt, refs, orphan_grace_s)
    return out
