"""A ``standard``-family model with ``lcodec`` through the pipeline in process: train job →
deletion requests → forget job → a gated heuristic release, or the audited retrain fallback
when the measured gates refuse (DESIGN §6.6–6.8, §14.1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pipeline_support import forget_job, ingest, make_data, register_model
from sqlalchemy import select

from service.job import service as job_service
from service.models import AuditEvent, JobKind, ModelVersion
from workers.execution.run import run_job
from workers.unlearning import register, unregister
from workers.unlearning.data import TensorSource
from workers.unlearning.methods.base import ModelSpec
from workers.unlearning.methods.lcodec.config import LCodecConfig
from workers.unlearning.methods.lcodec.method import LCodec
from workers.unlearning.standard import from_bytes

RECIPE = {"optimizer": "adam", "lr": 0.01, "epochs": 15, "batch_size": 32, "weight_decay": 1e-3, "seed": 3, "device": "cpu",
          "perturbations": 16, "damping": 0.1}


def _standard(rt, name="std", method="lcodec", **config):
    data = make_data()
    with rt.session_factory.begin() as s:
        m = register_model(s, name, method=method, linearize="all", family="standard", method_config={**RECIPE, **config})
        ingest(s, rt.store, m, *data["eval"], [f"eval-{i}" for i in range(len(data["eval"][1]))], "eval")
        ingest(s, rt.store, m, *data["user"], data["subjects"], "user")
        job_id, model_id = job_service.create_job(s, rt.settings, m, JobKind.train, actor="test").id, m.id
    assert run_job(rt, job_id) == "succeeded"
    return model_id, data


def _versions(s, model_id):
    return s.execute(select(ModelVersion).where(ModelVersion.model_id == model_id).order_by(ModelVersion.number)).scalars().all()


def _retrained(data, gone: set[str], **config):
    """The recipe from scratch on D_r, outside the pipeline (the oracle of the fallback)."""
    cfg = LCodecConfig(**{**RECIPE, **config})
    keep = np.array([s not in gone for s in data["subjects"]])
    mm = LCodec().build(ModelSpec("mlp", {"in_features": data["d"], "hidden": [8], "num_classes": data["classes"]}), cfg)
    LCodec().train(mm, TensorSource(data["user"][0][keep], data["user"][1][keep]), cfg)
    return mm


def test_lcodec_release_is_gated_heuristic_and_noised_on_theta_s_only(rt):
    model_id, _ = _standard(rt, max_forget_gap=1.0, max_mia_gap=0.5, max_accuracy_drop=1.0, max_retain_drop=1.0)
    assert run_job(rt, forget_job(rt, model_id, "subject-003", "subject-007")) == "succeeded"
    with rt.session_factory() as s:
        v1, v2 = _versions(s, model_id)
        assert v1.state == "revoked" and v2.state == "live"
        assert v2.bound["guarantee"] == "heuristic" and v2.bound["method"] == "lcodec" and v2.bound.get("fallback") is None
        assert v2.bound["noise_std"] > 0  # σ is recorded with the release
        for key in ("eval_accuracy", "retain_accuracy", "forget_accuracy", "mia_auc"):
            assert v2.metrics[key] is not None
        # 12 forgotten samples < min_forget_samples: the gates judged intervals
        lo, hi = v2.metrics["mia_auc_interval"]
        assert lo <= v2.metrics["mia_auc"] <= hi and hi - lo > 0.1
        private = from_bytes(rt.store.read_bytes(v2.private_uri))
        served = from_bytes(rt.store.read_bytes(v2.artifact_uri))
    assert private.selection
    for k, w in served.parameters().items():
        moved = w.detach() != private.parameters()[k].detach()
        mask = private.selection.get(k, torch.zeros_like(w, dtype=torch.bool))
        assert not bool(moved[~mask].any())
        assert bool(moved[mask].all())


class BrokenLCodec(LCodec):
    """Forgets by scrambling every weight: the measured gates must refuse it."""

    name = "broken_lcodec"

    def forget(self, model, retained, cfg, progress=None, removed=None):
        res = super().forget(model, retained, cfg, progress, removed)
        with torch.no_grad():
            for p in model.network.parameters():
                p.copy_(torch.randn_like(p) * 3)
        return res


class BrokenConfig(LCodecConfig):
    method: str = "broken_lcodec"


@pytest.fixture
def broken():
    BrokenLCodec.config_cls = BrokenConfig
    method = register(BrokenLCodec())
    yield method
    unregister(method.name)


def test_a_broken_heuristic_method_fails_the_gates_and_falls_back_to_an_audited_retrain(rt, broken):
    model_id, data = _standard(rt, method="broken_lcodec")
    assert run_job(rt, forget_job(rt, model_id, "subject-004")) == "succeeded"
    with rt.session_factory() as s:
        v2 = _versions(s, model_id)[-1]
        assert v2.bound["guarantee"] == "exact" and v2.bound["fallback"]["to"] == "retrain"
        reasons = " ".join(v2.bound["fallback"]["reasons"])
        assert "eval accuracy dropped" in reasons
        event = s.execute(select(AuditEvent).where(AuditEvent.kind == "version.published").order_by(AuditEvent.seq.desc())).scalars().first()
        assert event.payload["fallback"]["to"] == "retrain" and event.payload["fallback"]["reasons"] == v2.bound["fallback"]["reasons"]
        served = from_bytes(rt.store.read_bytes(v2.artifact_uri))
    # the fallback is the recipe from scratch without the subject: the same weights as ours
    oracle = _retrained(data, {"subject-004"})
    for k, w in served.parameters().items():
        torch.testing.assert_close(w, oracle.parameters()[k], rtol=0, atol=0)
