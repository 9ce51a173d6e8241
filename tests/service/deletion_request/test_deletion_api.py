"""Deletion-request API against the real PostgreSQL: happy paths, transitions, audit, privacy."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from service.audit.service import verify_chain
from service.models import AuditEvent, DeletionRequest, ModelVersion

URL = "/v1/deletion-requests"


def _create(client, role="requester", key=None, **body):
    headers = client.auth(role)
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post(URL, json=body, headers=headers)


def _row(db, request_id) -> DeletionRequest:
    db.expire_all()
    return db.get(DeletionRequest, uuid.UUID(str(request_id)))


def test_create_returns_202_location_and_a_committed_row(client, db, make_model, skey):
    make_model("m1", auto_approve=True, sla_days=12)
    r = _create(client, subject_id="alice-123", model="m1", reason="user asked", source="app")
    assert r.status_code == 202, r.text
    body = r.json()
    assert r.headers["location"] == f"{URL}/{body['id']}"
    assert body["status"] == "queued"
    assert body["subject_id"] == "alice-123" and body["subject_key"] == skey("alice-123")
    assert body["model"] == "m1" and body["reason"] == "user asked" and body["source"] == "app"
    row = _row(db, body["id"])
    assert row.status == "queued" and row.subject_id == "alice-123" and row.reason == "user asked"
    assert row.due_at - row.created_at == timedelta(days=12)
    assert 11.99 < body["days_left"] <= 12 and body["overdue"] is False
    got = client.get(r.headers["location"], headers=client.auth("requester"))
    assert got.status_code == 200 and got.json()["id"] == body["id"]
    assert got.json()["created_at"] == body["created_at"]


def test_model_without_auto_approve_awaits_approval(client, make_model):
    make_model("manual", auto_approve=False, sla_days=3)
    r = _create(client, subject_id="bob", model="manual")
    assert r.status_code == 202
    assert r.json()["status"] == "awaiting_approval"
    assert r.json()["approved_by"] is None
    assert 2.99 < r.json()["days_left"] <= 3


def test_null_model_policy_is_strictest_of_all_models(client, db, make_model):
    from service.models import Model

    make_model("auto-a", auto_approve=True, sla_days=40)
    make_model("manual-b", auto_approve=False, sla_days=9)
    models = db.scalars(select(Model)).all()
    r = _create(client, subject_id="carol", model=None)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["model"] is None
    expected_status = "queued" if all(m.auto_approve for m in models) else "awaiting_approval"
    assert body["status"] == expected_status == "awaiting_approval"
    row = _row(db, body["id"])
    assert row.due_at - row.created_at == timedelta(days=min(m.sla_days for m in models))


def test_idempotent_replay_returns_200_with_the_same_request(client, make_model, counts):
    make_model("m1")
    first = _create(client, key="k-1", subject_id="dave", model="m1")
    before = counts()
    again = _create(client, key="k-1", subject_id="dave", model="m1")
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["lethe-outcome"] == "replayed"
    assert counts() == before


def test_reused_idempotency_key_with_another_body_is_422(client, make_model, counts):
    make_model("m1")
    first = _create(client, key="k-2", subject_id="erin", model="m1")
    before = counts()
    r = _create(client, key="k-2", subject_id="someone-else", model="m1")
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"].endswith("/idempotency-key-reused")
    assert r.json()["existing_request_id"] == first.json()["id"]
    assert counts() == before


def test_second_open_request_is_merged_with_location_of_the_first(client, make_model, counts):
    make_model("m1")
    first = _create(client, key="a", subject_id="frank", model="m1")
    before = counts()
    second = _create(client, key="b", subject_id="frank", model="m1", reason="again")
    assert second.status_code == 200
    assert second.headers["location"] == first.headers["location"]
    assert second.json()["id"] == first.json()["id"] and second.headers["lethe-outcome"] == "merged"
    assert counts() == before
    # A request for another model is separate.
    make_model("m2")
    other = _create(client, subject_id="frank", model="m2")
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    # Once the first closes, a new one can be filed.
    assert client.post(first.headers["location"] + "/cancel", headers=client.auth("requester")).status_code == 200
    third = _create(client, subject_id="frank", model="m1")
    assert third.status_code == 202 and third.json()["id"] != first.json()["id"]


def test_approve_records_operator_and_time(client, db, make_model, skey):
    make_model("manual", auto_approve=False)
    loc = _create(client, subject_id="gina", model="manual").headers["location"]
    r = client.post(loc + "/approve", headers=client.auth("operator"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "queued"
    assert body["approved_by"].endswith(":test-operator") and body["approved_at"] is not None
    row = _row(db, body["id"])
    assert row.status == "queued" and row.open_key is not None and row.subject_id == "gina"
    event = db.scalars(select(AuditEvent).where(AuditEvent.kind == "deletion_request.approved")).one()
    assert event.subject_key == skey("gina")
    assert event.payload["request_id"] == body["id"]
    assert event.payload["from"] == "awaiting_approval" and event.payload["to"] == "queued"


def test_deny_closes_the_request_and_forgets_the_raw_id(client, db, make_model, skey):
    make_model("manual", auto_approve=False)
    loc = _create(client, subject_id="harry-raw-id", model="manual").headers["location"]
    r = client.post(loc + "/deny", json={"reason": "legal hold"}, headers=client.auth("operator"))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "denied" and r.json()["decision_reason"] == "legal hold"
    assert r.json()["subject_id"] is None and r.json()["subject_key"] == skey("harry-raw-id")
    row = _row(db, r.json()["id"])
    assert row.subject_id is None and row.open_key is None and row.subject_key == skey("harry-raw-id")
    event = db.scalars(select(AuditEvent).where(AuditEvent.kind == "deletion_request.denied")).one()
    assert event.payload["reason"] == "legal hold"
    assert "harry-raw-id" not in json.dumps(event.payload) + event.actor + (event.subject_key or "")
    assert verify_chain(db).ok


def test_cancel_from_queued_and_then_illegal(client, db, make_model, counts):
    make_model("m1")
    loc = _create(client, subject_id="ivy-raw", model="m1").headers["location"]
    r = client.post(loc + "/cancel", headers=client.auth("requester"))
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    row = _row(db, r.json()["id"])
    assert row.subject_id is None and row.open_key is None
    before = counts()
    again = client.post(loc + "/cancel", headers=client.auth("admin"))
    assert again.status_code == 409
    assert again.json()["type"].endswith("/illegal-transition")
    assert again.json()["current_status"] == "cancelled"
    assert "cancelled" in again.json()["detail"]
    assert client.post(loc + "/approve", headers=client.auth("operator")).json()["current_status"] == "cancelled"
    assert counts() == before


def test_retry_requeues_a_failed_request(client, db, make_model, skey):
    make_model("m1")
    rid = _create(client, subject_id="jack", model="m1").json()["id"]
    row = _row(db, rid)
    row.status, row.error, row.attempts, row.open_key = "failed", "worker lost", 3, None
    db.flush()
    r = client.post(f"{URL}/{rid}/retry", headers=client.auth("operator"))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "queued" and r.json()["error"] is None and r.json()["attempts"] == 0
    row = _row(db, rid)
    assert row.open_key == f"{skey('jack')}:{row.model_id}:{row.client_id}" and row.client_id is not None
    event = db.scalars(select(AuditEvent).where(AuditEvent.kind == "deletion_request.retried")).one()
    assert event.payload["previous_error"] == "worker lost" and event.payload["previous_attempts"] == 3
    # Retrying a queued request is illegal.
    r = client.post(f"{URL}/{rid}/retry", headers=client.auth("operator"))
    assert r.status_code == 409 and r.json()["current_status"] == "queued"


def test_retry_conflicts_with_a_newer_open_request(client, db, make_model, counts):
    make_model("m1")
    rid = _create(client, subject_id="kate", model="m1").json()["id"]
    row = _row(db, rid)
    row.status, row.open_key = "failed", None
    db.flush()
    newer = _create(client, subject_id="kate", model="m1")
    assert newer.status_code == 202
    before = counts()
    r = client.post(f"{URL}/{rid}/retry", headers=client.auth("operator"))
    assert r.status_code == 409, r.text
    assert r.json()["open_request_id"] == newer.json()["id"]
    assert _row(db, rid).status == "failed"
    assert counts() == before


def test_read_shows_clean_version_number_and_overdue(client, db, make_model):
    model = make_model("m1")
    rid = _create(client, subject_id="leo", model="m1").json()["id"]
    version = ModelVersion(model_id=model.id, number=4, sha256="0" * 64, size_bytes=1)
    db.add(version)
    db.flush()
    row = _row(db, rid)
    row.clean_version_id = version.id
    row.due_at = row.created_at - timedelta(days=2)
    db.flush()
    body = client.get(f"{URL}/{rid}", headers=client.auth("auditor")).json()
    assert body["clean_version"] == 4
    assert body["overdue"] is True and -2.01 < body["days_left"] < -1.99


def test_list_filters(client, make_model):
    make_model("auto")
    make_model("manual", auto_approve=False)
    a = _create(client, subject_id="s-a", model="auto").json()
    b = _create(client, subject_id="s-b", model="manual").json()
    c = _create(client, subject_id="s-a", model="manual").json()
    h = client.auth("auditor")

    def ids(**params):
        r = client.get(URL, params=params, headers=h)
        assert r.status_code == 200, r.text
        return [i["id"] for i in r.json()["items"]]

    assert ids(model="manual") == [c["id"], b["id"]]
    assert ids(status="queued") == [a["id"]]
    assert ids(status="awaiting_approval", model="manual") == [c["id"], b["id"]]
    assert set(ids(status=["queued", "awaiting_approval"])) == {a["id"], b["id"], c["id"]}
    assert ids(subject_id="s-a") == [c["id"], a["id"]]
    # A closed request (raw id cleared) is still found by its subject id.
    client.post(f"{URL}/{a['id']}/cancel", headers=client.auth("requester"))
    assert ids(subject_id="s-a", status="cancelled") == [a["id"]]
    assert ids(subject_id="nobody") == []


def test_cursor_pagination_walks_every_request_once_newest_first(client, make_model):
    make_model("m1")
    created = [_create(client, subject_id=f"p-{i}", model="m1").json()["id"] for i in range(7)]
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 3, "model": "m1"} | ({"cursor": cursor} if cursor else {})
        r = client.get(URL, params=params, headers=client.auth("requester"))
        assert r.status_code == 200, r.text
        page = r.json()
        pages += 1
        assert len(page["items"]) <= 3
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10
    assert pages == 3
    assert seen == list(reversed(created))


@pytest.mark.parametrize("role", ["requester", "operator", "auditor", "admin"])
def test_read_roles(client, make_model, role):
    make_model("m1")
    loc = _create(client, subject_id="reader", model="m1").headers["location"]
    assert client.get(loc, headers=client.auth(role)).status_code == 200
    assert client.get(URL, headers=client.auth(role)).status_code == 200


def test_admin_may_file_requests_but_not_operator(client, make_model, counts):
    """DESIGN §10: requesters (and admins) file; operators approve, deny, retry."""
    make_model("m1")
    before = counts()
    r = _create(client, role="operator", subject_id="o-1", model="m1")
    assert r.status_code == 403 and r.headers["content-type"].startswith("application/problem+json")
    assert counts() == before
    assert _create(client, role="admin", subject_id="o-2", model="m1").status_code == 202


def test_unknown_request_id_is_404(client):
    r = client.get(f"{URL}/{uuid.uuid4()}", headers=client.auth("requester"))
    assert r.status_code == 404 and r.json()["type"].endswith("/deletion-request-not-found")
    r = client.post(f"{URL}/{uuid.uuid4()}/approve", headers=client.auth("operator"))
    assert r.status_code == 404


@pytest.mark.parametrize("changed", [{"source": "web-form"}, {"reason": "another reason"}, {"source": None}, {"reason": None}])
def test_reused_idempotency_key_with_another_source_or_reason_is_422(client, make_model, counts, changed):
    """The idempotency check compares the whole body: ``source`` and ``reason`` too (pins both
    comparisons, on the single-statement PostgreSQL path and the portable path)."""
    make_model("m1")
    body = {"subject_id": "frank", "model": "m1", "reason": "user asked", "source": "support-ticket"}
    first = _create(client, key="k-src", **body)
    assert first.status_code == 202
    before = counts()
    r = _create(client, key="k-src", **{**body, **changed})
    assert r.status_code == 422 and r.json()["type"].endswith("/idempotency-key-reused"), changed
    assert counts() == before
    assert _create(client, key="k-src", **body).status_code == 200  # the same body still replays
