"""Scheduler rules (DESIGN §4, §7) on a rolled-back session: no worker, no torch work."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from pipeline_support import SECRET, file_request, ingest, register_model
from sqlalchemy import func, select

from service.audit.service import verify_chain
from service.core.security import subject_key
from service.core.storage import LocalArtifactStore as ArtifactStore
from service.job import service as job_service
from service.models import AuditEvent, DeletionRequest, Job, JobKind, OutboxMessage, RequestStatus
from service.models._types import utcnow


@pytest.fixture
def store(settings):
    return ArtifactStore(settings.storage.root)


def _samples(db, store, model, subjects, split="user"):
    x = np.zeros((len(subjects), 8), dtype=np.float32)
    y = np.zeros(len(subjects), dtype=np.int64)
    ingest(db, store, model, x, y, subjects, split)


def _later(seconds):
    return utcnow() + timedelta(seconds=seconds)


def test_window_opens_a_forget_job_and_moves_the_batch_to_processing(db, store, settings):
    m = register_model(db, batch_window_s=60, batch_size=100)
    _samples(db, store, m, ["a", "a", "b"])
    ra, rb = file_request(db, m, "a"), file_request(db, m, "b")
    assert job_service.schedule(db, settings) == []
    assert job_service.schedule(db, settings, now=_later(30)) == []
    jobs = job_service.schedule(db, settings, now=_later(61))
    assert [j.kind for j in jobs] == [JobKind.forget.value]
    job = jobs[0]
    assert job.active_key == m.id and job.status == "queued"
    db.refresh(ra), db.refresh(rb)
    assert ra.status == rb.status == RequestStatus.processing.value
    assert ra.job_id == rb.job_id == job.id
    assert sorted(job.config["request_ids"]) == sorted([str(ra.id), str(rb.id)])
    msg = db.execute(select(OutboxMessage).where(OutboxMessage.task_id == str(job.id))).scalar_one()
    assert (msg.task_name, msg.args, msg.queue, msg.sent_at) == ("job.run", [str(job.id)], "gpu", None)


def test_batch_size_opens_a_job_with_at_most_batch_size_requests(db, store, settings):
    m = register_model(db, batch_window_s=3600, batch_size=3)
    subjects = [f"s{i}" for i in range(5)]
    _samples(db, store, m, subjects)
    for s in subjects[:2]:
        file_request(db, m, s)
    assert job_service.schedule(db, settings) == []
    for s in subjects[2:]:
        file_request(db, m, s)
    jobs = job_service.schedule(db, settings)
    assert len(jobs) == 1 and len(jobs[0].config["request_ids"]) == 3
    statuses = db.execute(select(DeletionRequest.status, func.count()).group_by(DeletionRequest.status)).all()
    assert dict(statuses) == {"processing": 3, "queued": 2}


def test_one_active_job_per_model(db, store, settings):
    m = register_model(db, batch_window_s=0, batch_size=1)
    _samples(db, store, m, ["a", "b"])
    file_request(db, m, "a")
    first = job_service.schedule(db, settings)
    assert len(first) == 1
    file_request(db, m, "b")
    assert job_service.schedule(db, settings, now=_later(10)) == []
    with pytest.raises(job_service.ActiveJobExists) as err:
        job_service.forget_now(db, settings, m, "op")
    assert err.value.extra["job_id"] == str(first[0].id)
    with pytest.raises(job_service.ActiveJobExists):
        job_service.create_job(db, settings, m, JobKind.train, actor="op")
    assert db.execute(select(func.count()).select_from(Job)).scalar_one() == 1
    # Once the job is over, the next batch opens.
    first[0].status, first[0].active_key = "succeeded", None
    db.flush()
    assert len(job_service.schedule(db, settings, now=_later(10))) == 1


def test_forget_now_ignores_window_and_size(db, store, settings):
    m = register_model(db, batch_window_s=3600, batch_size=100)
    _samples(db, store, m, ["a"])
    file_request(db, m, "a")
    assert job_service.schedule(db, settings) == []
    job = job_service.forget_now(db, settings, m, "operator:alice")
    assert job.kind == "forget" and job.config["trigger"] == "run-now"
    kinds = db.execute(select(AuditEvent.kind).order_by(AuditEvent.seq)).scalars().all()
    assert kinds[-2:] == ["job.created", "job.run_now"]


def test_forget_now_with_nothing_queued_is_a_conflict(db, store, settings):
    m = register_model(db)
    with pytest.raises(job_service.NothingToForget):
        job_service.forget_now(db, settings, m, "op")
    # a queued request whose subject the model does not hold completes, and still nothing to run
    file_request(db, m, "ghost")
    with pytest.raises(job_service.NothingToForget):
        job_service.forget_now(db, settings, m, "op")
    assert db.execute(select(DeletionRequest.status)).scalar_one() == "completed"


def test_subject_without_samples_completes_at_once(db, store, settings):
    m = register_model(db)
    _samples(db, store, m, ["someone-else"])
    r = file_request(db, m, "nobody")
    assert job_service.schedule(db, settings) == []
    db.refresh(r)
    assert r.status == "completed" and r.samples_removed == 0 and r.completed_at is not None
    assert r.subject_id is None and r.open_key is None and r.job_id is None
    ev = db.execute(select(AuditEvent).where(AuditEvent.kind == "request.completed")).scalar_one()
    assert ev.subject_key == subject_key(SECRET, "nobody") and "nobody" not in str(ev.payload)
    assert verify_chain(db).ok


def test_core_samples_make_the_batch_a_retrain_and_the_audit_says_so(db, store, settings):
    m = register_model(db, batch_window_s=0)
    _samples(db, store, m, ["plain"])
    _samples(db, store, m, ["core-person"], split="core")
    file_request(db, m, "plain")
    file_request(db, m, "core-person")
    [job] = job_service.schedule(db, settings, now=_later(1))
    assert job.kind == JobKind.retrain.value and job.config["core_subjects"] == 1
    created = db.execute(select(AuditEvent).where(AuditEvent.kind == "job.created")).scalar_one()
    assert created.payload["kind"] == "retrain" and "core" in created.payload["reason"]


def test_eval_only_subject_is_a_forget_not_a_retrain(db, store, settings):
    m = register_model(db, batch_window_s=0)
    _samples(db, store, m, ["watcher"], split="eval")
    file_request(db, m, "watcher")
    [job] = job_service.schedule(db, settings, now=_later(1))
    assert job.kind == JobKind.forget.value


def test_request_for_every_model_joins_one_holder_at_a_time(db, store, settings):
    a = register_model(db, "model-a", batch_window_s=0)
    b = register_model(db, "model-b", batch_window_s=0)
    register_model(db, "model-c", batch_window_s=0)
    _samples(db, store, a, ["both"])
    _samples(db, store, b, ["both"])
    r = file_request(db, None, "both")
    jobs = job_service.schedule(db, settings, now=_later(1))
    assert [j.model_id for j in jobs] == [a.id]
    db.refresh(r)
    assert r.status == "processing" and r.job_id == jobs[0].id
    # While model-a is busy, a request for every model goes to a free holder.
    r2 = file_request(db, None, "both-again")
    _samples(db, store, a, ["both-again"])
    _samples(db, store, b, ["both-again"])
    jobs2 = job_service.schedule(db, settings, now=_later(1))
    assert [j.model_id for j in jobs2] == [b.id]
    db.refresh(r2)
    assert r2.job_id == jobs2[0].id


def test_request_for_every_model_held_by_none_completes_at_once(db, store, settings):
    register_model(db)
    r = file_request(db, None, "nobody")
    job_service.schedule(db, settings)
    db.refresh(r)
    assert r.status == "completed" and r.samples_removed == 0


def test_retry_reattaches_requests_still_queued(db, store, settings):
    m = register_model(db, batch_window_s=0)
    _samples(db, store, m, ["a", "b"])
    ra, rb = file_request(db, m, "a"), file_request(db, m, "b")
    [job] = job_service.schedule(db, settings, now=_later(1))
    job_service.fail_job(db, settings, job, "RuntimeError: boom")
    db.refresh(ra)
    assert job.status == "failed" and job.active_key is None and ra.status == "queued" and ra.attempts == 1
    rb.status = "cancelled"  # taken out of the queue meanwhile
    db.flush()
    again = job_service.retry_job(db, settings, job.id, "op")
    db.refresh(ra)
    assert again.status == "queued" and again.attempts == 0 and again.active_key == m.id and again.checkpoint == {}
    assert again.config["request_ids"] == [str(ra.id)]
    assert ra.status == "processing" and ra.job_id == job.id
    with pytest.raises(job_service.IllegalTransition):
        job_service.retry_job(db, settings, job.id, "op")


def test_retry_with_no_request_left_is_a_conflict(db, store, settings):
    m = register_model(db, batch_window_s=0)
    _samples(db, store, m, ["a"])
    ra = file_request(db, m, "a")
    [job] = job_service.schedule(db, settings, now=_later(1))
    job_service.fail_job(db, settings, job, "boom")
    db.refresh(ra)
    ra.status = "cancelled"
    db.flush()
    with pytest.raises(job_service.NothingToRetry):
        job_service.retry_job(db, settings, job.id, "op")
    db.refresh(job)
    assert job.status == "failed"


def test_requests_fail_once_their_own_attempts_run_out(db, store, settings):
    m = register_model(db, batch_window_s=0)
    _samples(db, store, m, ["a"])
    r = file_request(db, m, "a")
    for i in range(settings.pipeline.request_max_attempts):
        [job] = job_service.schedule(db, settings, now=_later(1))
        job_service.fail_job(db, settings, job, f"boom {i}")
        db.refresh(r)
        # stop the line: no automatic batch until an operator acknowledged the failure
        assert job_service.schedule(db, settings, now=_later(1)) == []
        job_service.acknowledge_failure(db, job.id, actor="op", reason=f"seen boom {i}")
    assert r.status == "failed" and r.attempts == settings.pipeline.request_max_attempts
    assert "boom" in r.error and r.open_key is None
    assert job_service.schedule(db, settings, now=_later(1)) == []


def test_forget_now_waits_for_a_concurrent_tick_instead_of_answering_nothing_to_forget(clean_tables, store, settings):
    """A beat tick holding the queued rows (skip-locked) made "run now" find none of them and
    answer 409 "holds no samples ... completed at once" while nothing had completed."""
    import threading
    import time

    from sqlalchemy.orm import Session

    from service.job import repository as job_repo
    from service.models import Model

    engine = clean_tables
    with Session(engine) as s, s.begin():
        m = register_model(s, batch_window_s=3600, batch_size=100)
        _samples(s, store, m, ["a"])
        file_request(s, m, "a")
        model_id = m.id
    tick = Session(engine)
    tick.begin()
    assert len(job_repo.queued_requests_for_update(tick)) == 1  # the tick holds the row
    result: dict = {}

    def run_now() -> None:
        try:
            with Session(engine) as s, s.begin():
                result["job"] = job_service.forget_now(s, settings, s.get(Model, model_id), "op").id
        except Exception as exc:  # noqa: BLE001 - asserted below
            result["error"] = exc

    t = threading.Thread(target=run_now)
    t.start()
    time.sleep(0.5)
    assert t.is_alive() and result == {}  # waiting for the tick, not answering
    tick.rollback()
    tick.close()
    t.join(30)
    assert "error" not in result, result
    with Session(engine) as s:
        job = s.get(Job, result["job"])
        assert job.kind == "forget" and job.config["trigger"] == "run-now"
        assert s.execute(select(DeletionRequest.status)).scalar_one() == RequestStatus.processing.value
