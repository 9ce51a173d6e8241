"""Over HTTP: a ``linear_head`` model whose feature extractor comes from an uploaded checkpoint
(public or pretrained weights) instead of training on the core split (issue 15, item 1). The
upload is the architecture's full ``state_dict``; the extractor is taken from it exactly, the
uploaded last layer is ignored, and the head is trained by Lethe on the user features with a fresh
secret b, published with its (ε, δ) bound; deletions then spend the budget as after a train. A
mis-shaped checkpoint leaves the model ``invalid`` with the reason."""

from __future__ import annotations

import uuid

import pytest
import torch
from pipeline_support import make_data
from safetensors.torch import save as st_save
from torch import nn

from service.models import Job
from workers.execution.run import run_job
from workers.unlearning.methods.certified_removal import head as H
from workers.unlearning.methods.certified_removal.method import LinearHeadModel, load_linear_head
from workers.unlearning.networks import build_network

ARCH = {"in_features": 8, "hidden": [8], "num_classes": 3}
ST = {"Content-Type": "application/vnd.safetensors"}


@pytest.fixture
def api(rt, committed_app):  # rt first: its table cleaning must not drop the tokens
    return committed_app


def _register(c, data) -> None:
    body = {"name": "head", "family": "linear_head", "method": "certified_removal", "architecture": "mlp",
            "architecture_config": ARCH, "input_shape": [8], "num_classes": 3,
            "method_config": {"epsilon": 1e6, "delta": 1e-5, "noise_std": 1.0, "l2": 0.01, "core_epochs": 5, "device": "cpu"}}
    r = c.post("/v1/models", json=body, headers=c.auth("admin"))
    assert r.status_code == 201, r.text
    rows = [{"subject_id": s, "split": "user", "label": int(y), "x": x.tolist()} for x, y, s in zip(*data["user"], data["subjects"], strict=True)]
    rows += [{"subject_id": f"eval-{i}", "split": "eval", "label": int(y), "x": x.tolist()} for i, (x, y) in enumerate(zip(*data["eval"], strict=True))]
    r = c.post("/v1/models/head/samples", json={"samples": rows}, headers=c.auth("admin"))
    assert r.status_code == 201, r.text


def _pretrained(data) -> nn.Sequential:
    """A network trained here, outside Lethe, on data Lethe never sees (the "public" weights)."""
    torch.manual_seed(123)
    net = build_network("mlp", ARCH)
    x, y = (torch.from_numpy(a) for a in data["core"])
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net


def _upload(c, rt, tensors) -> str:
    r = c.post("/v1/models/head/checkpoint", content=st_save(tensors), headers={**ST, **c.auth("admin")})
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "checkpoint"
    with rt.session_factory() as s:
        uri = s.get(Job, uuid.UUID(r.json()["id"])).config["checkpoint_uri"]
    status = run_job(rt, uuid.UUID(r.json()["id"]))
    assert not rt.store.exists(uri)  # published or rejected: the upload itself is not kept
    return status


def _served(c, ref) -> nn.Module:
    r = c.get(f"/v1/models/head/versions/{ref}/weights", headers=c.auth("serving"))
    assert r.status_code == 200, r.text
    return load_linear_head(r.content)


def test_uploaded_extractor_is_served_exactly_and_deletions_spend_the_budget(api, rt):
    c, data = api, make_data()
    _register(c, data)
    net = _pretrained(data)
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    assert _upload(c, rt, state) == "succeeded"
    model = c.get("/v1/models/head", headers=c.auth("admin")).json()
    assert model["state"] == "ready" and model["latest_version"] == 1
    v1 = c.get("/v1/models/head/versions/1", headers=c.auth("operator")).json()
    b = v1["bound"]
    assert v1["family"] == "linear_head" and b["guarantee"] == "certified" and b["statement"] == "per release"
    assert b["delta"] == 1e-5 and b["epsilon_budget"] == 1e6 and 0 < b["epsilon_spent"] < 1e-6  # the training residual only
    assert v1["metrics"]["eval_accuracy"] > 0.8

    # the served extractor is the uploaded one, exactly (float64 of the float32 weights: exact)
    reference = nn.Sequential(*list(net)[:-1]).to(torch.float64).eval()
    x = torch.from_numpy(data["eval"][0]).to(torch.float64)
    served = _served(c, 1)
    with torch.no_grad():
        want = reference(x)
        assert torch.equal(served.extractor(x), want)
        assert torch.equal(served.features(x), H.scale_features(torch.cat([want, torch.ones(len(x), 1, dtype=torch.float64)], 1)))
        # not the architecture's seeded initial weights (what core_epochs=0 would serve)
        assert not torch.equal(LinearHeadModel.build("mlp", ARCH).extractor(x), want)
    # the head is Lethe's: C rows over [φ, 1], not the uploaded last layer
    assert served.w.shape == (3, 9)

    r = c.post("/v1/deletion-requests", json={"subject_id": "subject-000", "model": "head"}, headers=c.auth("requester"))
    assert r.status_code == 202, r.text
    job = c.post("/v1/models/head/forget-now", headers=c.auth("operator"))
    assert job.status_code == 202, job.text
    assert run_job(rt, uuid.UUID(job.json()["id"])) == "succeeded"
    v2 = c.get("/v1/models/head/versions/latest", headers=c.auth("operator")).json()
    b2 = v2["bound"]
    assert v2["number"] == 2 and b2["guarantee"] == "certified" and b2["retrain_reason"] == ""
    assert b2["epsilon_spent"] > b["epsilon_spent"] > 0 and b2["removals_since_retrain"] == 1
    with torch.no_grad():
        assert torch.equal(_served(c, 2).extractor(x), want)  # a removal keeps the extractor


def test_a_mis_shaped_checkpoint_leaves_the_model_invalid_with_the_reason(api, rt):
    c, data = api, make_data()
    _register(c, data)
    state = {k: v.detach().clone() for k, v in _pretrained(data).state_dict().items()}
    name = sorted(state)[0]
    state[name] = torch.zeros(*[s + 1 for s in state[name].shape])
    assert _upload(c, rt, state) == "failed"
    model = c.get("/v1/models/head", headers=c.auth("admin")).json()
    assert model["state"] == "invalid" and model["latest_version"] is None
    assert "checkpoint rejected" in model["state_reason"] and "has shape" in model["state_reason"] and name in model["state_reason"]


def test_mixed_linear_still_takes_no_checkpoint(api):
    c = api
    ml = {"name": "mixed", "architecture": "mlp", "architecture_config": ARCH, "input_shape": [8], "num_classes": 3,
          "method": "mixed_linear", "method_config": {}}
    assert c.post("/v1/models", json=ml, headers=c.auth("admin")).status_code == 201
    r = c.post("/v1/models/mixed/checkpoint", content=st_save({"a": torch.zeros(1)}), headers={**ST, **c.auth("admin")})
    assert r.status_code == 409 and "linear_head" in r.text
