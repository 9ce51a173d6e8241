"""The chunk-store reader the workers use: round trips, filters, one read per chunk, corruption."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save
from sqlalchemy import select

from service.core.security import subject_key
from service.model_registry.samples import SampleChunkCorrupt, count_samples, read_samples
from service.models import Model, Sample, SampleChunk

SPEC = {"name": "img", "architecture": "mlp", "input_shape": [2, 3], "num_classes": 5}


@pytest.fixture
def model(client, db):
    r = client.post("/v1/models", json=SPEC, headers=client.auth("admin"))
    assert r.status_code == 201, r.text
    return db.execute(select(Model).where(Model.name == "img")).scalar_one()


def _post(client, content, ctype, **params):
    return client.post("/v1/models/img/samples", content=content, params=params,
                       headers={**client.auth("admin"), "content-type": ctype})


def test_three_formats_round_trip_exactly(client, db, model):
    rng = np.random.default_rng(7)
    store = client.app.state.store
    secret = client.app.state.settings.security.secret_key
    # JSON rows (float64 on the wire -> float32 in the store)
    xj = rng.normal(size=(3, 2, 3))
    rows = [{"subject_id": f"j{i}", "split": "user", "label": i, "x": xj[i].tolist()} for i in range(3)]
    r = client.post("/v1/models/img/samples", json={"samples": rows}, headers=client.auth("admin"))
    assert r.status_code == 201, r.text
    # npz, per-row split array
    xn = rng.normal(size=(4, 2, 3)).astype(np.float32)
    buf = io.BytesIO()
    np.savez(buf, x=xn, labels=np.array([4, 3, 2, 1]), subject_ids=np.array(["n0", "n1", "n2", "n3"]),
             split=np.array(["user", "eval", "user", "core"]))
    r = _post(client, buf.getvalue(), "application/x-npz")
    assert r.status_code == 201 and r.json()["by_split"] == {"core": 1, "eval": 1, "user": 2}, r.text
    # safetensors via octet-stream + ?format=safetensors, split as a JSON list
    xs = rng.normal(size=(2, 2, 3))
    body = st_save({"x": xs, "labels": np.array([0, 4], dtype=np.int32)},
                   metadata={"subject_ids": json.dumps(["s0", "s1"]), "split": json.dumps(["user", "user"])})
    r = _post(client, body, "application/octet-stream", format="safetensors")
    assert r.status_code == 201, r.text
    chunk_id = r.json()["chunk_id"]

    user = read_samples(db, store, model.id, splits=["user"], include_ids=True)
    expect_x = np.concatenate([xj.astype(np.float32), xn[[0, 2]], xs.astype(np.float32)])
    assert user.x.dtype == np.float32 and user.x.shape == (7, 2, 3)
    assert np.array_equal(user.x, expect_x)
    assert user.y.dtype == np.int64 and user.y.tolist() == [0, 1, 2, 4, 2, 0, 4]
    assert user.subject_keys == [subject_key(secret, s) for s in ["j0", "j1", "j2", "n0", "n2", "s0", "s1"]]
    assert user.ids is not None and list(user.ids) == sorted(user.ids)
    assert read_samples(db, store, model.id, splits=["user"]).ids is None
    assert count_samples(db, model.id, splits=["user"]) == 7
    assert count_samples(db, model.id, splits=["core", "eval"]) == 2
    # the chunk file of the last upload is exactly one float32 tensor "x"
    chunk = db.get(SampleChunk, chunk_id)
    stored = st_load(store.read_bytes(chunk.uri))
    assert list(stored) == ["x"] and stored["x"].dtype == np.float32 and np.array_equal(stored["x"], xs.astype(np.float32))


def test_filters_and_each_chunk_read_once(client, db, model, monkeypatch):
    store = client.app.state.store
    secret = client.app.state.settings.security.secret_key
    for k in range(3):
        rows = [{"subject_id": f"u{i}", "split": "user", "label": i % 5, "x": np.full((2, 3), 10 * k + i).tolist()} for i in range(4)]
        assert client.post("/v1/models/img/samples", json={"samples": rows}, headers=client.auth("admin")).status_code == 201
    gone = [subject_key(secret, "u1"), subject_key(secret, "u3")]
    reads: list[str] = []
    real = store.open
    monkeypatch.setattr(store, "open", lambda uri, **kw: reads.append(uri) or real(uri, **kw))
    kept = read_samples(db, store, model.id, splits=["user"], exclude_subject_keys=gone)
    assert len(reads) == 3 and len(set(reads)) == 3
    assert kept.x[:, 0, 0].tolist() == [0, 2, 10, 12, 20, 22]
    assert count_samples(db, model.id, splits=["user"], exclude_subject_keys=gone) == 6
    forget = read_samples(db, store, model.id, splits=["user"], only_subject_keys=gone, include_ids=True)
    assert forget.x[:, 0, 0].tolist() == [1, 3, 11, 13, 21, 23]
    half = forget.mask(np.array([True, False] * 3))
    assert half.x[:, 0, 0].tolist() == [1, 11, 21] and len(half) == 3 and half.ids.tolist() == forget.ids[::2].tolist()
    empty = read_samples(db, store, model.id, splits=["eval"])
    assert empty.x.shape == (0, 2, 3) and len(empty) == 0


def test_corrupt_or_missing_chunk_is_reported(client, db, model):
    store = client.app.state.store
    rows = [{"subject_id": "a", "split": "user", "label": 1, "x": np.ones((2, 3)).tolist()}]
    r = client.post("/v1/models/img/samples", json={"samples": rows}, headers=client.auth("admin"))
    chunk = db.get(SampleChunk, r.json()["chunk_id"])
    path = store.path(chunk.uri)
    path.write_bytes(st_save({"x": np.zeros((1, 2, 3), dtype=np.float32)}))
    with pytest.raises(SampleChunkCorrupt, match="sha256"):
        read_samples(db, store, model.id, splits=["user"])
    path.unlink()
    with pytest.raises(SampleChunkCorrupt, match="cannot be read"):
        read_samples(db, store, model.id, splits=["user"])


def test_fifty_thousand_rows_ingest_and_read_quickly(client, db, model):
    import time

    n = 50_000
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 2, 3)).astype(np.float32)
    labels = rng.integers(0, 5, size=n)
    sids = np.array([f"subject-{i % 5000}" for i in range(n)])
    buf = io.BytesIO()
    np.savez(buf, x=x, labels=labels, subject_ids=sids, split=np.array("user"))
    t0 = time.monotonic()
    r = _post(client, buf.getvalue(), "application/x-npz")
    took = time.monotonic() - t0
    assert r.status_code == 201 and r.json()["inserted"] == n, r.text
    assert took < 20, f"50,000 rows took {took:.1f}s"
    got = read_samples(db, client.app.state.store, model.id, splits=["user"])
    assert np.array_equal(got.x, x) and np.array_equal(got.y, labels)
    assert db.execute(select(Sample.row).order_by(Sample.id.desc()).limit(1)).scalar_one() == n - 1
