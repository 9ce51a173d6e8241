"""Publish: ONE database transaction (DESIGN §7).

Insert the version, move ``latest`` (and ``production`` when the model auto-promotes), complete
the batch's requests with the first clean version, write tombstones, delete the subjects'
sample rows, revoke every older live version trained on their data (moving any alias off it:
an alias never points at a revoked version), and append the audit events. The purge of sample
chunks and revoked weight files follows through the outbox (:mod:`workers.execution.purge`).

Before the transaction opens, every object the version will name is read back from the store and
checked against its sha256 (:func:`verify_artifacts`): the row is committed only after the object
exists with the right checksum. A mismatch is refused: the bad object is deleted, the checkpoint
steps that wrote it are dropped, and the job is retried (it recomputes them).

A crash before the commit leaves no visible version (the weights files written by the evaluate
step are referenced only by the job's checkpoint; the rerun publishes them, and the sweeper
deletes files nobody references). The job row is locked and its attempt checked first, so a
job publishes at most once.

Which older versions held a subject: every version when the subject has ``core`` samples (the
core network saw them); otherwise those whose ``sample_watermark`` (the highest user sample id
fitted) is at least the subject's lowest user sample id. ``eval`` samples are never trained on.
"""

from __future__ import annotations

import uuid

from sqlalchemy import delete, func, select

from service.audit.service import append_event
from service.core.jobs import QUEUE_DEFAULT, enqueue
from service.job import repository as job_repo
from service.job import service as job_service
from service.model_registry.service import move_alias
from service.models import (
    Job,
    JobKind,
    JobStatus,
    JobStep,
    Model,
    ModelAlias,
    ModelVersion,
    RequestStatus,
    Sample,
    SubjectTombstone,
    VersionState,
)
from service.core.storage import ArtifactCorrupt, digest_of
from service.models._types import utcnow
from workers.execution.run import HOOKS, JobAbandoned, json_safe
from workers.runtime import Runtime

PUBLISHER = "system:publish"


def _held(info: dict, older: list[ModelVersion]) -> list[ModelVersion]:
    if info.get("core"):
        return list(older)
    low = info.get("min_user_sample_id")
    if low is None:
        return []
    return [v for v in older if v.sample_watermark is not None and v.sample_watermark >= low]


def verify_artifacts(rt: Runtime, job_id: uuid.UUID, attempt: int, cp: dict) -> None:
    """Raise :class:`ArtifactCorrupt` (after deleting the object and dropping the checkpoint steps
    that produced it) unless the weights and private weights exist with their sha256."""
    evald, solved = cp["evaluate"], cp.get("solve") or {}
    wanted = [(evald["artifact_uri"], evald["sha256"], evald.get("size_bytes"))]
    if evald.get("private_uri"):
        wanted.append((evald["private_uri"], digest_of(evald["private_uri"]) or solved.get("private_sha256"), None))
    for uri, sha, size in wanted:
        try:
            rt.store.verify(uri, sha, size)
        except ArtifactCorrupt:
            rt.store.delete(uri)
            drop = ["evaluate"] + (["solve"] if uri == solved.get("private_uri") else [])
            with rt.session_factory.begin() as session:
                job = job_repo.job_for_update(session, job_id)
                if job is not None and job.status == JobStatus.running.value and job.attempts == attempt:
                    job.checkpoint = {k: v for k, v in (job.checkpoint or {}).items() if k not in drop}
                    job.step = JobStep.collect.value if "solve" in drop else JobStep.solve.value
            raise


