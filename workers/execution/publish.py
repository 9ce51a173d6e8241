"""Publish: ONE database transaction (DESIGN §7), made of the domains' own state changes (§13).

This module keeps the lock, the fencing check and the order; the domains own their rows:

1. lock the job row and check that this attempt still owns it (``service.job``);
2. insert the version and its private artifacts, revoke every older live version trained on the
   batch's subjects, move the aliases (``service.model_registry.publication``);
3. tombstone the subjects and delete their sample rows (same domain); for a class request, the
   class's remaining samples and mapping rows too, and tombstone the label (``classes``);
4. close the batch's requests with the first clean version (``service.deletion_request.closing_requests``:
   one flush and one audit append for the batch);
5. append the audit events (``version.published``, ``version.revoked``);
6. send the purge through the outbox and mark the job ``succeeded`` (``service.job``).

Before the transaction opens, every object the version will name is read back from the store and
checked against its sha256 (:func:`verify_artifacts`): the row is committed only after the object
exists with the right checksum. A mismatch is refused: the bad object is deleted, the checkpoint
steps that wrote it are dropped, and the job is retried (it recomputes them).

A crash before the commit leaves no visible version (the weights files written by the evaluate
step are referenced only by the job's checkpoint; the rerun publishes them, and the sweeper
deletes files nobody references). The job row is locked and its attempt checked first, so a job
publishes at most once. The purge of sample chunks and revoked files follows through the outbox
(:mod:`workers.execution.purge`).
"""

from __future__ import annotations

import uuid

from service.audit.service import append_events, sign_checkpoint
from service.core.db import scrub_deleted
from service.deletion_request.service import closing_requests
from service.job import repository as job_repo
from service.job import service as job_service
from service.core.storage import ArtifactCorrupt, digest_of
from service.model_registry import classes, publication
from service.models import JobStep, ModelVersion, RequestStatus
from service.models._types import utcnow
from service.webhook import events
from workers.execution.common import HOOKS, JobAbandoned, json_safe
from workers.runtime import Runtime

PUBLISHER = "system:publish"


def verify_artifacts(rt: Runtime, job_id: uuid.UUID, attempt: int, cp: dict) -> None:
    """Raise :class:`ArtifactCorrupt` (after deleting the object and dropping the checkpoint steps
    that produced it) unless the weights and every private artifact exist with their sha256."""
    evald, solved = cp["evaluate"], cp.get("solve") or {}
    private = evald.get("private_artifacts") or ({"weights": {"uri": evald["private_uri"]}} if evald.get("private_uri") else {})
    wanted = [(evald["artifact_uri"], evald["sha256"], evald.get("size_bytes"))]
    wanted += [(a["uri"], a.get("sha256") or digest_of(a["uri"]), a.get("size_bytes")) for a in private.values()]
    from_solve = {a["uri"] for a in (solved.get("private_artifacts") or {}).values()} | {solved.get("private_uri")}
    for uri, sha, size in wanted:
        try:
            rt.store.verify(uri, sha, size)
        except ArtifactCorrupt:
            rt.store.delete(uri)
            drop = ["evaluate"] + (["solve"] if uri in from_solve else [])
            with rt.session_factory.begin() as session:
                job_service.drop_steps(session, job_id, attempt, drop,
                                       JobStep.collect.value if "solve" in drop else JobStep.solve.value)
            raise


def publish(rt: Runtime, job_id: uuid.UUID, attempt: int, cp: dict) -> ModelVersion:
    """Publish in one transaction; once it has committed, scrub the erased raw subject ids'
    old page images from the database files (SQLite's WAL; see ``scrub_deleted``)."""
    verify_artifacts(rt, job_id, attempt, cp)
    version = _publish(rt, job_id, attempt, cp)
    scrub_deleted(rt.engine)
    return version


