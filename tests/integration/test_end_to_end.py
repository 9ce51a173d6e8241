"""End to end: real uvicorn, a real Celery worker and beat on Redis, PostgreSQL."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from conftest import make_data, register_and_ingest, wait_job
from safetensors.numpy import load as st_load
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

import procs
from service.core.security import subject_key
from service.models import Sample, SampleChunk
from workers.client import LetheClient, VersionGone

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("stack", ["local", "s3"], indirect=True)
def test_register_train_delete_pull_verify(stack, tmp_path):
    c = stack.http
    data = make_data()
    register_and_ingest(c, "e2e", data)
    job = c.post("/v1/models/e2e/train")
    assert job.status_code == 202, job.text
    trained = wait_job(stack, c, job.json()["id"])
    assert trained["status"] == "succeeded", stack.logs()

    gone = [f"person-{i:03d}" for i in range(0, 40, 4)]  # 10 subjects
    ids = []
    for s in gone:
        r = c.post("/v1/deletion-requests", json={"subject_id": s, "model": "e2e"})
        assert r.status_code == 202
        ids.append(r.json()["id"])
    r = c.post("/v1/models/e2e/forget-now")
    assert r.status_code == 202, r.text
    procs.wait_for(lambda: all(c.get(f"/v1/deletion-requests/{i}").json()["status"] == "completed" for i in ids), 180,
                   "requests to complete", on_timeout=stack.logs)

    # pull latest: sha256 verified, atomic, loads and predicts
    client = LetheClient(stack.base, stack.token)
    pulled = client.pull("e2e", tmp_path / "served")
    assert pulled.manifest["number"] == 2
    assert hashlib.sha256(pulled.path.read_bytes()).hexdigest() == pulled.manifest["sha256"]
    xe, ye = data["eval"]
    acc = float((pulled.module.predict(torch.from_numpy(xe)).numpy() == ye).mean())
    assert acc > 0.6
    assert client.pull("e2e", tmp_path / "served").path == pulled.path  # no re-download needed
    # older version answers 410; the client says so clearly
    assert c.get("/v1/models/e2e/versions/1").status_code == 410
    assert c.get("/v1/models/e2e/versions/1/weights").status_code == 410
    with pytest.raises(VersionGone):
        client.pull("e2e", tmp_path / "old", ref="1")
    assert c.post("/v1/models/e2e/aliases/production", json={"version": 1}).status_code == 409

    # the subjects' samples are gone from the database and (after purge) from every chunk file
    keys = [subject_key(procs.SECRET, s) for s in gone]
    with Session(stack.engine) as s:
        assert s.execute(select(func.count()).select_from(Sample).where(Sample.subject_key.in_(keys))).scalar_one() == 0

    def purged():
        with Session(stack.engine) as s:
            for ch in s.execute(select(SampleChunk)).scalars():
                n = s.execute(select(func.count()).select_from(Sample).where(Sample.chunk_id == ch.id)).scalar_one()
                if n != ch.n_rows:
                    return False
            return True

    procs.wait_for(purged, 60, "purge", on_timeout=stack.logs)
    xu = data["user"][0][np.isin(np.array(data["subjects"]), gone)]
    with Session(stack.engine) as s:
        uris = list(s.execute(select(SampleChunk.uri)).scalars())
    store = stack.store
    assert all(u.startswith("s3://" if stack.storage["backend"] == "s3" else "local://") for u in uris)
    stored = np.concatenate([st_load(store.read_bytes(u))["x"] for u in uris])
    for row in xu:
        assert not np.any(np.all(stored == row, axis=1))

    # receipts show the bound
    for subject in gone[:3]:
        rec = c.get(f"/v1/subjects/{subject}").json()
        (m,) = rec["models"]
        assert m["first_clean_version"]["number"] == 2 and m["held_by_versions"] == [1]
        assert 0 <= m["cumulative_kl_nats"] <= 1e-3 and m["latest_is_clean"] is True

    # the audit chain verifies; altering one row is named
    v = c.get("/v1/audit/verify").json()
    assert v["ok"] and v["events"] > 10
    with stack.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 5"))
    v = c.get("/v1/audit/verify").json()
    assert v["ok"] is False and v["first_broken_seq"] == 5
