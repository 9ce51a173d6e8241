"""Sample uploads: every refusal says what was wrong and writes nothing; guards; audit."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import numpy as np
import pytest
from safetensors.numpy import save as st_save
from sqlalchemy import func, select

from service.core.security import subject_key
from service.model_registry import uploads
from service.models import AuditEvent, DeletionRequest, Model, Sample, SampleChunk, SubjectTombstone
from service.models._types import utcnow

SPEC = {"name": "tab", "architecture": "mlp", "input_shape": [2, 2], "num_classes": 4}


@pytest.fixture
def model(client, db):
    assert client.post("/v1/models", json=SPEC, headers=client.auth("admin")).status_code == 201
    return db.execute(select(Model)).scalar_one()


def _nothing_written(client, db):
    assert db.execute(select(func.count()).select_from(Sample)).scalar_one() == 0
    assert db.execute(select(func.count()).select_from(SampleChunk)).scalar_one() == 0
    assert list(client.app.state.store.root.rglob("*.safetensors")) == []


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _good(n=3):
    return {"x": np.zeros((n, 2, 2), dtype=np.float32), "labels": np.arange(n) % 4,
            "subject_ids": np.array([f"p{i}" for i in range(n)]), "split": np.array("user")}


def _post(client, content, ctype, **params):
    return client.post("/v1/models/tab/samples", content=content, params=params,
                       headers={**client.auth("admin"), "content-type": ctype})


def _rows(n=3, **over):
    return [{"subject_id": f"r{i}", "split": "user", "label": i % 4, "x": [[1.0, 2.0], [3.0, 4.0]], **over} for i in range(n)]


@pytest.mark.parametrize("change,needle,ptype", [
    ({"x": np.zeros((3, 2, 3))}, "shape", "invalid-tensor"),
    ({"x": np.zeros((3, 4))}, "shape", "invalid-tensor"),
    ({"x": np.zeros((3, 2, 2), dtype=np.int64)}, "float", "invalid-tensor"),
    ({"x": np.zeros((3, 2, 2), dtype=np.complex64)}, "float", "invalid-tensor"),
    ({"x": np.array([[[0, 0], [0, 0]], [[0, np.nan], [0, 0]], [[np.inf, 0], [0, 0]]])}, "first bad row 1", "invalid-tensor"),
    ({"x": np.array([[[0, 0], [0, 0]], [[0, 0], [0, 0]], [[0, -np.inf], [0, 0]]])}, "first bad row 2", "invalid-tensor"),
    ({"x": np.full((3, 2, 2), 1e300)}, "float32", "invalid-tensor"),
    ({"labels": np.array([0, 4, 1])}, "label 4 at row 1", "invalid-tensor"),
    ({"labels": np.array([0, -1, 1])}, "label -1 at row 1", "invalid-tensor"),
    ({"labels": np.array([0.0, 1.0, 1.0])}, "integers", "invalid-tensor"),
    ({"labels": np.array([0, 1])}, "Row counts disagree", "invalid-tensor"),
    ({"split": np.array(["user", "user", "train"])}, "'train' at row 2", "validation-error"),
    ({"split": np.array(["user", "user"])}, "Row counts disagree", "invalid-tensor"),
    ({"subject_ids": np.array(["a", "", "c"])}, "subject_id at row 1", "validation-error"),
    ({"subject_ids": np.array(["a", "b" * 257, "c"])}, "subject_id at row 1", "validation-error"),
    ({"subject_ids": np.array([1, 2, 3])}, "subject_ids must be a string", "invalid-tensor"),
])
def test_bad_npz_refused_with_reason_and_nothing_written(client, db, model, change, needle, ptype):
    r = _post(client, _npz(**{**_good(), **change}), "application/x-npz")
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"].endswith(ptype) and needle in r.json()["detail"], r.json()
    _nothing_written(client, db)


def test_empty_and_oversized_row_counts(client, db, model, monkeypatch):
    r = _post(client, _npz(x=np.zeros((0, 2, 2)), labels=np.zeros(0, dtype=int), subject_ids=np.array([], dtype=str), split=np.array("user")),
              "application/x-npz")
    assert r.status_code == 422 and "no samples" in r.json()["detail"]
    monkeypatch.setattr(uploads, "MAX_ROWS", 2)
    r = _post(client, _npz(**_good(3)), "application/x-npz")
    assert r.status_code == 422 and "At most 2" in r.json()["detail"]
    _nothing_written(client, db)


def test_bad_safetensors_refused(client, db, model):
    x, labels = np.zeros((2, 2, 2), dtype=np.float32), np.array([0, 1])
    meta = {"subject_ids": json.dumps(["a", "b"]), "split": "user"}
    cases = [
        (st_save({"x": x}, metadata=meta), 422, "'labels'"),
        (st_save({"x": x, "labels": labels}, metadata={"split": "user"}), 422, "subject_ids"),
        (st_save({"x": x, "labels": labels}, metadata={**meta, "subject_ids": json.dumps([1, 2])}), 422, "list of strings"),
        (st_save({"x": x, "labels": labels}, metadata={**meta, "subject_ids": "a,b"}), 422, "subject_ids"),
        (st_save({"x": x, "labels": labels}, metadata={**meta, "split": json.dumps(["user", "nope"])}), 422, "'nope' at row 1"),
        (st_save({"x": x[:1], "labels": labels}, metadata=meta), 422, "Row counts"),
        (st_save({"x": x.astype(np.float16), "labels": labels.astype(np.float32)}, metadata=meta), 422, "integers"),
        (b"\x00" * 16, 400, "safetensors"),
    ]
    for body, status, needle in cases:
        r = _post(client, body, "application/vnd.safetensors")
        assert r.status_code == status and needle in r.json()["detail"], r.text
    # octet-stream needs ?format=safetensors
    good = st_save({"x": x, "labels": labels}, metadata=meta)
    r = _post(client, good, "application/octet-stream")
    assert r.status_code == 415 and "application/vnd.safetensors" in r.json()["accepted"]
    _nothing_written(client, db)
    assert _post(client, good, "application/octet-stream", format="safetensors").status_code == 201


@pytest.mark.parametrize("rows,needle", [
    (_rows(2, label=1.5), "label"),
    (_rows(2, label="1"), "label"),
    (_rows(2, label=True), "label"),
    (_rows(2, x=[["1", "2"], ["3", "4"]]), "numbers"),
    (_rows(2, x=[[1, 2], [3]]), "numbers"),
    (_rows(2, x=[[True, False], [True, True]]), "numbers"),
    (_rows(2, x=[[1e39, 0], [0, 0]]), "float32"),
    ([{"subject_id": "a", "split": "user", "label": 0}], "samples.0.x"),
    ([{**_rows(1)[0], "extra": 1}], "samples.0.extra"),
])
def test_bad_json_rows_refused(client, db, model, rows, needle):
    r = client.post("/v1/models/tab/samples", json={"samples": rows}, headers=client.auth("admin"))
    assert r.status_code == 422 and needle in r.text, r.text
    _nothing_written(client, db)


def test_malformed_json_body_and_bad_query(client, db, model):
    r = _post(client, b'{"samples": [', "application/json")
    assert r.status_code == 400 and "JSON" in r.json()["detail"]
    r = _post(client, _npz(**_good()), "application/x-npz", consent_renewed_at="yesterday")
    assert r.status_code == 422
    _nothing_written(client, db)


def test_ingestion_is_audited_without_subject_ids(client, db, model):
    r = client.post("/v1/models/tab/samples", json={"samples": _rows(3)}, headers=client.auth("admin"))
    assert r.status_code == 201
    ev = db.execute(select(AuditEvent).where(AuditEvent.kind == "samples.ingested")).scalar_one()
    assert ev.payload["rows"] == 3 and ev.payload["chunk_id"] == r.json()["chunk_id"] and ev.payload["by_split"] == {"user": 3}
    assert "r0" not in json.dumps(ev.payload)


def test_consent_renewal_via_query_on_binary_upload(client, db, model):
    secret = client.app.state.settings.security.secret_key
    deleted_at = utcnow() - timedelta(hours=2)
    db.add(SubjectTombstone(model_id=model.id, subject_key=subject_key(secret, "p1"), deleted_at=deleted_at))
    db.flush()
    r = _post(client, _npz(**_good()), "application/x-npz")
    assert r.status_code == 409 and r.json()["type"].endswith("subject-deleted") and r.json()["row"] == 1
    assert "p1" not in r.text
    _nothing_written(client, db)
    r = _post(client, _npz(**_good()), "application/x-npz", consent_renewed_at=(deleted_at + timedelta(minutes=1)).isoformat())
    assert r.status_code == 201, r.text
    # the renewal lifted the tombstone and was audited (by key, never the raw id)
    assert db.execute(select(func.count()).select_from(SubjectTombstone)).scalar_one() == 0
    ev = db.execute(select(AuditEvent).where(AuditEvent.kind == "subject.consent_renewed")).scalar_one()
    assert ev.subject_key == subject_key(secret, "p1")


def test_open_request_for_every_model_blocks_and_closed_requests_do_not(client, db, model):
    secret = client.app.state.settings.security.secret_key
    now = utcnow()

    def request(sid, status, model_id):
        key = subject_key(secret, sid)
        db.add(DeletionRequest(subject_id=sid, subject_key=key, model_id=model_id, status=status,
                               open_key=f"{key}:{model_id or '*'}" if status in ("received", "queued") else None,
                               created_at=now, due_at=now + timedelta(days=30), attempts=0))
        db.flush()

    request("p0", "cancelled", model.id)
    request("p1", "completed", None)
    assert _post(client, _npz(**_good(2)), "application/x-npz").status_code == 201
    request("p2", "received", None)
    r = _post(client, _npz(**_good(3)), "application/x-npz")
    assert r.status_code == 409 and r.json()["type"].endswith("subject-deletion-pending") and r.json()["row"] == 2
    assert db.execute(select(func.count()).select_from(Sample)).scalar_one() == 2
