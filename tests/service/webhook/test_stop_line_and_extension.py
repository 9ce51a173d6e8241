"""Stop the line (a failed job nobody acknowledged blocks approvals and automatic scheduling of
its model) and the one SLA extension of a request: API, audit, webhook events, bad input."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from service.core.security import subject_key
from service.job import service as job_service
from service.models import AuditEvent, DeletionRequest, Job, Model, Sample, SampleChunk, WebhookEvent
from service.models._types import utcnow


def _model(db, name: str, *, auto_approve: bool) -> Model:
    m = Model(name=name, architecture="mlp", architecture_config={}, input_shape=[4], num_classes=2, linearize="all",
              method_config={}, auto_approve=auto_approve, sla_days=30, batch_size=1, batch_window_s=0)
    db.add(m)
    db.flush()
    return m


def _failed_job(db, model: Model) -> Job:
    job = Job(id=uuid.uuid4(), model_id=model.id, kind="forget", status="failed", attempts=3, max_attempts=3,
              progress={}, config={}, checkpoint={}, metrics={}, error="boom", finished_at=utcnow())
    db.add(job)
    db.flush()
    return job


def _written(db) -> tuple[int, int]:
    db.expire_all()
    return (db.scalar(select(func.count()).select_from(AuditEvent)), db.scalar(select(func.count()).select_from(WebhookEvent)))


def _file(client, model: str, subject: str = "carol-7") -> dict:
    r = client.post("/v1/deletion-requests", json={"subject_id": subject, "model": model}, headers=client.auth("requester"))
    assert r.status_code == 202, r.text
    return r.json()


def test_a_failed_job_blocks_approval_until_acknowledged(client, db) -> None:
    m = _model(db, "stopper", auto_approve=False)
    job = _failed_job(db, m)
    req = _file(client, m.name)
    before = _written(db)
    r = client.post(f"/v1/deletion-requests/{req['id']}/approve", headers=client.auth("operator"))
    assert r.status_code == 409 and r.json()["type"].endswith("line-stopped") and r.json()["job_id"] == str(job.id)
    assert _written(db) == before
    assert db.get(DeletionRequest, uuid.UUID(req["id"])).status == "awaiting_approval"
    # a reason is required
    for body in ({}, {"reason": ""}, {"reason": "   "}):
        r = client.post(f"/v1/jobs/{job.id}/acknowledge", json=body, headers=client.auth("operator"))
        assert r.status_code == 422, body
    assert _written(db) == before
    r = client.post(f"/v1/jobs/{job.id}/acknowledge", json={"reason": "disk full; fixed"}, headers=client.auth("operator"))
    assert r.status_code == 200 and r.json()["acknowledged_by"].startswith("token:")
    assert r.json()["acknowledge_reason"] == "disk full; fixed"
    db.expire_all()
    kinds = [e.kind for e in db.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1))]
    assert kinds == ["job.acknowledged"]
    ev = db.scalars(select(WebhookEvent).where(WebhookEvent.type == "job.acknowledged")).one()
    assert ev.data["job_id"] == str(job.id) and ev.data["line_stopped"] is False
    # twice is a conflict
    r = client.post(f"/v1/jobs/{job.id}/acknowledge", json={"reason": "again"}, headers=client.auth("operator"))
    assert r.status_code == 409
    r = client.post(f"/v1/deletion-requests/{req['id']}/approve", headers=client.auth("operator"))
    assert r.status_code == 200 and r.json()["status"] == "queued"


def test_only_a_failed_job_can_be_acknowledged(client, db) -> None:
    m = _model(db, "fine", auto_approve=True)
    job = _failed_job(db, m)
    db.execute(update(Job).where(Job.id == job.id).values(status="succeeded"))
    r = client.post(f"/v1/jobs/{job.id}/acknowledge", json={"reason": "x"}, headers=client.auth("operator"))
    assert r.status_code == 409 and r.json()["current_status"] == "succeeded"
    r = client.post(f"/v1/jobs/{uuid.uuid4()}/acknowledge", json={"reason": "x"}, headers=client.auth("operator"))
    assert r.status_code == 404


def test_the_line_can_be_switched_off(client, db, settings) -> None:
    from service.main import create_app

    m = _model(db, "loose", auto_approve=False)
    _failed_job(db, m)
    req = _file(client, m.name)
    off = settings.model_copy(update={"pipeline": settings.pipeline.model_copy(update={"stop_the_line": False})})
    app = create_app(off)
    with type(client)(app) as c:
        app.state.session_factory = db.info["factory"]
        r = c.post(f"/v1/deletion-requests/{req['id']}/approve", headers=client.auth("operator"))
        assert r.status_code == 200


def test_scheduling_skips_a_stopped_model_but_run_now_does_not(client, db, settings) -> None:
    m = _model(db, "sched", auto_approve=True)
    chunk = SampleChunk(model_id=m.id, uri="file:///x", sha256="0" * 64, n_rows=1)
    db.add(chunk)
    db.flush()
    db.add(Sample(model_id=m.id, subject_key=subject_key(settings.security.secret_key, "dave-1"), split="user", label=0,
                  chunk_id=chunk.id, row=0))
    job = _failed_job(db, m)
    _file(client, m.name, "dave-1")
    assert job_service.schedule(db, settings, now=utcnow() + timedelta(seconds=5)) == []
    forced = job_service.forget_now(db, settings, m, actor="op")
    assert forced.model_id == m.id and forced.status == "queued"
    assert job.acknowledged_at is None


def test_fail_job_stops_the_line_with_an_event(db, settings) -> None:
    m = _model(db, "failing", auto_approve=True)
    job = Job(id=uuid.uuid4(), model_id=m.id, kind="forget", status="running", active_key=m.id, attempts=1, max_attempts=3,
              progress={}, config={}, checkpoint={}, metrics={})
    db.add(job)
    db.flush()
    job_service.fail_job(db, settings, job, "out of memory")
    db.flush()
    types = [e.type for e in db.scalars(select(WebhookEvent).order_by(WebhookEvent.id))]
    assert types[-3:] == ["job.status_changed", "job.failed", "model.line_stopped"]


def test_extension_once_before_due_within_the_maximum(client, db, settings) -> None:
    m = _model(db, "ext", auto_approve=False)
    req = _file(client, m.name)
    url = f"/v1/deletion-requests/{req['id']}/extend"
    before = _written(db)
    maximum = settings.pipeline.sla_extension_max_days
    bad = [({"days": maximum + 1, "reason": "late"}, 422), ({"days": 0, "reason": "x"}, 422), ({"days": 10}, 422),
           ({"days": 10, "reason": " "}, 422), ({"days": "ten", "reason": "x"}, 422),
           ({"days": 10, "reason": "x", "due_at": "2099-01-01"}, 422)]
    for body, code in bad:
        r = client.post(url, json=body, headers=client.auth("operator"))
        assert r.status_code == code, (body, r.text)
    assert client.post(url, json={"days": 10, "reason": "x"}, headers=client.auth("requester")).status_code == 403
    assert _written(db) == before
    r = client.post(url, json={"days": 30, "reason": "complex request: several systems"}, headers=client.auth("operator"))
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["extension_reason"] == "complex request: several systems" and got["extended_at"] is not None
    from datetime import datetime

    shift = datetime.fromisoformat(got["due_at"]) - datetime.fromisoformat(req["due_at"])
    assert shift == timedelta(days=30)
    db.expire_all()
    audit = db.scalars(select(AuditEvent).where(AuditEvent.kind == "deletion_request.extended")).one()
    assert audit.payload["days"] == 30 and audit.subject_key == req["subject_key"]
    ev = db.scalars(select(WebhookEvent).where(WebhookEvent.type == "request.extended")).one()
    assert ev.data["due_at"] == datetime.fromisoformat(got["due_at"]).isoformat() and "carol-7" not in str(ev.data)
    # a second one is refused, nothing written
    before = _written(db)
    r = client.post(url, json={"days": 1, "reason": "more"}, headers=client.auth("operator"))
    assert r.status_code == 409 and "once" in r.json()["detail"]
    assert _written(db) == before


def test_no_extension_after_the_due_date_or_of_a_closed_request(client, db) -> None:
    m = _model(db, "late", auto_approve=False)
    req = _file(client, m.name)
    db.execute(update(DeletionRequest).where(DeletionRequest.id == uuid.UUID(req["id"])).values(due_at=utcnow() - timedelta(hours=1)))
    r = client.post(f"/v1/deletion-requests/{req['id']}/extend", json={"days": 5, "reason": "x"}, headers=client.auth("operator"))
    assert r.status_code == 409 and "passed" in r.json()["detail"]
    other = _file(client, m.name, "erin-2")
    assert client.post(f"/v1/deletion-requests/{other['id']}/cancel", headers=client.auth("requester")).status_code == 200
    r = client.post(f"/v1/deletion-requests/{other['id']}/extend", json={"days": 5, "reason": "x"}, headers=client.auth("operator"))
    assert r.status_code == 409 and r.json()["current_status"] == "cancelled"
    r = client.post(f"/v1/deletion-requests/{uuid.uuid4()}/extend", json={"days": 5, "reason": "x"}, headers=client.auth("operator"))
    assert r.status_code == 404


@pytest.mark.parametrize("body", [{"reason": "x" * 2001}, {"reason": "ok", "extra": 1}])
def test_acknowledge_bad_bodies(client, db, body) -> None:
    m = _model(db, "ack-bad", auto_approve=True)
    job = _failed_job(db, m)
    r = client.post(f"/v1/jobs/{job.id}/acknowledge", json=body, headers=client.auth("operator"))
    assert r.status_code == 422
    db.expire_all()
    assert db.get(Job, job.id).acknowledged_at is None
