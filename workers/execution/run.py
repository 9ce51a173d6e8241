"""What a job does, step by step: collect → solve → evaluate → publish (DESIGN §4, §6, §7).

Entry point: :func:`run_job(rt, job_id) <run_job>` (the ``job.run`` task calls it; so can the
embedded runner, a benchmark or a test). It

1. claims the job in a short transaction (status ``running``, ``attempts + 1``; a job already
   past ``max_attempts`` ends ``failed`` with its error and its requests go back to the queue);
   the new attempt number is the job's *fencing token*: every later write checks it, so a
   worker the sweeper gave up on can never overwrite or publish over the attempt that replaced it;
2. heartbeats into ``jobs.heartbeat_at`` from a background thread;
3. runs the steps not yet in ``jobs.checkpoint``, saving each step's output there (and the step
   name in ``jobs.step``) in its own short transaction, so a re-run resumes at the saved step.
   Progress (phase, iteration, residual) is written at most every 0.5 s;
4. publishes in ONE transaction (:mod:`workers.execution.publish`).

Kinds: ``train`` (core on the ``core`` split, user weights fitted on the ``user`` split),
``forget`` (Newton step on D_r from the parent's PRIVATE noise-free weights), ``zero``
(w_u := 0, bound exactly 0) and ``retrain`` (user weights refitted from 0 on D_r; the core too
when a subject has core samples). A forget that fails its gates (§6.6) first runs more
iterations at a tighter tolerance, then falls back to zero + retrain; the checkpoint, the version's
bound and the audit event record why.

Weights files are content-addressed and written atomically (temp file, fsync, rename); the
private noise-free file is the start of the next job and is never served.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from sqlalchemy import func, select

from service.job import repository as job_repo
from service.job import service as job_service
from service.model_registry.samples import read_samples
from service.models import DeletionRequest, Job, JobKind, JobStatus, JobStep, Model, Sample, Split
from service.models._types import utcnow
from workers.execution.isolation import out_of_memory
from workers.runtime import Runtime
from workers.unlearning import (
    Bound,
    ConfigError,
    InvalidDataError,
    MixedLinearModel,
    SolveResult,
    TensorSource,
    check_gates,
    evaluate,
    get_method,
    load_model_from_bytes,
    membership_inference_auc,
    save_weights,
)

log = logging.getLogger("lethe.worker")
STEPS = (JobStep.collect, JobStep.solve, JobStep.evaluate)
RETAIN_EVAL_MAX = 2000
REFINE_ITER_FACTOR = 10  # gate remedy 1: this many times the configured iteration budget
PROGRESS_MIN_INTERVAL_S = 0.5
PRIVATE_PREFIX = "private"
WEIGHTS_PREFIX = "weights"

# Test hooks: name -> callable run at that point ("solve", "after_solve", "before_publish",
# "publish_before_commit"). Fault injection in the test suite only; empty in production.
HOOKS: dict[str, Callable[[Job], None]] = {}


def _hook(name: str, job: Job) -> None:
    fn = HOOKS.get(name)
    if fn is not None:
        fn(job)


class JobAbandoned(Exception):
    """The job row says another attempt owns it, or it is no longer runnable."""


def json_safe(value: Any) -> Any:
    """JSON (and JSONB) safe: non-finite floats become "inf"/"-inf"/"nan", numpy scalars plain."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return str(value)


def _bound_from(d: dict) -> Bound:
    fields = Bound.__dataclass_fields__
    vals = {k: d[k] for k in fields if k in d}
    for k in ("residual_norm", "mu", "noise_std", "kl_nats", "kl_bits"):
        vals[k] = float(vals[k])
    vals["iterations"] = int(vals["iterations"])
    return Bound(**vals)


def engine_config(model: Model):
    """The model's method and its config (keys the method does not know are ignored)."""
    method = get_method(model.method)
    known = set(method.config_cls.model_fields)
    cfg = {k: v for k, v in (model.method_config or {}).items() if k in known}
    return method, method.config_cls(**cfg)


