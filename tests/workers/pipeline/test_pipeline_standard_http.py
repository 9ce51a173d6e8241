"""The ``standard`` family over HTTP, end to end (issue 12): register with a recipe → samples →
checkpoint upload (validated in the worker) → deletion requests → forget job → gated release or
audited fallback → pull with the client. And the bad inputs: 4xx at the door, or an ``invalid``
model with the reason when the worker finds the checkpoint unusable."""

from __future__ import annotations

import uuid

import httpx
import pytest
import torch
from pipeline_support import make_data
from safetensors.torch import save as st_save
from sqlalchemy import select

from service.models import AuditEvent, Job
from workers.client import LetheClient
from workers.execution.run import run_job
from workers.runtime import Runtime
from workers.unlearning import standard
from workers.unlearning.data import TensorSource
from workers.unlearning.methods.lcodec.config import LCodecConfig

RECIPE = {"optimizer": "adam", "lr": 0.01, "epochs": 15, "batch_size": 32, "weight_decay": 1e-3, "seed": 1, "device": "cpu",
          "perturbations": 16, "damping": 0.1, "max_forget_gap": 1.0, "max_mia_gap": 0.5, "max_retain_drop": 1.0, "max_accuracy_drop": 1.0}
ARCH = {"in_features": 8, "hidden": [8], "num_classes": 3}
ST = {"Content-Type": "application/vnd.safetensors"}


