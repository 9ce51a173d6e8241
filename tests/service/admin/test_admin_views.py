"""Dashboard views: sign-in, roles, CSRF, every page shows the right data."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from service.audit.service import append_event
from service.core.security import subject_key
from service.models import DeletionRequest, Job, Model, ModelAlias, ModelVersion
from service.models._types import utcnow


def _login(client, role):
    r = client.post("/admin/login", data={"token": client.tokens[role]}, follow_redirects=False)
    assert r.status_code == 303, r.text
    page = client.get("/admin/")
    m = re.search(r'name="csrf" value="([^"]+)"', page.text)
    return m.group(1)


def _seed(db, secret):
    m = Model(name="digits", architecture="mlp", architecture_config={}, input_shape=[4], num_classes=3, linearize="all",
              method_config={}, auto_approve=False)
    db.add(m)
    db.flush()
    now = utcnow()
    reqs = []
    for i, (status, days) in enumerate([("awaiting_approval", 20), ("awaiting_approval", 2), ("failed", 5), ("queued", -1)]):
        key = subject_key(secret, f"person-{i}")
        r = DeletionRequest(id=uuid.uuid4(), subject_id=f"person-{i}", subject_key=key, model_id=m.id, status=status,
                            open_key=f"{key}:{m.id}" if status != "failed" else None,
                            created_at=now - timedelta(days=1), due_at=now + timedelta(days=days), attempts=0)
        db.add(r)
        reqs.append(r)
    v1 = ModelVersion(model_id=m.id, number=1, sha256="a" * 64, size_bytes=10, metrics={"eval_accuracy": 0.91}, bound={"kl_nats": 2e-7, "guarantee": "certified"}, state="revoked")
    v2 = ModelVersion(model_id=m.id, number=2, sha256="b" * 64, size_bytes=10, metrics={"eval_accuracy": 0.93}, bound={"kl_nats": 3e-7, "guarantee": "certified"})
    db.add_all([v1, v2])
    db.flush()
    v2.parent_id = v1.id
    db.add(ModelAlias(model_id=m.id, name="latest", version_id=v2.id))
    db.add(Job(id=uuid.uuid4(), model_id=m.id, kind="forget", status="running", active_key=m.id, step="collect",
               progress={"step": "solve", "phase": "solve", "iteration": 42, "residual": 1.5e-5}, config={}, checkpoint={}, metrics={}))
    db.add(Job(id=uuid.uuid4(), model_id=m.id, kind="train", status="failed", error="boom", config={}, checkpoint={}, metrics={}, attempts=3))
    append_event(db, actor="test", kind="test.seed", payload={})
    db.flush()
    return m, reqs


def test_sign_in_roles(client):
    assert client.get("/admin/", follow_redirects=False).status_code == 303
    for role in ("requester", "serving"):
        r = client.post("/admin/login", data={"token": client.tokens[role]})
        assert r.status_code == 403 and "cannot use the dashboard" in r.text
    assert client.post("/admin/login", data={"token": "nope"}).status_code == 401
    _login(client, "auditor")
    assert client.get("/admin/").status_code == 200


def test_overview_shows_counts_sla_jobs_versions_charts_and_banner(client, db):
    _seed(db, client.app.state.settings.security.secret_key)
    _login(client, "operator")
    page = client.get("/admin/").text
    assert 'data-status="awaiting_approval">2<' in page and 'data-status="failed">1<' in page
    assert "1 overdue" in page
    assert "1 failed job(s), 1 failed request(s)" in page
    assert ">42<" in page and "1.5e-05" in page  # live progress of the running job
    assert "v2" in page and "0.9300" in page
    assert page.count("<svg") == 2 and "information bound" in page
    frag = client.get("/admin/fragments/overview").text
    assert "Jobs running" in frag and "<html" not in frag


def test_requests_filters_search_and_actions(client, db):
    m, reqs = _seed(db, client.app.state.settings.security.secret_key)
    csrf = _login(client, "operator")
    page = client.get("/admin/requests?status=awaiting_approval").text
    assert page.count('name="ids"') == 2
    found = client.get("/admin/requests?subject_id=person-2").text
    assert str(reqs[2].id) in found and str(reqs[0].id) not in found
    r = client.post("/admin/requests/bulk-approve", data={"csrf": csrf, "ids": [str(reqs[0].id), str(reqs[1].id)]}, follow_redirects=False)
    assert r.status_code == 303
    db.expire_all()
    assert {db.get(DeletionRequest, reqs[i].id).status for i in (0, 1)} == {"queued"}
    r = client.post(f"/admin/requests/{reqs[3].id}/deny", data={"csrf": csrf, "reason": ""})
    assert r.status_code == 422
    r = client.post(f"/admin/requests/{reqs[2].id}/retry", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    db.expire_all()
    assert db.get(DeletionRequest, reqs[2].id).status == "queued"
    detail = client.get(f"/admin/requests/{reqs[0].id}").text
    assert "request.approved" in detail or "approve" in detail
    illegal = client.post(f"/admin/requests/{reqs[0].id}/approve", data={"csrf": csrf})
    assert illegal.status_code == 409


def test_csrf_and_auditor_refusals_change_nothing(client, db):
    m, reqs = _seed(db, client.app.state.settings.security.secret_key)
    csrf = _login(client, "operator")
    for bad in ({}, {"csrf": "wrong"}):
        r = client.post(f"/admin/requests/{reqs[0].id}/approve", data=bad)
        assert r.status_code == 403 and "CSRF" in r.text
    db.expire_all()
    assert db.get(DeletionRequest, reqs[0].id).status == "awaiting_approval"
    client.post("/admin/logout", data={"csrf": csrf})
    assert client.get("/admin/", follow_redirects=False).status_code == 303  # signed out
    csrf = _login(client, "auditor")
    page = client.get("/admin/requests").text
    assert 'name="ids"' not in page and "Approve selected" not in page
    r = client.post(f"/admin/requests/{reqs[0].id}/approve", data={"csrf": csrf})
    assert r.status_code == 403 and "read-only" in r.text
    db.expire_all()
    assert db.get(DeletionRequest, reqs[0].id).status == "awaiting_approval"


def test_jobs_models_subjects_audit_pages(client, db):
    m, reqs = _seed(db, client.app.state.settings.security.secret_key)
    csrf = _login(client, "operator")
    jobs = client.get("/admin/jobs").text
    assert "forget" in jobs and "train" in jobs
    failed = db.execute(select(Job).where(Job.status == "failed")).scalar_one()
    detail = client.get(f"/admin/jobs/{failed.id}").text
    assert "boom" in detail and "Retry" in detail
    model = client.get("/admin/models/digits").text
    assert "latest → v2" in model and 'class="revoked"' in model and "Run batch now" in model
    r = client.post("/admin/models/digits/promote", data={"csrf": csrf, "version": "1"})
    assert r.status_code == 409  # v1 is revoked
    r = client.post("/admin/models/digits/promote", data={"csrf": csrf, "version": "2"}, follow_redirects=False)
    assert r.status_code == 303
    assert "production → v2" in client.get("/admin/models/digits").text
    rec = client.get("/admin/subjects?subject_id=person-0").text
    assert "digits" in rec
    audit = client.get("/admin/audit").text
    assert "test.seed" in audit and "alias.moved" in audit
    v = client.post("/admin/audit/verify", data={"csrf": csrf}).text
    assert "Chain verified" in v
    assert client.get("/admin/models").status_code == 200
