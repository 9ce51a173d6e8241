"""Input that never reaches a 500 (issue 10): integers bounded to what the database holds,
documented page limits, subject ids per DESIGN §10, consent dates, timestamps with an offset,
a header size limit, duplicate JSON keys."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from service.core.types import LIMIT_MAX

SPEC = {"name": "vec", "architecture": "mlp", "architecture_config": {"in_features": 3, "hidden": [4], "num_classes": 2},
        "input_shape": [3], "num_classes": 2}
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$")


@pytest.fixture
def model(client):
    r = client.post("/v1/models", json=SPEC, headers=client.auth("admin"))
    assert r.status_code == 201, r.text
    return SPEC["name"]


def _problem(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    return r.json()


# ----------------------------------------------------------------------------- integers
@pytest.mark.parametrize("field,value", [
    ("batch_window_s", 2**70), ("batch_window_s", 2**31), ("batch_size", 9223372036854775808), ("batch_size", 2**31),
])
def test_model_integers_beyond_the_column_are_422(client, field, value):
    r = client.post("/v1/models", json={**SPEC, field: value}, headers=client.auth("admin"))
    body = _problem(r, 422)
    assert any(field in e["field"] for e in body["errors"])
    ok = client.post("/v1/models", json={**SPEC, field: 2**31 - 1}, headers=client.auth("admin"))
    assert ok.status_code == 201, ok.text


def test_audit_since_beyond_bigint_is_422_and_the_largest_bigint_is_fine(client):
    _problem(client.get("/v1/audit", params={"since": "99999999999999999999"}, headers=client.auth("admin")), 422)
    _problem(client.get("/v1/audit", params={"since": 2**63}, headers=client.auth("admin")), 422)
    r = client.get("/v1/audit", params={"since": 2**63 - 1}, headers=client.auth("admin"))
    assert r.status_code == 200 and r.json()["items"] == []


def test_alias_move_and_version_refs_beyond_int32(client, model):
    r = client.post(f"/v1/models/{model}/aliases/production", json={"version": 2**31}, headers=client.auth("admin"))
    _problem(r, 422)
    for ref in ("99999999999999999999", "²", "١٢"):
        r = client.get(f"/v1/models/{model}/versions/{ref}", headers=client.auth("admin"))
        _problem(r, 404)
        r = client.get(f"/v1/models/{model}/versions/{ref}", headers={**client.auth("admin"), "If-None-Match": '"x"'})
        _problem(r, 404)


@pytest.mark.parametrize("path", ["/v1/deletion-requests", "/v1/models", "/v1/models/vec/versions", "/v1/jobs"])
def test_every_list_limit_has_a_documented_maximum(client, model, path):
    _problem(client.get(path, params={"limit": 10**12}, headers=client.auth("admin")), 422)
    _problem(client.get(path, params={"limit": LIMIT_MAX + 1}, headers=client.auth("admin")), 422)
    assert client.get(path, params={"limit": LIMIT_MAX}, headers=client.auth("admin")).status_code == 200
    schema = client.get("/openapi.json").json()
    template = path.replace("/vec/", "/{name}/")
    ops = [op for p, item in schema["paths"].items() for m, op in item.items() if p == template and m == "get"]
    (limit,) = [prm for prm in ops[0]["parameters"] if prm["name"] == "limit"]
    bounds = limit["schema"].get("anyOf", [limit["schema"]])[0]
    assert bounds["maximum"] == LIMIT_MAX and str(LIMIT_MAX) in limit["description"]


# ----------------------------------------------------------------------------- subject ids
@pytest.mark.parametrize("subject,rule", [
    ("a\u0000b", "control"), ("\u0000", "control"), ("a\tb", "control"), ("\u200b", "format"), ("a\u200db", "format"),
    ("a\ufeffb", "format"), (" user-0013 ", "leading or trailing whitespace"), ("user-0013 ", "leading or trailing whitespace"),
    ("a\u00a0b", "separator"), ("a\u2028b", "line separator"), ("a\u3000b", "separator"),
])
def test_subject_ids_with_refused_characters_are_422_naming_the_rule(client, subject, rule):
    r = client.post("/v1/deletion-requests", json={"subject_id": subject}, headers=client.auth("admin"))
    body = _problem(r, 422)
    assert rule in body["detail"], body["detail"]
    # The same rule for lookups by subject id.
    r = client.get("/v1/deletion-requests", params={"subject_id": subject}, headers=client.auth("admin"))
    assert rule in _problem(r, 422)["detail"]


def test_subject_ids_are_nfc_normalised_so_both_spellings_are_one_subject(client):
    decomposed, composed = "jose\u0301-42", "jos\u00e9-42"
    first = client.post("/v1/deletion-requests", json={"subject_id": decomposed}, headers=client.auth("admin"))
    assert first.status_code == 202, first.text
    assert first.json()["subject_id"] == composed
    again = client.post("/v1/deletion-requests", json={"subject_id": composed}, headers=client.auth("admin"))
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"], again.text  # merged: same subject
    inner_space = client.post("/v1/deletion-requests", json={"subject_id": "Ada Lovelace"}, headers=client.auth("admin"))
    assert inner_space.status_code == 202, inner_space.text


def test_sample_uploads_refuse_bad_subject_ids_in_every_format(client, model):
    rows = [{"subject_id": "ok-1", "split": "user", "label": 0, "x": [0.0, 1.0, 2.0]},
            {"subject_id": "bad\u0000", "split": "user", "label": 1, "x": [0.0, 1.0, 2.0]}]
    r = client.post(f"/v1/models/{model}/samples", json={"samples": rows}, headers=client.auth("admin"))
    assert "control" in _problem(r, 422)["detail"]
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((2, 3)), labels=np.array([0, 1]), subject_ids=np.array(["ok-1", "\u200bzw"]), split=np.array("user"))
    r = client.post(f"/v1/models/{model}/samples", content=buf.getvalue(),
                    headers={**client.auth("admin"), "content-type": "application/x-npz"})
    body = _problem(r, 422)
    assert "format" in body["detail"] and body["row"] == 1
    assert not any(client.get(f"/v1/models/{model}", headers=client.auth("admin")).json()["samples"].values())


def test_consent_renewal_in_the_future_is_422_in_the_body_and_the_query(client, model):
    rows = [{"subject_id": "c-1", "split": "user", "label": 0, "x": [0.0, 1.0, 2.0]}]
    for when in ("9999-12-31T00:00:00Z", (datetime.now(UTC) + timedelta(hours=1)).isoformat()):
        r = client.post(f"/v1/models/{model}/samples", json={"samples": rows, "consent_renewed_at": when},
                        headers=client.auth("admin"))
        assert "future" in _problem(r, 422)["detail"]
        r = client.post(f"/v1/models/{model}/samples", params={"consent_renewed_at": when}, json={"samples": rows},
                        headers=client.auth("admin"))
        assert "future" in _problem(r, 422)["detail"]
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    r = client.post(f"/v1/models/{model}/samples", json={"samples": rows, "consent_renewed_at": past},
                    headers=client.auth("admin"))
    assert r.status_code == 201, r.text


# ----------------------------------------------------------------------------- times, headers, JSON
def test_every_returned_timestamp_is_rfc3339_with_a_utc_offset(client, model):
    r = client.post("/v1/deletion-requests", json={"subject_id": "t-1", "model": model}, headers=client.auth("admin"))
    assert r.status_code == 202
    docs = [r.json(), client.get("/v1/deletion-requests", headers=client.auth("admin")).json(),
            client.get("/v1/audit", headers=client.auth("admin")).json(),
            client.get(f"/v1/models/{model}", headers=client.auth("admin")).json()]
    seen = []

    def walk(v, key=""):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, k)
        elif isinstance(v, list):
            for x in v:
                walk(x, key)
        elif isinstance(v, str) and (key.endswith("_at") or key == "at"):
            seen.append((key, v))

    walk(docs)
    assert len(seen) >= 5
    bad = [(k, v) for k, v in seen if not RFC3339_UTC.match(v)]
    assert not bad, bad


def test_headers_over_the_limit_are_431(client):
    limit = client.app.state.settings.api.max_header_bytes
    r = client.get("/healthz", headers={"x-padding": "a" * (limit + 1)})
    body = _problem(r, 431)
    assert str(limit) in body["detail"]
    assert client.get("/healthz", headers={"x-padding": "a" * (limit // 2)}).status_code == 200


def test_duplicate_json_keys_are_422_naming_the_key_and_nothing_is_written(client):
    raw = '{"subject_id": "dup-1", "subject_id": "dup-2"}'
    r = client.post("/v1/deletion-requests", content=raw,
                    headers={**client.auth("admin"), "content-type": "application/json"})
    body = _problem(r, 422)
    assert "subject_id" in body["detail"]
    assert client.get("/v1/deletion-requests", headers=client.auth("admin")).json()["items"] == []
    nested = json.dumps({"name": "n1", "architecture": "mlp", "input_shape": [3], "num_classes": 2})
    nested = nested[:-1] + ', "method_config": {"l2": 1, "l2": 2}}'
    r = client.post("/v1/models", content=nested, headers={**client.auth("admin"), "content-type": "application/json"})
    assert "l2" in _problem(r, 422)["detail"]
    # Too deep to parse is a 400, not a 500.
    r = client.post("/v1/deletion-requests", content="[" * 100_000, headers={**client.auth("admin"), "content-type": "application/json"})
    assert r.status_code == 400
