"""A class-forgetting job through the runner, in process (issue 14): a model whose subjects are
its classes is trained by ``svd_projection``'s ordinary recipe; a deletion request for one class's
subject becomes a forget job whose samples are that whole class; the job projects, passes its
gates on the unmasked network, and the served file never predicts the class. A projection that
fails its gates falls back to the family's retrain without the class (audited)."""

from __future__ import annotations

import numpy as np
import torch
from pipeline_support import forget_job, ingest, register_model
from sqlalchemy import select

from service.job import service as job_service
from service.models import AuditEvent, JobKind, Model, ModelVersion
from workers.execution.run import run_job
from workers.unlearning import load_model
from workers.unlearning.standard import MaskedClassifier

CLASSES, D = 4, 8


def _class_data(seed=0):
    """Well separated classes; every sample of class c (user and eval) belongs to subject class-c."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(CLASSES, D)) * 3

    def draw(per_class):
        y = np.repeat(np.arange(CLASSES), per_class)
        return (means[y] + rng.normal(size=(len(y), D))).astype(np.float32), y.astype(np.int64)

    return draw(60), draw(20)


def _people(rt, **method_config) -> tuple[int, tuple]:
    """A trained model whose subjects are its classes; its id and the data."""
    (xu, yu), (xe, ye) = _class_data()
    with rt.session_factory.begin() as s:
        m = register_model(s, "people", d=D, classes=CLASSES, method="svd_projection",
                           architecture_config={"in_features": D, "hidden": [32], "num_classes": CLASSES},
                           method_config={"device": "cpu", "epochs": 40, "lr": 1e-2, **method_config})
        ingest(s, rt.store, m, xu, yu, [f"class-{c}" for c in yu], "user")
        ingest(s, rt.store, m, xe, ye, [f"class-{c}" for c in ye], "eval")
        job_id, model_id = job_service.create_job(s, rt.settings, m, JobKind.train, actor="test").id, m.id
    assert run_job(rt, job_id) == "succeeded"
    return model_id, (xu, yu, xe, ye)


def test_a_subject_who_is_a_class_is_forgotten_by_projection(rt):
    model_id, (xu, yu, xe, ye) = _people(rt, grid_search=True, alpha_r_grid=[1.0, 30.0, 100.0], alpha_f_grid=[1.0, 100.0, 1000.0])
    assert run_job(rt, forget_job(rt, model_id, "class-2")) == "succeeded"
    with rt.session_factory() as s:
        v1, v2 = s.execute(select(ModelVersion).where(ModelVersion.model_id == model_id).order_by(ModelVersion.number)).scalars().all()
        assert v2.state == "live" and v2.bound["guarantee"] == "heuristic" and v2.bound["method"] == "svd_projection"
        assert "fallback" not in v2.bound and v2.bound["masked_classes"] == [2]  # the projection itself passed its gates
        assert v2.metrics["forget_accuracy"] <= 0.01 and v1.metrics["eval_accuracy"] - v2.metrics["eval_accuracy"] <= 0.03
        # the class MIA is measured against the class's own held-out samples (its subject's eval rows)
        assert isinstance(v2.metrics["mia_auc"], float) and abs(v2.metrics["mia_auc"] - 0.5) <= 0.1
        served = load_model(rt.store.path(v2.artifact_uri))
        private = load_model(rt.store.path(v2.private_uri))
    assert isinstance(served, MaskedClassifier) and served.masked_classes == (2,)
    x = torch.from_numpy(np.concatenate([xu, xe]))
    with torch.no_grad():
        assert (served(x).argmax(1) != 2).all()  # never names the forgotten person
        unmasked = private.network(x).argmax(1)
    y = torch.from_numpy(np.concatenate([yu, ye]))
    assert float((unmasked[y == 2] == 2).float().mean()) <= 0.01  # forgotten without the mask too
    assert float((unmasked[y != 2] == y[y != 2]).float().mean()) >= 0.95


def test_a_projection_that_fails_its_gates_falls_back_to_a_retrain_without_the_class(rt):
    # α_f tiny: the projection removes almost nothing and the class is still recognised
    model_id, (xu, yu, xe, ye) = _people(rt, alpha_r=100.0, alpha_f=1e-6)
    assert run_job(rt, forget_job(rt, model_id, "class-1")) == "succeeded"
    with rt.session_factory() as s:
        v1, v2 = s.execute(select(ModelVersion).where(ModelVersion.model_id == model_id).order_by(ModelVersion.number)).scalars().all()
        assert v2.state == "live" and v2.bound["guarantee"] == "exact" and v2.bound["method"] == "retrain"
        assert v2.bound["fallback"]["to"] == "retrain" and v2.bound["masked_classes"] == [1]
        assert any("forget-class accuracy" in r for r in v2.bound["fallback"]["reasons"])
        event = s.execute(select(AuditEvent).where(AuditEvent.kind == "version.published").order_by(AuditEvent.seq.desc())).scalars().first()
        assert event.payload["fallback"] == v2.bound["fallback"] and event.payload["bound"]["masked_classes"] == [1]
        assert v2.metrics["forget_accuracy"] <= 0.01  # the retrained network never saw the class
        served = load_model(rt.store.path(v2.artifact_uri))
    assert isinstance(served, MaskedClassifier) and served.masked_classes == (1,)
    x = torch.from_numpy(np.concatenate([xu, xe]))
    with torch.no_grad():
        assert (served(x).argmax(1) != 1).all()
        assert (served.network(x).argmax(1) != 1).float().mean() >= 0.99  # unmasked, it hardly names it either


def test_a_subject_holding_part_of_a_class_is_removed_by_the_retrain_fallback(rt):
    """A model without ``subjects_are_classes`` receives an ordinary request for a subject who holds
    a few samples of a class others hold too: the projection cannot forget part of a class, so the
    job retrains without the subject (exact, ``bound.fallback``, audited) instead of failing."""
    model_id, (xu, yu, xe, ye) = _people(rt)
    with rt.session_factory.begin() as s:
        m = s.get(Model, model_id)
        ingest(s, rt.store, m, xu[yu == 0][:5], yu[yu == 0][:5], ["visitor"] * 5, "user")
    assert run_job(rt, forget_job(rt, model_id, "visitor")) == "succeeded"
    with rt.session_factory() as s:
        v2 = s.execute(select(ModelVersion).where(ModelVersion.model_id == model_id).order_by(ModelVersion.number.desc())).scalars().first()
        assert v2.number == 2 and v2.bound["guarantee"] == "exact" and v2.bound["method"] == "retrain"
        assert v2.bound["fallback"]["to"] == "retrain" and "still have retained samples" in v2.bound["fallback"]["reasons"][0]
        assert v2.bound["masked_classes"] == []  # every class keeps samples: nothing masked
        event = s.execute(select(AuditEvent).where(AuditEvent.kind == "version.published").order_by(AuditEvent.seq.desc())).scalars().first()
        assert event.payload["fallback"] == v2.bound["fallback"]