# ----------------------------------------------------------------------------- claiming
def claim(rt: Runtime, job_id: uuid.UUID) -> int | None:
    """Take the job (running, attempts + 1) and return the attempt number, or None when there is
    nothing to do: unknown or finished job, or a live worker holds it (a duplicate delivery)."""
    s = rt.settings
    with rt.session_factory.begin() as session:
        job = job_repo.job_for_update(session, job_id)
        if job is None or job.status not in (JobStatus.queued.value, JobStatus.running.value):
            return None
        now = utcnow()
        if job.status == JobStatus.running.value and job.heartbeat_at is not None:
            age = (now - job_service._aware(job.heartbeat_at)).total_seconds()
            if age < s.pipeline.heartbeat_timeout_s:
                return None
        if job.attempts >= job.max_attempts:
            job_service.fail_job(session, s, job, job.error or f"gave up after {job.attempts} attempts (the worker kept dying)")
            return None
        job.attempts += 1
        job.status = JobStatus.running.value
        job.started_at = job.started_at or now
        job.heartbeat_at = now
        return job.attempts


def _owned(job_id: uuid.UUID, attempt: int):
    return (Job.id == job_id) & (Job.status == JobStatus.running.value) & (Job.attempts == attempt)


class Heartbeat:
    """Background thread: ``heartbeat_at = now`` every ``heartbeat_interval_s`` while we own the job."""

    def __init__(self, rt: Runtime, job_id: uuid.UUID, attempt: int) -> None:
        self.rt, self.job_id, self.attempt = rt, job_id, attempt
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.rt.settings.pipeline.heartbeat_interval_s):
            try:
                with self.rt.session_factory.begin() as session:
                    session.execute(Job.__table__.update().where(_owned(self.job_id, self.attempt)).values(heartbeat_at=utcnow()))
            except Exception:  # noqa: BLE001 - a missed beat is retried next tick
                log.warning("heartbeat failed for job %s", self.job_id)

    def __enter__(self) -> "Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


class ProgressWriter:
    """Writes progress into the job row in short transactions, at most every 0.5 s."""

    def __init__(self, rt: Runtime, job_id: uuid.UUID, attempt: int, step: str) -> None:
        self.rt, self.job_id, self.attempt, self.step, self.last = rt, job_id, attempt, step, 0.0

    def __call__(self, event: dict) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_MIN_INTERVAL_S:
            return
        self.last = now
        data = json_safe({"step": self.step, **event})
        with self.rt.session_factory.begin() as session:
            session.execute(Job.__table__.update().where(_owned(self.job_id, self.attempt)).values(progress=data, heartbeat_at=utcnow()))


def _save_step(rt: Runtime, job_id: uuid.UUID, attempt: int, step: JobStep, output: dict) -> dict:
    with rt.session_factory.begin() as session:
        job = job_repo.job_for_update(session, job_id)
        if job is None or job.status != JobStatus.running.value or job.attempts != attempt:
            raise JobAbandoned(f"job {job_id} is no longer ours ({job.status if job else 'gone'})")
        cp = dict(job.checkpoint or {})
        cp[step.value] = json_safe(output)
        job.checkpoint = cp
        job.step = step.value
        job.progress = {"step": step.value, "done": True}
        return cp


