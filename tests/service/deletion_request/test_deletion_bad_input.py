"""Bad input: every case is a 4xx problem that says what was wrong, and nothing is written."""

from __future__ import annotations

import uuid

import pytest

URL = "/v1/deletion-requests"
PROBLEM = "application/problem+json"


@pytest.fixture
def model(make_model):
    return make_model("m1", auto_approve=False)


def _problem(r, status: int, type_suffix: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["status"] == status and body["type"].endswith("/" + type_suffix)
    assert body["detail"]
    return body


def _fields(body: dict) -> set[str]:
    return {e["field"] for e in body.get("errors", [])}


def test_malformed_json_is_400(client, model, counts):
    before = counts()
    r = client.post(
        URL, content=b'{"subject_id": "x",', headers={**client.auth("requester"), "Content-Type": "application/json"}
    )
    body = _problem(r, 400, "malformed-json")
    assert "JSON" in body["detail"]
    assert counts() == before


@pytest.mark.parametrize(
    ("payload", "field", "needle"),
    [
        ({"model": "m1"}, "body.subject_id", "required"),
        ({"subject_id": ""}, "body.subject_id", "at least 1"),
        ({"subject_id": "   "}, "body.subject_id", "blank"),
        ({"subject_id": "x" * 257}, "body.subject_id", "at most 256"),
        ({"subject_id": 123}, "body.subject_id", "string"),
        ({"subject_id": "ok", "extra": 1}, "body.extra", "not permitted"),
        ({"subject_id": "ok", "model": "  "}, "body.model", "blank"),
        ({"subject_id": "ok", "source": "s" * 201}, "body.source", "at most 200"),
    ],
)
def test_invalid_body_is_422_naming_the_field(client, model, counts, payload, field, needle):
    before = counts()
    r = client.post(URL, json=payload, headers=client.auth("requester"))
    body = _problem(r, 422, "validation-error")
    assert field in _fields(body)
    assert needle in body["detail"].lower() or any(needle in e["message"].lower() for e in body["errors"])
    assert counts() == before


def test_subject_id_of_256_chars_is_accepted(client, model):
    r = client.post(URL, json={"subject_id": "y" * 256, "model": "m1"}, headers=client.auth("requester"))
    assert r.status_code == 202, r.text


def test_unknown_model_is_404(client, model, counts):
    before = counts()
    r = client.post(URL, json={"subject_id": "a", "model": "nope"}, headers=client.auth("requester"))
    body = _problem(r, 404, "model-not-found")
    assert "nope" in body["detail"]
    assert counts() == before
    _problem(client.get(URL, params={"model": "nope"}, headers=client.auth("requester")), 404, "model-not-found")


def test_body_over_the_limit_is_413(small_body_client, model, counts):
    before = counts()
    payload = {"subject_id": "a", "model": "m1", "reason": "r" * 400}
    r = small_body_client.post(URL, json=payload, headers=small_body_client.auth("requester"))
    body = _problem(r, 413, "payload-too-large")
    assert "256" in body["detail"]
    assert counts() == before
    # The same app takes a small body.
    ok = small_body_client.post(URL, json={"subject_id": "a", "model": "m1"}, headers=small_body_client.auth("requester"))
    assert ok.status_code == 202


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", None])
def test_wrong_content_type_is_415(client, model, counts, ctype):
    before = counts()
    headers = client.auth("requester")
    if ctype:
        headers["Content-Type"] = ctype
    r = client.post(URL, content=b'{"subject_id": "a", "model": "m1"}', headers=headers)
    body = _problem(r, 415, "unsupported-media-type")
    assert "application/json" in body["detail"]
    assert counts() == before


def test_over_long_idempotency_key_is_422(client, model, counts):
    before = counts()
    r = client.post(
        URL, json={"subject_id": "a", "model": "m1"}, headers={**client.auth("requester"), "Idempotency-Key": "k" * 201}
    )
    body = _problem(r, 422, "validation-error")
    assert any("idempotency" in f.lower() for f in _fields(body))
    assert counts() == before


@pytest.mark.parametrize("mangle", ["garbage", "abc.def", "flip", "other-scope", "!!!.###"])
def test_bad_cursor_is_400(client, make_model, settings, mangle):
    from service.core.pagination import encode_cursor
    from service.models._types import utcnow

    make_model("m1")
    for i in range(3):
        client.post(URL, json={"subject_id": f"c{i}", "model": "m1"}, headers=client.auth("requester"))
    good = client.get(URL, params={"limit": 1}, headers=client.auth("requester")).json()["next_cursor"]
    assert good is not None
    if mangle == "flip":
        body, sig = good.split(".")
        cursor = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + sig
    elif mangle == "other-scope":
        cursor = encode_cursor(utcnow(), str(uuid.uuid4()), secret=settings.security.secret_key, scope="jobs")
    else:
        cursor = mangle
    r = client.get(URL, params={"cursor": cursor}, headers=client.auth("requester"))
    body = _problem(r, 400, "invalid-cursor")
    assert "cursor" in body["detail"]


def test_bad_status_filter_is_422(client):
    r = client.get(URL, params={"status": "finished"}, headers=client.auth("requester"))
    body = _problem(r, 422, "validation-error")
    assert any(f.startswith("query.status") for f in _fields(body)) and "awaiting_approval" in body["detail"]


def test_malformed_request_id_is_422(client):
    r = client.get(URL + "/not-a-uuid", headers=client.auth("requester"))
    assert "path.request_id" in _fields(_problem(r, 422, "validation-error"))


def test_deny_needs_a_reason(client, model, counts):
    rid = client.post(URL, json={"subject_id": "d", "model": "m1"}, headers=client.auth("requester")).json()["id"]
    before = counts()
    for payload in ({}, {"reason": ""}, {"reason": "  "}):
        r = client.post(f"{URL}/{rid}/deny", json=payload, headers=client.auth("operator"))
        assert "body.reason" in _fields(_problem(r, 422, "validation-error"))
    assert counts() == before
    assert client.get(f"{URL}/{rid}", headers=client.auth("operator")).json()["status"] == "awaiting_approval"


def test_illegal_transition_is_409_naming_the_current_status(client, model, counts):
    rid = client.post(URL, json={"subject_id": "e", "model": "m1"}, headers=client.auth("requester")).json()["id"]
    before = counts()
    body = _problem(client.post(f"{URL}/{rid}/retry", headers=client.auth("operator")), 409, "illegal-transition")
    assert body["current_status"] == "awaiting_approval" and "awaiting_approval" in body["detail"]
    assert counts() == before


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer lethe_not-a-real-token"}, {"Authorization": "Basic abc"}]
)
def test_missing_or_bad_token_is_401(client, model, counts, headers):
    before = counts()
    r = client.post(URL, json={"subject_id": "f", "model": "m1"}, headers=headers)
    _problem(r, 401, "unauthenticated")
    assert r.headers["www-authenticate"] == "Bearer"
    _problem(client.get(URL, headers=headers), 401, "unauthenticated")
    assert counts() == before


def test_wrong_role_is_403(client, model, counts):
    before = counts()
    r = client.post(URL, json={"subject_id": "g", "model": "m1"}, headers=client.auth("serving"))
    body = _problem(r, 403, "forbidden")
    assert "serving" in body["detail"]
    rid = client.post(URL, json={"subject_id": "h", "model": "m1"}, headers=client.auth("requester")).json()["id"]
    before = counts()
    for action in ("approve", "retry"):
        _problem(client.post(f"{URL}/{rid}/{action}", headers=client.auth("requester")), 403, "forbidden")
    _problem(client.post(f"{URL}/{rid}/deny", json={"reason": "x"}, headers=client.auth("auditor")), 403, "forbidden")
    _problem(client.post(f"{URL}/{rid}/cancel", headers=client.auth("auditor")), 403, "forbidden")
    _problem(client.get(URL, headers=client.auth("serving")), 403, "forbidden")
    assert counts() == before
