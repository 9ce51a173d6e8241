"""Model registry: registration, ingestion (JSON, npz, safetensors), versions, weights, aliases."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from datetime import timedelta

import numpy as np
import pytest
from safetensors.numpy import save as st_save
from sqlalchemy import func, select

from service.core.security import subject_key
from service.model_registry.service import move_alias
from service.models import AliasEvent, Model, ModelAlias, ModelVersion, Sample, SampleChunk, SubjectTombstone
from service.models._types import utcnow

SPEC = {"name": "digits", "architecture": "mlp", "architecture_config": {"in_features": 4, "hidden": [8], "num_classes": 3},
        "input_shape": [4], "num_classes": 3, "linearize": "last:1"}


def _register(client, **over):
    r = client.post("/v1/models", json={**SPEC, **over}, headers=client.auth("admin"))
    assert r.status_code == 201, r.text
    return r.json()


def _counts(db):
    return (db.execute(select(func.count()).select_from(Sample)).scalar_one(), db.execute(select(func.count()).select_from(SampleChunk)).scalar_one())


def _files(client):
    root = client.app.state.store.root
    return sorted(p for p in root.rglob("*.safetensors"))


def test_register_read_list(client):
    body = _register(client)
    assert body["name"] == "digits" and body["samples"] == {"core": 0, "user": 0, "eval": 0}
    assert body["method_config"]["l2"] == pytest.approx(1e-3)
    assert client.get("/v1/models/digits", headers=client.auth("serving")).json()["linearize"] == "last:1"
    names = [m["name"] for m in client.get("/v1/models", headers=client.auth("requester")).json()["items"]]
    assert names == ["digits"]
    dup = client.post("/v1/models", json=SPEC, headers=client.auth("admin"))
    assert dup.status_code == 409 and dup.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("bad,field", [
    ({"name": "Bad Name"}, "name"), ({"architecture": "rm -rf"}, "architecture"), ({"linearize": "last:0"}, "linearize"),
    ({"input_shape": []}, "input_shape"), ({"num_classes": 1}, "num_classes"), ({"method_config": {"l2": 0}}, "l2"),
    ({"method_config": {"nope": 1}}, "nope"), ({"surprise": True}, "surprise"),
])
def test_registration_validation(client, db, bad, field):
    r = client.post("/v1/models", json={**SPEC, **bad}, headers=client.auth("admin"))
    assert r.status_code == 422 and field in r.text
    assert db.execute(select(func.count()).select_from(Model)).scalar_one() == 0


def test_roles(client):
    assert client.post("/v1/models", json=SPEC).status_code == 401
    assert client.post("/v1/models", json=SPEC, headers=client.auth("requester")).status_code == 403
    assert client.get("/v1/models/nope", headers=client.auth("operator")).json()["type"].endswith("model-not-found")


def _rows(n=5, split="user", d=4):
    rng = np.random.default_rng(0)
    return [{"subject_id": f"s-{i % 3}", "split": split, "label": int(i % 3), "x": rng.normal(size=d).round(4).tolist()} for i in range(n)]


def test_json_npz_safetensors_ingestion_round_trip(client, db):
    from service.model_registry.samples import read_samples

    _register(client)
    model = db.execute(select(Model)).scalar_one()
    rows = _rows(5)
    r = client.post("/v1/models/digits/samples", json={"samples": rows}, headers=client.auth("admin"))
    assert r.status_code == 201, r.text
    assert r.json()["inserted"] == 5 and r.json()["by_split"] == {"user": 5}
    x = np.random.default_rng(1).normal(size=(4, 4)).astype(np.float32)
    buf = io.BytesIO()
    np.savez(buf, x=x, labels=np.array([0, 1, 2, 0]), subject_ids=np.array(["a", "b", "c", "d"]), split=np.array("core"))
    r = client.post("/v1/models/digits/samples", content=buf.getvalue(), headers={**client.auth("admin"), "content-type": "application/x-npz"})
    assert r.status_code == 201, r.text
    x2 = np.random.default_rng(2).normal(size=(3, 4))
    st = st_save({"x": x2, "labels": np.array([2, 2, 1])}, metadata={"subject_ids": json.dumps(["e", "f", "g"]), "split": "eval"})
    r = client.post("/v1/models/digits/samples", content=st, headers={**client.auth("admin"), "content-type": "application/vnd.safetensors"})
    assert r.status_code == 201, r.text
    store = client.app.state.store
    user = read_samples(db, store, model.id, splits=["user"])
    assert np.array_equal(user.x, np.array([r["x"] for r in rows], dtype=np.float32))
    assert user.y.tolist() == [r["label"] for r in rows]
    core = read_samples(db, store, model.id, splits=["core"])
    assert np.array_equal(core.x, x) and core.y.tolist() == [0, 1, 2, 0]
    ev = read_samples(db, store, model.id, splits=["eval"])
    assert np.array_equal(ev.x, x2.astype(np.float32))
    # subject keys only, never raw ids
    keys = set(db.execute(select(Sample.subject_key)).scalars())
    assert "s-0" not in keys and subject_key(client.app.state.settings.security.secret_key, "s-0") in keys


@pytest.mark.parametrize("mutate,status,needle", [
    (lambda rows: rows[1].update(x=[1.0, 2.0]), 422, "shape"),
    (lambda rows: rows[2].update(x=[1.0, float("nan"), 0, 0]), 422, "NaN"),
    (lambda rows: rows[0].update(label=3), 422, "outside"),
    (lambda rows: rows[0].update(split="train"), 422, "split"),
    (lambda rows: rows[0].update(subject_id=""), 422, "subject_id"),
    (lambda rows: rows.clear(), 422, "samples"),
])
def test_bad_json_uploads_write_nothing(client, db, mutate, status, needle):
    _register(client)
    rows = _rows(4)
    mutate(rows)
    before = _files(client)
    body = json.dumps({"samples": rows}, allow_nan=True)
    r = client.post("/v1/models/digits/samples", content=body, headers={**client.auth("admin"), "content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json") and needle in r.text
    assert _counts(db) == (0, 0) and _files(client) == before


def test_bad_binary_uploads_write_nothing(client, db):
    _register(client)
    h = {**client.auth("admin"), "content-type": "application/x-npz"}
    for arrays, needle in [
        ({"x": np.zeros((2, 4), dtype=np.int32), "labels": np.array([0, 1]), "subject_ids": np.array(["a", "b"]), "split": np.array("user")}, "float"),
        ({"x": np.full((2, 4), np.inf), "labels": np.array([0, 1]), "subject_ids": np.array(["a", "b"]), "split": np.array("user")}, "NaN or infinity"),
        ({"x": np.zeros((2, 5)), "labels": np.array([0, 1]), "subject_ids": np.array(["a", "b"]), "split": np.array("user")}, "shape"),
        ({"x": np.zeros((2, 4)), "labels": np.array([0.5, 1.0]), "subject_ids": np.array(["a", "b"]), "split": np.array("user")}, "integers"),
        ({"x": np.zeros((2, 4))}, "lacks"),
    ]:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        r = client.post("/v1/models/digits/samples", content=buf.getvalue(), headers=h)
        assert 400 <= r.status_code < 500 and needle in r.text, r.text
    assert client.post("/v1/models/digits/samples", content=b"garbage", headers=h).status_code == 400
    r = client.post("/v1/models/digits/samples", content=b"x", headers={**client.auth("admin"), "content-type": "text/csv"})
    assert r.status_code == 415
    r = client.post("/v1/models/nope/samples", json={"samples": _rows(1)}, headers=client.auth("admin"))
    assert r.status_code == 404
    assert _counts(db) == (0, 0)


def test_oversized_upload_is_413_and_writes_nothing(client, settings, db):
    from fastapi.testclient import TestClient

    from service.main import create_app

    _register(client)
    small = settings.model_copy(update={"api": settings.api.model_copy(update={"max_body_bytes": 1000})})
    app = create_app(small)
    rows = _rows(40)
    with TestClient(app) as c:
        app.state.session_factory = db.info["factory"]
        r = c.post("/v1/models/digits/samples", json={"samples": rows}, headers=client.auth("admin"))
        assert r.status_code == 413 and "1000 bytes" in r.json()["detail"]
        assert r.headers["content-type"].startswith("application/problem+json")
        ok = c.post("/v1/models/digits/samples", json={"samples": rows[:2]}, headers=client.auth("admin"))
        assert ok.status_code == 201, ok.text
    assert _counts(db) == (2, 1)


def test_tombstone_and_open_request_guards(client, db):
    _register(client)
    model = db.execute(select(Model)).scalar_one()
    secret = client.app.state.settings.security.secret_key
    deleted_at = utcnow() - timedelta(days=1)
    db.add(SubjectTombstone(model_id=model.id, subject_key=subject_key(secret, "s-1"), deleted_at=deleted_at))
    db.flush()
    h = client.auth("admin")  # only admins ingest samples
    r = client.post("/v1/models/digits/samples", json={"samples": _rows(3)}, headers=h)
    assert r.status_code == 409 and r.json()["type"].endswith("subject-deleted")
    stale = (deleted_at - timedelta(hours=1)).isoformat()
    assert client.post("/v1/models/digits/samples", json={"samples": _rows(3), "consent_renewed_at": stale}, headers=h).status_code == 409
    assert _counts(db) == (0, 0)
    ok = client.post("/v1/models/digits/samples", json={"samples": _rows(3), "consent_renewed_at": utcnow().isoformat()}, headers=h)
    assert ok.status_code == 201
    # an open deletion request for the subject blocks new samples
    r = client.post("/v1/deletion-requests", json={"subject_id": "s-2", "model": "digits"}, headers=client.auth("requester"))
    assert r.status_code == 202
    r = client.post("/v1/models/digits/samples", json={"samples": _rows(3)}, headers=h)
    assert r.status_code == 409 and "open deletion request" in r.json()["detail"]


def _publish(db, store, model, number, state="live", content=None):
    content = content or f"weights-{number}".encode() * 100
    art = store.put_bytes(content, prefix=f"weights/{model.id}", suffix=".safetensors")
    v = ModelVersion(model_id=model.id, number=number, artifact_uri=art.uri, sha256=art.sha256, size_bytes=art.size,
                     metrics={"eval_accuracy": 0.9}, bound={"kl_nats": 1e-5}, state=state, sample_watermark=None)
    db.add(v)
    db.flush()
    move_alias(db, model, "latest", v, "test", system=True) if state == "live" else None
    return v, content


def test_manifest_etag_304_weights_range_and_revoked(client, db):
    _register(client)
    model = db.execute(select(Model)).scalar_one()
    store = client.app.state.store
    v1, content = _publish(db, store, model, 1)
    h = client.auth("serving")
    r = client.get("/v1/models/digits/versions/latest", headers=h)
    assert r.status_code == 200 and r.json()["number"] == 1 and r.json()["sha256"] == hashlib.sha256(content).hexdigest()
    etag = r.headers["etag"]
    r304 = client.get("/v1/models/digits/versions/latest", headers={**h, "If-None-Match": etag})
    assert r304.status_code == 304 and r304.content == b""
    w = client.get("/v1/models/digits/versions/1/weights", headers=h)
    assert w.status_code == 200 and w.content == content and w.headers["etag"] == f'"{v1.sha256}"'
    assert client.get("/v1/models/digits/versions/1/weights", headers={**h, "If-None-Match": w.headers["etag"]}).status_code == 304
    part = client.get("/v1/models/digits/versions/1/weights", headers={**h, "Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == content[10:20] and part.headers["content-range"] == f"bytes 10-19/{len(content)}"
    assert client.get("/v1/models/digits/versions/1/weights", headers={**h, "Range": f"bytes={len(content) + 5}-"}).status_code == 416
    v2, _ = _publish(db, store, model, 2)
    v1.state = "revoked"
    db.flush()
    assert client.get("/v1/models/digits/versions/1", headers=h).status_code == 410
    assert client.get("/v1/models/digits/versions/1/weights", headers=h).status_code == 410
    assert client.get("/v1/models/digits/versions/latest", headers=h).json()["number"] == 2
    assert client.get("/v1/models/digits/versions/9", headers=h).status_code == 404
    assert [v["number"] for v in client.get("/v1/models/digits/versions", headers=h).json()["items"]] == [2, 1]


def test_alias_moves_history_and_refusals(client, db):
    _register(client)
    model = db.execute(select(Model)).scalar_one()
    store = client.app.state.store
    _publish(db, store, model, 1)
    v2, _ = _publish(db, store, model, 2)
    h = client.auth("operator")
    r = client.post("/v1/models/digits/aliases/production", json={"version": 1}, headers=h)
    assert r.status_code == 200 and r.json()["aliases"] == {"latest": 2, "production": 1}
    assert r.json()["history"][0]["to_version"] == 1 and r.json()["history"][0]["actor"].startswith("token:")
    assert client.post("/v1/models/digits/aliases/latest", json={"version": 1}, headers=h).status_code == 409
    v2.state = "revoked"
    db.flush()
    r = client.post("/v1/models/digits/aliases/production", json={"version": 2}, headers=h)
    assert r.status_code == 409 and "revoked" in r.json()["detail"]
    assert client.post("/v1/models/digits/aliases/production", json={"version": 1}, headers=client.auth("serving")).status_code == 403
    assert db.execute(select(func.count()).select_from(AliasEvent).where(AliasEvent.alias == "production")).scalar_one() == 1


def test_long_poll_returns_when_a_new_version_appears(committed_app, engine):
    from sqlalchemy.orm import Session

    c = committed_app
    _register(c)
    store = c.app.state.store
    with Session(engine) as s, s.begin():
        model = s.execute(select(Model)).scalar_one()
        _publish(s, store, model, 1)
    h = c.auth("serving")
    first = c.get("/v1/models/digits/versions/latest", headers=h)
    etag = first.headers["etag"]
    t0 = time.monotonic()
    r = c.get("/v1/models/digits/versions/latest?wait=1", headers={**h, "If-None-Match": etag})
    assert r.status_code == 304 and 0.9 <= time.monotonic() - t0 < 3

    def later():
        time.sleep(0.5)
        with Session(engine) as s, s.begin():
            model = s.execute(select(Model)).scalar_one()
            _publish(s, store, model, 2)

    th = threading.Thread(target=later)
    th.start()
    t0 = time.monotonic()
    r = c.get("/v1/models/digits/versions/latest?wait=5", headers={**h, "If-None-Match": etag})
    th.join()
    assert r.status_code == 200 and r.json()["number"] == 2 and time.monotonic() - t0 < 4
    assert c.get("/v1/models/digits/versions/latest?wait=9999", headers=h).status_code == 422
