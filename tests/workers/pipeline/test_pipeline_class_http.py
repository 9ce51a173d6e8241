"""Forgetting a class over HTTP (issue 14, the service's first slice): an operator posts
``/v1/models/{name}/classes/{label}/forget`` with a reason → requests for the class's subjects and
a forget job → svd_projection → a version that masks the class, whose pulled weights never name
it; and the refusals (422: a method without the ``class`` kind; 409: a label with no training
sample — never there, or already forgotten —, a class whose subjects hold other classes, fewer
than two classes left), each writing nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from service.models import ClassTombstone, DeletionRequest, Job, Sample
from workers.execution.run import run_job
from workers.runtime import Runtime
from workers.unlearning import load_model_from_bytes

D = 8
ARCH = {"in_features": D, "hidden": [32], "num_classes": 3}
SVD = {"device": "cpu", "epochs": 40, "lr": 0.01, "grid_search": True, "alpha_r_grid": [1.0, 30.0, 100.0],
       "alpha_f_grid": [1.0, 100.0, 1000.0]}


@pytest.fixture
def rt(committed_app, settings):
    runtime = Runtime.from_settings(settings)
    yield runtime
    runtime.engine.dispose()


def _register(api, name, method="svd_projection", config=None, num_classes=3):
    body = {"name": name, "architecture": "mlp", "architecture_config": {**ARCH, "num_classes": num_classes}, "input_shape": [D],
            "num_classes": num_classes, "method": method, "family": "standard", "method_config": config or {**SVD}}
    r = api.post("/v1/models", json=body, headers=api.auth("admin"))
    assert r.status_code == 201, r.text


def _samples(api, name, classes=(0, 1, 2), mixed=True):
    """Well separated classes; subject class-c owns every sample of class c (user and eval), and
    subject "mixed" owns a few samples of classes 0 and 1."""
    rng = np.random.default_rng(0)
    means = rng.normal(size=(3, D)) * 3
    rows = []
    for split, per in (("user", 40), ("eval", 15)):
        for c in classes:
            for x in means[c] + rng.normal(size=(per, D)):
                rows.append({"subject_id": f"class-{c}", "split": split, "label": c, "x": x.tolist()})
    if mixed:
        rows += [{"subject_id": "mixed", "split": "user", "label": c, "x": (means[c] + rng.normal(size=D)).tolist()} for c in (0, 1, 0, 1)]
    r = api.post(f"/v1/models/{name}/samples", json={"samples": rows}, headers=api.auth("admin"))
    assert r.status_code == 201, r.text
    return means


def _forget(api, name, label, reason="a person who is class %s asked to be forgotten"):
    return api.post(f"/v1/models/{name}/classes/{label}/forget", json={"reason": reason % label}, headers=api.auth("operator"))


def _counts(rt):
    with rt.session_factory() as s:
        return s.scalar(select(func.count()).select_from(DeletionRequest)), s.scalar(select(func.count()).select_from(Job))


def test_an_operator_forgets_a_class_and_the_pulled_model_never_names_it(committed_app, rt):
    api = committed_app
    _register(api, "people")
    means = _samples(api, "people")
    # a held-out sample of class 2 that another subject holds: not an owner of the class, but the
    # class's samples all go when it is forgotten
    observer = {"subject_id": "observer", "split": "eval", "label": 2, "x": means[2].tolist()}
    assert api.post("/v1/models/people/samples", json={"samples": [observer]}, headers=api.auth("admin")).status_code == 201
    job = api.post("/v1/models/people/train", headers=api.auth("admin"))
    assert job.status_code == 202 and run_job(rt, job.json()["id"]) == "succeeded"

    r = _forget(api, "people", 2)
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "forget" and r.json()["requests"] == 1 and "class 2" in r.json()["reason"]
    assert run_job(rt, r.json()["id"]) == "succeeded"
    v2 = api.get("/v1/models/people/versions/latest", headers=api.auth("operator")).json()
    assert v2["number"] == 2 and v2["bound"]["masked_classes"] == [2], v2["bound"]
    weights = api.get("/v1/models/people/versions/latest/weights", headers=api.auth("serving"))
    assert weights.status_code == 200
    served = load_model_from_bytes(weights.content)
    x = torch.tensor(np.concatenate([m + np.random.default_rng(1).normal(size=(30, D)) for m in means]), dtype=torch.float32)
    with torch.no_grad():
        assert (served(x).argmax(1) != 2).all()
    receipt = api.get("/v1/subjects/class-2", headers=api.auth("auditor"))
    assert receipt.status_code == 200 and "completed" in receipt.text, receipt.text
    assert receipt.json()["requests"][0]["kind"] == "class" and receipt.json()["models"][0]["forgotten_class"] == 2
    with rt.session_factory() as s:  # every sample of the class went (the observer's too); the label is tombstoned
        assert s.scalar(select(func.count()).select_from(Sample).where(Sample.label == 2)) == 0
        assert s.execute(select(ClassTombstone.label, ClassTombstone.version_number)).all() == [(2, 2)]

    before = _counts(rt)
    again = _forget(api, "people", 2)  # already forgotten: its samples are gone
    assert again.status_code == 409 and "already forgotten" in again.json()["detail"]
    assert _forget(api, "people", 1).status_code == 409  # subject "mixed" holds classes 0 and 1
    assert _forget(api, "people", 9).status_code == 409  # never a class of this model
    assert _counts(rt) == before  # nothing written


def test_refusals_write_nothing(committed_app, rt):
    api = committed_app
    _register(api, "two", num_classes=3)
    _samples(api, "two", classes=(0, 1), mixed=False)
    _register(api, "samples_only", method="lcodec", config={"device": "cpu", "epochs": 1})
    _samples(api, "samples_only")
    before = _counts(rt)
    r = _forget(api, "two", 1)
    assert r.status_code == 409 and "at least two" in r.json()["detail"]
    r = _forget(api, "samples_only", 2)
    assert r.status_code == 422 and r.json()["type"].endswith("no-class-forgetting")
    assert api.post("/v1/models/two/classes/0/forget", json={}, headers=api.auth("operator")).status_code == 422  # a reason is required
    assert api.post("/v1/models/nope/classes/0/forget", json={"reason": "x"}, headers=api.auth("operator")).status_code == 404
    assert api.post("/v1/models/two/classes/0/forget", json={"reason": "x"}, headers=api.auth("requester")).status_code == 403
    assert _counts(rt) == before