def publish(rt: Runtime, job_id: uuid.UUID, attempt: int, cp: dict) -> ModelVersion:
    verify_artifacts(rt, job_id, attempt, cp)
    collected, evald = cp["collect"], cp["evaluate"]
    solved = cp["solve"]
    now = utcnow()
    with rt.session_factory.begin() as session:
        job = job_repo.job_for_update(session, job_id)
        if job is None or job.status != JobStatus.running.value or job.attempts != attempt:
            raise JobAbandoned(f"job {job_id} is no longer ours ({job.status if job else 'gone'})")
        model = session.execute(select(Model).where(Model.id == job.model_id).with_for_update()).scalar_one()
        number = (session.execute(select(func.max(ModelVersion.number)).where(ModelVersion.model_id == model.id)).scalar() or 0) + 1
        bound = dict(evald["bound"])
        if evald.get("fallback"):
            bound["fallback"] = evald["fallback"]
        bound = json_safe(bound)
        reason = (job.config or {}).get("reason")
        version = ModelVersion(
            model_id=model.id,
            number=number,
            parent_id=collected.get("parent_version_id"),
            job_id=job.id,
            artifact_uri=evald["artifact_uri"],
            private_uri=evald["private_uri"],
            sha256=evald["sha256"],
            size_bytes=evald["size_bytes"],
            metrics=json_safe(evald["metrics"]),
            bound=bound,
            sample_watermark=solved.get("sample_watermark"),
            state=VersionState.live.value,
        )
        session.add(version)
        session.flush()

        per_subject: dict[str, dict] = collected["per_subject"]
        keys = list(per_subject)
        older = list(session.execute(
            select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.id != version.id).order_by(ModelVersion.number)
        ).scalars()) if keys else []
        held_by: dict[str, list[int]] = {}
        to_revoke: dict[int, ModelVersion] = {}
        for key, info in per_subject.items():
            held = _held(info, older)
            held_by[key] = [v.number for v in held]
            for v in held:
                if v.state == VersionState.live.value:
                    to_revoke[v.id] = v
        for v in to_revoke.values():
            v.state = VersionState.revoked.value
            v.revoked_at = now
            v.revoked_reason = f"held data of subjects deleted by job {job.id}"[:200]
        session.flush()

        # Aliases: latest always; production when auto-promoting; any alias on a revoked version.
        move_alias(session, model, "latest", version, PUBLISHER, system=True)
        aliases = session.execute(select(ModelAlias).where(ModelAlias.model_id == model.id)).scalars().all()
        names = {a.name for a in aliases}
        for a in aliases:
            if a.version_id in to_revoke or (a.name == "production" and model.auto_promote):
                move_alias(session, model, a.name, version, PUBLISHER, system=True)
        if model.auto_promote and "production" not in names:
            move_alias(session, model, "production", version, PUBLISHER, system=True)

        # Requests of the batch, tombstones, and the sample rows themselves.
        reqs = job_repo.processing_requests(session, job.id)
        first_req = {}
        for r in reqs:
            first_req.setdefault(r.subject_key, r.id)
        existing_stones = set(session.execute(
            select(SubjectTombstone.subject_key).where(SubjectTombstone.model_id == model.id, SubjectTombstone.subject_key.in_(keys))
        ).scalars()) if keys else set()
        for key in keys:
            if per_subject[key]["samples"] and key not in existing_stones:
                session.add(SubjectTombstone(model_id=model.id, subject_key=key, deleted_at=now, request_id=first_req.get(key)))
        if keys:
            for part in job_repo._chunks(keys):
                session.execute(delete(Sample).where(Sample.model_id == model.id, Sample.subject_key.in_(part)))
        session.flush()
        still_held = set()
        multi = [r.subject_key for r in reqs if r.model_id is None]
        if multi:
            still_held = set(session.execute(select(Sample.subject_key).where(Sample.subject_key.in_(multi)).distinct()).scalars())
        for req in reqs:
            info = per_subject.get(req.subject_key, {"samples": 0})
            held = list(req.held_versions or []) + [{"model": model.name, "number": n} for n in held_by.get(req.subject_key, [])]
            req.held_versions = held
            req.samples_removed = (req.samples_removed or 0) + int(info["samples"])
            req.clean_version_id = version.id
            if req.model_id is None:
                req.job_id = None
                if req.subject_key in still_held:
                    req.status = RequestStatus.queued.value  # next model holding the subject
                    continue
            req.status = RequestStatus.completed.value
            req.completed_at = now
            req.subject_id = None
            req.open_key = None
            append_event(
                session,
                actor=PUBLISHER,
                kind="request.completed",
                subject_key=req.subject_key,
                payload={"request_id": str(req.id), "model": model.name, "clean_version": number, "job_kind": job.kind,
                         "samples_removed": req.samples_removed, "held_versions": held, "kl_nats": bound.get("kl_nats")},
            )

        append_event(
            session,
            actor=PUBLISHER,
            kind="version.published",
            payload={"model": model.name, "number": number, "job_id": str(job.id), "kind": job.kind, "sha256": version.sha256,
                     "parent": collected.get("parent_number"), "bound": bound, "subjects": len(keys), "reason": reason,
                     "gates": evald.get("gates"), "fallback": evald.get("fallback")},
        )
        for v in to_revoke.values():
            append_event(session, actor=PUBLISHER, kind="version.revoked",
                         payload={"model": model.name, "number": v.number, "superseded_by": number, "job_id": str(job.id)})

        job.status = JobStatus.succeeded.value
        job.active_key = None
        job.step = JobStep.publish.value
        job.result_version_id = version.id
        job.parent_version_id = collected.get("parent_version_id")
        job.metrics = json_safe({**evald["metrics"], "kl_nats": bound.get("kl_nats"), "version": number})
        job.finished_at = now
        job.progress = {"step": JobStep.publish.value, "done": True, "version": number}
        if keys or to_revoke:
            enqueue(session, job_service.TASK_PURGE, task_id=f"purge-{job.id}", args=[model.id], queue=QUEUE_DEFAULT)
        if job.kind == JobKind.zero.value and (job.config or {}).get("then_retrain"):
            session.flush()
            job_service.create_job(session, rt.settings, model, JobKind.retrain, actor=PUBLISHER,
                                   config={"reason": f"refit user weights after zero job {job.id}"})
        hook = HOOKS.get("publish_before_commit")
        if hook is not None:
            hook(job)
        return version
