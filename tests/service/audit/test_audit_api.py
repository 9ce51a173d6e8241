"""GET /v1/audit and GET /v1/audit/verify against real PostgreSQL: paging, filters, roles,
and verification that names exactly the link an attacker broke."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text

from service.audit import keys as audit_keys
from service.audit.service import append_event, canonical, legacy_hash
from service.core.security import subject_key
from service.models import AuditEvent


def _append(db, n: int, *, kinds=("a.one", "b.two"), keys=None) -> list[AuditEvent]:
    out = []
    for i in range(n):
        out.append(append_event(
            db, actor=f"tester-{i}", kind=kinds[i % len(kinds)],
            subject_key=(keys or {}).get(i), payload={"i": i, "x": i / 7, "nested": {"list": [i, "s"]}},
        ))
    db.flush()
    return out


def _verify(client):
    r = client.get("/v1/audit/verify", headers=client.auth("auditor"))
    assert r.status_code == 200, r.text
    return r.json()


def test_events_page_by_seq_and_filter_by_kind_and_subject(client, db):
    secret = client.app.state.settings.security.secret_key
    alice = subject_key(secret, "alice-123")
    events = _append(db, 7, keys={2: alice, 5: alice, 6: subject_key(secret, "bob")})
    h = client.auth("auditor")
    seen, since, pages = [], events[0].seq - 1, 0
    while since is not None:
        r = client.get(f"/v1/audit?since={since}&limit=3", headers=h)
        assert r.status_code == 200, r.text
        body = r.json()
        seen += body["items"]
        since, pages = body["next_since"], pages + 1
        assert pages <= 5
    assert pages == 3
    assert [e["seq"] for e in seen] == [e.seq for e in events]
    assert [e["hash"] for e in seen] == [e.hash for e in events]
    assert seen[3]["payload"] == {"i": 3, "x": 3 / 7, "nested": {"list": [3, "s"]}}
    assert all(seen[i]["prev_hash"] == seen[i - 1]["hash"] for i in range(1, len(seen)))

    kinds = client.get(f"/v1/audit?since={events[0].seq - 1}&kind=b.two", headers=h).json()["items"]
    assert [e["seq"] for e in kinds] == [events[i].seq for i in (1, 3, 5)]

    r = client.get("/v1/audit?subject_id=alice-123", headers=h)
    assert [e["seq"] for e in r.json()["items"]] == [events[2].seq, events[5].seq]
    assert "alice-123" not in r.text  # matched by key; the raw id is nowhere in the log
    assert all(e["subject_key"] == alice for e in r.json()["items"])
    assert client.get("/v1/audit?subject_id=nobody", headers=h).json() == {"items": [], "next_since": None}
    assert client.get(f"/v1/audit?since={events[-1].seq}", headers=h).json() == {"items": [], "next_since": None}


@pytest.mark.parametrize("query", ["since=-1", "since=abc", "limit=0", "limit=5000", "kind=", "subject_id="])
def test_bad_query_is_a_problem(client, query):
    r = client.get(f"/v1/audit?{query}", headers=client.auth("auditor"))
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"][0]["field"].startswith("query.")


@pytest.mark.parametrize("path", ["/v1/audit", "/v1/audit/verify"])
def test_roles(client, path):
    assert client.get(path).status_code == 401
    for role in ("requester", "operator", "serving"):
        r = client.get(path, headers=client.auth(role))
        assert r.status_code == 403 and r.headers["content-type"].startswith("application/problem+json")
    assert client.get(path, headers=client.auth("auditor")).status_code == 200
    assert client.get(path, headers=client.auth("admin")).status_code == 200


def test_verify_reports_the_head(client, db):
    before = _verify(client)
    assert before["ok"] is True
    events = _append(db, 4)
    after = _verify(client)
    assert after == {"ok": True, "events": before["events"] + 4, "first_broken_seq": None, "reason": None,
                     "head_hash": events[-1].hash, "checkpoint_seq": before["checkpoint_seq"],
                     "events_after_checkpoint": before["events_after_checkpoint"] + 4}


@pytest.mark.parametrize(
    "assignment",
    [
        "payload = '{\"i\": 99, \"x\": 0.5, \"nested\": {\"list\": [3, \"s\"]}}'",
        "actor = 'mallory'",
        "kind = 'c.three'",
        "subject_key = 'f00d'",
        "at = at + interval '1 microsecond'",
    ],
)
def test_tampering_with_a_middle_event_names_its_seq(client, db, assignment):
    events = _append(db, 6)
    target = events[3].seq
    db.execute(text(f"UPDATE audit_events SET {assignment} WHERE seq = :s"), {"s": target})
    v = _verify(client)
    assert v["ok"] is False and v["first_broken_seq"] == target
    assert "content" in v["reason"] and v["head_hash"] is None


def test_a_database_writer_without_the_key_cannot_rehash_an_event(client, db):
    """The old attack (recompute sha256 over the edited event) no longer yields a valid link."""
    events = _append(db, 5)
    ev = events[2]
    forged = {"i": 2, "x": 0.0, "nested": {"list": []}}
    new_hash = legacy_hash(ev.prev_hash, canonical(ev.seq, ev.at, ev.actor, ev.kind, ev.subject_key, forged, ev.key_id))
    db.execute(text("UPDATE audit_events SET payload = CAST(:p AS jsonb), hash = :h WHERE seq = :s"),
               {"p": '{"i": 2, "x": 0.0, "nested": {"list": []}}', "h": new_hash, "s": ev.seq})
    v = _verify(client)
    assert v["ok"] is False and v["first_broken_seq"] == ev.seq and "content" in v["reason"]


def test_rewriting_an_event_with_the_key_still_breaks_the_next_link(client, db):
    events = _append(db, 5)
    ev = events[2]
    forged = {"i": 2, "x": 0.0, "nested": {"list": []}}
    keys = audit_keys.current()
    new_hash = keys.link(ev.key_id, ev.prev_hash, canonical(ev.seq, ev.at, ev.actor, ev.kind, ev.subject_key, forged, ev.key_id))
    db.execute(text("UPDATE audit_events SET payload = CAST(:p AS jsonb), hash = :h WHERE seq = :s"),
               {"p": '{"i": 2, "x": 0.0, "nested": {"list": []}}', "h": new_hash, "s": ev.seq})
    v = _verify(client)
    assert v["ok"] is False and v["first_broken_seq"] == events[3].seq and "prev_hash" in v["reason"]


@pytest.mark.parametrize("which", ["first", "middle"])
def test_a_deleted_event_is_detected(client, db, which):
    events = _append(db, 5)
    first_seq = db.execute(select(AuditEvent.seq).order_by(AuditEvent.seq).limit(1)).scalar_one()
    assert first_seq == 1
    victim = first_seq if which == "first" else events[2].seq
    db.execute(text("DELETE FROM audit_events WHERE seq = :s"), {"s": victim})
    v = _verify(client)
    assert v["ok"] is False and v["first_broken_seq"] == victim + 1 and "missing" in v["reason"]