class _ViaTestClient(httpx.BaseTransport):
    """The pull client's HTTP calls answered by the app in process (through the TestClient)."""

    def __init__(self, api) -> None:
        self.api = api

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        r = self.api.request(request.method, str(request.url), headers=dict(request.headers), content=request.read())
        headers = {k: v for k, v in r.headers.items() if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")}
        return httpx.Response(r.status_code, headers=headers, content=r.content)


@pytest.fixture
def rt(committed_app, settings):
    runtime = Runtime.from_settings(settings)
    yield runtime
    runtime.engine.dispose()


def _register(api, name="std", **recipe):
    body = {"name": name, "architecture": "mlp", "architecture_config": ARCH, "input_shape": [8], "num_classes": 3,
            "method": "lcodec", "family": "standard", "method_config": {**RECIPE, **recipe}}
    return api.post("/v1/models", json=body, headers=api.auth("admin"))


def _samples(api, name, data):
    rows = [{"subject_id": s, "split": "user", "label": int(y), "x": x.tolist()} for x, y, s in zip(*data["user"], data["subjects"])]
    rows += [{"subject_id": f"eval-{i}", "split": "eval", "label": int(y), "x": x.tolist()} for i, (x, y) in enumerate(zip(*data["eval"]))]
    r = api.post(f"/v1/models/{name}/samples", json={"samples": rows}, headers=api.auth("admin"))
    assert r.status_code == 201, r.text


def _trained_state(data) -> dict[str, torch.Tensor]:
    """What a team brings: a network trained the ordinary way on exactly the user samples."""
    cfg = LCodecConfig(**RECIPE)
    model = standard.build("mlp", ARCH, cfg)
    standard.train(model, TensorSource(*data["user"]), cfg)
    return {k: v.detach().clone() for k, v in model.network.state_dict().items()}


def _upload(api, rt, name, tensors) -> tuple[int, str]:
    r = api.post(f"/v1/models/{name}/checkpoint", content=st_save(tensors), headers={**ST, **api.auth("admin")})
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "checkpoint"
    with rt.session_factory() as s:
        uri = s.get(Job, uuid.UUID(r.json()["id"])).config["checkpoint_uri"]
    assert rt.store.exists(uri)  # streamed to the store, not parsed by the API
    status = run_job(rt, r.json()["id"])
    assert not rt.store.exists(uri)  # published or rejected: the upload itself is not kept
    return r.status_code, status


def test_register_checkpoint_forget_and_pull_over_http(committed_app, rt, tmp_path):
    api, data = committed_app, make_data()
    assert _register(api).status_code == 201
    _samples(api, "std", data)
    state = _trained_state(data)
    assert _upload(api, rt, "std", state)[1] == "succeeded"
    model = api.get("/v1/models/std", headers=api.auth("admin")).json()
    assert model["family"] == "standard" and model["state"] == "ready" and model["latest_version"] == 1
    v1 = api.get("/v1/models/std/versions/1", headers=api.auth("operator")).json()
    assert v1["family"] == "standard" and v1["method"] == "lcodec" and v1["metrics"]["eval_accuracy"] > 0.8

    r = api.post("/v1/deletion-requests", json={"subject_id": "subject-005", "model": "std"}, headers=api.auth("requester"))
    assert r.status_code == 202, r.text
    job = api.post("/v1/models/std/forget-now", headers=api.auth("operator"))
    assert job.status_code == 202, job.text
    assert run_job(rt, job.json()["id"]) == "succeeded"
    v2 = api.get("/v1/models/std/versions/latest", headers=api.auth("operator")).json()
    assert v2["number"] == 2 and v2["bound"]["guarantee"] in ("heuristic", "exact")
    if v2["bound"]["guarantee"] == "exact":  # the gates refused: the fallback is audited with its reasons
        assert v2["bound"]["fallback"]["to"] == "retrain" and v2["bound"]["fallback"]["reasons"]
    else:
        assert v2["bound"]["method"] == "lcodec" and v2["metrics"]["forget_n"] == 6
    assert api.get("/v1/models/std/versions/1", headers=api.auth("operator")).status_code == 410  # revoked: it held the subject
    receipt = api.get("/v1/subjects/subject-005", headers=api.auth("auditor"))
    assert receipt.status_code == 200 and "std" in receipt.text

    pulled = LetheClient("http://testserver", api.tokens["serving"], transport=_ViaTestClient(api)).pull("std", tmp_path / "served")
    module = pulled.module
    assert isinstance(module, torch.nn.Module)
    x = torch.from_numpy(data["eval"][0])
    served = standard.from_bytes(pulled.path.read_bytes())
    assert pulled.number == 2 and pulled.manifest["family"] == "standard"
    torch.testing.assert_close(module(x), served(x))
    # the uploaded weights themselves are no longer what is served
    assert any(not torch.equal(served.network.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize("case", ["missing", "extra", "shape", "nan", "dtype"])
def test_a_bad_checkpoint_leaves_the_model_invalid_with_the_reason(committed_app, rt, case):
    api, data = committed_app, make_data()
    assert _register(api).status_code == 201
    _samples(api, "std", data)
    state = {k: torch.randn_like(v) for k, v in standard.build("mlp", ARCH, LCodecConfig(**RECIPE)).network.state_dict().items()}
    name = sorted(state)[0]
    if case == "missing":
        del state[name]
    elif case == "extra":
        state["bonus.weight"] = torch.zeros(2)
    elif case == "shape":
        state[name] = torch.zeros(*[s + 1 for s in state[name].shape])
    elif case == "nan":
        state[name][0] = float("nan")
    else:
        state[name] = state[name].to(torch.int64)
    _, status = _upload(api, rt, "std", state)
    assert status == "failed"
    model = api.get("/v1/models/std", headers=api.auth("admin")).json()
    assert model["state"] == "invalid" and model["latest_version"] is None
    expected = {"missing": "missing tensor", "extra": "unexpected tensor", "shape": "has shape", "nan": "NaN", "dtype": "dtype"}[case]
    assert expected in model["state_reason"] and "checkpoint rejected" in model["state_reason"]
    with rt.session_factory() as s:
        event = s.execute(select(AuditEvent).where(AuditEvent.kind == "model.invalid")).scalar_one()
        assert expected in event.payload["reason"]
    # a good checkpoint afterwards makes it ready again
    assert _upload(api, rt, "std", _trained_state(data))[1] == "succeeded"
    assert api.get("/v1/models/std", headers=api.auth("admin")).json()["state"] == "ready"


def test_bad_input_at_the_door(committed_app, settings):
    api = committed_app
    for recipe, field in (({"lr": -1.0}, "lr"), ({"epochs": 10**9}, "epochs"), ({"batch_size": 0}, "batch_size"),
                          ({"weight_decay": 5.0}, "weight_decay"), ({"optimizer": "lbfgs"}, "optimizer")):
        r = _register(api, **recipe)
        assert r.status_code == 422 and field in r.text, (recipe, r.text)
    wrong_family = {"name": "ml", "architecture": "mlp", "architecture_config": ARCH, "input_shape": [8], "num_classes": 3,
                    "method": "lcodec", "family": "mixed_linear", "method_config": RECIPE}
    assert api.post("/v1/models", json=wrong_family, headers=api.auth("admin")).status_code == 422
    assert _register(api).status_code == 201
    admin = api.auth("admin")
    assert api.post("/v1/models/std/checkpoint", content=b"x" * 20, headers={**ST, **admin}).status_code == 422
    assert api.post("/v1/models/std/checkpoint", content=b"{}", headers={"Content-Type": "application/json", **admin}).status_code == 415
    assert api.post("/v1/models/nope/checkpoint", content=st_save({"a": torch.zeros(1)}), headers={**ST, **admin}).status_code == 404
    ml = {"name": "mixed", "architecture": "mlp", "architecture_config": ARCH, "input_shape": [8], "num_classes": 3,
          "method": "mixed_linear", "method_config": {}}
    assert api.post("/v1/models", json=ml, headers=admin).status_code == 201
    assert api.post("/v1/models/mixed/checkpoint", content=st_save({"a": torch.zeros(1)}), headers={**ST, **admin}).status_code == 409
    for role in ("operator", "serving", "requester", "auditor"):
        assert api.post("/v1/models/std/checkpoint", content=st_save({"a": torch.zeros(1)}), headers={**ST, **api.auth(role)}).status_code == 403
    jobs = api.get("/v1/jobs", headers=api.auth("operator")).json()
    assert jobs["items"] == []  # nothing was started by any refused upload


def test_the_checkpoint_route_has_its_own_body_limit(committed_app, settings):
    from fastapi.testclient import TestClient

    from service.main import create_app

    api = committed_app
    assert _register(api).status_code == 201
    # the general limit is below the checkpoint, the checkpoint's own limit above it: accepted
    body = st_save({"a": torch.zeros(600)})
    roomy = settings.model_copy(update={"api": settings.api.model_copy(update={"max_body_bytes": 1000, "max_checkpoint_bytes": 10_000})})
    tight = settings.model_copy(update={"api": settings.api.model_copy(update={"max_body_bytes": 100_000, "max_checkpoint_bytes": 1000})})
    with TestClient(create_app(roomy)) as c:
        r = c.post("/v1/models/std/checkpoint", content=body, headers={**ST, **api.auth("admin")})
        assert r.status_code == 202, r.text
    with TestClient(create_app(tight)) as c:
        r = c.post("/v1/models/std/checkpoint", content=body, headers={**ST, **api.auth("admin")})
        assert r.status_code == 413 and "1000 bytes" in r.json()["detail"]
        # the samples route keeps the general limit
        ok = c.post("/v1/models/std/samples", json={"samples": []}, headers=api.auth("admin"))
        assert ok.status_code != 413
