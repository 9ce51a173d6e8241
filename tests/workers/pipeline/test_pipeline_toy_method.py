"""A method defined here, in the test suite, runs through the whole pipeline in process: the
proof that adding a forgetting method is one folder and one ``register`` line (issue 11 item 5).

``toy_rescale`` forgets by multiplying the user weights by ``factor`` (no retraining): a
``heuristic`` method whose release is still gated on measured accuracy. Nothing outside this file
is edited; the method is registered for the test and unregistered after it.
"""

from __future__ import annotations

import math
from typing import Literal

import pytest
import torch
from pipeline_support import SECRET, forget_job, load_all, make_data, register_model
from pydantic import Field
from sqlalchemy import select

from service.core.security import subject_key
from service.job import service as job_service
from service.models import DeletionRequest, JobKind, ModelVersion, VersionArtifact
from workers.execution.purge import purge_model
from workers.execution.run import run_job
from workers.unlearning import Bound, SolveResult, load_model, register, unregister
from workers.unlearning.gates import GateResult
from workers.unlearning.methods.mixed_linear.config import MixedLinearConfig
from workers.unlearning.methods.mixed_linear.method import MixedLinear
from workers.unlearning.serialization import to_bytes


class ToyRescaleConfig(MixedLinearConfig):
    method: Literal["toy_rescale"] = "toy_rescale"
    factor: float = Field(0.5, gt=0, le=1, description="user weights are multiplied by this to forget")
    min_eval_accuracy: float = Field(0.0, ge=0, le=1)


class ToyRescale(MixedLinear):
    """Trains like mixed_linear; forgets by rescaling the user weights."""

    name = "toy_rescale"
    guarantee = "heuristic"
    families = frozenset({"mixed_linear"})
    kinds = frozenset({"samples"})
    config_cls = ToyRescaleConfig
    private_artifacts = ("weights",)

    def forget(self, model, retained, cfg, progress=None, removed=None):
        model.user = {k: v * cfg.factor for k, v in model.user.items()}
        return SolveResult(iterations=1, residual_norm=math.nan, converged=True, seconds=0.0, operation="forget")

    def bound(self, result, cfg, *, exact=None, method=None):
        if exact or result.operation in ("zero", "retrain"):
            return super().bound(result, cfg, exact=exact, method=method)
        return Bound(self.name, "heuristic", math.nan, cfg.l2, cfg.noise_std, result.iterations, math.inf, math.inf)

    def refine(self, cfg):
        return None  # no remedy but the fallback

    def gate(self, bound, parent_eval, new_eval, cfg):
        acc = (new_eval or {}).get("accuracy")
        ok = acc is not None and acc >= cfg.min_eval_accuracy
        return GateResult(ok, [] if ok else [f"eval accuracy {acc} < {cfg.min_eval_accuracy}"])

    def save_private(self, model):
        return {"weights": to_bytes(model, metadata={"private": "noise-free; never served"})}


@pytest.fixture
def toy():
    method = register(ToyRescale())
    yield method
    unregister(method.name)


def _toy_model(rt, **config):
    data = make_data()
    with rt.session_factory.begin() as s:
        m = register_model(s, "toy", method="toy_rescale")
        m.method_config = {**m.method_config, "factor": 0.25, **config}
        load_all(s, rt.store, m, data)
        job_id, model_id = job_service.create_job(s, rt.settings, m, JobKind.train, actor="test").id, m.id
    assert run_job(rt, job_id) == "succeeded"
    return model_id


def _forget(rt, model_id, *subjects):
    return run_job(rt, forget_job(rt, model_id, *subjects))


def _versions(s, model_id):
    return s.execute(select(ModelVersion).where(ModelVersion.model_id == model_id).order_by(ModelVersion.number)).scalars().all()


def test_a_method_registered_from_the_tests_runs_through_the_pipeline(rt, toy):
    model_id = _toy_model(rt)
    with rt.session_factory() as s:
        v1 = _versions(s, model_id)[0]
        parent = load_model(rt.store.path(v1.private_uri))
    assert _forget(rt, model_id, "subject-003") == "succeeded"
    with rt.session_factory() as s:
        v1, v2 = _versions(s, model_id)
        assert v1.state == "revoked" and v2.state == "live"
        assert v2.bound["guarantee"] == "heuristic" and v2.bound["method"] == "toy_rescale"
        assert "fallback" not in v2.bound  # the gate passed: the toy's own forget was published
        arts = {a.name: a.uri for a in s.execute(select(VersionArtifact).where(VersionArtifact.version_id == v2.id)).scalars()}
        assert arts == {"weights": v2.private_uri}
        req = s.execute(select(DeletionRequest)).scalar_one()
        assert req.subject_key == subject_key(SECRET, "subject-003") and req.status == "completed" and req.clean_version_id == v2.id
        private = load_model(rt.store.path(v2.private_uri))
        served = load_model(rt.store.path(v2.artifact_uri))
    # the toy's math, checked independently: v2's noise-free user weights are 0.25 × v1's
    for k, w in parent.user_parameters().items():
        assert torch.equal(private.user_parameters()[k], w * 0.25)
        assert not torch.equal(served.user_parameters()[k], private.user_parameters()[k])  # release noise applied
    # purge deletes every private artifact of the revoked version
    purge_model(rt, model_id)
    with rt.session_factory() as s:
        v1 = _versions(s, model_id)[0]
        assert v1.private_uri is None and v1.artifact_uri is None
        assert s.execute(select(VersionArtifact).where(VersionArtifact.version_id == v1.id)).first() is None


def test_a_heuristic_method_that_fails_its_gate_falls_back_to_zero_plus_retrain(rt, toy):
    model_id = _toy_model(rt, min_eval_accuracy=1.0)  # never met
    assert _forget(rt, model_id, "subject-004") == "succeeded"
    with rt.session_factory() as s:
        v2 = _versions(s, model_id)[-1]
        assert v2.bound["guarantee"] == "exact" and v2.bound["fallback"]["to"] == "zero+retrain"
        assert any("eval accuracy" in r for r in v2.bound["fallback"]["reasons"])
