"""Publish: ONE database transaction (DESIGN §7).

Insert the version, move ``latest`` (and ``production`` when the model auto-promotes), complete
the batch's requests with the first clean version, write tombstones, delete the subjects'
sample rows, revoke every older version trained on their data (moving any alias off it), and
append the audit events. Purging the sample chunks and revoked weight files follows (outbox).
"""

from __future__ import annotations

import uuid

from sqlalchemy import delete, func, select

from service.audit.service import append_event
from service.core.jobs import QUEUE_DEFAULT, enqueue
from service.job import service as job_service
from service.models import (
    DeletionRequest,
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
from service.models._types import utcnow
from service.model_registry.service import move_alias
from workers.execution.run import JobAbandoned
from workers.runtime import Runtime

PUBLISHER = "system:publish"


def set_alias(session, model, alias: str, version: ModelVersion, actor: str) -> None:
    move_alias(session, model, alias, version, actor, system=True)


def publish(rt: Runtime, job_id: uuid.UUID, cp: dict) -> ModelVersion:
    collected, solved, evald = cp["collect"], cp["solve"], cp["evaluate"]
    now = utcnow()
    with rt.session_factory.begin() as session:
        job = session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one()
        if job.status != JobStatus.running.value:
            raise JobAbandoned(f"job {job_id} is {job.status}")
        model = session.execute(select(Model).where(Model.id == job.model_id).with_for_update()).scalar_one()
        number = (session.execute(select(func.max(ModelVersion.number)).where(ModelVersion.model_id == model.id)).scalar() or 0) + 1
        bound = dict(evald["bound"])
        if evald.get("fallback"):
            bound["fallback"] = evald["fallback"]
        version = ModelVersion(
            model_id=model.id,
            number=number,
            parent_id=collected.get("parent_version_id"),
            job_id=job.id,
            artifact_uri=evald["artifact_uri"],
            private_uri=evald["private_uri"],
            sha256=evald["sha256"],
            size_bytes=evald["size_bytes"],
            metrics=evald["metrics"],
            bound=bound,
            sample_watermark=solved.get("sample_watermark"),
            state=VersionState.live.value,
        )
        session.add(version)
        session.flush()

        # Which older versions held the batch's subjects: every version fitted on user data at
        # or after the subject's first sample; with core samples, every older version.
        per_subject = collected["per_subject"]
        older = session.execute(
            select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.id != version.id).order_by(ModelVersion.number)
        ).scalars().all()
        held_by: dict[str, list[int]] = {}
        to_revoke: dict[int, ModelVersion] = {}
        for key, info in per_subject.items():
            if not info["samples"]:
                held_by[key] = []
                continue
            held = [
                v for v in older
                if info["core"] or (v.sample_watermark is not None and info["min_sample_id"] is not None and v.sample_watermark >= info["min_sample_id"])
            ]
            held_by[key] = [v.number for v in held]
            for v in held:
                if v.state == VersionState.live.value:
                    to_revoke[v.id] = v

        for v in to_revoke.values():
            v.state = VersionState.revoked.value
            v.revoked_at = now
            v.revoked_reason = f"held data of subjects deleted by job {job.id}"
        set_alias(session, model, "latest", version, PUBLISHER)
        aliases = session.execute(select(ModelAlias).where(ModelAlias.model_id == model.id)).scalars().all()
        for a in aliases:
            if a.version_id in to_revoke or (a.name == "production" and model.auto_promote):
                set_alias(session, model, a.name, version, PUBLISHER)
        if model.auto_promote and not any(a.name == "production" for a in aliases):
            set_alias(session, model, "production", version, PUBLISHER)

        # Requests of the batch, tombstones, and the sample rows themselves.
        keys = list(per_subject)
        reqs = session.execute(
            select(DeletionRequest).where(DeletionRequest.job_id == job.id, DeletionRequest.status == RequestStatus.processing.value)
        ).scalars().all()
        for key in keys:
            if per_subject[key]["samples"] and session.execute(
                select(SubjectTombstone.id).where(SubjectTombstone.model_id == model.id, SubjectTombstone.subject_key == key)
            ).first() is None:
                req_id = next((r.id for r in reqs if r.subject_key == key), None)
                session.add(SubjectTombstone(model_id=model.id, subject_key=key, deleted_at=now, request_id=req_id))
        if keys:
            session.execute(delete(Sample).where(Sample.model_id == model.id, Sample.subject_key.in_(keys)))
        for req in reqs:
            info = per_subject.get(req.subject_key, {"samples": 0})
            held = list(req.held_versions or []) + [{"model": model.name, "number": n} for n in held_by.get(req.subject_key, [])]
            req.held_versions = held
            req.samples_removed = (req.samples_removed or 0) + int(info["samples"])
            req.clean_version_id = version.id
            req.job_id = None if req.model_id is None else req.job_id
            still_held = req.model_id is None and session.execute(
                select(func.count()).select_from(Sample).where(Sample.subject_key == req.subject_key)
            ).scalar_one() > 0
            if still_held:
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
                payload={"request_id": str(req.id), "model": model.name, "clean_version": number,
                         "samples_removed": req.samples_removed, "held_versions": held, "kl_nats": bound.get("kl_nats")},
            )

        append_event(
            session,
            actor=PUBLISHER,
            kind="version.published",
            payload={"model": model.name, "number": number, "job_id": str(job.id), "kind": job.kind, "sha256": version.sha256,
                     "bound": bound, "subjects": len(keys), "reason": (job.config or {}).get("reason")},
        )
        for v in to_revoke.values():
            append_event(session, actor=PUBLISHER, kind="version.revoked",
                         payload={"model": model.name, "number": v.number, "superseded_by": number})

        job.status = JobStatus.succeeded.value
        job.active_key = None
        job.step = JobStep.publish.value
        job.result_version_id = version.id
        job.parent_version_id = collected.get("parent_version_id")
        job.metrics = {**evald["metrics"], "kl_nats": bound.get("kl_nats")}
        job.finished_at = now
        job.progress = {"step": "publish", "done": True, "version": number}
        enqueue(session, job_service.TASK_PURGE, task_id=f"purge-{job.id}", args=[model.id], queue=QUEUE_DEFAULT)
        if job.kind == JobKind.zero.value and (job.config or {}).get("then_retrain"):
            session.flush()
            job_service.create_job(session, rt.settings, model, JobKind.retrain, actor=PUBLISHER, config={"reason": "refit user weights after zero"})
        return version
