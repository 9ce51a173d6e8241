"""Over HTTP (the app on the real database, jobs run in process): a ``linear_head`` model takes
many deletions, each release shows ε_spent growing, a retrain fires when the budget runs out and
resets it, the manifest says "per release", receipts show each release's (ε, δ), and ``/metrics``
exports ε_spent (issue 15, "done when").

How much one removal spends depends on the secret b (drawn from OS randomness: 0.1-0.5 of ε per
subject here, a factor 4 between draws), so the budget is set, in the database, just below what the
next removal needs once three removals have shown ε_spent growing: the retrain then must fire."""

from __future__ import annotations

import uuid

import pytest
from pipeline_support import make_data
from sqlalchemy import select

from service.models import Model
from workers.execution.run import run_job

EPSILON = 1e6  # at registration: every removal fits until the test lowers it


@pytest.fixture
def api(rt, committed_app):  # rt first: its table cleaning must not drop the tokens
    return committed_app


def _register(c, epsilon: float) -> None:
    body = {"name": "head", "family": "linear_head", "method": "certified_removal", "architecture": "mlp",
            "architecture_config": {"in_features": 8, "hidden": [8], "num_classes": 3}, "input_shape": [8], "num_classes": 3,
            "method_config": {"epsilon": epsilon, "delta": 1e-5, "noise_std": 20.0, "l2": 0.05, "core_epochs": 5, "device": "cpu"}}
    r = c.post("/v1/models", json=body, headers=c.auth("admin"))
    assert r.status_code == 201, r.text
    data = make_data()
    rows = []
    for split in ("core", "eval", "user"):
        x, y = data[split]
        subjects = data["subjects"] if split == "user" else [f"{split}-{i}" for i in range(len(y))]
        rows += [{"subject_id": s, "split": split, "label": int(label), "x": xi.tolist()} for xi, label, s in zip(x, y, subjects, strict=True)]
    r = c.post("/v1/models/head/samples", json={"samples": rows}, headers=c.auth("admin"))
    assert r.status_code == 201, r.text


def _set_budget(rt, epsilon: float) -> None:
    with rt.session_factory.begin() as s:
        m = s.execute(select(Model).where(Model.name == "head")).scalar_one()
        m.method_config = {**m.method_config, "epsilon": epsilon}


def _delete(c, rt, subject: str) -> dict:
    r = c.post("/v1/deletion-requests", json={"subject_id": subject, "model": "head"}, headers=c.auth("requester"))
    assert r.status_code == 202, r.text
    return _run(c, rt, c.post("/v1/models/head/forget-now", headers=c.auth("operator")))


def _run(c, rt, response) -> dict:
    assert response.status_code == 202, response.text
    assert run_job(rt, uuid.UUID(response.json()["id"])) == "succeeded"
    return c.get("/v1/models/head/versions/latest", headers=c.auth("operator")).json()


@pytest.mark.parametrize("bad", [{"epsilon": 0}, {"delta": 1}, {"noise_std": -1}, {"l2": 0}])
def test_bad_budget_settings_are_422_and_nothing_is_written(api, bad):
    body = {"name": "bad", "family": "linear_head", "method": "certified_removal", "architecture": "mlp",
            "architecture_config": {"in_features": 8, "hidden": [8], "num_classes": 3}, "input_shape": [8], "num_classes": 3,
            "method_config": bad}
    r = api.post("/v1/models", json=body, headers=api.auth("admin"))
    assert r.status_code == 422 and next(iter(bad)) in r.text
    assert api.get("/v1/models/bad", headers=api.auth("operator")).status_code == 404
    wrong = {**body, "method_config": {}, "family": "mixed_linear"}
    assert api.post("/v1/models", json=wrong, headers=api.auth("admin")).status_code == 422


def test_many_deletions_spend_the_budget_a_retrain_resets_it(api, rt):
    c = api
    _register(c, EPSILON)
    v = _run(c, rt, c.post("/v1/models/head/train", headers=c.auth("admin")))
    assert v["family"] == "linear_head" and v["bound"]["statement"] == "per release" and v["bound"]["epsilon_spent"] < 1e-6
    releases = [v] + [_delete(c, rt, f"subject-{i:03d}") for i in range(3)]
    budget = releases[-1]["bound"]["epsilon_spent"] * (1 + 1e-6)
    _set_budget(rt, budget)  # the next removal must cross it
    releases += [_delete(c, rt, f"subject-{i:03d}") for i in range(3, 6)]
    spent = [r["bound"]["epsilon_spent"] for r in releases]
    reasons = [r["bound"]["retrain_reason"] for r in releases]
    assert reasons[1:5] == ["", "", "", "budget exhausted"]  # then, from the reset, removals spend again (or retrain again)
    for k in range(1, len(releases)):
        b = releases[k]["bound"]
        epsilon = EPSILON if k <= 3 else budget
        assert b["delta"] == 1e-5 and b["epsilon_budget"] == epsilon and b["budget_left"] == pytest.approx(epsilon - spent[k])
        assert spent[k] <= epsilon  # no release is published past the budget
        if reasons[k] == "":
            assert spent[k] > spent[k - 1] and b["guarantee"] == "certified"  # each removal spends more
        else:
            assert spent[k] < 1e-6 and b["guarantee"] == "exact" and spent[k - 1] > 0  # reset by the retrain
    # receipts: the subject's releases with their (ε, δ), the latest ε_spent, never a sum
    rec = c.get("/v1/subjects/subject-000", headers=c.auth("auditor")).json()
    (m,) = rec["models"]
    assert [x["epsilon_spent"] for x in m["releases"]] == pytest.approx(spent[1:])
    assert all(x["delta"] == 1e-5 for x in m["releases"])
    assert m["latest_epsilon_spent"] == pytest.approx(spent[-1]) and m["epsilon_statement"] == "per release"
    # the audit log says why the head was retrained
    events = c.get("/v1/audit", params={"kind": "version.published", "limit": 100}, headers=c.auth("auditor")).json()["items"]
    assert any(e["payload"]["bound"].get("retrain_reason") == "budget exhausted" for e in events)
    # and webhook subscribers are told, once per budget retrain (issue 19's event outbox)
    from sqlalchemy import select

    from service.models import WebhookEvent

    with rt.session_factory() as s:
        told = s.execute(select(WebhookEvent.data).where(WebhookEvent.type == "model.budget_exhausted")).scalars().all()
    assert [d["model"] for d in told] == ["head"] * reasons.count("budget exhausted") and told
    metrics = c.get("/metrics", headers=c.auth("operator")).text
    gauges = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines() if line.startswith("lethe_last_")}
    assert gauges['lethe_last_epsilon_spent{model="head"}'] == pytest.approx(spent[-1])
    assert gauges['lethe_last_budget_left{model="head"}'] == pytest.approx(budget - spent[-1])
    assert 'lethe_last_delta{model="head"} 1e-05' in metrics
