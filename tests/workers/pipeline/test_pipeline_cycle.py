"""A full train -> batch deletions -> forget -> publish -> purge cycle, task functions called directly."""

from __future__ import annotations

import numpy as np
import pytest
from pipeline_support import SECRET, file_request, load_all, make_data, register_model
from safetensors.numpy import load as st_load
from sqlalchemy import func, select

from service.audit.service import verify_chain
from service.core.security import subject_key
from service.job import service as job_service
from service.models import (
    DeletionRequest,
    Job,
    JobKind,
    ModelAlias,
    ModelVersion,
    OutboxMessage,
    RequestStatus,
    Sample,
    SampleChunk,
    SubjectTombstone,
)
from workers.execution import run as run_mod
from workers.execution.purge import purge_model
from workers.execution.run import run_job
from workers.execution.sweeper import sweep
from workers.unlearning import load_model


def _train(rt, model_name="tiny"):
    data = make_data()
    with rt.session_factory.begin() as s:
        m = register_model(s, model_name)
        load_all(s, rt.store, m, data)
        job = job_service.create_job(s, rt.settings, m, JobKind.train, actor="test")
        job_id, model_id = job.id, m.id
    assert run_job(rt, job_id) == "succeeded"
    return data, model_id


def _alias(s, model_id, name):
    a = s.get(ModelAlias, (model_id, name))
    return None if a is None else s.get(ModelVersion, a.version_id).number


def test_train_then_forget_publishes_clean_version_and_revokes(rt):
    data, model_id = _train(rt)
    gone = ["subject-001", "subject-007", "subject-012"]
    with rt.session_factory.begin() as s:
        v1 = s.execute(select(ModelVersion).where(ModelVersion.model_id == model_id)).scalar_one()
        assert v1.number == 1 and v1.metrics["eval_accuracy"] > 0.5
        assert _alias(s, model_id, "latest") == 1 and _alias(s, model_id, "production") == 1
        from service.models import Model

        model = s.get(Model, model_id)
        for subj in gone:
            file_request(s, model, subj)
        file_request(s, model, "never-seen")  # no samples: completes at once
        jobs = job_service.schedule(s, rt.settings)
        assert jobs == []  # window not passed, batch not full
        job = job_service.forget_now(s, rt.settings, model, "test")
        assert job.kind == JobKind.forget.value
        job_id = job.id
    assert run_job(rt, job_id) == "succeeded"
    with rt.session_factory.begin() as s:
        versions = {v.number: v for v in s.execute(select(ModelVersion).where(ModelVersion.model_id == model_id)).scalars()}
        assert sorted(versions) == [1, 2]
        assert versions[1].state == "revoked" and versions[2].state == "live"
        assert _alias(s, model_id, "latest") == 2 and _alias(s, model_id, "production") == 2
        bound = versions[2].bound
        assert bound["guarantee"] == "certified" and bound["kl_nats"] <= 1e-3
        reqs = s.execute(select(DeletionRequest)).scalars().all()
        by_key = {r.subject_key: r for r in reqs}
        for subj in gone:
            r = by_key[subject_key(SECRET, subj)]
            assert r.status == RequestStatus.completed.value
            assert r.clean_version_id == versions[2].id
            assert r.samples_removed == 6
            assert r.subject_id is None and r.open_key is None
            assert r.held_versions == [{"model": "tiny", "number": 1}]
        never = by_key[subject_key(SECRET, "never-seen")]
        assert never.status == "completed" and never.samples_removed == 0
        keys = [subject_key(SECRET, g) for g in gone]
        assert s.execute(select(func.count()).select_from(Sample).where(Sample.subject_key.in_(keys))).scalar_one() == 0
        assert s.execute(select(func.count()).select_from(SubjectTombstone)).scalar_one() == 3
        assert verify_chain(s).ok
        purge_msgs = s.execute(select(OutboxMessage).where(OutboxMessage.task_name == "pipeline.purge")).scalars().all()
        assert purge_msgs
    # The served weights load and predict; the private weights are not the served ones.
    with rt.session_factory() as s:
        v2 = s.execute(select(ModelVersion).where(ModelVersion.number == 2)).scalar_one()
        served = load_model(rt.store.path(v2.artifact_uri))
        private = load_model(rt.store.path(v2.private_uri))
    xe, ye = data["eval"]
    import torch

    acc = float((served.predict(torch.from_numpy(xe)).numpy() == ye).mean())
    assert acc > 0.5
    assert not torch.equal(served(torch.from_numpy(xe)), private(torch.from_numpy(xe)))

    # Purge: chunk files rewritten without the deleted rows; revoked weights deleted.
    out = purge_model(rt, model_id)
    assert out["chunks_rewritten"] == 1
    with rt.session_factory() as s:
        chunks = s.execute(select(SampleChunk)).scalars().all()
        for c in chunks:
            n = s.execute(select(func.count()).select_from(Sample).where(Sample.chunk_id == c.id)).scalar_one()
            assert c.n_rows == n
            assert st_load(rt.store.read_bytes(c.uri))["x"].shape[0] == n
        v1 = s.execute(select(ModelVersion).where(ModelVersion.number == 1)).scalar_one()
        assert v1.artifact_uri is None and v1.private_uri is None
    # the deleted subjects' inputs are in no chunk file any more
    xu = data["user"][0]
    gone_rows = np.isin(np.array(data["subjects"]), gone)
    with rt.session_factory() as s:
        all_x = np.concatenate([st_load(rt.store.read_bytes(c.uri))["x"] for c in s.execute(select(SampleChunk)).scalars()])
    for row in xu[gone_rows]:
        assert not np.any(np.all(np.isclose(all_x, row), axis=1))
    assert purge_model(rt, model_id) == {"chunks_rewritten": 0, "files_removed": 0}


