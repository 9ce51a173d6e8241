"""Requests belong to clients (DESIGN §10): a requester sees, cancels and merges only into its
own client's requests; another client's request is a 404 and nothing is written; idempotency
keys and the open-request merge are per client; auditors read no raw subject ids; a client's
second token sees the same requests, and revoking one token orphans nothing."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from service.client.tokens import create_token
from service.models import AuditEvent, DeletionRequest, Role

URL = "/v1/deletion-requests"


@pytest.fixture
def other(client, db):
    """Headers of a requester token of a second client."""
    _, token = create_token(db, Role.requester, "client-b")
    db.flush()
    return {"Authorization": f"Bearer {token}"}


def _file(client, headers, key=None, **body):
    h = dict(headers)
    if key is not None:
        h["Idempotency-Key"] = key
    return client.post(URL, json=body, headers=h)


def test_another_clients_request_is_404_for_read_and_cancel(client, db, other, make_model, counts):
    make_model("m1")
    mine = _file(client, client.auth("requester"), subject_id="alice-123", model="m1", reason="asked by alice")
    assert mine.status_code == 202
    rid = mine.json()["id"]
    before = counts()
    r = client.get(f"{URL}/{rid}", headers=other)
    assert r.status_code == 404 and r.json()["type"].endswith("/deletion-request-not-found")
    assert "alice-123" not in r.text and "asked by alice" not in r.text
    unknown = client.get(f"{URL}/{uuid.uuid4()}", headers=other)
    assert unknown.status_code == 404 and unknown.json()["title"] == r.json()["title"]  # indistinguishable
    r = client.post(f"{URL}/{rid}/cancel", headers=other)
    assert r.status_code == 404
    assert counts() == before
    db.expire_all()
    assert db.get(DeletionRequest, uuid.UUID(rid)).status == "queued"
    # Listing, also by subject id, shows none of the first client's requests.
    assert client.get(URL, headers=other).json()["items"] == []
    assert client.get(f"{URL}?subject_id=alice-123", headers=other).json()["items"] == []
    # The owner still reads and cancels it.
    assert client.get(f"{URL}/{rid}", headers=client.auth("requester")).json()["subject_id"] == "alice-123"
    own = client.get(f"{URL}?subject_id=alice-123", headers=client.auth("requester")).json()["items"]
    assert [i["id"] for i in own] == [rid]
    assert client.post(f"{URL}/{rid}/cancel", headers=client.auth("requester")).json()["status"] == "cancelled"


def test_merge_and_idempotency_are_per_client(client, db, other, make_model):
    make_model("m1")
    a = _file(client, client.auth("requester"), key="k-1", subject_id="bob", model="m1")
    assert a.status_code == 202
    # Another client, same subject and model, same key: its own new request, never A's.
    b = _file(client, other, key="k-1", subject_id="bob", model="m1")
    assert b.status_code == 202 and b.json()["id"] != a.json()["id"]
    assert b.json()["client_id"] != a.json()["client_id"]
    # The same client again: replay (same key) and merge (no key) both answer with its own.
    replay = _file(client, other, key="k-1", subject_id="bob", model="m1")
    assert replay.status_code == 200 and replay.json()["id"] == b.json()["id"]
    merged = _file(client, other, subject_id="bob", model="m1")
    assert merged.status_code == 200 and merged.json()["id"] == b.json()["id"]
    assert merged.headers["location"].endswith(b.json()["id"])
    merged_a = _file(client, client.auth("requester"), subject_id="bob", model="m1")
    assert merged_a.status_code == 200 and merged_a.json()["id"] == a.json()["id"]
    # A key reused with another body is refused within the client, and only there.
    assert _file(client, other, key="k-1", subject_id="carol", model="m1").status_code == 422
    rows = db.scalars(select(DeletionRequest).where(DeletionRequest.subject_id == "bob")).all()
    assert len(rows) == 2 and len({r.open_key for r in rows}) == 2


def test_operator_sees_every_client_and_auditor_sees_no_raw_subject_ids(client, other, make_model):
    make_model("m1")
    a = _file(client, client.auth("requester"), subject_id="dave-raw", model="m1").json()
    b = _file(client, other, subject_id="erin-raw", model="m1").json()
    ops = client.get(URL, headers=client.auth("operator")).json()["items"]
    assert {i["id"] for i in ops} >= {a["id"], b["id"]}
    assert {i["subject_id"] for i in ops} >= {"dave-raw", "erin-raw"}
    for path in (URL, f"{URL}/{a['id']}", f"{URL}/{b['id']}", f"{URL}?subject_id=dave-raw"):
        r = client.get(path, headers=client.auth("auditor"))
        assert r.status_code == 200, r.text
        assert "dave-raw" not in r.text and "erin-raw" not in r.text
    one = client.get(f"{URL}/{a['id']}", headers=client.auth("auditor")).json()
    assert one["subject_id"] is None and one["subject_key"] == a["subject_key"] and one["status"] == a["status"]


def test_a_second_token_of_the_client_keeps_its_requests_after_the_first_is_revoked(client, db, make_model):
    make_model("m1")
    row, first = create_token(db, Role.requester, "shop")
    _, second = create_token(db, Role.requester, "shop-rotated", client_id=row.client_id)
    db.flush()
    h1, h2 = {"Authorization": f"Bearer {first}"}, {"Authorization": f"Bearer {second}"}
    rid = _file(client, h1, subject_id="frank", model="m1").json()["id"]
    assert client.get(f"{URL}/{rid}", headers=h2).status_code == 200
    r = client.post(f"/v1/tokens/{row.id}/revoke", headers=client.auth("admin"))
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    revoked = client.get(f"{URL}/{rid}", headers=h1)
    assert revoked.status_code == 401 and revoked.headers["content-type"].startswith("application/problem+json")
    assert client.get(f"{URL}/{rid}", headers=h2).json()["id"] == rid
    assert client.post(f"{URL}/{rid}/cancel", headers=h2).json()["status"] == "cancelled"
    ev = db.scalars(select(AuditEvent).where(AuditEvent.kind == "token.revoked")).one()
    assert ev.payload["token_id"] == row.id
