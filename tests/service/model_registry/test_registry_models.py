"""Registration, reads, pagination and roles of /v1/models."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from service.models import AuditEvent, Model, ModelVersion

SPEC = {"name": "m0", "architecture": "mlp", "input_shape": [3], "num_classes": 2}


def _register(client, **over):
    return client.post("/v1/models", json={**SPEC, **over}, headers=client.auth("admin"))


def test_register_stores_typed_settings_and_location(client, db):
    r = _register(client, name="pkg-model_1", architecture="mlp", architecture_config={"hidden": [4]}, linearize="last:2",
                  method_config={"l2": 0.5, "noise_std": 0.0, "max_iter": 7}, sla_days=365, auto_promote=False)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == "/v1/models/pkg-model_1"
    body = r.json()
    assert body["method_config"]["l2"] == 0.5 and body["method_config"]["max_iter"] == 7 and body["method_config"]["noise_std"] == 0.0
    stored = db.execute(select(Model).where(Model.name == "pkg-model_1")).scalar_one()
    assert stored.method_config["l2"] == 0.5 and stored.auto_promote is False and stored.sla_days == 365
    assert stored.linearize == "last:2" and stored.input_shape == [3]
    # the built-in's config is stored complete, derived from input_shape and num_classes
    assert stored.architecture_config == {"in_features": 3, "num_classes": 2, "hidden": [4], "activation": "relu"}
    kinds = db.execute(select(AuditEvent.kind)).scalars().all()
    assert "model.registered" in kinds
    # the family defaults to the method's only one, and is stored and read back
    assert body["family"] == "mixed_linear" and stored.family == "mixed_linear"


def test_an_explicit_family_the_method_serves_is_accepted(client, db):
    r = _register(client, family="mixed_linear")
    assert r.status_code == 201, r.text
    assert db.execute(select(Model.family)).scalar_one() == "mixed_linear"


@pytest.mark.parametrize("bad,field", [
    ({"architecture": "a..b:c"}, "architecture"), ({"architecture": "module_without_function"}, "architecture"),
    ({"architecture": "my_pkg.nets:build"}, "architecture"),
    ({"linearize": "last:"}, "linearize"), ({"linearize": "first:1"}, "linearize"),
    ({"input_shape": [1, 2, 3, 4, 5]}, "input_shape"), ({"input_shape": [3, 0]}, "input_shape"),
    ({"input_shape": ["3"]}, "input_shape"), ({"num_classes": 1}, "num_classes"),
    ({"sla_days": 0}, "sla_days"), ({"sla_days": 366}, "sla_days"), ({"method": "no_such_method"}, "method"),
    ({"method_config": {"target_scale": 0}}, "target_scale"), ({"method_config": {"noise_std": -1}}, "noise_std"),
    ({"method_config": {"tol": 0}}, "tol"), ({"name": "-leading-dash"}, "name"), ({"name": "x" * 65}, "name"),
    ({"architecture_config": [1, 2]}, "architecture_config"),
    ({"method_config": {"unknown_key": 1}}, "unknown_key"), ({"method_config": {"dtype": "float16"}}, "dtype"),
    ({"method_config": {"pass_dtype": "float16"}}, "pass_dtype"), ({"method_config": {"pass_dtype": "mixed"}}, "pass_dtype"),
    ({"method_config": {"method": "gradient_ascent"}}, "method"), ({"method_config": {"cache_bytes": -1}}, "cache_bytes"),
    ({"family": "transformer"}, "family"), ({"family": "standard"}, "family"), ({"family": None, "method": "nope"}, "method"),
])
def test_registration_refuses_bad_fields_and_writes_nothing(client, db, bad, field):
    r = _register(client, **bad)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert any(field in e["field"] for e in r.json()["errors"])
    assert db.execute(select(func.count()).select_from(Model)).scalar_one() == 0


def test_malformed_json_is_400(client, db):
    r = client.post("/v1/models", content=b"{not json", headers={**client.auth("admin"), "content-type": "application/json"})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json")


def test_list_pages_with_signed_cursor(client, db):
    for i in range(5):
        assert _register(client, name=f"m{i}").status_code == 201
    h = client.auth("auditor")
    seen, cursor = [], None
    for _ in range(10):
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/models", params=params, headers=h).json()
        assert len(page["items"]) <= 2
        seen += [m["name"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == [f"m{i}" for i in range(5)] and len(seen) == 5
    first = client.get("/v1/models", params={"limit": 2}, headers=h).json()
    tampered = first["next_cursor"][:-2] + ("AA" if not first["next_cursor"].endswith("AA") else "BB")
    r = client.get("/v1/models", params={"cursor": tampered}, headers=h)
    assert r.status_code == 400 and r.json()["type"].endswith("invalid-cursor")
    # a cursor of another list is refused too
    r = client.get("/v1/models/m0/versions", params={"cursor": first["next_cursor"]}, headers=h)
    assert r.status_code == 400


def test_read_counts_samples_by_split_and_latest_version(client, db):
    assert _register(client).status_code == 201
    rows = [{"subject_id": f"s{i}", "split": split, "label": i % 2, "x": [i, 0, 1]} for i, split in enumerate(["core", "user", "user", "eval"])]
    assert client.post("/v1/models/m0/samples", json={"samples": rows}, headers=client.auth("admin")).status_code == 201
    model = db.execute(select(Model)).scalar_one()
    for n in (1, 2):
        db.add(ModelVersion(model_id=model.id, number=n, artifact_uri=None, sha256="0" * 64, size_bytes=1))
    db.flush()
    body = client.get("/v1/models/m0", headers=client.auth("requester")).json()
    assert body["samples"] == {"core": 1, "user": 2, "eval": 1} and body["latest_version"] == 2
    listed = client.get("/v1/models", headers=client.auth("serving")).json()["items"][0]
    assert listed["samples"] == body["samples"] and listed["latest_version"] == 2


def test_unknown_model_is_404_problem(client):
    for path in ("/v1/models/ghost", "/v1/models/ghost/versions", "/v1/models/ghost/versions/latest",
                 "/v1/models/ghost/versions/1/weights", "/v1/models/ghost/aliases"):
        r = client.get(path, headers=client.auth("serving"))
        assert r.status_code == 404 and r.json()["type"].endswith("model-not-found"), path
        assert "ghost" in r.json()["detail"]


@pytest.mark.parametrize("method,path,allowed,denied", [
    ("post", "/v1/models", ["admin"], ["requester", "serving", "auditor", "operator"]),
    ("get", "/v1/models", ["requester", "serving", "auditor", "operator", "admin"], []),
    ("post", "/v1/models/m0/samples", ["admin"], ["requester", "serving", "auditor", "operator"]),
    ("get", "/v1/models/m0/versions", ["serving", "operator", "auditor", "admin"], ["requester"]),
    ("get", "/v1/models/m0/versions/latest", ["serving", "operator", "auditor", "admin"], ["requester"]),
    ("get", "/v1/models/m0/versions/1/weights", ["serving", "admin"], ["requester", "operator", "auditor"]),
    ("get", "/v1/models/m0/aliases", ["serving", "operator", "auditor", "admin"], ["requester"]),
    ("post", "/v1/models/m0/aliases/production", ["operator", "admin"], ["requester", "serving", "auditor"]),
])
def test_roles(client, method, path, allowed, denied):
    assert _register(client).status_code == 201
    kw = {"json": {"version": 1}} if "aliases/" in path else {"json": SPEC} if method == "post" and path == "/v1/models" else {}
    assert getattr(client, method)(path, **kw).status_code == 401
    r = getattr(client, method)(path, headers={"Authorization": "Bearer not-a-token"}, **kw)
    assert r.status_code == 401
    for role in denied:
        r = getattr(client, method)(path, headers=client.auth(role), **kw)
        assert r.status_code == 403, (role, r.text)
    for role in allowed:
        r = getattr(client, method)(path, headers=client.auth(role), **kw)
        assert r.status_code not in (401, 403), (role, r.text)


def test_every_key_of_the_method_config_is_settable_and_stored_whole(client, db):
    """One config source (DESIGN §6.8): the API accepts exactly the library's config keys (those
    the hand-copied settings had dropped too) and stores every key, defaults filled in."""
    from workers.unlearning.methods import config_classes

    lib = config_classes()["mixed_linear"]
    r = _register(client, method_config={"dtype": "mixed", "pass_dtype": "float32", "precondition": True, "cache_bytes": 0, "l2": 0.25})
    assert r.status_code == 201, r.text
    stored = db.execute(select(Model)).scalar_one().method_config
    assert set(stored) == set(lib.model_fields) - {"method"}
    assert stored == {**lib().model_dump(mode="json", exclude={"method"}), "dtype": "mixed", "pass_dtype": "float32", "precondition": True,
                      "cache_bytes": 0, "l2": 0.25}
    assert (lib(**stored).dtype, lib(**stored).pass_dtype) == ("mixed", "float32")  # what the worker parses is what the API accepted
