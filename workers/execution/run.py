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

Kinds: a ``JobKind -> step`` table (:data:`SOLVE_STEPS`) says what each kind computes; every
step calls the model's method through the registry's interface
(``workers.unlearning.methods.base.ForgettingMethod``), so no method is named here. ``train``
(prepare on the ``core`` split, train on ``user``), ``forget`` (from the parent's PRIVATE state),
``zero`` and ``retrain`` (where the method's family has them). A forget that fails its gates
(§6.6) first runs the method's tighter settings, then falls back to zero + retrain; the
checkpoint, the version's bound and the audit event record why. A sample batch on a method that
forgets whole classes only (no ``samples`` kind), whose samples it cannot project away, runs the
family's retrain without the subjects at the solve step, recorded the same way (``bound.fallback``).

Files are content-addressed and written atomically (temp file, fsync, rename); the private
artifacts (the method's ``private_artifacts``: noise-free weights, Gram sums, ...) are the start
of the next job, are listed per version (``version_artifacts``) and are never served.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
from pydantic import ValidationError

from service.core.db import read_session
from service.job import repository as job_repo
from service.job import service as job_service
from service.model_registry import repository as registry_repo
from service.model_registry import service as registry_service
from service.model_registry.samples import read_inputs, read_samples
from service.models import Job, JobKind, JobStatus, JobStep, Model, Split
from workers.execution.common import HOOKS, PRIVATE_PREFIX, WEIGHTS_PREFIX, JobAbandoned, hook, json_safe, out_of_memory, touch  # noqa: F401  (HOOKS: tests)

from workers.execution.publish import publish
from workers.runtime import Runtime
from workers.unlearning.bounds import Bound
from workers.unlearning.data import LazySource, TensorSource, concat
from workers.unlearning.errors import ConfigError, InvalidDataError
from workers.unlearning.methods import parse_config
from workers.unlearning.methods.base import ForgettingMethod, ModelSpec
from workers.unlearning.registry import get_method

log = logging.getLogger("lethe.worker")
STEPS = (JobStep.collect, JobStep.solve, JobStep.evaluate)
RETAIN_EVAL_MAX = 2000
PROGRESS_MIN_INTERVAL_S = 0.5

def _bound_from(d: dict) -> Bound:
    fields = Bound.__dataclass_fields__
    vals = {k: d[k] for k in fields if k in d and k != "extra"}
    for k in ("residual_norm", "mu", "noise_std", "kl_nats", "kl_bits"):
        vals[k] = float(vals[k])
    vals["iterations"] = int(vals["iterations"])
    vals["extra"] = {k: v for k, v in d.items() if k not in fields}
    return Bound(**vals)


def engine_config(model: Model) -> tuple[ForgettingMethod, Any]:
    """The model's method and its validated config (unknown keys are a ``ConfigError``: the
    service validated them against the same class at registration)."""
    method = get_method(model.method)
    try:
        return method, parse_config(model.method, model.method_config)
    except ValidationError as exc:
        raise ConfigError(f"the {model.method} config of model {model.name!r} is invalid: {exc}") from None


def _spec(model: Model) -> ModelSpec:
    return ModelSpec(model.architecture, dict(model.architecture_config or {}), model.linearize)


# ----------------------------------------------------------------------------- claiming
def claim(rt: Runtime, job_id: uuid.UUID) -> int | None:
    """Take the job and return the attempt number (the fencing token), or None: nothing to do
    (``service.job.service.claim`` decides, in a short transaction)."""
    with rt.session_factory.begin() as session:
        return job_service.claim(session, rt.settings, job_id)


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
                    job_service.beat(session, self.job_id, self.attempt)
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
            job_service.beat(session, self.job_id, self.attempt, progress=data)


def _save_step(rt: Runtime, job_id: uuid.UUID, attempt: int, step: JobStep, output: dict) -> dict:
    with rt.session_factory.begin() as session:
        cp = job_service.save_step(session, job_id, attempt, step.value, json_safe(output))
    if cp is None:
        raise JobAbandoned(f"job {job_id} attempt {attempt} is no longer the owner")
    return cp


# ----------------------------------------------------------------------------- steps
def _collect(rt: Runtime, job: Job, model: Model) -> dict:
    """Which subjects this job removes, what the model holds of them, and the parent version."""
    with read_session(rt.session_factory) as session:
        keys = job_repo.subjects_of_requests(session, [uuid.UUID(r) for r in (job.config or {}).get("request_ids", [])])
        per_subject = job_repo.subject_holdings(session, model.id, keys)
        parent = job_repo.newest_live_version(session, model.id)
        parent_artifacts = registry_repo.private_artifacts(session, parent) if parent else None
    return {
        "subject_keys": keys,
        "per_subject": per_subject,
        "parent_version_id": parent.id if parent else None,
        "parent_number": parent.number if parent else None,
        "parent_private_uri": parent.private_uri if parent else None,
        "parent_private_artifacts": parent_artifacts,
        "parent_metrics": parent.metrics if parent else None,
    }


class _Data(dict):
    """The job's data sets, each read from the store on first use: a forget from kept statistics
    never reads the core split, the solve step never reads the eval split."""

    def __init__(self, load: Callable[[str], Any]) -> None:
        super().__init__()
        self._load = load

    def __missing__(self, key: str) -> Any:
        self[key] = value = self._load(key)
        return value


def _sources(rt: Runtime, model: Model, exclude: list[str], cfg) -> _Data:
    cs = cfg.chunk_size  # common to every method's config (methods.MethodConfig)

    def load(part: str) -> Any:
        if part == "watermark":
            user = data["user"]
            return int(user.ids.max()) if len(user) else None
        with read_session(rt.session_factory) as session:
            if part in ("core", "eval"):
                s = read_samples(session, rt.store, model.id, splits=[getattr(Split, part).value], exclude_subject_keys=exclude)
                return TensorSource(s.x, s.y, cs)
            if part == "user":  # ids and labels now, inputs when a method needs them (a downdate does not)
                s = read_samples(session, rt.store, model.id, splits=[Split.user.value], exclude_subject_keys=exclude, inputs=False)
                ids = s.ids

                def inputs(positions: np.ndarray) -> np.ndarray:
                    with read_session(rt.session_factory) as later:
                        return read_inputs(later, rt.store, model.id, ids[positions])

                return LazySource(s.y, ids, inputs, cs)
            if part == "forget":
                if not exclude:
                    return None
                s = read_samples(session, rt.store, model.id, splits=[Split.user.value], only_subject_keys=exclude, include_ids=True)
                return TensorSource(s.x, s.y, cs, ids=s.ids) if len(s) else None
            if part == "forget_eval":  # the removed subjects' own held-out samples (a class MIA's)
                if not exclude:
                    return None
                s = read_samples(session, rt.store, model.id, splits=[Split.eval.value], only_subject_keys=exclude)
                return TensorSource(s.x, s.y, cs) if len(s) else None
        raise KeyError(part)

    data = _Data(load)
    return data


def _put(rt: Runtime, data: bytes, prefix: str) -> dict:
    """A content-addressed file (temp, fsync, rename), its mtime refreshed."""
    art = rt.store.put_bytes(data, prefix=prefix, suffix=".safetensors")
    touch(rt, art.uri)
    return {"uri": art.uri, "sha256": art.sha256, "size_bytes": art.size}


def _put_private(rt: Runtime, method: ForgettingMethod, mm: Any, model: Model) -> dict[str, dict]:
    """Every private artifact of the model state, by name (the first one is the noise-free state)."""
    blobs = method.save_private(mm)
    first = method.private_artifacts[0]
    if first not in blobs or not set(blobs) <= set(method.private_artifacts):
        raise ConfigError(f"{method.name}.save_private returned {sorted(blobs)}; expected {first!r} and names of {method.private_artifacts}")
    return {name: _put(rt, data, f"{PRIVATE_PREFIX}/{model.id}") for name, data in blobs.items()}


def _load_private(rt: Runtime, method: ForgettingMethod, artifacts: dict[str, str], cfg) -> Any:
    return method.load_private({name: rt.store.read_bytes(uri) for name, uri in artifacts.items()}, cfg)


@dataclass
class SolveContext:
    """What a job kind's solve step gets: the method, its config, the data, the parent's state."""

    rt: Runtime
    job: Job
    model: Model
    method: ForgettingMethod
    cfg: Any
    data: dict[str, Any]
    parent: dict[str, str] | None  # the parent version's private artifacts, name -> uri
    progress: ProgressWriter

    def fresh(self) -> Any:
        return self.method.build(_spec(self.model), self.cfg)

    def prepared(self) -> Any:
        mm = self.fresh()
        self.method.prepare(mm, self.data["core"], self.cfg, self.progress)
        return mm

    def from_parent(self) -> Any:
        return _load_private(self.rt, self.method, self.parent, self.cfg)

    def needs(self, operation: str) -> None:
        if not self.method.supports(operation):
            raise ConfigError(f"method {self.method.name!r} has no {operation!r}: a {self.job.kind} job cannot run on it")


@dataclass
class Solved:
    model: Any
    result: Any
    bound: Bound
    trained_on_users: bool = True  # False: no user data in the weights (no watermark, no noise)
    fallback: dict | None = None  # the solve step fell back (recorded in the version's bound)


def _zeroed(ctx: SolveContext, mm: Any) -> Solved:
    ctx.needs("zero")
    result = ctx.method.zero(mm)
    return Solved(mm, result, ctx.method.bound(result, ctx.cfg, exact=True, method="zero"), trained_on_users=False)


def _solve_train(ctx: SolveContext) -> Solved:
    """Core on the ``core`` split, then the user weights on the ``user`` split."""
    return _train_users(ctx, ctx.prepared())


def _train_users(ctx: SolveContext, mm: Any) -> Solved:
    """The user weights of a prepared model on the ``user`` split (zero without users)."""
    if len(ctx.data["user"]):
        result = ctx.method.train(mm, ctx.data["user"], ctx.cfg, ctx.progress)
        return Solved(mm, result, ctx.method.bound(result, ctx.cfg))
    solved = _zeroed(ctx, mm)
    solved.trained_on_users = True  # as before: a fit on nobody still records the (empty) watermark
    return solved


def _solve_forget(ctx: SolveContext) -> Solved:
    """From the parent's private state, forget everything not in D_r (a train without a parent)."""
    if ctx.parent is None:
        return _solve_train(ctx)
    mm = ctx.from_parent()
    if len(ctx.data["user"]) == 0:  # nobody left: the user weights are zero, exactly
        return _zeroed(ctx, mm)
    # the forgotten samples go with D_r: the method may forget by them alone (kept statistics)
    try:
        result = ctx.method.forget(mm, ctx.data["user"], ctx.cfg, ctx.progress, removed=ctx.data["forget"])
    except InvalidDataError as exc:
        if "samples" in getattr(ctx.method, "kinds", {"samples"}) or (ctx.job.config or {}).get("classes"):
            raise  # a class batch the method refuses fails visibly; the scheduler holds its requests
        return _samples_by_retrain(ctx, str(exc))
    return Solved(mm, result, ctx.method.bound(result, ctx.cfg))


def _samples_by_retrain(ctx: SolveContext, why: str) -> Solved:
    """A sample batch on a method that forgets whole classes only (``kinds`` without ``samples``),
    whose removed samples are not whole classes it can forget (part of a class, or too few
    classes left): the family's retrain without the subjects, recorded as the version's
    ``bound.fallback`` and in the audit event like a failed gate's fallback. Exact (the new
    weights never saw the subjects); the classes D_r no longer holds, among them every class
    forgotten before, stay masked (the method's ``retrain``)."""
    solved = _solve_retrain(ctx)
    solved.fallback = {"to": "retrain", "reasons": [f"{ctx.method.name} forgets whole classes only and cannot forget these "
                                                    f"samples by itself ({why}): retrained without the subjects"]}
    return solved


def _solve_zero(ctx: SolveContext) -> Solved:
    return _zeroed(ctx, ctx.from_parent() if ctx.parent is not None else ctx.prepared())


def _solve_retrain(ctx: SolveContext) -> Solved:
    """Without the subjects, from w = 0 (and a fresh core when they had core samples)."""
    ctx.needs("retrain")
    user = ctx.data["user"]
    if bool((ctx.job.config or {}).get("core_subjects")) or ctx.parent is None or not ctx.method.supports("zero"):
        mm = ctx.fresh()
        if len(user):
            result = ctx.method.retrain(mm, user, ctx.cfg, core_source=ctx.data["core"], progress=ctx.progress)
        elif not ctx.method.supports("zero"):
            raise InvalidDataError("nobody is left to train on: this method's family has no zeroed model")
        else:
            ctx.method.prepare(mm, ctx.data["core"], ctx.cfg, ctx.progress)
            result = ctx.method.zero(mm)
    else:
        mm = ctx.from_parent()
        ctx.method.zero(mm)
        result = ctx.method.train(mm, user, ctx.cfg, ctx.progress) if len(user) else ctx.method.zero(mm)
    return Solved(mm, result, ctx.method.bound(result, ctx.cfg, exact=True, method="retrain"), trained_on_users=bool(len(user)))


def _solve_checkpoint(ctx: SolveContext) -> Solved:
    """An uploaded checkpoint: validated here, outside the API process. A bad one leaves the
    model ``invalid`` with the reason, and the job fails without retrying. ``standard``: the
    checkpoint is the model. A method with ``checkpoint_trains_head`` (``linear_head``) takes
    only the feature extractor from it and trains its head on the user samples, as ``train``
    does after ``prepare``; features the uploaded extractor cannot compute reject it too."""
    ctx.needs("import_checkpoint")
    uri = (ctx.job.config or {}).get("checkpoint_uri")
    solved = None
    try:
        data = ctx.rt.store.read_bytes(uri, sha256=(ctx.job.config or {}).get("checkpoint_sha256"))
        mm = ctx.method.import_checkpoint(_spec(ctx.model), data, ctx.cfg)
        if getattr(ctx.method, "checkpoint_trains_head", False):
            solved = _train_users(ctx, mm)
        if len(ctx.data["user"]):
            ctx.method.evaluate(mm, ctx.data["user"].subset(np.arange(min(len(ctx.data["user"]), 8))), ctx.cfg)
    except (InvalidDataError, RuntimeError) as exc:
        reason = f"checkpoint rejected: {exc}"
        with ctx.rt.session_factory.begin() as session:
            registry_service.mark_invalid(session, ctx.model.id, reason, actor="worker")
        _discard_upload(ctx.rt, ctx.job)
        raise InvalidDataError(reason) from None
    if solved is not None:
        return solved
    result = SimpleNamespace(iterations=0, operation="checkpoint", to_dict=lambda: {"operation": "checkpoint", "uri": uri})
    return Solved(mm, result, ctx.method.bound(result, ctx.cfg))


def _discard_upload(rt: Runtime, job: Job) -> None:
    """An uploaded checkpoint is user data (weights trained on the subjects): once it is
    published (its weights live on as the version's private artifact) or rejected, the upload
    itself is deleted, so no copy outlives a later forget."""
    uri = (job.config or {}).get("checkpoint_uri")
    if uri:
        rt.store.delete(uri)


# What each job kind computes (DESIGN §4): the runner dispatches here, the method does the math.
SOLVE_STEPS: dict[JobKind, Callable[[SolveContext], Solved]] = {
    JobKind.train: _solve_train,
    JobKind.forget: _solve_forget,
    JobKind.zero: _solve_zero,
    JobKind.retrain: _solve_retrain,
    JobKind.checkpoint: _solve_checkpoint,
}


def _solve(rt: Runtime, job: Job, attempt: int, model: Model, collected: dict) -> dict:
    method, cfg = engine_config(model)
    data = _sources(rt, model, collected["subject_keys"], cfg)
    parent = collected.get("parent_private_artifacts")
    if parent is None and collected.get("parent_private_uri"):
        parent = {method.private_artifacts[0]: collected["parent_private_uri"]}
    ctx = SolveContext(rt, job, model, method, cfg, data, parent, ProgressWriter(rt, job.id, attempt, JobStep.solve.value))
    t0 = time.perf_counter()
    hook("solve", job)
    solved = SOLVE_STEPS[JobKind(job.kind)](ctx)
    hook("after_solve", job)
    private = _put_private(rt, method, solved.model, model)
    return {
        "private_uri": private[method.private_artifacts[0]]["uri"],
        "private_sha256": private[method.private_artifacts[0]]["sha256"],
        "private_artifacts": private,
        "result": solved.result.to_dict(),
        "bound": solved.bound.to_dict(),
        "sample_watermark": data["watermark"] if solved.trained_on_users else None,
        "release_noise": solved.trained_on_users,
        "seconds": time.perf_counter() - t0,
        **({"fallback": solved.fallback} if solved.fallback else {}),
    }


def _measure(method: ForgettingMethod, mm: Any, data: dict, cfg) -> dict:
    """DESIGN §6.7: eval accuracy/loss, retain accuracy on a sample of D_r, forget-set accuracy, MIA AUC."""
    metrics: dict[str, Any] = {}
    ev = method.evaluate(mm, data["eval"], cfg)
    metrics["eval_accuracy"], metrics["eval_loss"], metrics["eval_n"] = ev["accuracy"], ev["loss"], ev["n"]
    user = data["user"]
    if len(user):
        idx = np.random.default_rng(0).permutation(len(user))[:RETAIN_EVAL_MAX]
        metrics["retain_accuracy"] = method.evaluate(mm, user.subset(idx), cfg)["accuracy"]
        metrics["retain_n"] = int(len(idx))
    if data["forget"] is not None:
        metrics["forget_accuracy"] = method.evaluate(mm, data["forget"], cfg)["accuracy"]
        metrics["forget_n"] = len(data["forget"])
        held_out = data["eval"]
        if "class" in method.kinds and data["forget_eval"] is not None:
            # a subject who is a class owns every held-out sample of it, which ``eval`` excludes:
            # the class MIA compares the class's training samples with those (read only here)
            held_out = concat(held_out, data["forget_eval"]) if len(held_out) else data["forget_eval"]
        if len(held_out):
            metrics["mia_auc"] = method.membership_auc(mm, data["forget"], held_out, cfg)
    return metrics


def _gate(method: ForgettingMethod, bound: Bound, collected: dict, metrics: dict, cfg):
    """The method's gate on the parent's and the new metrics (all of §6.7: a heuristic method
    judges forget-set accuracy, MIA AUC and retained accuracy; ``accuracy`` is the eval one)."""
    parent = dict(collected.get("parent_metrics") or {})
    gate = method.gate(bound, {**parent, "accuracy": parent.get("eval_accuracy")},
                       {**metrics, "accuracy": metrics.get("eval_accuracy")}, cfg)
    metrics.update({k: v for k, v in (getattr(gate, "measured", None) or {}).items() if v is not None})
    return gate


def _fallback(ctx_method: ForgettingMethod, mm: Any, model: Model, data: dict, cfg, progress) -> tuple[Any, Any, Bound, str]:
    """DESIGN §6.6, second remedy: zero + retrain where the family has ``zero`` (w_u := 0, refit
    on D_r); otherwise ``retrain``: the recipe from a fresh initialisation on D_r. Exact, bound 0."""
    if ctx_method.supports("zero") and ctx_method.supports("retrain"):
        ctx_method.zero(mm)
        result = ctx_method.train(mm, data["user"], cfg, progress)
        return mm, result, ctx_method.bound(result, cfg, exact=True, method="retrain"), "zero+retrain"
    if ctx_method.supports("retrain"):
        fresh = ctx_method.build(_spec(model), cfg)
        result = ctx_method.retrain(fresh, data["user"], cfg, core_source=data["core"], progress=progress)
        return fresh, result, ctx_method.bound(result, cfg, exact=True, method="retrain"), "retrain"
    raise ConfigError(f"{ctx_method.name} has no retrain fallback")


def _evaluate(rt: Runtime, job: Job, attempt: int, model: Model, collected: dict, solved: dict) -> dict:
    method, cfg = engine_config(model)
    t0 = time.perf_counter()
    private = solved.get("private_artifacts") or {method.private_artifacts[0]: {"uri": solved["private_uri"]}}
    mm = _load_private(rt, method, {name: a["uri"] for name, a in private.items()}, cfg)
    data = _sources(rt, model, collected["subject_keys"], cfg)
    bound = _bound_from(solved["bound"])
    metrics = _measure(method, mm, data, cfg)
    gates: dict[str, Any] | None = None
    fallback = solved.get("fallback")  # the solve step's own (a sample batch on a class-only method)

    if JobKind(job.kind) is JobKind.forget and bound.guarantee != "exact":
        gate = _gate(method, bound, collected, metrics, cfg)
        gates = {"passed": gate.ok, "reasons": gate.reasons}
        if not gate.ok:
            # DESIGN §6.6, first remedy: the method's tighter settings (more iterations).
            progress = ProgressWriter(rt, job.id, attempt, JobStep.evaluate.value)
            tighter = method.refine(cfg)
            if tighter is not None:
                result = method.forget(mm, data["user"], tighter, progress)
                bound = method.bound(result, cfg)
                metrics = _measure(method, mm, data, cfg)
                gate = _gate(method, bound, collected, metrics, cfg)
                gates["refined"] = {"tol": getattr(tighter, "tol", None), "iterations": result.iterations, "passed": gate.ok, "reasons": gate.reasons}
            if not gate.ok:
                # Second remedy: zero + retrain, or retrain from scratch (exact, bound 0).
                log.warning("job %s failed its gates (%s): falling back", job.id, "; ".join(gate.reasons))
                if not method.supports("retrain"):
                    raise ConfigError(f"job {job.id} failed its gates ({'; '.join(gate.reasons)}) and {method.name} has no retrain fallback")
                reasons = gates["reasons"] + (gate.reasons if "refined" in gates else [])
                mm, result, bound, to = _fallback(method, mm, model, data, cfg, progress)
                fallback = {"to": to, "reasons": reasons}
                metrics = _measure(method, mm, data, cfg)
            private = _put_private(rt, method, mm, model)
    release_noise = solved.get("release_noise", True)
    released = method.release(mm, cfg) if release_noise else None
    served = _put(rt, method.serve_bytes(mm, released, {"model": model.name}), f"{WEIGHTS_PREFIX}/{model.id}")
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
        "artifact_uri": served["uri"],
        "sha256": served["sha256"],
        "size_bytes": served["size_bytes"],
        "private_uri": private[method.private_artifacts[0]]["uri"],
        "private_artifacts": private,
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
            with read_session(rt.session_factory) as session:
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
            hook("before_publish", job)
            publish(rt, job_id, attempt, cp)
            if JobKind(job.kind) is JobKind.checkpoint:
                _discard_upload(rt, job)
        return JobStatus.succeeded.value
    except JobAbandoned as exc:
        log.warning("job %s attempt %s abandoned: %s", job_id, attempt, exc)
        return "abandoned"
    except Exception as exc:  # noqa: BLE001 - recorded in the job row; the DB is the truth
        return _record_failure(rt, job_id, attempt, exc)


def _record_failure(rt: Runtime, job_id: uuid.UUID, attempt: int, exc: Exception) -> str:
    """Back to ``queued`` or ``failed`` (``service.job.service.record_failure``); an error that
    cannot go away by retrying (bad data or config) fails the job at once."""
    oom = out_of_memory(exc, rt.settings)  # over the memory cap: retrying cannot help
    err = oom or f"{type(exc).__name__}: {exc}"
    log.error("job %s attempt %s failed: %s", job_id, attempt, err)
    with rt.session_factory.begin() as session:
        return job_service.record_failure(session, rt.settings, job_id, attempt, err, traceback.format_exc(),
                                          permanent=bool(oom) or isinstance(exc, (ConfigError, InvalidDataError)))
