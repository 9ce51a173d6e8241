"""Issue 14's "done when", over HTTP: a model registered with ``subjects_are_classes``, its label ->
subject mapping uploaded; two subjects who are classes file ordinary deletion requests (kind
``class``); the scheduler batches both classes into one job; the job projects, the release passes
its gates (no fallback); the manifest lists the masked classes, the pulled model never predicts
them; the receipts say which class each subject was and that the model no longer knows it; the
classes' samples and mapping rows are gone and their labels tombstoned, so a new sample carrying
one is refused until the subject renews consent."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from service.core.security import subject_key
from service.job import service as job_service
from service.models import ClassSubject, ClassTombstone, Job, Sample
from service.models._types import utcnow
from workers.execution.run import run_job
from workers.runtime import Runtime
from workers.unlearning import load_model_from_bytes

D, K = 32, 5  # 32 inputs: five people whose class directions barely overlap (like face embeddings)
ARCH = {"in_features": D, "hidden": [32], "num_classes": K}
SVD = {"device": "cpu", "epochs": 40, "lr": 0.01, "grid_search": True, "alpha_r_grid": [1.0, 30.0, 100.0],
       "alpha_f_grid": [1.0, 100.0, 1000.0]}
FORGET = (2, 3)


@pytest.fixture
def rt(committed_app, settings):
    runtime = Runtime.from_settings(settings)
    yield runtime
    runtime.engine.dispose()


def _samples(api, means, rng):
    """person-c owns every sample of class c, user and eval."""
    rows = []
    for split, per in (("user", 40), ("eval", 15)):
        for c in range(K):
            for x in means[c] + rng.normal(size=(per, D)):
                rows.append({"subject_id": f"person-{c}", "split": split, "label": c, "x": x.tolist()})
    r = api.post("/v1/models/faces/samples", json={"samples": rows}, headers=api.auth("admin"))
    assert r.status_code == 201, r.text


def test_subjects_who_are_classes_file_requests_and_the_pulled_model_never_names_them(committed_app, rt, settings):
    api = committed_app
    body = {"name": "faces", "architecture": "mlp", "architecture_config": ARCH, "input_shape": [D], "num_classes": K,
            "method": "svd_projection", "family": "standard", "method_config": SVD, "subjects_are_classes": True,
            "batch_size": 2, "batch_window_s": 86400}
    assert api.post("/v1/models", json=body, headers=api.auth("admin")).status_code == 201
    rng = np.random.default_rng(0)
    means = rng.normal(size=(K, D)) * 3
    _samples(api, means, rng)
    mapped = api.post("/v1/models/faces/class-subjects", json={"classes": [{"label": c, "subject_id": f"person-{c}"} for c in range(K)]},
                      headers=api.auth("admin"))
    assert mapped.status_code == 201 and mapped.json()["classes_mapped"] == K, mapped.text
    train = api.post("/v1/models/faces/train", headers=api.auth("admin"))
    assert train.status_code == 202 and run_job(rt, train.json()["id"]) == "succeeded"

    # ordinary deletion requests, filed by a product backend
    ids = {}
    for c in FORGET:
        r = api.post("/v1/deletion-requests", json={"subject_id": f"person-{c}", "model": "faces", "reason": "erase me"},
                     headers=api.auth("requester"))
        assert r.status_code == 202 and r.json()["kind"] == "class", r.text
        ids[c] = r.json()["id"]
    # the scheduler's tick (what beat runs): the batch is full, one job for both classes
    with rt.session_factory.begin() as s:
        jobs = job_service.schedule(s, rt.settings)
        assert len(jobs) == 1 and jobs[0].config["classes"] == list(FORGET) and len(jobs[0].config["request_ids"]) == 2
        job_id = jobs[0].id
    assert run_job(rt, job_id) == "succeeded"

    manifest = api.get("/v1/models/faces/versions/latest", headers=api.auth("serving"))
    doc = manifest.json()
    assert doc["number"] == 2 and doc["masked_classes"] == list(FORGET) and doc["bound"]["masked_classes"] == list(FORGET)
    assert "fallback" not in doc["bound"] and doc["bound"]["method"] == "svd_projection"  # the projection passed its gates
    assert doc["metrics"]["forget_accuracy"] <= 0.01
    etag = manifest.headers["ETag"]
    assert api.get("/v1/models/faces/versions/latest", headers={**api.auth("serving"), "If-None-Match": etag}).status_code == 304
    weights = api.get("/v1/models/faces/versions/latest/weights", headers=api.auth("serving"))
    assert weights.status_code == 200
    served = load_model_from_bytes(weights.content)
    fresh = np.random.default_rng(7)
    x = np.concatenate([m + fresh.normal(size=(40, D)) for m in means])
    y = np.repeat(np.arange(K), 40)
    with torch.no_grad():
        pred = served(torch.tensor(x, dtype=torch.float32)).argmax(1).numpy()
    assert not np.isin(pred, FORGET).any()  # never names a forgotten person
    kept = ~np.isin(y, FORGET)
    assert (pred[kept] == y[kept]).mean() >= 0.95  # and still knows the others

    for c in FORGET:
        req = api.get(f"/v1/deletion-requests/{ids[c]}", headers=api.auth("requester")).json()
        assert req["status"] == "completed" and req["kind"] == "class"
        assert req["forgotten_classes"] == [{"model": "faces", "label": c, "version": 2}]
        receipt = api.get(f"/v1/subjects/person-{c}", headers=api.auth("auditor")).json()
        assert receipt["requests"][0]["kind"] == "class"
        assert receipt["requests"][0]["forgotten_classes"] == [{"model": "faces", "label": c, "version": 2}]
        (m,) = receipt["models"]
        assert m["forgotten_class"] == c and m["first_clean_version"]["number"] == 2
        assert f"no longer knows class {c}" in m["class_statement"] and "version 2" in m["class_statement"]
    other = api.get("/v1/subjects/person-0", headers=api.auth("auditor")).json()
    assert other["models"][0]["forgotten_class"] is None and other["models"][0]["class_statement"] is None

    # the classes' samples and mapping rows are gone, their labels tombstoned
    with rt.session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Sample).where(Sample.label.in_(FORGET))) == 0
        assert sorted(s.scalars(select(ClassSubject.label))) == [0, 1, 4]
        stones = s.execute(select(ClassTombstone.label, ClassTombstone.subject_key, ClassTombstone.version_number)
                           .order_by(ClassTombstone.label)).all()
        secret = settings.security.secret_key
        assert stones == [(c, subject_key(secret, f"person-{c}"), 2) for c in FORGET]
    read = api.get("/v1/models/faces", headers=api.auth("operator")).json()
    assert read["forgotten_classes"] == list(FORGET) and read["classes_mapped"] == K - len(FORGET)

    # a new sample carrying a forgotten label is refused (nothing written) until its subject renews consent
    row = {"subject_id": "person-2", "split": "user", "label": 2, "x": means[2].tolist()}
    with rt.session_factory() as s:
        before = s.scalar(select(func.count()).select_from(Sample)), s.scalar(select(func.count()).select_from(Job))
    r = api.post("/v1/models/faces/samples", json={"samples": [row]}, headers=api.auth("admin"))
    assert r.status_code == 409 and r.json()["type"].endswith("class-deleted"), r.text
    impostor = {**row, "subject_id": "someone-else"}
    r = api.post("/v1/models/faces/samples", json={"samples": [impostor], "consent_renewed_at": utcnow().isoformat()},
                 headers=api.auth("admin"))
    assert r.status_code == 409 and r.json()["type"].endswith("class-deleted"), r.text
    with rt.session_factory() as s:
        assert (s.scalar(select(func.count()).select_from(Sample)), s.scalar(select(func.count()).select_from(Job))) == before
    r = api.post("/v1/models/faces/samples", json={"samples": [row], "consent_renewed_at": utcnow().isoformat()},
                 headers=api.auth("admin"))
    assert r.status_code == 201, r.text
    read = api.get("/v1/models/faces", headers=api.auth("operator")).json()
    assert read["forgotten_classes"] == [3] and read["classes_mapped"] == K - 1
