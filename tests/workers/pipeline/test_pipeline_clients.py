"""Two clients file for one subject (DESIGN §10): each gets its own request; one forget job
forgets the subject once and completes both; the publish signs an audit checkpoint."""

from __future__ import annotations

from pipeline_support import SECRET, load_all, make_data, register_model
from sqlalchemy import func, select

from service.audit.service import latest_checkpoint, verify_chain
from service.client.tokens import create_token
from service.deletion_request import service as requests
from service.deletion_request.schemas import DeletionRequestCreate
from service.job import service as job_service
from service.models import AuditEvent, DeletionRequest, Job, JobKind, Model, Role, SubjectTombstone
from workers.execution.run import run_job


def test_two_clients_one_subject_one_forget_both_completed(rt):
    data = make_data()
    with rt.session_factory.begin() as s:
        m = register_model(s, "tiny")
        load_all(s, rt.store, m, data)
        job = job_service.create_job(s, rt.settings, m, JobKind.train, actor="test")
        train_id = job.id
    assert run_job(rt, train_id) == "succeeded"
    with rt.session_factory.begin() as s:
        a, _ = create_token(s, Role.requester, "client-a")
        b, _ = create_token(s, Role.requester, "client-b")
        body = DeletionRequestCreate(subject_id="subject-004", model="tiny")
        ra = requests.create_request(s, secret=SECRET, data=body, idempotency_key="same", client_id=a.client_id)
        rb = requests.create_request(s, secret=SECRET, data=body, idempotency_key="same", client_id=b.client_id)
        again = requests.create_request(s, secret=SECRET, data=body, client_id=b.client_id)
        assert ra.outcome == rb.outcome == "created" and again.outcome == "merged"
        assert ra.request.id != rb.request.id and again.request.id == rb.request.id
        model = s.execute(select(Model).where(Model.name == "tiny")).scalar_one()
        forget = job_service.forget_now(s, rt.settings, model, "test")
        forget_id = forget.id
    assert run_job(rt, forget_id) == "succeeded"
    with rt.session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.kind == JobKind.forget.value)) == 1
        rows = {r.id: r for r in s.scalars(select(DeletionRequest))}
        for rid in (ra.request.id, rb.request.id):
            r = rows[rid]
            assert r.status == "completed" and r.samples_removed == 6 and r.job_id == forget_id
            assert r.subject_id is None and r.open_key is None
        assert {rows[ra.request.id].client_id, rows[rb.request.id].client_id} == {a.client_id, b.client_id}
        assert s.scalar(select(func.count()).select_from(SubjectTombstone)) == 1
        published = s.scalars(select(AuditEvent).where(AuditEvent.kind == "version.published")
                              .order_by(AuditEvent.seq.desc())).first()
        assert published.payload["subjects"] == 1  # the subject was forgotten once
        completed = s.scalars(select(AuditEvent).where(AuditEvent.kind == "request.completed")).all()
        assert {e.payload["request_id"] for e in completed} == {str(ra.request.id), str(rb.request.id)}
        cp = latest_checkpoint(s)
        head = s.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc())).first()
        assert cp is not None and cp.seq == head.seq and cp.head_hash == head.hash  # the publish signed its head
        result = verify_chain(s)
        assert result.ok and result.checkpoint_seq == cp.seq


def test_the_periodic_tick_signs_only_when_the_chain_grew(rt, settings):
    import workers.tasks.pipeline  # noqa: F401 - registers the tasks
    from service.audit.service import append_event
    from workers.celery_app import make_celery

    app = make_celery(settings)
    entry = app.conf.beat_schedule["audit-checkpoint"]
    assert entry["task"] == "audit.checkpoint" and entry["schedule"] == settings.audit.checkpoint_interval_s
    tick = app.tasks["audit.checkpoint"]
    assert tick() is None  # empty chain: nothing to sign
    with rt.session_factory.begin() as s:
        for i in range(3):
            append_event(s, actor="t", kind="test.tick", payload={"i": i})
    assert tick() == 3
    assert tick() is None  # head already covered
    with rt.session_factory() as s:
        cp = latest_checkpoint(s)
        assert cp.seq == 3 and verify_chain(s).ok