def test_core_samples_route_to_retrain(rt):
    data, model_id = _train(rt)
    with rt.session_factory.begin() as s:
        from service.models import Model

        model = s.get(Model, model_id)
        file_request(s, model, "core-3")  # a subject whose sample is in the core split
        job = job_service.forget_now(s, rt.settings, model, "test")
        assert job.kind == JobKind.retrain.value
        job_id = job.id
    assert run_job(rt, job_id) == "succeeded"
    with rt.session_factory() as s:
        v2 = s.execute(select(ModelVersion).where(ModelVersion.number == 2)).scalar_one()
        assert v2.bound["guarantee"] == "exact" and v2.bound["kl_nats"] == 0.0
        v1 = s.execute(select(ModelVersion).where(ModelVersion.number == 1)).scalar_one()
        assert v1.state == "revoked"


def test_batch_size_and_window_rules(rt):
    from datetime import timedelta

    from service.models import Model
    from service.models._types import utcnow

    data, model_id = _train(rt)
    with rt.session_factory.begin() as s:
        model = s.get(Model, model_id)
        model.batch_size = 2
        file_request(s, model, "subject-002")
        assert job_service.schedule(s, rt.settings) == []
        file_request(s, model, "subject-003")
        jobs = job_service.schedule(s, rt.settings)
        assert len(jobs) == 1 and jobs[0].kind == "forget"
        # one active job per model
        file_request(s, model, "subject-004")
        file_request(s, model, "subject-005")
        assert job_service.schedule(s, rt.settings) == []
        with pytest.raises(job_service.ActiveJobExists):
            job_service.forget_now(s, rt.settings, model, "test")
    assert run_job(rt, jobs[0].id) == "succeeded"
    with rt.session_factory.begin() as s:
        model = s.get(Model, model_id)
        model.batch_size = 100
        model.batch_window_s = 60
        assert job_service.schedule(s, rt.settings) == []
        later = utcnow() + timedelta(seconds=61)
        assert len(job_service.schedule(s, rt.settings, now=later)) == 1


def test_resume_after_crash_publishes_exactly_one_version(rt):
    data, model_id = _train(rt)
    with rt.session_factory.begin() as s:
        from service.models import Model

        model = s.get(Model, model_id)
        file_request(s, model, "subject-020")
        job_id = job_service.forget_now(s, rt.settings, model, "test").id

    def crash(job):
        run_mod.HOOKS.pop("before_publish")
        raise RuntimeError("simulated crash after evaluate")

    run_mod.HOOKS["before_publish"] = crash
    try:
        assert run_job(rt, job_id) == "retrying"
    finally:
        run_mod.HOOKS.pop("before_publish", None)
    with rt.session_factory() as s:
        job = s.get(Job, job_id)
        assert job.status == "queued" and job.step == "evaluate" and job.attempts == 1
        solved_uri = job.checkpoint["solve"]["private_uri"]
    assert run_job(rt, job_id) == "succeeded"
    with rt.session_factory() as s:
        job = s.get(Job, job_id)
        assert job.attempts == 2 and job.checkpoint["solve"]["private_uri"] == solved_uri  # solve not redone
        assert s.execute(select(func.count()).select_from(ModelVersion)).scalar_one() == 2
        req = s.execute(select(DeletionRequest)).scalar_one()
        assert req.status == "completed"


