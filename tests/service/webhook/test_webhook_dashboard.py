"""Dashboard of issue 19: deliveries per subscription with replay, the stop-the-line banner with
its acknowledge action, the SLA extension form. Actions go through the dashboard; assertions
read what the services wrote."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

from sqlalchemy import select

from service.models import AuditEvent, DeletionRequest, Job, Model, WebhookDelivery
from service.models._types import utcnow


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF field on the page"
    return m.group(1)


def _signed_in(client, role: str) -> str:
    form = client.get("/admin/login")
    r = client.post("/admin/login", data={"token": client.tokens[role], "csrf": _csrf(form.text)}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return _csrf(client.get("/admin/").text)


def _model(db, name="banner-model") -> Model:
    m = Model(name=name, architecture="mlp", architecture_config={}, input_shape=[4], num_classes=2, linearize="all",
              method_config={}, auto_approve=False)
    db.add(m)
    db.flush()
    return m


def test_banner_and_acknowledge(client, db) -> None:
    m = _model(db)
    job = Job(id=uuid.uuid4(), model_id=m.id, kind="forget", status="failed", attempts=3, max_attempts=3, progress={},
              config={}, checkpoint={}, metrics={}, error="boom", finished_at=utcnow())
    db.add(job)
    db.flush()
    csrf = _signed_in(client, "operator")
    page = client.get("/admin/requests").text
    assert 'id="line-stop-banner-model"' in page and str(job.id) in page
    r = client.post(f"/admin/line-stops/{job.id}/acknowledge", data={"csrf": csrf, "reason": "  "}, follow_redirects=False)
    assert r.status_code == 422
    r = client.post(f"/admin/line-stops/{job.id}/acknowledge", data={"csrf": csrf, "reason": "looked: bad data"},
                    follow_redirects=False)
    assert r.status_code == 303
    db.expire_all()
    assert db.get(Job, job.id).acknowledge_reason == "looked: bad data"
    assert 'id="line-stop-banner-model"' not in client.get("/admin/requests").text
    # an auditor sees the banner but no action
    db.add(Job(id=uuid.uuid4(), model_id=m.id, kind="forget", status="failed", attempts=1, max_attempts=3, progress={},
               config={}, checkpoint={}, metrics={}, finished_at=utcnow()))
    db.flush()
    client.cookies.clear()
    _signed_in(client, "auditor")
    page = client.get("/admin/").text
    assert 'id="line-stop-banner-model"' in page and "/acknowledge" not in page


def test_extension_form_and_timeline(client, db, settings) -> None:
    m = _model(db, "ext-dash")
    rid = uuid.uuid4()
    db.add(DeletionRequest(id=rid, subject_id="gina-3", subject_key="k" * 64, model_id=m.id, status="awaiting_approval",
                           open_key=f"{'k' * 64}:{m.id}:-", created_at=utcnow(), due_at=utcnow() + timedelta(days=3), attempts=0))
    db.flush()
    csrf = _signed_in(client, "operator")
    assert 'id="extend"' in client.get(f"/admin/requests/{rid}").text
    too_long = settings.pipeline.sla_extension_max_days + 1
    r = client.post(f"/admin/extensions/{rid}", data={"csrf": csrf, "days": str(too_long), "reason": "x"}, follow_redirects=False)
    assert r.status_code == 422
    r = client.post(f"/admin/extensions/{rid}", data={"csrf": csrf, "days": "14", "reason": "three systems"}, follow_redirects=False)
    assert r.status_code == 303
    page = client.get(f"/admin/requests/{rid}").text
    assert 'id="extension"' in page and "three systems" in page and "deletion_request.extended" in page
    assert 'id="extend"' not in page
    r = client.post(f"/admin/extensions/{rid}", data={"csrf": csrf, "days": "1", "reason": "again"}, follow_redirects=False)
    assert r.status_code == 409


def test_deliveries_page_and_replay(client, db, receiver, relay, settings) -> None:
    r = client.post("/v1/webhooks", json={"url": receiver.url, "event_types": ["request.status_changed"]},
                    headers=client.auth("operator"))
    hook = r.json()
    receiver.codes = [500] * settings.webhooks.max_attempts
    assert client.post("/v1/deletion-requests", json={"subject_id": "hank-5"}, headers=client.auth("requester")).status_code == 202
    import time

    for _ in range(settings.webhooks.max_attempts):
        relay()
        time.sleep(0.06)
    d = db.scalars(select(WebhookDelivery)).one()
    assert d.status == "dead"
    csrf = _signed_in(client, "operator")
    assert "1 dead" in client.get("/admin/webhooks").text
    page = client.get(f"/admin/webhooks/{hook['id']}").text
    assert d.message_id in page and "#1 500" in page and f"Replay delivery {d.id}" in page
    r = client.post(f"/admin/webhooks/{hook['id']}/deliveries/{d.id}/replay", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    relay()
    db.expire_all()
    assert db.get(WebhookDelivery, d.id).status == "delivered"
    assert db.scalars(select(AuditEvent).where(AuditEvent.kind == "webhook.replayed")).one().actor.startswith("token:")
    # without CSRF: refused
    r = client.post(f"/admin/webhooks/{hook['id']}/deliveries/{d.id}/replay", data={}, follow_redirects=False)
    assert r.status_code == 403
