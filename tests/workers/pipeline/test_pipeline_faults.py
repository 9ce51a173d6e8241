"""Job execution under faults and gates, task functions called directly on real commits."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from pipeline_support import SECRET, file_request, register_model
from pipeline_support import forget_job as _forget_job
from pipeline_support import trained as _trained
from sqlalchemy import func, select

from service.audit.service import verify_chain
from service.core.security import subject_key
from service.job import service as job_service
from service.models import AuditEvent, DeletionRequest, Job, JobKind, Model, ModelVersion, Sample, SubjectTombstone
from service.models._types import utcnow
from workers.execution import run as run_mod
from workers.execution.run import run_job
from workers.execution.sweeper import sweep




def _versions(s, model_id=None):
    q = select(ModelVersion).order_by(ModelVersion.number)
    if model_id is not None:
        q = q.where(ModelVersion.model_id == model_id)
    return s.execute(q).scalars().all()


def test_gate_failure_refines_then_falls_back_to_zero_plus_retrain_and_audit_says_why(rt):
    model_id = _trained(rt)
    with rt.session_factory.begin() as s:
        m = s.get(Model, model_id)
        m.method_config = {**m.method_config, "noise_std": 0.0}  # no noise: no finite certified bound
    job_id = _forget_job(rt, model_id, "subject-004")
    assert run_job(rt, job_id) == "succeeded"
    with rt.session_factory() as s:
        v2 = _versions(s, model_id)[-1]
        assert v2.number == 2 and v2.bound["guarantee"] == "exact" and v2.bound["kl_nats"] == 0.0
        assert v2.bound["method"] == "retrain" and v2.bound["fallback"]["to"] == "zero+retrain"
        assert any("kl_nats" in r for r in v2.bound["fallback"]["reasons"])
        job = s.get(Job, job_id)
        gates = job.checkpoint["evaluate"]["gates"]
        assert gates["passed"] is False and gates["refined"]["passed"] is False
        ev = s.execute(select(AuditEvent).where(AuditEvent.kind == "version.published").order_by(AuditEvent.seq.desc())).scalars().first()
        assert ev.payload["fallback"]["to"] == "zero+retrain" and ev.payload["number"] == 2
        assert s.execute(select(DeletionRequest.status)).scalar_one() == "completed"
        assert verify_chain(s).ok


def test_gate_failure_fixed_by_more_iterations_stays_certified(rt):
    # every layer linearised: conjugate gradients, whose iteration budget the gate can exhaust
    model_id = _trained(rt, linearize="all")
    with rt.session_factory.begin() as s:
        m = s.get(Model, model_id)
        m.method_config = {**m.method_config, "max_iter": 20}
    job_id = _forget_job(rt, model_id, "subject-005")
    assert run_job(rt, job_id) == "succeeded"
    with rt.session_factory() as s:
        v2 = _versions(s, model_id)[-1]
        gates = s.get(Job, job_id).checkpoint["evaluate"]["gates"]
        assert gates["passed"] is False and gates["refined"]["passed"] is True
        assert v2.bound["guarantee"] == "certified" and v2.bound["kl_nats"] <= 1e-3 and "fallback" not in v2.bound
        assert gates["refined"]["iterations"] > 20


def test_crash_inside_publish_transaction_leaves_no_version_and_rerun_publishes_once(rt):
    model_id = _trained(rt)
    job_id = _forget_job(rt, model_id, "subject-010")

    def crash(job):
        raise RuntimeError("power cut before commit")

    run_mod.HOOKS["publish_before_commit"] = crash
    try:
        assert run_job(rt, job_id) == "retrying"
    finally:
        run_mod.HOOKS.pop("publish_before_commit", None)
    key = subject_key(SECRET, "subject-010")
    with rt.session_factory() as s:
        assert [v.number for v in _versions(s)] == [1] and _versions(s)[0].state == "live"
        assert s.execute(select(func.count()).select_from(Sample).where(Sample.subject_key == key)).scalar_one() == 6
        assert s.execute(select(func.count()).select_from(SubjectTombstone)).scalar_one() == 0
        assert s.execute(select(DeletionRequest.status)).scalar_one() == "processing"
        job = s.get(Job, job_id)
        assert job.status == "queued" and job.step == "evaluate"
        written = job.checkpoint["evaluate"]["artifact_uri"]
    # the files named by the checkpoint are not orphans: the sweeper keeps them
    sweep(rt, orphan_grace_s=0)
    assert rt.store.exists(written)
    assert run_job(rt, job_id) == "succeeded"
    with rt.session_factory() as s:
        assert [v.number for v in _versions(s)] == [1, 2]
        assert _versions(s)[1].artifact_uri == written
        assert s.execute(select(DeletionRequest.status)).scalar_one() == "completed"
    assert run_job(rt, job_id) == "skipped"  # a duplicate delivery does nothing


def test_orphan_files_are_swept_after_the_grace_period_only(rt):
    model_id = _trained(rt)
    stray = rt.store.put_bytes(b"weights nobody committed", prefix=f"weights/{model_id}", suffix=".safetensors").uri
    chunk = rt.store.put_bytes(b"chunk nobody committed", prefix=f"samples/{model_id}", suffix=".safetensors").uri
    assert sweep(rt)["orphans"] == 0 and rt.store.exists(stray)  # younger than the grace period
    out = sweep(rt, orphan_grace_s=0)
    assert out["orphans"] == 2 and not rt.store.exists(stray) and not rt.store.exists(chunk)
    with rt.session_factory() as s:
        v1 = _versions(s)[0]
        assert rt.store.exists(v1.artifact_uri) and rt.store.exists(v1.private_uri)  # referenced files stay


def test_superseded_attempt_cannot_write_or_publish(rt):
    """A worker the sweeper gave up on (it was only slow) finds its attempt superseded."""
    model_id = _trained(rt)
    job_id = _forget_job(rt, model_id, "subject-011")
    slow_started, release = threading.Event(), threading.Event()
    results = {}

    def stall(job):
        slow_started.set()
        assert release.wait(20)

    run_mod.HOOKS["after_solve"] = stall
    t = threading.Thread(target=lambda: results.setdefault("slow", run_job(rt, job_id)))
    t.start()
    try:
        assert slow_started.wait(20)
        run_mod.HOOKS.pop("after_solve")
        with rt.session_factory.begin() as s:  # its heartbeat "stopped"
            s.get(Job, job_id).heartbeat_at = utcnow() - timedelta(seconds=rt.settings.pipeline.heartbeat_timeout_s + 1)
        assert sweep(rt)["requeued"] == 1
        assert run_job(rt, job_id) == "succeeded"  # attempt 2 does the whole job
    finally:
        release.set()
        t.join(timeout=30)
    assert results["slow"] == "abandoned"
    with rt.session_factory() as s:
        assert [v.number for v in _versions(s)] == [1, 2]
        job = s.get(Job, job_id)
        assert job.status == "succeeded" and job.attempts == 2


def test_heartbeat_and_progress_are_written_while_running(rt):
    rt.settings.pipeline.heartbeat_interval_s = 0.05
    model_id = _trained(rt)
    job_id = _forget_job(rt, model_id, "subject-012")
    seen = {}

    def watch(job):
        with rt.session_factory() as s:
            first = s.get(Job, job_id).heartbeat_at
        time.sleep(0.3)
        with rt.session_factory() as s:
            row = s.get(Job, job_id)
            seen.update(first=first, later=row.heartbeat_at, status=row.status, step=row.step)

    run_mod.HOOKS["after_solve"] = watch
    try:
        assert run_job(rt, job_id) == "succeeded"
    finally:
        run_mod.HOOKS.pop("after_solve", None)
    assert seen["status"] == "running" and seen["step"] == "collect" and seen["later"] > seen["first"]
    with rt.session_factory() as s:
        job = s.get(Job, job_id)
        assert job.progress["done"] is True and job.progress["version"] == 2
        assert job.metrics["seconds_solve"] > 0 and job.metrics["eval_accuracy"] is not None


def test_request_for_every_model_completes_after_each_holder_published(rt):
    a = _trained(rt, "model-a")
    b = _trained(rt, "model-b")
    key = subject_key(SECRET, "subject-013")
    with rt.session_factory.begin() as s:
        req_id = file_request(s, None, "subject-013").id
        first = job_service.forget_now(s, rt.settings, s.get(Model, a), "test")
        assert first.model_id == a
    assert run_job(rt, first.id) == "succeeded"
    with rt.session_factory.begin() as s:
        req = s.get(DeletionRequest, req_id)
        assert req.status == "queued" and req.samples_removed == 6 and req.subject_id == "subject-013"
        second = job_service.schedule(s, rt.settings)  # created long enough ago? no: run now on b
        assert second == []
        second = job_service.forget_now(s, rt.settings, s.get(Model, b), "test")
    assert run_job(rt, second.id) == "succeeded"
    with rt.session_factory() as s:
        req = s.get(DeletionRequest, req_id)
        assert req.status == "completed" and req.samples_removed == 12 and req.subject_id is None
        assert sorted((h["model"], h["number"]) for h in req.held_versions) == [("model-a", 1), ("model-b", 1)]
        assert s.execute(select(func.count()).select_from(Sample).where(Sample.subject_key == key)).scalar_one() == 0
        stones = s.execute(select(SubjectTombstone.model_id).where(SubjectTombstone.subject_key == key)).scalars().all()
        assert sorted(stones) == sorted([a, b])
        assert [v.state for v in _versions(s, a)] == ["revoked", "live"]
        assert [v.state for v in _versions(s, b)] == ["revoked", "live"]
        assert verify_chain(s).ok


def test_eval_only_subject_revokes_nothing(rt):
    model_id = _trained(rt)
    job_id = _forget_job(rt, model_id, "eval-3")  # a subject whose only sample is in the eval split
    assert run_job(rt, job_id) == "succeeded"
    with rt.session_factory() as s:
        assert [v.state for v in _versions(s)] == ["live", "live"]
        req = s.execute(select(DeletionRequest)).scalar_one()
        assert req.status == "completed" and req.samples_removed == 1 and req.held_versions == []


def test_bad_data_fails_at_once_without_retries(rt):
    with rt.session_factory.begin() as s:
        m = register_model(s, "empty")  # no samples at all: no core set to train on
        job_id = job_service.create_job(s, rt.settings, m, JobKind.train, actor="test").id
    assert run_job(rt, job_id) == "failed"
    with rt.session_factory() as s:
        job = s.get(Job, job_id)
        assert job.status == "failed" and job.attempts == 1 and "core" in job.error and job.active_key is None


def test_crash_inside_solve_resumes_at_the_saved_step(rt):
    model_id = _trained(rt)
    job_id = _forget_job(rt, model_id, "subject-014")
    calls = []

    def crash_once(job):
        calls.append(job.attempts)
        if len(calls) == 1:
            raise RuntimeError("worker crashed mid-solve")

    run_mod.HOOKS["solve"] = crash_once
    try:
        assert run_job(rt, job_id) == "retrying"
        with rt.session_factory() as s:
            job = s.get(Job, job_id)
            assert job.status == "queued" and job.step == "collect" and "mid-solve" in job.error
            collected = job.checkpoint["collect"]
            assert list(job.checkpoint) == ["collect"]
        assert run_job(rt, job_id) == "succeeded"
    finally:
        run_mod.HOOKS.pop("solve", None)
    assert len(calls) == 2
    with rt.session_factory() as s:
        job = s.get(Job, job_id)
        assert job.checkpoint["collect"] == collected and job.attempts == 2  # collect was not redone
        assert [v.number for v in _versions(s)] == [1, 2]
