"""A ``linear_head`` model with ``certified_removal`` through the whole pipeline, in process
(issue 15): deletions spend the (ε, δ) budget visibly, a job that would cross it retrains the head
("budget exhausted", audited) and resets it, receipts show each release's (ε, δ) and the latest
ε_spent (never a sum), and purge deletes the kept user features of revoked versions."""

from __future__ import annotations

import math

import pytest
import torch
from pipeline_support import SECRET, forget_job, trained
from safetensors.torch import load as st_load
from sqlalchemy import select

from service.audit.service import verify_chain
from service.models import AuditEvent, Model, ModelVersion, VersionArtifact
from service.subject.service import receipt
from workers.execution.purge import purge_model
from workers.execution.run import run_job
from workers.unlearning.methods.certified_removal import head as H
from workers.unlearning.methods.certified_removal.method import load_linear_head

CONFIG = {"epsilon": 1e6, "delta": 1e-5, "noise_std": 1.0, "l2": 0.05, "core_epochs": 5, "device": "cpu"}


def _head_model(rt) -> int:
    return trained(rt, "head", method="certified_removal", family="linear_head", linearize="all", method_config=dict(CONFIG))


def _versions(rt, model_id):
    with rt.session_factory() as s:
        return s.execute(select(ModelVersion).where(ModelVersion.model_id == model_id).order_by(ModelVersion.number)).scalars().all()


def _set_budget(rt, model_id, epsilon):
    with rt.session_factory.begin() as s:
        m = s.get(Model, model_id)
        m.method_config = {**m.method_config, "epsilon": epsilon}


def test_deletions_spend_the_budget_and_a_retrain_resets_it(rt):
    model_id = _head_model(rt)
    v1 = _versions(rt, model_id)[0]
    assert v1.bound["method"] == "certified_removal" and v1.bound["statement"] == "per release"
    assert v1.bound["epsilon_spent"] < 1e-6 and v1.bound["delta"] == CONFIG["delta"]
    with rt.session_factory() as s:
        arts = {a.name for a in s.execute(select(VersionArtifact).where(VersionArtifact.version_id == v1.id)).scalars()}
    assert arts == {"state", "features"}

    # two deletions: ε_spent grows by c·(the step's bound)/s, from the parent's β (the ledger is private state)
    spent = [v1.bound["epsilon_spent"]]
    for subject in ("subject-001", "subject-002"):
        assert run_job(rt, forget_job(rt, model_id, subject)) == "succeeded"
        v = _versions(rt, model_id)[-1]
        assert v.bound["guarantee"] == "certified" and v.bound["retrain_reason"] == ""
        c = math.sqrt(2 * math.log(1.5 / CONFIG["delta"]))
        assert v.bound["epsilon_spent"] == pytest.approx(spent[-1] + c * v.bound["beta_step"] / CONFIG["noise_std"], rel=1e-9)
        assert v.bound["budget_left"] == pytest.approx(CONFIG["epsilon"] - v.bound["epsilon_spent"])
        spent.append(v.bound["epsilon_spent"])
    assert spent[0] < spent[1] < spent[2]

    # a budget the next deletion must cross: the job retrains with a fresh b instead
    _set_budget(rt, model_id, spent[-1] * (1 + 1e-6))
    assert run_job(rt, forget_job(rt, model_id, "subject-003")) == "succeeded"
    v4 = _versions(rt, model_id)[-1]
    assert v4.bound["retrain_reason"] == H.BUDGET_EXHAUSTED and v4.bound["guarantee"] == "exact"
    assert v4.bound["epsilon_spent"] < 1e-6 and v4.bound["removals_since_retrain"] == 0
    with rt.session_factory() as s:
        published = [e.payload for e in s.execute(select(AuditEvent).where(AuditEvent.kind == "version.published")
                                                  .order_by(AuditEvent.seq)).scalars()]
        assert published[-1]["bound"]["retrain_reason"] == "budget exhausted"  # audited
        assert verify_chain(s).ok
        # b stays private: in the state artifact only, never in the served file
        state = st_load(rt.store.read_bytes(v4.private_uri))
        served_bytes = rt.store.read_bytes(v4.artifact_uri)
        assert "head.b" in state and "head.b" not in st_load(served_bytes)
        # receipts: each release with its (ε, δ); the latest ε_spent, never a sum
        r = receipt(s, SECRET, "subject-002")
    (mr,) = r.models
    assert [rel.epsilon_spent for rel in mr.releases] == pytest.approx([spent[2], v4.bound["epsilon_spent"]])
    assert all(rel.delta == CONFIG["delta"] for rel in mr.releases)
    assert mr.latest_epsilon_spent == pytest.approx(v4.bound["epsilon_spent"]) and mr.epsilon_statement == "per release"
    assert mr.unbounded_versions == []

    # the served file predicts with the released head (and only the extractor + w)
    net = load_linear_head(served_bytes)
    assert torch.equal(net.w, state["head.w"])

    # purge deletes the revoked versions' private artifacts, the kept user features included
    purge_model(rt, model_id)
    with rt.session_factory() as s:
        for v in _versions(rt, model_id)[:-1]:
            assert v.private_uri is None
            assert s.execute(select(VersionArtifact).where(VersionArtifact.version_id == v.id)).first() is None


def test_zero_then_retrain_through_the_pipeline(rt):
    from service.job import service as job_service
    from service.models import Job, JobKind

    model_id = _head_model(rt)
    with rt.session_factory.begin() as s:
        job_id = job_service.create_job(s, rt.settings, s.get(Model, model_id), JobKind.zero, actor="test",
                                        config={"then_retrain": True}).id
    assert run_job(rt, job_id) == "succeeded"
    v2 = _versions(rt, model_id)[-1]
    assert v2.bound["guarantee"] == "exact" and v2.bound["kl_nats"] == 0.0 and v2.bound["epsilon_spent"] == 0.0
    assert not bool(load_linear_head(rt.store.read_bytes(v2.artifact_uri)).w.any())  # the served head is zero
    with rt.session_factory() as s:
        retrain = s.execute(select(Job).where(Job.kind == "retrain")).scalar_one()
    assert run_job(rt, retrain.id) == "succeeded"
    v3 = _versions(rt, model_id)[-1]
    b2 = st_load(rt.store.read_bytes(v2.private_uri))["head.b"]
    b3 = st_load(rt.store.read_bytes(v3.private_uri))["head.b"]
    assert v3.bound["guarantee"] == "exact" and v3.bound["epsilon_spent"] < 1e-6 and not torch.equal(b2, b3)  # a fresh b
    assert v3.metrics["eval_accuracy"] > 0.5
