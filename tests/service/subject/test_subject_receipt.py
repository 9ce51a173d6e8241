"""The deletion receipt: requests, versions that held the subject, first clean version, cumulative bound."""

from __future__ import annotations

import math
import uuid
from datetime import timedelta

from service.core.security import subject_key
from service.models import DeletionRequest, Model, ModelAlias, ModelVersion, Sample, SampleChunk, SubjectTombstone
from service.models._types import utcnow


def _model(db):
    m = Model(name="m", architecture="mlp", architecture_config={}, input_shape=[2], num_classes=2, linearize="all", method_config={})
    db.add(m)
    db.flush()
    return m


def _version(db, m, n, kl, state="live"):
    v = ModelVersion(model_id=m.id, number=n, sha256=f"{n:064d}", size_bytes=1, bound={"kl_nats": kl}, metrics={}, state=state, sample_watermark=n * 10)
    db.add(v)
    db.flush()
    return v


def test_receipt_after_completion(client, db):
    secret = client.app.state.settings.security.secret_key
    key = subject_key(secret, "alice")
    m = _model(db)
    _version(db, m, 1, 1e-4, "revoked")
    v2 = _version(db, m, 2, 2e-4)
    _version(db, m, 3, 0.0)
    v4 = _version(db, m, 4, 3e-4)
    db.add(ModelAlias(model_id=m.id, name="latest", version_id=v4.id))
    db.add(ModelAlias(model_id=m.id, name="production", version_id=v2.id))
    now = utcnow()
    db.add(DeletionRequest(id=uuid.uuid4(), subject_key=key, model_id=m.id, status="completed", created_at=now - timedelta(days=2),
                           due_at=now + timedelta(days=28), completed_at=now, samples_removed=7, clean_version_id=v2.id,
                           held_versions=[{"model": "m", "number": 1}], attempts=0))
    db.add(SubjectTombstone(model_id=m.id, subject_key=key, deleted_at=now))
    db.flush()
    r = client.get("/v1/subjects/alice", headers=client.auth("auditor"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["subject_key"] == key and len(body["requests"]) == 1
    assert body["requests"][0]["clean_version"] == 2 and body["requests"][0]["samples_removed"] == 7
    (mr,) = body["models"]
    assert mr["held_by_versions"] == [1] and mr["first_clean_version"]["number"] == 2
    assert mr["samples_remaining"] == 0 and mr["tombstoned_since"] is not None
    expected = 2e-4 + 0.0 + 3e-4  # versions 2, 3, 4
    assert math.isclose(mr["cumulative_kl_nats"], expected) and math.isclose(mr["cumulative_kl_bits"], expected / math.log(2))
    assert mr["releases_since_deletion"] == 3 and mr["latest_is_clean"] is True and mr["production_is_clean"] is True


def test_open_request_shows_versions_still_holding(client, db):
    secret = client.app.state.settings.security.secret_key
    key = subject_key(secret, "bob")
    m = _model(db)
    _version(db, m, 1, 0.0)
    _version(db, m, 2, 0.0)
    chunk = SampleChunk(model_id=m.id, uri="local://x", sha256="0" * 64, n_rows=1)
    db.add(chunk)
    db.flush()
    db.add(Sample(id=15, model_id=m.id, subject_key=key, split="user", label=0, chunk_id=chunk.id, row=0))
    db.flush()
    body = client.get("/v1/subjects/bob", headers=client.auth("auditor")).json()
    (mr,) = body["models"]
    assert mr["samples_remaining"] == 1 and mr["held_by_versions"] == [2]  # watermark 20 >= 15, 10 < 15
    assert mr["first_clean_version"] is None and mr["cumulative_kl_nats"] == 0


def test_unknown_subject_is_an_empty_receipt_and_roles(client):
    r = client.get("/v1/subjects/nobody", headers=client.auth("auditor"))
    assert r.status_code == 200 and r.json()["requests"] == [] and r.json()["models"] == []
    assert client.get("/v1/subjects/nobody", headers=client.auth("serving")).status_code == 403
    assert client.get("/v1/subjects/nobody").status_code == 401
