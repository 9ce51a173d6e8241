"""What a job does, step by step: collect → solve → evaluate → publish (DESIGN §4, §6, §7).

Each step's output is checkpointed in the job row, so a re-run (after a crash or a redelivery)
resumes at the saved step. No transaction spans a computation: claim, compute, then write
results in short transactions. Artifacts are content-addressed files written atomically.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sqlalchemy import func, select

from service.audit.service import append_event
from service.job import service as job_service
from service.models import DeletionRequest, Job, JobKind, JobStatus, JobStep, Model, ModelVersion, Sample, Split
from service.models._types import utcnow
from service.model_registry.samples import read_samples
from workers.runtime import Runtime
from workers.unlearning import (
    MixedLinearModel,
    TensorSource,
    check_gates,
    evaluate,
    get_method,
    load_model_from_bytes,
    membership_inference_auc,
    save_weights,
)

log = logging.getLogger("lethe.worker")
STEPS = [JobStep.collect, JobStep.solve, JobStep.evaluate, JobStep.publish]
RETAIN_EVAL_MAX = 2000

# Test hooks: name -> callable run at that point (fault injection in the test suite only).
HOOKS: dict[str, Callable[[Job], None]] = {}


def _hook(name: str, job: Job) -> None:
    fn = HOOKS.get(name)
    if fn is not None:
        fn(job)


class JobAbandoned(Exception):
    """The job row says someone else owns it, or it is no longer runnable."""


def engine_config(model: Model):
    method = get_method(model.method)
    known = set(method.config_cls.model_fields)
    cfg = {k: v for k, v in (model.method_config or {}).items() if k in known}
    return method, method.config_cls(**cfg)


# ----------------------------------------------------------------------------- claiming
def claim(rt: Runtime, job_id: uuid.UUID) -> bool:
    """Take the job: running, attempts+1. False when there is nothing to do."""
    s = rt.settings
    with rt.session_factory.begin() as session:
        job = session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
        if job is None or job.status not in (JobStatus.queued.value, JobStatus.running.value):
            return False
        now = utcnow()
        if job.status == JobStatus.running.value and job.heartbeat_at is not None:
            age = (now - job_service._aware(job.heartbeat_at)).total_seconds()
            if age < s.pipeline.heartbeat_timeout_s:
                return False  # a live worker has it (duplicate delivery)
        if job.attempts >= job.max_attempts:
            job_service.fail_job(session, s, job, job.error or f"gave up after {job.attempts} attempts (the worker kept dying)")
            return False
        job.attempts += 1
        job.status = JobStatus.running.value
        job.started_at = job.started_at or now
        job.heartbeat_at = now
        return True


class Heartbeat:
    def __init__(self, rt: Runtime, job_id: uuid.UUID) -> None:
        self.rt, self.job_id = rt, job_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.rt.settings.pipeline.heartbeat_interval_s):
            try:
                with self.rt.session_factory.begin() as session:
                    session.execute(
                        Job.__table__.update().where(Job.id == self.job_id, Job.status == JobStatus.running.value).values(heartbeat_at=utcnow())
                    )
            except Exception:  # noqa: BLE001 - a missed beat is retried next tick
                log.warning("heartbeat failed for job %s", self.job_id)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)


class ProgressWriter:
    """Writes progress into the job row in short transactions, at most every 0.5 s."""

    def __init__(self, rt: Runtime, job_id: uuid.UUID, step: str) -> None:
        self.rt, self.job_id, self.step, self.last = rt, job_id, step, 0.0

    def __call__(self, event: dict) -> None:
        now = time.monotonic()
        if now - self.last < 0.5:
            return
        self.last = now
        data = {"step": self.step, **{k: (float(v) if isinstance(v, float) else v) for k, v in event.items()}}
        with self.rt.session_factory.begin() as session:
            session.execute(Job.__table__.update().where(Job.id == self.job_id).values(progress=data, heartbeat_at=utcnow()))


def _save_step(rt: Runtime, job_id: uuid.UUID, step: JobStep, output: dict) -> dict:
    with rt.session_factory.begin() as session:
        job = session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one()
        if job.status != JobStatus.running.value:
            raise JobAbandoned(f"job {job_id} is {job.status}")
        cp = dict(job.checkpoint or {})
        cp[step.value] = output
        job.checkpoint = cp
        job.step = step.value
        job.progress = {"step": step.value, "done": True}
        return cp


# ----------------------------------------------------------------------------- steps
def _collect(rt: Runtime, job: Job, model: Model) -> dict:
    """Which subjects this job removes, and what the model holds of them."""
    with rt.session_factory() as session:
        reqs = session.execute(select(DeletionRequest).where(DeletionRequest.id.in_([uuid.UUID(r) for r in job.config.get("request_ids", [])]))).scalars().all()
        keys = sorted({r.subject_key for r in reqs})
        per_subject = {}
        for key in keys:
            row = session.execute(
                select(func.count(), func.min(Sample.id)).where(Sample.model_id == model.id, Sample.subject_key == key)
            ).one()
            core = session.execute(
                select(func.count()).select_from(Sample).where(Sample.model_id == model.id, Sample.subject_key == key, Sample.split == Split.core.value)
            ).scalar_one()
            per_subject[key] = {"samples": int(row[0]), "min_sample_id": row[1], "core": int(core)}
        parent = session.execute(
            select(ModelVersion).where(ModelVersion.model_id == model.id).order_by(ModelVersion.number.desc()).limit(1)
        ).scalar_one_or_none()
    return {
        "subject_keys": keys,
        "per_subject": per_subject,
        "parent_version_id": parent.id if parent else None,
        "parent_private_uri": parent.private_uri if parent else None,
        "parent_metrics": parent.metrics if parent else None,
    }


def _sources(rt: Runtime, model: Model, exclude: list[str], cfg) -> dict[str, Any]:
    with rt.session_factory() as session:
        core = read_samples(session, rt.store, model.id, splits=[Split.core.value], exclude_subject_keys=exclude)
        user = read_samples(session, rt.store, model.id, splits=[Split.user.value], exclude_subject_keys=exclude, include_ids=True)
        ev = read_samples(session, rt.store, model.id, splits=[Split.eval.value], exclude_subject_keys=exclude)
        forget = read_samples(session, rt.store, model.id, splits=[Split.user.value], only_subject_keys=exclude) if exclude else None
    cs = cfg.chunk_size
    return {
        "core": TensorSource(core.x, core.y, cs),
        "user": TensorSource(user.x, user.y, cs),
        "eval": TensorSource(ev.x, ev.y, cs),
        "forget": TensorSource(forget.x, forget.y, cs) if forget is not None and len(forget) else None,
        "watermark": int(user.ids.max()) if len(user) else None,
    }


def _put_weights(rt: Runtime, mm: MixedLinearModel, prefix: str, user_override=None, metadata=None) -> tuple[str, str, int]:
    tmp = rt.store.temp_path(".safetensors")
    save_weights(tmp, mm, user_override=user_override, metadata=metadata)
    art = rt.store.put_file(tmp, prefix=prefix, suffix=".safetensors")
    return art.uri, art.sha256, art.size


def _solve(rt: Runtime, job: Job, model: Model, collected: dict) -> dict:
    method, cfg = engine_config(model)
    kind = JobKind(job.kind)
    exclude = collected["subject_keys"]
    data = _sources(rt, model, exclude, cfg)
    progress = ProgressWriter(rt, job.id, JobStep.solve.value)
    t0 = time.perf_counter()
    guarantee, fallback = None, None
    parent_uri = collected.get("parent_private_uri")

    def fresh() -> MixedLinearModel:
        return MixedLinearModel.build(model.architecture, model.architecture_config, model.linearize, cfg.target_scale, device=cfg.device, seed=cfg.seed)

    if kind is JobKind.train or (kind is JobKind.forget and parent_uri is None):
        mm = fresh()
        method.train_core(mm, data["core"], cfg, progress)
        result = method.fit(mm, data["user"], cfg, progress) if len(data["user"]) else method.zero(mm)
        bound = method.bound(result, cfg)
    elif kind is JobKind.forget:
        mm = load_model_from_bytes(rt.store.read_bytes(parent_uri), device=cfg.device)
        _hook("solve", job)
        if len(data["user"]) == 0:
            result = method.zero(mm)
            bound = method.bound(result, cfg, exact=True, method="zero")
        else:
            result = method.forget(mm, data["user"], cfg, progress)
            bound = method.bound(result, cfg)
            if not result.converged:  # more iterations before falling back
                result = method.forget(mm, data["user"], cfg.model_copy(update={"max_iter": cfg.max_iter * 4}), progress)
                bound = method.bound(result, cfg)
    elif kind is JobKind.zero:
        mm = load_model_from_bytes(rt.store.read_bytes(parent_uri), device=cfg.device) if parent_uri else fresh()
        if parent_uri is None:
            method.train_core(mm, data["core"], cfg, progress)
        result = method.zero(mm)
        bound = method.bound(result, cfg, exact=True, method="zero")
    else:  # retrain: core and user weights from scratch without the subjects
        mm = fresh()
        result = method.retrain(mm, data["user"], cfg, core_source=data["core"], progress=progress) if len(data["user"]) else None
        if result is None:
            method.train_core(mm, data["core"], cfg, progress)
            result = method.zero(mm)
        bound = method.bound(result, cfg, exact=True, method="retrain")
    _hook("after_solve", job)
    uri, sha, size = _put_weights(rt, mm, f"private/{model.id}", metadata={"private": "noise-free; never served"})
    return {
        "private_uri": uri,
        "private_sha256": sha,
        "result": result.to_dict(),
        "bound": bound.to_dict(),
        "guarantee": guarantee or bound.guarantee,
        "fallback": fallback,
        "sample_watermark": data["watermark"],
        "seconds": time.perf_counter() - t0,
        "method": bound.method,
    }


def _evaluate(rt: Runtime, job: Job, model: Model, collected: dict, solved: dict) -> dict:
    method, cfg = engine_config(model)
    t0 = time.perf_counter()
    mm = load_model_from_bytes(rt.store.read_bytes(solved["private_uri"]), device=cfg.device)
    data = _sources(rt, model, collected["subject_keys"], cfg)
    bound = solved["bound"]
    fallback = solved.get("fallback")

    def measure(m: MixedLinearModel) -> dict:
        metrics = {}
        ev = evaluate(m, data["eval"], cfg)
        metrics["eval_accuracy"], metrics["eval_loss"], metrics["eval_n"] = ev["accuracy"], ev["loss"], ev["n"]
        user = data["user"]
        if len(user):
            idx = np.random.default_rng(0).permutation(len(user))[:RETAIN_EVAL_MAX]
            metrics["retain_accuracy"] = evaluate(m, user.subset(idx), cfg)["accuracy"]
        if data["forget"] is not None:
            metrics["forget_accuracy"] = evaluate(m, data["forget"], cfg)["accuracy"]
            if len(data["eval"]):
                metrics["mia_auc"] = membership_inference_auc(m, data["forget"], data["eval"], cfg)
        return metrics

    metrics = measure(mm)
    if JobKind(job.kind) is JobKind.forget and bound["guarantee"] == "certified":
        from workers.unlearning import Bound

        gate = check_gates(Bound(**bound), {"accuracy": (collected.get("parent_metrics") or {}).get("eval_accuracy")}, {"accuracy": metrics["eval_accuracy"]}, cfg)
        if not gate.ok:
            # DESIGN §6.6: fall back to zero + retrain; the audit records why.
            log.warning("job %s failed its gates (%s): falling back to zero + retrain", job.id, "; ".join(gate.reasons))
            mm = MixedLinearModel.build(model.architecture, model.architecture_config, model.linearize, cfg.target_scale, device=cfg.device, seed=cfg.seed)
            res = method.retrain(mm, data["user"], cfg, core_source=data["core"]) if len(data["user"]) else method.zero(mm)
            bound = method.bound(res, cfg, exact=True, method="retrain").to_dict()
            fallback = {"reasons": gate.reasons, "to": "zero+retrain"}
            uri, sha, _ = _put_weights(rt, mm, f"private/{model.id}", metadata={"private": "noise-free; never served"})
            solved = {**solved, "private_uri": uri, "private_sha256": sha, "bound": bound, "fallback": fallback}
            metrics = measure(mm)
    released = method.release(mm, cfg)
    uri, sha, size = _put_weights(rt, mm, f"weights/{model.id}", user_override=released, metadata={"model": model.name})
    # the bound is about the released noise level
    metrics["seconds_solve"] = solved.get("seconds")
    metrics["seconds_evaluate"] = time.perf_counter() - t0
    return {
        "metrics": metrics,
        "bound": {**bound, "noise_std": cfg.noise_std},
        "artifact_uri": uri,
        "sha256": sha,
        "size_bytes": size,
        "private_uri": solved["private_uri"],
        "fallback": fallback,
    }


# ----------------------------------------------------------------------------- driver
def run_job(rt: Runtime, job_id: uuid.UUID | str) -> str:
    """Run (or resume) a job. Returns its final status; never raises for job failures."""
    job_id = uuid.UUID(str(job_id))
    if not claim(rt, job_id):
        return "skipped"
    try:
        with Heartbeat(rt, job_id):
            with rt.session_factory() as session:
                job = session.get(Job, job_id)
                model = session.get(Model, job.model_id)
                session.expunge_all()
            cp = dict(job.checkpoint or {})
            if JobStep.collect.value not in cp:
                cp = _save_step(rt, job_id, JobStep.collect, _collect(rt, job, model))
            if JobStep.solve.value not in cp:
                cp = _save_step(rt, job_id, JobStep.solve, _solve(rt, job, model, cp["collect"]))
            if JobStep.evaluate.value not in cp:
                cp = _save_step(rt, job_id, JobStep.evaluate, _evaluate(rt, job, model, cp["collect"], cp["solve"]))
            _hook("before_publish", job)
            from workers.execution.publish import publish

            publish(rt, job_id, cp)
        return "succeeded"
    except JobAbandoned:
        return "abandoned"
    except Exception as exc:  # noqa: BLE001 - recorded in the job row; the DB is the truth
        err = f"{type(exc).__name__}: {exc}"
        log.error("job %s failed: %s", job_id, err)
        with rt.session_factory.begin() as session:
            job = session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one()
            if job.status != JobStatus.running.value:
                return job.status
            job.error = (err + "\n" + traceback.format_exc())[-4000:]
            if job.attempts >= job.max_attempts:
                job_service.fail_job(session, rt.settings, job, err)
                return "failed"
            job.status = JobStatus.queued.value
            from service.core.jobs import QUEUE_GPU, enqueue

            enqueue(session, job_service.TASK_RUN_JOB, task_id=str(job.id), args=[str(job.id)], queue=QUEUE_GPU)
        return "retrying"