def _publish(rt: Runtime, job_id: uuid.UUID, attempt: int, cp: dict) -> ModelVersion:
    collected, evald, solved = cp["collect"], cp["evaluate"], cp["solve"]
    now = utcnow()
    with rt.session_factory.begin() as session:
        # 1. the lock and the fencing check
        job = job_service.lock_owned(session, job_id, attempt)
        if job is None:
            raise JobAbandoned(f"job {job_id} attempt {attempt} is no longer the owner")
        model = publication.lock_model(session, job.model_id)
        bound = dict(evald["bound"])
        if evald.get("fallback"):
            bound["fallback"] = evald["fallback"]
        bound = json_safe(bound)
        reason = (job.config or {}).get("reason")

        # 2. the version, revocation of the versions that held the subjects, the aliases
        private = evald.get("private_artifacts") or {"weights": {"uri": evald["private_uri"]}}
        version = publication.add_version(
            session, model, job_id=job.id, parent_id=collected.get("parent_version_id"),
            artifact={"uri": evald["artifact_uri"], "sha256": evald["sha256"], "size_bytes": evald["size_bytes"]},
            private_artifacts=private, metrics=json_safe(evald["metrics"]), bound=bound,
            sample_watermark=solved.get("sample_watermark"),
        )
        holdings: dict[str, dict] = collected["per_subject"]
        held_by, revoked = publication.revoke_holders(session, model, version, holdings, now=now,
                                                      reason=f"held data of subjects deleted by job {job.id}")
        publication.move_aliases_on_publish(session, model, version, revoked, PUBLISHER)

        # 3. the subjects' samples
        reqs = job_repo.processing_requests(session, job.id)
        first_req: dict[str, uuid.UUID] = {}
        for r in reqs:
            first_req.setdefault(r.subject_key, r.id)
        publication.forget_samples(session, model, holdings, first_req, now)
        # a class request's class: its remaining samples and mapping go, the label is tombstoned
        label = (job.config or {}).get("class_label")
        class_of = classes.forget_classes(session, model, [r.subject_key for r in reqs],
                                          {int(label): [r.subject_key for r in reqs]} if label is not None else {},
                                          first_req, version.number, now)

        # 4. the batch's requests
        still_held = publication.subjects_still_held(session, [r.subject_key for r in reqs if r.model_id is None])
        with closing_requests(session, RequestStatus.completed, actor=PUBLISHER, kind="request.completed",
                              now=now) as close:
            for req in reqs:
                info = holdings.get(req.subject_key, {"samples": 0})
                held = list(req.held_versions or []) + [{"model": model.name, "number": n} for n in held_by.get(req.subject_key, [])]
                req.held_versions = held
                req.samples_removed = (req.samples_removed or 0) + int(info["samples"])
                req.clean_version_id = version.id
                if req.subject_key in class_of:
                    req.kind = "class"
                    req.forgotten_classes = list(req.forgotten_classes or []) + [
                        {"model": model.name, "label": class_of[req.subject_key], "version": version.number}]
                if req.model_id is None:
                    req.job_id = None
                    if req.subject_key in still_held:
                        req.status = RequestStatus.queued.value  # next model holding the subject
                        events.request_changed(session, req, RequestStatus.processing.value, now=now)
                        continue
                close(req, {"request_id": str(req.id), "model": model.name, "clean_version": version.number,
                            "job_kind": job.kind, "samples_removed": req.samples_removed, "held_versions": held,
                            "kl_nats": bound.get("kl_nats"),
                            **({"forgotten_class": class_of[req.subject_key]} if req.subject_key in class_of else {})})

        # 5. the audit events of the release (in one append, after the requests' events as before)
        append_events(session, [{
            "actor": PUBLISHER,
            "kind": "version.published",
            "payload": {"model": model.name, "number": version.number, "job_id": str(job.id), "kind": job.kind,
                        "sha256": version.sha256, "parent": collected.get("parent_number"), "bound": bound,
                        "subjects": len(holdings), "reason": reason, "gates": evald.get("gates"),
                        "fallback": evald.get("fallback")},
        }] + [{"actor": PUBLISHER, "kind": "version.revoked",
               "payload": {"model": model.name, "number": v.number, "superseded_by": version.number, "job_id": str(job.id)}}
              for v in revoked])
        sign_checkpoint(session)  # every publish signs the chain's head (DESIGN §10)

        # 6. the purge and the job
        if holdings or revoked:
            job_service.enqueue_purge(session, model.id, task_id=f"purge-{job.id}")
        job_service.succeed_job(session, rt.settings, job, version.id, version.number,
                                parent_version_id=collected.get("parent_version_id"), now=now, actor=PUBLISHER,
                                metrics=json_safe({**evald["metrics"], "kl_nats": bound.get("kl_nats"), "version": version.number}))
        hook = HOOKS.get("publish_before_commit")
        if hook is not None:
            hook(job)
        return version