def test_attempts_exhausted_fail_the_job_and_requeue_requests(rt):
    data, model_id = _train(rt)
    with rt.session_factory.begin() as s:
        from service.models import Model

        model = s.get(Model, model_id)
        file_request(s, model, "subject-021")
        job_id = job_service.forget_now(s, rt.settings, model, "test").id

    def always(job):
        raise RuntimeError("boom")

    run_mod.HOOKS["solve"] = always
    try:
        statuses = [run_job(rt, job_id) for _ in range(rt.settings.pipeline.job_max_attempts)]
    finally:
        run_mod.HOOKS.pop("solve", None)
    assert statuses[-1] == "failed" and statuses[:-1] == ["retrying"] * (len(statuses) - 1)
    with rt.session_factory() as s:
        job = s.get(Job, job_id)
        assert job.status == "failed" and "boom" in job.error and job.active_key is None
        req = s.execute(select(DeletionRequest)).scalar_one()
        assert req.status == "queued" and req.attempts == 1 and req.job_id is None


def test_crash_between_weights_write_and_commit_leaves_no_version_and_orphans_are_swept(rt):
    data, model_id = _train(rt)
    with rt.session_factory.begin() as s:
        from service.models import Model

        model = s.get(Model, model_id)
        file_request(s, model, "subject-022")
        job_id = job_service.forget_now(s, rt.settings, model, "test").id

    def crash(job):
        raise RuntimeError("killed after weights were written")

    run_mod.HOOKS["before_publish"] = crash
    try:
        assert run_job(rt, job_id) == "retrying"
    finally:
        run_mod.HOOKS.pop("before_publish", None)
    with rt.session_factory.begin() as s:
        assert s.execute(select(func.count()).select_from(ModelVersion)).scalar_one() == 1
        job = s.get(Job, job_id)
        written = job.checkpoint["evaluate"]["artifact_uri"]
        assert rt.store.exists(written)
        # Simulate a lost checkpoint: the file is then an orphan nobody references.
        job.checkpoint = {k: v for k, v in job.checkpoint.items() if k == "collect"}
        job.step = "collect"
    out = sweep(rt, orphan_grace_s=0)
    assert out["orphans"] >= 1 and not rt.store.exists(written)
    assert run_job(rt, job_id) == "succeeded"
    with rt.session_factory() as s:
        assert s.execute(select(func.count()).select_from(ModelVersion)).scalar_one() == 2


def test_stale_heartbeat_is_requeued_then_failed_after_max_attempts(rt):
    from datetime import timedelta

    from service.models._types import utcnow

    data, model_id = _train(rt)
    with rt.session_factory.begin() as s:
        from service.models import Model

        model = s.get(Model, model_id)
        file_request(s, model, "subject-023")
        job = job_service.forget_now(s, rt.settings, model, "test")
        job.status = "running"
        job.attempts = 1
        job.heartbeat_at = utcnow() - timedelta(seconds=rt.settings.pipeline.heartbeat_timeout_s + 5)
        job_id = job.id
    assert sweep(rt)["requeued"] == 1
    with rt.session_factory.begin() as s:
        job = s.get(Job, job_id)
        assert job.status == "queued"
        job.status = "running"
        job.attempts = job.max_attempts
        job.heartbeat_at = utcnow() - timedelta(seconds=rt.settings.pipeline.heartbeat_timeout_s + 5)
    assert sweep(rt)["failed"] == 1
    with rt.session_factory() as s:
        assert s.get(Job, job_id).status == "failed"
        assert s.execute(select(DeletionRequest)).scalar_one().status == "queued"


def test_zero_publishes_exact_zero_bound_then_retrains(rt):
    data, model_id = _train(rt)
    with rt.session_factory.begin() as s:
        from service.models import Model

        model = s.get(Model, model_id)
        job_id = job_service.create_job(s, rt.settings, model, JobKind.zero, actor="test", config={"then_retrain": True}).id
    assert run_job(rt, job_id) == "succeeded"
    with rt.session_factory() as s:
        v2 = s.execute(select(ModelVersion).where(ModelVersion.number == 2)).scalar_one()
        assert v2.bound["kl_nats"] == 0.0 and v2.bound["guarantee"] == "exact"
        zeroed = load_model(rt.store.path(v2.private_uri))
        assert all(float(t.abs().max()) == 0.0 for t in zeroed.user.values())
        retrain = s.execute(select(Job).where(Job.kind == "retrain")).scalar_one()
    assert run_job(rt, retrain.id) == "succeeded"
