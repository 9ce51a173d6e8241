"""Issue 14, no accepted request stuck in a failing job, over HTTP and the real runner:

1. a model whose subjects are classes (``svd_projection``, kind ``class`` only) also holds ordinary
   subjects' samples of its unmapped labels; a batch of both kinds of request is split by the
   scheduler into a class job (projection) and a samples job, which the method cannot do: the
   runner falls back to the family's retrain without those subjects (``bound.fallback``, audited,
   exact), the released version still masking the classes forgotten before. Every request
   completes, each with its own clean version and receipt;
2. class requests that would leave fewer than two classes are accepted (202) and HELD: they stay
   ``queued`` with the reason in ``error`` (announced once as ``request.held`` and audited),
   no job is opened for them, "run now" says why, and a held request joins a batch once enough
   classes remain (a forgotten class comes back by consent renewal)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from service.job import service as job_service
from service.models import AuditEvent, DeletionRequest, Job, Sample, WebhookEvent
from service.models._types import utcnow
from workers.execution.run import run_job
from workers.runtime import Runtime
from workers.unlearning import load_model_from_bytes

D = 32
SVD = {"device": "cpu", "epochs": 40, "lr": 0.01, "grid_search": True, "alpha_r_grid": [1.0, 30.0, 100.0],
       "alpha_f_grid": [1.0, 100.0, 1000.0]}
HELD = "forgetting this class would leave fewer than two classes: retire the model"


@pytest.fixture
def rt(committed_app, settings):
    runtime = Runtime.from_settings(settings)
    yield runtime
    runtime.engine.dispose()


def _register(api, name, k, batch_size):
    body = {"name": name, "architecture": "mlp", "architecture_config": {"in_features": D, "hidden": [32], "num_classes": k},
            "input_shape": [D], "num_classes": k, "method": "svd_projection", "family": "standard", "method_config": SVD,
            "subjects_are_classes": True, "batch_size": batch_size, "batch_window_s": 86400}
    assert api.post("/v1/models", json=body, headers=api.auth("admin")).status_code == 201


def _upload(api, name, rows, **extra):
    r = api.post(f"/v1/models/{name}/samples", json={"samples": rows, **extra}, headers=api.auth("admin"))
    assert r.status_code == 201, r.text


def _rows(means, owner, labels, per, split, rng):
    return [{"subject_id": owner(c, i), "split": split, "label": int(c), "x": x.tolist()}
            for c in labels for i, x in enumerate(means[c] + rng.normal(size=(per, D)))]


def _file(api, subject, model):
    r = api.post("/v1/deletion-requests", json={"subject_id": subject, "model": model, "reason": "erase me"}, headers=api.auth("requester"))
    assert r.status_code == 202, r.text
    return r.json()


def _tick(rt):
    with rt.session_factory.begin() as s:
        return [(j.id, j.kind, dict(j.config)) for j in job_service.schedule(s, rt.settings)]


def _predict(api, name, x):
    weights = api.get(f"/v1/models/{name}/versions/latest/weights", headers=api.auth("serving"))
    assert weights.status_code == 200
    with torch.no_grad():
        return load_model_from_bytes(weights.content)(torch.tensor(x, dtype=torch.float32)).argmax(1).numpy()


def test_a_mixed_batch_on_a_class_only_method_completes_every_request(committed_app, rt):
    """Labels 0-3 are people (person-c owns class c); labels 4 and 5 are shared by ten ordinary
    subjects (user-i holds 6 samples of each). Two people and two users file requests."""
    api, k = committed_app, 6
    _register(api, "faces", k, batch_size=2)
    rng = np.random.default_rng(0)
    means = rng.normal(size=(k, D)) * 3
    person = lambda c, i: f"person-{c}"  # noqa: E731
    user = lambda c, i: f"user-{i % 10}"  # noqa: E731
    _upload(api, "faces", _rows(means, person, range(4), 40, "user", rng) + _rows(means, person, range(4), 15, "eval", rng)
            + _rows(means, user, (4, 5), 60, "user", rng) + _rows(means, lambda c, i: f"probe-{c}", (4, 5), 15, "eval", rng))
    mapped = api.post("/v1/models/faces/class-subjects", json={"classes": [{"label": c, "subject_id": f"person-{c}"} for c in range(4)]},
                      headers=api.auth("admin"))
    assert mapped.status_code == 201, mapped.text
    train = api.post("/v1/models/faces/train", headers=api.auth("admin"))
    assert train.status_code == 202 and run_job(rt, train.json()["id"]) == "succeeded"

    reqs = {s: _file(api, s, "faces") for s in ("person-2", "user-1", "person-3", "user-2")}
    assert [reqs[s]["kind"] for s in reqs] == ["class", "samples", "class", "samples"]

    # tick 1: both kinds are due (batch_size 2 each); the class batch holds the oldest request
    (job1,) = _tick(rt)
    assert job1[1] == "forget" and job1[2]["classes"] == [2, 3]
    assert sorted(job1[2]["request_ids"]) == sorted(reqs[s]["id"] for s in ("person-2", "person-3"))
    assert _tick(rt) == []  # one active job per model: the samples wait
    assert run_job(rt, job1[0]) == "succeeded"
    # tick 2: the samples batch, on a method that forgets whole classes only
    (job2,) = _tick(rt)
    assert job2[1] == "forget" and "classes" not in job2[2]
    assert sorted(job2[2]["request_ids"]) == sorted(reqs[s]["id"] for s in ("user-1", "user-2"))
    assert run_job(rt, job2[0]) == "succeeded"

    versions = {v["number"]: v for v in api.get("/v1/models/faces/versions", headers=api.auth("operator")).json()["items"]}
    assert versions[2]["bound"]["method"] == "svd_projection" and "fallback" not in versions[2]["bound"]
    v3 = api.get("/v1/models/faces/versions/latest", headers=api.auth("serving")).json()
    assert v3["number"] == 3 and v3["bound"]["guarantee"] == "exact" and v3["bound"]["method"] == "retrain"
    assert v3["bound"]["fallback"]["to"] == "retrain" and "whole classes only" in v3["bound"]["fallback"]["reasons"][0]
    assert v3["masked_classes"] == [2, 3]  # the retrain on D_r still masks the classes forgotten before
    with rt.session_factory() as s:
        event = s.execute(select(AuditEvent).where(AuditEvent.kind == "version.published").order_by(AuditEvent.seq.desc())).scalars().first()
        assert event.payload["number"] == 3 and event.payload["fallback"] == v3["bound"]["fallback"]
        jobs = s.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        assert dict(jobs) == {"succeeded": 3}  # train, class job, samples job: nothing failed
        assert s.scalar(select(func.count()).select_from(Sample).where(Sample.label.in_((2, 3)))) == 0

    for subj, kind, version, classes in (("person-2", "class", 2, [{"model": "faces", "label": 2, "version": 2}]),
                                         ("person-3", "class", 2, [{"model": "faces", "label": 3, "version": 2}]),
                                         ("user-1", "samples", 3, []), ("user-2", "samples", 3, [])):
        req = api.get(f"/v1/deletion-requests/{reqs[subj]['id']}", headers=api.auth("requester")).json()
        assert (req["status"], req["kind"], req["clean_version"], req["forgotten_classes"]) == ("completed", kind, version, classes)
        receipt = api.get(f"/v1/subjects/{subj}", headers=api.auth("auditor")).json()
        (m,) = receipt["models"]
        assert m["first_clean_version"]["number"] == version and m["samples_remaining"] == 0
        assert m["forgotten_class"] == (classes[0]["label"] if classes else None)

    fresh = np.random.default_rng(7)
    x = np.concatenate([m + fresh.normal(size=(40, D)) for m in means])
    y = np.repeat(np.arange(k), 40)
    pred = _predict(api, "faces", x)
    assert not np.isin(pred, (2, 3)).any()
    kept = ~np.isin(y, (2, 3))
    assert (pred[kept] == y[kept]).mean() >= 0.95


def test_class_requests_that_would_leave_fewer_than_two_classes_are_held_not_failed(committed_app, rt):
    """Three people on a four-class model (label 3 has no sample yet): forgetting one leaves two."""
    api, k = committed_app, 3
    _register(api, "trio", k + 1, batch_size=1)
    rng = np.random.default_rng(1)
    means = rng.normal(size=(k + 1, D)) * 3
    person = lambda c, i: f"person-{c}"  # noqa: E731
    _upload(api, "trio", _rows(means, person, range(k), 40, "user", rng) + _rows(means, person, range(k), 15, "eval", rng))
    assert api.post("/v1/models/trio/class-subjects", json={"classes": [{"label": c, "subject_id": f"person-{c}"} for c in range(k)]},
                    headers=api.auth("admin")).status_code == 201
    train = api.post("/v1/models/trio/train", headers=api.auth("admin"))
    assert train.status_code == 202 and run_job(rt, train.json()["id"]) == "succeeded"
    reqs = [_file(api, f"person-{c}", "trio") for c in range(k)]  # a legal right: every one is recorded (202)

    (job1,) = _tick(rt)
    assert job1[2]["classes"] == [0] and job1[2]["request_ids"] == [reqs[0]["id"]]
    held = [api.get(f"/v1/deletion-requests/{r['id']}", headers=api.auth("operator")).json() for r in reqs[1:]]
    for r, c in zip(held, (1, 2), strict=True):
        assert r["status"] == "queued" and r["error"].startswith("held:") and HELD in r["error"] and f"class {c}" in r["error"]
    assert run_job(rt, job1[0]) == "succeeded"
    for _ in range(2):  # later ticks open nothing and announce nothing again
        assert _tick(rt) == []
    now_ = api.post("/v1/models/trio/forget-now", headers=api.auth("operator"))
    assert now_.status_code == 409 and "held" in now_.json()["detail"] and "retire the model" in now_.json()["detail"], now_.text
    with rt.session_factory() as s:
        told = s.execute(select(WebhookEvent.data).where(WebhookEvent.type == "request.held")).scalars().all()
        assert sorted(d["request_id"] for d in told) == sorted(r["id"] for r in reqs[1:])
        assert all(HELD in d["reason"] and d["status"] == "queued" and d["model"] == "trio" for d in told)
        audited = s.execute(select(AuditEvent.payload).where(AuditEvent.kind == "request.held")).scalars().all()
        assert sorted(p["label"] for p in audited) == [1, 2]
        assert dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all()) == {"succeeded": 2}
        assert s.scalar(select(func.count()).select_from(DeletionRequest).where(DeletionRequest.status == "failed")) == 0

    # class 0 coming back (its person renews consent) is not enough: the newest version masks it
    _upload(api, "trio", _rows(means, person, [0], 40, "user", rng), consent_renewed_at=utcnow().isoformat())
    assert _tick(rt) == []
    # a fourth person's class arrives: now one of the held requests can go (the oldest)
    _upload(api, "trio", _rows(means, person, [3], 40, "user", rng))
    (job2,) = _tick(rt)
    assert job2[2]["classes"] == [1] and job2[2]["request_ids"] == [reqs[1]["id"]]
    assert run_job(rt, job2[0]) == "succeeded"
    done = api.get(f"/v1/deletion-requests/{reqs[1]['id']}", headers=api.auth("operator")).json()
    assert done["status"] == "completed" and done["error"] is None and done["forgotten_classes"][0]["label"] == 1
    still = api.get(f"/v1/deletion-requests/{reqs[2]['id']}", headers=api.auth("operator")).json()
    assert still["status"] == "queued" and HELD in still["error"]