# ----------------------------------------------------------------------------- steps
def _collect(rt: Runtime, job: Job, model: Model) -> dict:
    """Which subjects this job removes, what the model holds of them, and the parent version."""
    with rt.session_factory() as session:
        ids = [uuid.UUID(r) for r in (job.config or {}).get("request_ids", [])]
        keys = sorted({k for k in session.execute(select(DeletionRequest.subject_key).where(DeletionRequest.id.in_(ids))).scalars()}) if ids else []
        per_subject = {k: {"samples": 0, "core": 0, "user": 0, "min_user_sample_id": None} for k in keys}
        for part in job_repo._chunks(keys):
            rows = session.execute(
                select(
                    Sample.subject_key,
                    func.count(),
                    func.count().filter(Sample.split == Split.core.value),
                    func.count().filter(Sample.split == Split.user.value),
                    func.min(Sample.id).filter(Sample.split == Split.user.value),
                )
                .where(Sample.model_id == model.id, Sample.subject_key.in_(part))
                .group_by(Sample.subject_key)
            ).all()
            for key, n, core, user, min_user in rows:
                per_subject[key] = {"samples": int(n), "core": int(core), "user": int(user), "min_user_sample_id": min_user}
        parent = job_repo.newest_live_version(session, model.id)
    return {
        "subject_keys": keys,
        "per_subject": per_subject,
        "parent_version_id": parent.id if parent else None,
        "parent_number": parent.number if parent else None,
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
    """Write a weights file under a content-addressed name (temp, fsync, rename)."""
    tmp = rt.store.temp_path(".safetensors")
    try:
        save_weights(tmp, mm, user_override=user_override, metadata=metadata)
        art = rt.store.put_file(tmp, prefix=prefix, suffix=".safetensors")
    finally:
        tmp.unlink(missing_ok=True)
    touch(rt, art.uri)
    return art.uri, art.sha256, art.size


def touch(rt: Runtime, uri: str) -> None:
    """Refresh the mtime of a content-addressed file we just (re)wrote: when identical content
    already existed, the store kept the old file, and the orphan sweeper judges age by mtime."""
    rt.store.touch(uri)


def _put_private(rt: Runtime, mm: MixedLinearModel, model: Model) -> tuple[str, str]:
    uri, sha, _ = _put_weights(rt, mm, f"{PRIVATE_PREFIX}/{model.id}", metadata={"private": "noise-free; never served"})
    return uri, sha


def _fresh(model: Model, cfg) -> MixedLinearModel:
    return MixedLinearModel.build(model.architecture, model.architecture_config, model.linearize, cfg.target_scale,
                                  device=cfg.device, seed=cfg.seed)


def _load_private(rt: Runtime, uri: str, cfg) -> MixedLinearModel:
    return load_model_from_bytes(rt.store.read_bytes(uri), device=cfg.device)


def _solve(rt: Runtime, job: Job, attempt: int, model: Model, collected: dict) -> dict:
    method, cfg = engine_config(model)
    kind = JobKind(job.kind)
    exclude = collected["subject_keys"]
    data = _sources(rt, model, exclude, cfg)
    progress = ProgressWriter(rt, job.id, attempt, JobStep.solve.value)
    t0 = time.perf_counter()
    parent_uri = collected.get("parent_private_uri")
    watermark = data["watermark"]
    release_noise = True
    _hook("solve", job)

    def train_from_scratch() -> tuple[MixedLinearModel, SolveResult, Bound]:
        mm = _fresh(model, cfg)
        method.train_core(mm, data["core"], cfg, progress)
        if len(data["user"]):
            res = method.fit(mm, data["user"], cfg, progress)
            return mm, res, method.bound(res, cfg)
        res = method.zero(mm)
        return mm, res, method.bound(res, cfg, exact=True, method="zero")

    if kind is JobKind.train or (kind is JobKind.forget and parent_uri is None):
        mm, result, bound = train_from_scratch()
    elif kind is JobKind.forget:
        mm = _load_private(rt, parent_uri, cfg)
        if len(data["user"]) == 0:  # nobody left: the user weights are zero, exactly
            result = method.zero(mm)
            bound = method.bound(result, cfg, exact=True, method="zero")
            watermark, release_noise = None, False
        else:
            result = method.forget(mm, data["user"], cfg, progress)
            bound = method.bound(result, cfg)
    elif kind is JobKind.zero:
        if parent_uri is not None:
            mm = _load_private(rt, parent_uri, cfg)
        else:
            mm = _fresh(model, cfg)
            method.train_core(mm, data["core"], cfg, progress)
        result = method.zero(mm)
        bound = method.bound(result, cfg, exact=True, method="zero")
        watermark, release_noise = None, False
    else:  # retrain: without the subjects, from w = 0 (and a fresh core when they had core samples)
        full = bool((job.config or {}).get("core_subjects")) or parent_uri is None
        if full:
            mm = _fresh(model, cfg)
            if len(data["user"]):
                result = method.retrain(mm, data["user"], cfg, core_source=data["core"], progress=progress)
            else:
                method.train_core(mm, data["core"], cfg, progress)
                result = method.zero(mm)
        else:
            mm = _load_private(rt, parent_uri, cfg)
            method.zero(mm)
            result = method.fit(mm, data["user"], cfg, progress) if len(data["user"]) else method.zero(mm)
        bound = method.bound(result, cfg, exact=True, method="retrain")
        if not len(data["user"]):
            watermark, release_noise = None, False
    _hook("after_solve", job)
    uri, sha = _put_private(rt, mm, model)
    return {
        "private_uri": uri,
        "private_sha256": sha,
        "result": result.to_dict(),
        "bound": bound.to_dict(),
        "sample_watermark": watermark,
        "release_noise": release_noise,
        "seconds": time.perf_counter() - t0,
    }


def _measure(mm: MixedLinearModel, data: dict, cfg) -> dict:
    """DESIGN §6.7: eval accuracy/loss, retain accuracy on a sample of D_r, forget-set accuracy, MIA AUC."""
    metrics: dict[str, Any] = {}
    ev = evaluate(mm, data["eval"], cfg)
    metrics["eval_accuracy"], metrics["eval_loss"], metrics["eval_n"] = ev["accuracy"], ev["loss"], ev["n"]
    user = data["user"]
    if len(user):
        idx = np.random.default_rng(0).permutation(len(user))[:RETAIN_EVAL_MAX]
        metrics["retain_accuracy"] = evaluate(mm, user.subset(idx), cfg)["accuracy"]
        metrics["retain_n"] = int(len(idx))
    if data["forget"] is not None:
        metrics["forget_accuracy"] = evaluate(mm, data["forget"], cfg)["accuracy"]
        metrics["forget_n"] = len(data["forget"])
        if len(data["eval"]):
            metrics["mia_auc"] = membership_inference_auc(mm, data["forget"], data["eval"], cfg)
    return metrics


def _gate(bound: Bound, collected: dict, metrics: dict, cfg):
    parent_acc = (collected.get("parent_metrics") or {}).get("eval_accuracy")
    return check_gates(bound, {"accuracy": parent_acc}, {"accuracy": metrics.get("eval_accuracy")}, cfg)


def _evaluate(rt: Runtime, job: Job, attempt: int, model: Model, collected: dict, solved: dict) -> dict:
    method, cfg = engine_config(model)
    t0 = time.perf_counter()
    mm = _load_private(rt, solved["private_uri"], cfg)
    data = _sources(rt, model, collected["subject_keys"], cfg)
    bound = _bound_from(solved["bound"])
    private_uri = solved["private_uri"]
    metrics = _measure(mm, data, cfg)
    gates: dict[str, Any] | None = None
    fallback = None

    if JobKind(job.kind) is JobKind.forget and bound.guarantee == "certified":
        gate = _gate(bound, collected, metrics, cfg)
        gates = {"passed": gate.ok, "reasons": gate.reasons}
        if not gate.ok:
            # DESIGN §6.6, first remedy: more iterations, to a tolerance that meets the KL budget.
            progress = ProgressWriter(rt, job.id, attempt, JobStep.evaluate.value)
            need = math.sqrt(2.0 * cfg.max_kl_per_release) * cfg.l2 * cfg.noise_std
            tol = min(cfg.tol, 0.5 * need) if need > 0 else cfg.tol * 1e-3
            tighter = cfg.model_copy(update={"tol": max(tol, 1e-300), "max_iter": cfg.max_iter * REFINE_ITER_FACTOR})
            result = method.forget(mm, data["user"], tighter, progress)
            bound = method.bound(result, cfg)
            metrics = _measure(mm, data, cfg)
            gate = _gate(bound, collected, metrics, cfg)
            gates["refined"] = {"tol": tighter.tol, "iterations": result.iterations, "passed": gate.ok, "reasons": gate.reasons}
            if not gate.ok:
                # Second remedy: zero + retrain (w_u := 0, refit from 0 on D_r): exact, bound 0.
                log.warning("job %s failed its gates (%s): falling back to zero + retrain", job.id, "; ".join(gate.reasons))
                method.zero(mm)
                result = method.fit(mm, data["user"], cfg, progress)
                bound = method.bound(result, cfg, exact=True, method="retrain")
                fallback = {"to": "zero+retrain", "reasons": gates["reasons"] + gate.reasons}
                metrics = _measure(mm, data, cfg)
            private_uri, _ = _put_private(rt, mm, model)
    release_noise = solved.get("release_noise", True)
    released = method.release(mm, cfg) if release_noise else None
    uri, sha, size = _put_weights(rt, mm, f"{WEIGHTS_PREFIX}/{model.id}", user_override=released, metadata={"model": model.name})
    metrics["seconds_collect"] = collected.get("seconds")
    metrics["seconds_solve"] = solved.get("seconds")
    metrics["seconds_evaluate"] = time.perf_counter() - t0
    metrics["solve_iterations"] = (solved.get("result") or {}).get("iterations")
    bound_d = bound.to_dict()
    if not release_noise:
        bound_d["noise_std"] = 0.0
    return {
        "metrics": metrics,
        "bound": bound_d,
        "gates": gates,
        "fallback": fallback,
        "artifact_uri": uri,
        "sha256": sha,
        "size_bytes": size,
        "private_uri": private_uri,
    }


# ----------------------------------------------------------------------------- driver
def run_job(rt: Runtime, job_id: uuid.UUID | str) -> str:
    """Run (or resume) a job. Returns "succeeded", "retrying", "failed", "skipped" (nothing to
    do: unknown, finished, or held by a live worker) or "abandoned" (another attempt took over).
    Never raises for a job's own failure: the job row records it."""
    job_id = uuid.UUID(str(job_id))
    attempt = claim(rt, job_id)
    if attempt is None:
        return "skipped"
    try:
        with Heartbeat(rt, job_id, attempt):
            with rt.session_factory() as session:
                job = session.get(Job, job_id)
                model = session.get(Model, job.model_id)
                session.expunge_all()
            cp = dict(job.checkpoint or {})
            if JobStep.collect.value not in cp:
                t0 = time.perf_counter()
                out = _collect(rt, job, model)
                cp = _save_step(rt, job_id, attempt, JobStep.collect, {**out, "seconds": time.perf_counter() - t0})
            if JobStep.solve.value not in cp:
                cp = _save_step(rt, job_id, attempt, JobStep.solve, _solve(rt, job, attempt, model, cp["collect"]))
            if JobStep.evaluate.value not in cp:
                cp = _save_step(rt, job_id, attempt, JobStep.evaluate,
                                _evaluate(rt, job, attempt, model, cp["collect"], cp["solve"]))
            _hook("before_publish", job)
            from workers.execution.publish import publish

            publish(rt, job_id, attempt, cp)
        return JobStatus.succeeded.value
    except JobAbandoned as exc:
        log.warning("job %s attempt %s abandoned: %s", job_id, attempt, exc)
        return "abandoned"
    except Exception as exc:  # noqa: BLE001 - recorded in the job row; the DB is the truth
        return _record_failure(rt, job_id, attempt, exc)


def _record_failure(rt: Runtime, job_id: uuid.UUID, attempt: int, exc: Exception) -> str:
    """Back to ``queued`` (re-sent through the outbox) or, past ``max_attempts`` or on an error
    that cannot go away by retrying (bad data or config), ``failed`` with the error."""
    oom = out_of_memory(exc, rt.settings)  # over the memory cap: retrying cannot help
    err = oom or f"{type(exc).__name__}: {exc}"
    log.error("job %s attempt %s failed: %s", job_id, attempt, err)
    with rt.session_factory.begin() as session:
        job = job_repo.job_for_update(session, job_id)
        if job is None or job.status != JobStatus.running.value or job.attempts != attempt:
            return "abandoned"
        job.error = (err + "\n" + traceback.format_exc())[-4000:]
        if oom or job.attempts >= job.max_attempts or isinstance(exc, (ConfigError, InvalidDataError)):
            job_service.fail_job(session, rt.settings, job, err)
            return JobStatus.failed.value
        job.status = JobStatus.queued.value
        job.progress = {**(job.progress or {}), "retrying": True}
        job_service.enqueue_run(session, job)
    return "retrying"
