"""``gradient_ascent`` through the whole pipeline in process (``run_job``): train, forget one
subject by the scaled ascent step, the KKT figures and the kept duals with the version, and the
retrain fallback when a measured gate fails, and the checkpoint upload refused (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pipeline_support import SECRET, forget_job, load_all, make_data, register_model
from safetensors.torch import load
from safetensors.torch import save as st_save
from sqlalchemy import select

from service.core.security import subject_key
from service.job import service as job_service
from service.models import AuditEvent, Job, JobKind, ModelVersion, Sample, Split, VersionArtifact
from workers.execution.run import run_job
from workers.unlearning import load_model_from_bytes

D = 40


def _ga_model(rt, **config):
    data = make_data(n_subjects=20, per_subject=4, d=D, classes=2)
    with rt.session_factory.begin() as s:
        m = register_model(s, "ga", d=D, classes=2, architecture="linear", linearize="all", architecture_config={"in_features": D, "num_classes": 2},
                           family="standard", method="gradient_ascent",
                           method_config={"epochs": 300, "lr": 2.0, "max_accuracy_drop": 0.2, **config})
        load_all(s, rt.store, m, data, core=False)
        job_id, model_id = job_service.create_job(s, rt.settings, m, JobKind.train, actor="test").id, m.id
    assert run_job(rt, job_id) == "succeeded"
    return model_id, data


def _versions(s, model_id):
    return s.execute(select(ModelVersion).where(ModelVersion.model_id == model_id).order_by(ModelVersion.number)).scalars().all()


def _artifacts(rt, s, version) -> dict[str, dict[str, torch.Tensor]]:
    rows = s.execute(select(VersionArtifact).where(VersionArtifact.version_id == version.id)).scalars()
    return {a.name: load(rt.store.read_bytes(a.uri)) for a in rows}


def test_a_linear_model_forgets_by_one_ascent_step_with_its_kkt_figures(rt):
    model_id, data = _ga_model(rt)
    key = subject_key(SECRET, "subject-003")
    with rt.session_factory() as s:
        gone = s.execute(select(Sample.id, Sample.row).where(Sample.model_id == model_id, Sample.subject_key == key,
                                                            Sample.split == Split.user.value)).all()
        v1 = _versions(s, model_id)[0]
        first = _artifacts(rt, s, v1)
    assert set(first) == {"weights"} and {"lethe.ids", "lethe.duals"} <= set(first["weights"]) and len(gone) == 4
    assert run_job(rt, forget_job(rt, model_id, "subject-003")) == "succeeded"
    with rt.session_factory() as s:
        v1, v2 = _versions(s, model_id)
        assert v1.state == "revoked" and v2.state == "live"
        second = _artifacts(rt, s, v2)
        bound, metrics = v2.bound, v2.metrics
        published = [e.payload for e in s.execute(select(AuditEvent).where(AuditEvent.kind == "version.published")).scalars()
                     if e.payload["number"] == 2]
    assert len(published) == 1 and published[0]["bound"]["kkt"] == bound["kkt"]  # the figures are in the audit too
    assert bound["guarantee"] == "heuristic" and bound["method"] == "gradient_ascent" and "fallback" not in bound
    fig = bound["kkt"]
    assert fig["removed"] == 4 and fig["stationarity"] < 1e-9 < fig["stationarity_before"] and fig["feasible"] in (0.0, 1.0)
    assert {"mia_auc", "forget_accuracy", "retain_accuracy", "eval_accuracy"} <= set(metrics)
    # the step, checked independently: linear, so θ⁻ = θ − Σ_r λ_r y_r x_r with v1's kept duals
    ids, lam = first["weights"]["lethe.ids"].numpy(), first["weights"]["lethe.duals"].numpy()
    x_user, y_user = data["user"]
    theta = first["weights"]["1.weight"].numpy().reshape(-1).copy()
    for sample_id, row in gone:
        theta -= lam[list(ids).index(sample_id)] * (2.0 * y_user[row] - 1.0) * x_user[row].astype(np.float64)
    np.testing.assert_allclose(second["weights"]["1.weight"].numpy().reshape(-1), theta, rtol=1e-10, atol=1e-12)
    # the kept duals lost the forgotten samples, the others are unchanged
    kept = second["weights"]["lethe.ids"].numpy()
    assert set(kept) == set(ids) - {i for i, _ in gone}
    np.testing.assert_array_equal(second["weights"]["lethe.duals"].numpy(), lam[np.isin(ids, kept)])


def test_a_failed_measured_gate_falls_back_to_retraining(rt):
    model_id, _ = _ga_model(rt, max_mia_gap=0.0, min_forget_samples=1)  # a point AUC of exactly 0.5: not met
    assert run_job(rt, forget_job(rt, model_id, "subject-004")) == "succeeded"
    with rt.session_factory() as s:
        v2 = _versions(s, model_id)[-1]
        assert v2.bound["guarantee"] == "exact" and v2.bound["fallback"]["to"] == "zero+retrain"
        assert any("MIA AUC" in r for r in v2.bound["fallback"]["reasons"])
        weights = _artifacts(rt, s, v2)["weights"]
    assert len(weights["lethe.ids"]) == 80 - 4  # retrained on D_r: the duals are D_r's


def test_the_whole_loop_over_http(rt, committed_app):  # rt first: its table truncation precedes the tokens
    """Register, ingest, train, file a deletion request, forget: every step over HTTP, the jobs
    run in process; the release's manifest carries the KKT figures and a binary label upload
    beyond {0, 1} is refused."""
    c = committed_app
    admin, operator = c.auth("admin"), c.auth("operator")
    spec = {"name": "ga-http", "architecture": "two_layer_relu", "architecture_config": {"hidden": 8}, "input_shape": [D],
            "num_classes": 2, "method": "gradient_ascent",
            "method_config": {"epochs": 200, "max_accuracy_drop": 0.5, "max_retain_drop": 0.5, "max_mia_gap": 0.5, "max_forget_gap": 1.0}}
    r = c.post("/v1/models", json=spec, headers=admin)
    assert r.status_code == 201 and r.json()["family"] == "standard", r.text
    data = make_data(n_subjects=10, per_subject=3, d=D, classes=2)
    rows = [{"subject_id": s, "split": "user", "label": int(l), "x": x.tolist()}
            for x, l, s in zip(*data["user"], data["subjects"], strict=True)]
    rows += [{"subject_id": f"eval-{i}", "split": "eval", "label": int(l), "x": x.tolist()}
             for i, (x, l) in enumerate(zip(*data["eval"], strict=True))]
    bad = c.post("/v1/models/ga-http/samples", json={"samples": [{**rows[0], "label": 2}]}, headers=admin)
    assert bad.status_code == 422, bad.text
    assert c.post("/v1/models/ga-http/samples", json={"samples": rows}, headers=admin).status_code == 201
    train = c.post("/v1/models/ga-http/train", headers=admin).json()
    assert run_job(rt, train["id"]) == "succeeded"
    r = c.post("/v1/deletion-requests", json={"subject_id": "subject-002", "model": "ga-http"}, headers=c.auth("requester"))
    assert r.status_code == 202, r.text
    forget = c.post("/v1/models/ga-http/forget-now", headers=operator)
    assert forget.status_code == 202, forget.text
    assert run_job(rt, forget.json()["id"]) == "succeeded"
    manifest = c.get("/v1/models/ga-http/versions/latest", headers=c.auth("serving")).json()
    assert manifest["number"] == 2 and manifest["family"] == "standard" and manifest["method"] == "gradient_ascent"
    bound = manifest["bound"]
    assert bound["guarantee"] == "heuristic" and "fallback" not in bound and bound["kkt"]["removed"] == 3
    assert {"stationarity", "complementary_slackness", "min_margin", "feasible"} <= set(bound["kkt"])
    weights = c.get("/v1/models/ga-http/versions/latest/weights", headers=c.auth("serving"))
    assert weights.status_code == 200 and set(load(weights.content)) == {"hidden.weight", "output"}
    # the client's loader builds the family's file: the scalar output's sign is the label
    x_eval, y_eval = data["eval"]
    with torch.no_grad():
        out = load_model_from_bytes(weights.content)(torch.from_numpy(x_eval))
    assert out.shape == (len(y_eval), 1)
    assert float(((out[:, 0] > 0).long().numpy() == y_eval).mean()) == pytest.approx(manifest["metrics"]["eval_accuracy"])
    status = c.get(r.headers["location"], headers=c.auth("requester")).json()
    assert status["status"] == "completed"


def test_an_uploaded_checkpoint_is_refused_and_nothing_written(rt, committed_app):
    """The standard family's checkpoint route refuses a gradient_ascent model (an upload carries
    no dual coefficients): 409 problem, no job, no stored file, no audit event, state unchanged."""
    c = committed_app
    admin = c.auth("admin")
    spec = {"name": "ga-ckpt", "architecture": "linear", "input_shape": [D], "num_classes": 2, "method": "gradient_ascent"}
    assert c.post("/v1/models", json=spec, headers=admin).status_code == 201
    body = st_save({"1.weight": torch.zeros(1, D)})  # a well-formed state_dict of the network
    r = c.post("/v1/models/ga-ckpt/checkpoint", content=body, headers={"Content-Type": "application/vnd.safetensors", **admin})
    assert r.status_code == 409 and r.headers["content-type"].startswith("application/problem+json"), r.text
    assert "gradient_ascent" in r.json()["detail"] and "carry no dual coefficients" in r.json()["detail"]
    assert c.get("/v1/models/ga-ckpt", headers=admin).json()["state"] == "ready"
    assert c.app.state.store.list_uris("checkpoints") == []
    with rt.session_factory() as s:
        assert s.execute(select(Job)).scalars().all() == []
        kinds = s.execute(select(AuditEvent.kind)).scalars().all()
    assert "model.registered" in kinds and "model.checkpoint_uploaded" not in kinds
