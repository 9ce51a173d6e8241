"""Job API: list/read/retry jobs and the model actions train, forget-now, zero (HTTP, rolled back)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from pipeline_support import file_request, ingest, register_model
from sqlalchemy import func, select

from service.core.storage import LocalArtifactStore as ArtifactStore
from service.job import service as job_service
from service.models import AuditEvent, DeletionRequest, Job, OutboxMessage

PROBLEM = "application/problem+json"


def _counts(db):
    return (
        db.execute(select(func.count()).select_from(Job)).scalar_one(),
        db.execute(select(func.count()).select_from(OutboxMessage)).scalar_one(),
        db.execute(select(func.count()).select_from(AuditEvent)).scalar_one(),
    )


@pytest.fixture
def model(db):
    return register_model(db, "tiny")


def test_train_creates_job_and_outbox_message_202(client, db, model):
    r = client.post("/v1/models/tiny/train", headers=client.auth("admin"))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["kind"] == "train" and body["status"] == "queued" and body["model"] == "tiny" and body["attempts"] == 0
    assert r.headers["location"] == f"/v1/jobs/{body['id']}"
    msg = db.execute(select(OutboxMessage).where(OutboxMessage.task_id == body["id"])).scalar_one()
    assert msg.task_name == "job.run" and msg.args == [body["id"]] and msg.queue == "gpu"


def test_second_start_is_409_naming_the_active_job_and_writes_nothing(client, db, model):
    first = client.post("/v1/models/tiny/train", headers=client.auth("admin")).json()
    before = _counts(db)
    for path, role, kwargs in (("train", "admin", {}), ("zero", "operator", {"json": {"retrain": False}})):
        r = client.post(f"/v1/models/tiny/{path}", headers=client.auth(role), **kwargs)
        assert r.status_code == 409 and r.headers["content-type"].startswith(PROBLEM)
        assert r.json()["type"].endswith("active-job-exists") and r.json()["job_id"] == first["id"]
        assert r.headers["location"] == f"/v1/jobs/{first['id']}"
    assert _counts(db) == before


def test_forget_now(client, db, settings, model):
    r = client.post("/v1/models/tiny/forget-now", headers=client.auth("operator"))
    assert r.status_code == 409 and r.json()["type"].endswith("nothing-to-forget")
    ingest(db, ArtifactStore(settings.storage.root), model, np.zeros((2, 8), np.float32), np.zeros(2, np.int64), ["a", "a"], "user")
    req = file_request(db, model, "a")
    r = client.post("/v1/models/tiny/forget-now", headers=client.auth("operator"))
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "forget" and r.json()["requests"] == 1
    db.refresh(req)
    assert req.status == "processing" and str(req.job_id) == r.json()["id"]


def test_zero_body_is_optional_and_validated(client, db, model):
    bad = client.post("/v1/models/tiny/zero", headers=client.auth("operator"), json={"retrain": "maybe"})
    assert bad.status_code == 422 and "retrain" in bad.text
    extra = client.post("/v1/models/tiny/zero", headers=client.auth("operator"), json={"everyone": True})
    assert extra.status_code == 422 and "everyone" in extra.text
    assert _counts(db)[0] == 0
    r = client.post("/v1/models/tiny/zero", headers=client.auth("operator"))
    assert r.status_code == 202, r.text
    job = db.get(Job, uuid.UUID(r.json()["id"]))
    assert job.kind == "zero" and job.config["then_retrain"] is True and r.json()["reason"]


def test_unknown_model_is_404_and_roles_are_enforced(client, db, model):
    for path in ("train", "forget-now", "zero"):
        r = client.post(f"/v1/models/nope/{path}", headers=client.auth("admin"))
        assert r.status_code == 404 and r.json()["type"].endswith("model-not-found")
        # Operators run now and zero; only admins train (DESIGN §10).
        by_operator = client.post(f"/v1/models/nope/{path}", headers=client.auth("operator")).status_code
        assert by_operator == (403 if path == "train" else 404)
        assert client.post(f"/v1/models/tiny/{path}", headers=client.auth("auditor")).status_code == 403
        assert client.post(f"/v1/models/tiny/{path}", headers=client.auth("requester")).status_code == 403
        assert client.post(f"/v1/models/tiny/{path}").status_code == 401
    assert client.get("/v1/jobs", headers=client.auth("requester")).status_code == 403
    assert client.get("/v1/jobs", headers=client.auth("auditor")).status_code == 200
    assert _counts(db)[0] == 0


def test_list_filters_and_cursor_pages(client, db, settings):
    models = [register_model(db, f"m{i}") for i in range(3)]
    ids = [job_service.create_job(db, settings, m, job_service.JobKind.train, actor="t").id for m in models]
    db.get(Job, ids[0]).status = "failed"
    db.get(Job, ids[0]).active_key = None
    db.flush()
    h = client.auth("operator")
    seen, cursor = [], None
    for _ in range(5):
        r = client.get("/v1/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=h)
        assert r.status_code == 200, r.text
        seen += [j["id"] for j in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(str(i) for i in ids) and len(seen) == 3
    by_model = client.get("/v1/jobs", params={"model": "m1"}, headers=h).json()["items"]
    assert [j["id"] for j in by_model] == [str(ids[1])]
    failed = client.get("/v1/jobs", params={"status": "failed"}, headers=h).json()["items"]
    assert [j["id"] for j in failed] == [str(ids[0])]
    for params, status in (({"status": "exploded"}, 422), ({"cursor": "forged.cursor"}, 400), ({"model": "nope"}, 404),
                           ({"limit": 0}, 422)):
        r = client.get("/v1/jobs", params=params, headers=h)
        assert r.status_code == status and r.headers["content-type"].startswith(PROBLEM), (params, r.text)


def test_get_job_and_retry(client, db, settings, model):
    h = client.auth("operator")
    job = job_service.create_job(db, settings, model, job_service.JobKind.train, actor="t")
    r = client.get(f"/v1/jobs/{job.id}", headers=client.auth("auditor"))
    assert r.status_code == 200 and r.json()["id"] == str(job.id) and r.json()["progress"] == {}
    assert client.get(f"/v1/jobs/{uuid.uuid4()}", headers=h).status_code == 404
    assert client.get("/v1/jobs/not-a-uuid", headers=h).status_code == 422
    r = client.post(f"/v1/jobs/{job.id}/retry", headers=h)
    assert r.status_code == 409 and r.json()["current_status"] == "queued"
    job_service.fail_job(db, settings, job, "RuntimeError: the GPU caught fire")
    db.flush()
    shown = client.get(f"/v1/jobs/{job.id}", headers=h).json()
    assert shown["status"] == "failed" and "GPU caught fire" in shown["error"]
    assert client.post(f"/v1/jobs/{job.id}/retry", headers=client.auth("auditor")).status_code == 403
    r = client.post(f"/v1/jobs/{job.id}/retry", headers=h)
    assert r.status_code == 202 and r.json()["status"] == "queued" and r.json()["error"] is None
    msgs = db.execute(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.task_id == str(job.id))).scalar_one()
    assert msgs == 2
    assert client.post(f"/v1/jobs/{uuid.uuid4()}/retry", headers=h).status_code == 404


def test_forget_now_requests_complete_when_model_holds_nothing(client, db, model):
    file_request(db, model, "ghost")
    r = client.post("/v1/models/tiny/forget-now", headers=client.auth("operator"))
    assert r.status_code == 409 and r.json()["type"].endswith("nothing-to-forget")
    # a 4xx writes nothing: the no-samples completion is left to the next scheduler round
    assert db.execute(select(DeletionRequest.status)).scalar_one() == "queued"
    assert _counts(db)[0] == 0
