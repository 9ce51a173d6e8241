"""Retiring a model (``POST /v1/models/{name}/retire``): the way out for a class request held
because forgetting the class would leave fewer than two classes (issue 14). Over HTTP, without a
worker: versions are published by hand as in test_registry_versions.py, the held request is made
by the real scheduler function (``job_service.schedule``)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from registry_support import problem
from sqlalchemy import func, select

from service.job import service as job_service
from service.model_registry import purge
from service.model_registry.service import move_alias
from service.models import (AuditEvent, ClassSubject, DeletionRequest, Job, Model, ModelAlias, ModelVersion, OutboxMessage, Sample,
                            VersionArtifact, WebhookEvent)
from service.models._types import utcnow

D = 4
BASE = {"architecture": "mlp", "architecture_config": {"in_features": D, "hidden": [8], "num_classes": 5}, "input_shape": [D],
        "num_classes": 5, "method": "svd_projection", "family": "standard", "method_config": {"device": "cpu", "epochs": 1},
        "subjects_are_classes": True}
REASON = "two classes left; the product is shut down"


def _rows(owner_of_label: dict[int, str], per=3):
    return [{"subject_id": sid, "split": "user", "label": label, "x": [float(label)] * D}
            for label, sid in owner_of_label.items() for _ in range(per)]


def _publish(db, store, model, number):
    art = store.put_bytes(hashlib.sha256(f"w{number}".encode()).digest() * 64, prefix=f"weights/{model.id}", suffix=".safetensors")
    priv = store.put_bytes(hashlib.sha256(f"p{number}".encode()).digest() * 64, prefix=f"private/{model.id}", suffix=".safetensors")
    v = ModelVersion(model_id=model.id, number=number, artifact_uri=art.uri, private_uri=priv.uri, sha256=art.sha256,
                     size_bytes=art.size, metrics={}, bound={}, state="live", sample_watermark=10**9,
                     created_at=utcnow() + timedelta(microseconds=number))
    db.add(v)
    db.flush()
    db.add(VersionArtifact(version_id=v.id, name="weights", uri=priv.uri, sha256=priv.sha256, size_bytes=priv.size))
    move_alias(db, model, "latest", v, "pipeline", system=True)
    move_alias(db, model, "production", v, "pipeline", system=True)
    db.flush()
    return v


@pytest.fixture
def duo(client, db, settings):
    """Model ``duo``: two classes, person-0 and person-1 each the whole of one (mapped); v1 and
    v2 live; person-0's request HELD by the scheduler (forgetting class 0 would leave one class)."""
    r = client.post("/v1/models", json={**BASE, "name": "duo"}, headers=client.auth("admin"))
    assert r.status_code == 201, r.text
    assert client.post("/v1/models/duo/samples", json={"samples": _rows({0: "person-0", 1: "person-1"})},
                       headers=client.auth("admin")).status_code == 201
    r = client.post("/v1/models/duo/class-subjects", json={"classes": [{"label": 0, "subject_id": "person-0"},
                                                                        {"label": 1, "subject_id": "person-1"}]},
                    headers=client.auth("admin"))
    assert r.status_code == 201, r.text
    model = db.execute(select(Model).where(Model.name == "duo")).scalar_one()
    _publish(db, client.app.state.store, model, 1)
    _publish(db, client.app.state.store, model, 2)
    r = client.post("/v1/deletion-requests", json={"subject_id": "person-0", "model": "duo"}, headers=client.auth("requester"))
    assert r.status_code == 202, r.text
    req = db.get(DeletionRequest, uuid.UUID(r.json()["id"]))
    assert job_service.schedule(db, settings, now=utcnow() + timedelta(days=1)) == []
    assert req.status == "queued" and req.error.startswith(job_service.HOLD_PREFIX), req.error
    return model, req


def _snapshot(db, client):
    files = sorted(str(p) for p in Path(client.app.state.settings.storage.root).rglob("*") if p.is_file())
    return {t.__name__: db.scalar(select(func.count()).select_from(t)) for t in
            (AuditEvent, Job, OutboxMessage, Sample, ClassSubject, ModelAlias, WebhookEvent, DeletionRequest)} | {
        "live": db.scalar(select(func.count()).select_from(ModelVersion).where(ModelVersion.state == "live")),
        "states": sorted(db.execute(select(Model.name, Model.state)).all()),
        "requests": sorted(db.execute(select(DeletionRequest.status, DeletionRequest.error)).all()), "files": files}


def _retire(client, name="duo", role="operator", reason=REASON):
    return client.post(f"/v1/models/{name}/retire", json={"reason": reason}, headers=client.auth(role))


def test_an_active_job_blocks_retiring_and_nothing_is_written(client, db, duo):
    r = client.post("/v1/models/duo/train", headers=client.auth("admin"))
    assert r.status_code == 202, r.text
    before = _snapshot(db, client)
    body = problem(_retire(client), 409, "active-job-exists", "active")
    assert body["job_id"] == r.json()["id"]
    assert _snapshot(db, client) == before


def test_bad_retire_calls_write_nothing(client, db, duo):
    before = _snapshot(db, client)
    assert _retire(client, role="requester").status_code == 403
    assert _retire(client, role="serving").status_code == 403
    assert _retire(client, name="nobody").status_code == 404
    for body in ({}, {"reason": ""}, {"reason": "x" * 1001}, {"reason": "ok", "extra": 1}):
        r = client.post("/v1/models/duo/retire", json=body, headers=client.auth("operator"))
        assert r.status_code == 422, (body, r.text)
    assert _snapshot(db, client) == before


