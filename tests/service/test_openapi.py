"""The OpenAPI document matches the server (issue 10): bearer scheme, problem responses on every
route, the sample upload body described. Schemathesis checks the running server against it
(tests/integration/test_schemathesis.py); this checks the document's promises directly."""

from __future__ import annotations

import pytest

from service.core.errors import PROBLEM_JSON


@pytest.fixture
def doc(client):
    return client.get("/openapi.json").json()


def _ops(doc):
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield path, method, op


def test_bearer_scheme_on_every_v1_route(doc):
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        **doc["components"]["securitySchemes"]["bearerAuth"], "type": "http", "scheme": "bearer"}
    for path, method, op in _ops(doc):
        if path.startswith("/v1/"):
            assert op.get("security") == [{"bearerAuth": []}], (method, path)
            assert {"401", "403"} <= set(op["responses"]), (method, path)


def test_every_error_response_is_a_documented_problem(doc):
    problem = doc["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, method, op in _ops(doc):
        codes = {int(c) for c in op["responses"]}
        assert 431 in codes, (method, path)
        if op.get("parameters") or "requestBody" in op:
            assert 422 in codes, (method, path)
        if "requestBody" in op:
            assert {400, 413, 415} <= codes, (method, path)
        if "{" in path:
            assert 404 in codes, (method, path)
        for code, resp in op["responses"].items():
            if int(code) >= 400:
                assert list(resp["content"]) == [PROBLEM_JSON], (method, path, code)
                assert resp["content"][PROBLEM_JSON]["schema"] == {"$ref": "#/components/schemas/Problem"}


def test_the_sample_upload_body_is_described(doc):
    body = doc["paths"]["/v1/models/{name}/samples"]["post"]["requestBody"]
    assert set(body["content"]) == {"application/json", "application/x-npz", "application/vnd.safetensors",
                                    "application/octet-stream"}
    ref = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    rows = doc["components"]["schemas"][ref]["properties"]["samples"]
    assert rows["items"]["$ref"].endswith("/SampleRow")
    assert "subject_ids" in body["description"]


def test_problem_responses_the_server_sends_have_the_documented_codes(client, doc):
    """A few real errors, each one a code its operation documents."""
    h = client.auth("admin")
    cases = [
        ("get", "/v1/models/{name}", client.get("/v1/models/nope", headers=h)),
        ("get", "/v1/audit", client.get("/v1/audit", params={"since": -1}, headers=h)),
        ("post", "/v1/deletion-requests", client.post("/v1/deletion-requests", content="{", headers={**h, "content-type": "application/json"})),
        ("get", "/v1/jobs", client.get("/v1/jobs")),
    ]
    for method, path, r in cases:
        assert str(r.status_code) in doc["paths"][path][method]["responses"], (path, r.status_code)
        assert r.headers["content-type"].startswith(PROBLEM_JSON)
