"""Audit events and hash-chain verification over the API, against real PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import text
from sqlalchemy.orm import Session

from service.audit.service import append_event, verify_chain
from service.core.security import subject_key


def _seed(db, n=5, key=None):
    for i in range(n):
        append_event(db, actor="test", kind="test.event", subject_key=key if i == 2 else None, payload={"i": i, "x": 0.25})
    db.flush()


def test_list_and_verify(client, db):
    secret = client.app.state.settings.security.secret_key
    _seed(db, key=subject_key(secret, "alice"))
    h = client.auth("auditor")
    page = client.get("/v1/audit?limit=3", headers=h).json()
    assert [e["seq"] for e in page["items"]] == [1, 2, 3] and page["next_since"] == 3
    rest = client.get(f"/v1/audit?since={page['next_since']}", headers=h).json()
    assert [e["seq"] for e in rest["items"]] == [4, 5] and rest["next_since"] is None
    mine = client.get("/v1/audit?subject_id=alice", headers=h).json()["items"]
    assert [e["seq"] for e in mine] == [3]
    v = client.get("/v1/audit/verify", headers=h).json()
    assert v == {"ok": True, "events": 5, "first_broken_seq": None, "reason": None, "head_hash": rest["items"][-1]["hash"]}
    assert client.get("/v1/audit", headers=client.auth("requester")).status_code == 403
    assert client.get("/v1/audit/verify").status_code == 401


def test_tampering_names_the_first_broken_link(client, db):
    _seed(db, n=6)
    db.execute(text("UPDATE audit_events SET payload = '{\"i\": 99, \"x\": 0.25}' WHERE seq = 4"))
    v = client.get("/v1/audit/verify", headers=client.auth("auditor")).json()
    assert v["ok"] is False and v["first_broken_seq"] == 4 and "content" in v["reason"]


def test_a_deleted_event_is_detected(client, db):
    _seed(db, n=6)
    db.execute(text("DELETE FROM audit_events WHERE seq = 3"))
    v = client.get("/v1/audit/verify", headers=client.auth("auditor")).json()
    assert v["ok"] is False and v["first_broken_seq"] == 4


def test_concurrent_appends_form_one_chain(engine):
    from tests_support_truncate import truncate  # noqa: F401 - see below

    truncate(engine)

    def append(i):
        with Session(engine) as s, s.begin():
            append_event(s, actor=f"thread-{i}", kind="test.concurrent", payload={"i": i})

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(append, range(60)))
    with Session(engine) as s:
        result = verify_chain(s)
    truncate(engine)
    assert result.ok and result.events == 60