def test_retiring_revokes_every_version_completes_the_held_request_and_purges_the_samples(client, db, settings, duo):
    model, held = duo
    later = client.post("/v1/deletion-requests", json={"subject_id": "person-1", "model": None}, headers=client.auth("requester"))
    assert later.status_code == 202
    serving = client.auth("serving")
    assert client.get("/v1/models/duo/versions/latest", headers=serving).status_code == 200  # cached before retiring
    r = _retire(client)
    assert r.status_code == 200, r.text
    assert r.json() == {"model": "duo", "state": "retired", "state_reason": REASON, "versions_revoked": [1, 2], "requests_completed": 1}

    # nothing is served: 410 on every manifest and weights, no alias
    for ref in ("1", "2", "latest", "production"):
        m = client.get(f"/v1/models/duo/versions/{ref}", headers=serving)
        assert m.status_code == 410 and "retired" in m.json()["detail"], (ref, m.text)
        w = client.get(f"/v1/models/duo/versions/{ref}/weights", headers=serving)
        assert w.status_code == 410, (ref, w.text)
    assert client.get("/v1/models/duo/aliases", headers=serving).json()["aliases"] == {}
    listed = client.get("/v1/models/duo/versions", headers=client.auth("operator")).json()["items"]
    assert [(v["number"], v["state"]) for v in listed] == [(2, "revoked"), (1, "revoked")]
    read = client.get("/v1/models/duo", headers=client.auth("operator")).json()
    assert read["state"] == "retired" and read["state_reason"] == REASON

    # the held request: completed, the receipt says the model was retired, no clean version
    got = client.get(f"/v1/deletion-requests/{held.id}", headers=client.auth("operator")).json()
    assert got["status"] == "completed" and got["clean_version"] is None and got["error"] is None
    assert "model retired" in got["decision_reason"] and "no clean version" in got["decision_reason"]
    assert got["samples_removed"] == 3 and got["subject_id"] is None
    db.refresh(held)
    assert [h["number"] for h in held.held_versions] == [1, 2]
    done = db.execute(select(AuditEvent).where(AuditEvent.kind == "request.completed", AuditEvent.subject_key == held.subject_key)).scalar_one()
    assert done.payload["model_retired"] is True and done.payload["clean_version"] is None
    assert "person" not in str(done.payload)
    hooks = db.execute(select(WebhookEvent.type, WebhookEvent.data)).all()
    assert sorted(d["number"] for t, d in hooks if t == "version.revoked") == [1, 2]
    assert any(t == "request.status_changed" and d["request_id"] == str(held.id) and d["status"] == "completed" for t, d in hooks)
    kinds = [e.kind for e in db.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars()]
    assert kinds.count("model.retired") == 1 and kinds.count("version.revoked") == 2 and kinds.count("alias.cleared") == 2

    # personal data goes: samples and mapping rows now, the chunk files and every revoked file by the purge
    assert db.scalar(select(func.count()).select_from(Sample).where(Sample.model_id == model.id)) == 0
    assert db.scalar(select(func.count()).select_from(ClassSubject).where(ClassSubject.model_id == model.id)) == 0
    assert db.scalar(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.task_name == job_service.TASK_PURGE)) == 1
    assert purge.gap_chunks(db, model.id)
    stale = purge.release_revoked_files(db, model.id)
    assert len(stale) == 6  # served + private of two versions, and each one's private artifact row (same file)
    assert db.scalar(select(func.count()).select_from(VersionArtifact)) == 0

    # the request for every model: the retired model held its subject (recorded); the scheduler then completes it
    other = db.get(DeletionRequest, uuid.UUID(later.json()["id"]))
    db.refresh(other)
    assert other.status == "queued" and other.samples_removed == 3 and [h["model"] for h in other.held_versions] == ["duo", "duo"]
    job_service.schedule(db, settings, now=utcnow() + timedelta(days=2))
    assert other.status == "completed"


def test_a_retired_model_accepts_nothing_new_and_a_later_request_completes_at_once(client, db, settings, duo):
    assert _retire(client).status_code == 200
    before = _snapshot(db, client)
    admin, op = client.auth("admin"), client.auth("operator")
    refusals = [
        client.post("/v1/models/duo/samples", json={"samples": _rows({2: "someone"})}, headers=admin),
        client.post("/v1/models/duo/class-subjects", json={"classes": [{"label": 2, "subject_id": "someone"}]}, headers=admin),
        client.post("/v1/models/duo/train", headers=admin),
        client.post("/v1/models/duo/checkpoint", content=b"\x08" + b"\x00" * 7 + b"{}" + b" " * 6,
                    headers={**admin, "content-type": "application/vnd.safetensors"}),
        client.post("/v1/models/duo/forget-now", headers=op),
        client.post("/v1/models/duo/classes/1/forget", json={"reason": "x"}, headers=op),
        client.post("/v1/models/duo/zero", headers=op),
        _retire(client),
    ]
    for r in refusals:
        problem(r, 409, "model-retired", "retired")
    assert _snapshot(db, client) == before
    # a request filed later: completed on the next tick with the retired receipt (no job)
    r = client.post("/v1/deletion-requests", json={"subject_id": "person-7", "model": "duo"}, headers=client.auth("requester"))
    assert r.status_code == 202
    assert job_service.schedule(db, settings, now=utcnow()) == []
    got = client.get(f"/v1/deletion-requests/{r.json()['id']}", headers=op).json()
    assert got["status"] == "completed" and got["clean_version"] is None and "model retired" in got["decision_reason"]
    assert db.scalar(select(func.count()).select_from(Job)) == 0
