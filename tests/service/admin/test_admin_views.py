"""Dashboard views: sign-in, roles, CSRF, sessions, and every page shows the right data.

Data goes in through the ORM (rows the pipeline would have written) and the actions go through
the dashboard, so every assertion checks what the services really did.
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text

from service.admin import auth
from service.audit.service import append_event
from service.core.security import subject_key
from service.models import (
    OPEN_REQUEST_STATUSES,
    AliasEvent,
    ApiToken,
    AuditEvent,
    DeletionRequest,
    Job,
    Model,
    ModelAlias,
    ModelVersion,
    RequestStatus,
    Sample,
    SampleChunk,
)
from service.models._types import utcnow


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF field on the page"
    return m.group(1)


def _login(client, role: str, next_url: str | None = None):
    form = client.get("/admin/login" + (f"?next={next_url}" if next_url else ""))
    data = {"token": client.tokens[role], "csrf": _csrf(form.text)}
    if next_url:
        data["next"] = next_url
    return client.post("/admin/login", data=data, follow_redirects=False)


def _signed_in(client, role: str) -> str:
    r = _login(client, role)
    assert r.status_code == 303, r.text
    return _csrf(client.get("/admin/").text)


def _secret(client) -> str:
    return client.app.state.settings.security.secret_key


def _seed(db, secret):
    """One model with two versions (v1 revoked), four requests with different deadlines, a
    running and a failed job, an audit event."""
    m = Model(name="digits", architecture="mlp", architecture_config={}, input_shape=[4], num_classes=3, linearize="all",
              method_config={}, auto_approve=False)
    other = Model(name="faces", architecture="mlp", architecture_config={}, input_shape=[4], num_classes=3, linearize="all",
                  method_config={})
    db.add_all([m, other])
    db.flush()
    now = utcnow()
    reqs = []
    plan = [("awaiting_approval", 20, m), ("awaiting_approval", 2, m), ("failed", 5, m), ("queued", -1, m), ("queued", 7, other)]
    for i, (status, days, model) in enumerate(plan):
        key = subject_key(secret, f"person-{i}")
        r = DeletionRequest(id=uuid.uuid4(), subject_id=f"person-{i}", subject_key=key, model_id=model.id, status=status,
                            open_key=f"{key}:{model.id}" if status != "failed" else None, error="boom" if status == "failed" else None,
                            created_at=now - timedelta(days=1, minutes=i), due_at=now + timedelta(days=days), attempts=0)
        db.add(r)
        reqs.append(r)
    v1 = ModelVersion(model_id=m.id, number=1, sha256="a" * 64, size_bytes=10, metrics={"eval_accuracy": 0.91},
                      bound={"kl_nats": 2e-7, "guarantee": "certified"}, state="revoked", revoked_at=now)
    v2 = ModelVersion(model_id=m.id, number=2, sha256="b" * 64, size_bytes=10, metrics={"eval_accuracy": 0.93},
                      bound={"kl_nats": 3e-7, "guarantee": "certified"})
    db.add_all([v1, v2])
    db.flush()
    v2.parent_id = v1.id
    db.add(ModelAlias(model_id=m.id, name="latest", version_id=v2.id))
    db.add(Job(id=uuid.uuid4(), model_id=m.id, kind="forget", status="running", active_key=m.id, step="collect",
               progress={"step": "solve", "iteration": 42, "residual": 1.5e-5}, config={"request_ids": []}, checkpoint={},
               metrics={}))
    db.add(Job(id=uuid.uuid4(), model_id=m.id, kind="train", status="failed", error="boom: out of memory", step="collect",
               config={}, checkpoint={}, metrics={"collect_s": 0.25}, attempts=3))
    append_event(db, actor="test", kind="test.seed", payload={})
    db.flush()
    return m, reqs


def _status(db, r) -> str:
    db.expire_all()
    return db.get(DeletionRequest, r.id).status


# ----------------------------------------------------------------------------- sign-in and sessions


def test_sign_in_refuses_other_roles_unknown_tokens_and_missing_csrf(client, db):
    assert client.get("/admin/", follow_redirects=False).headers["location"].startswith("/admin/login")
    for role in ("requester", "serving"):
        r = _login(client, role)
        assert r.status_code == 403 and "cannot use the dashboard" in r.text
        assert auth.COOKIE not in client.cookies
    form = client.get("/admin/login")
    assert client.post("/admin/login", data={"token": "nope", "csrf": _csrf(form.text)}).status_code == 401
    # the sign-in form is CSRF-protected too: without the pre-session token, or with a wrong one
    r = client.post("/admin/login", data={"token": client.tokens["operator"]}, follow_redirects=False)
    assert r.status_code == 403 and auth.COOKIE not in client.cookies
    client.get("/admin/login")
    r = client.post("/admin/login", data={"token": client.tokens["operator"], "csrf": "forged"}, follow_redirects=False)
    assert r.status_code == 403 and auth.COOKIE not in client.cookies
    # a revoked token cannot sign in
    row = db.execute(select(ApiToken).where(ApiToken.role == "admin")).scalars().first()
    row.revoked_at = utcnow()
    db.flush()
    assert _login(client, "admin").status_code == 401


def test_session_cookie_attributes_and_next_url(client, settings):
    r = _login(client, "auditor", next_url="/admin/jobs")
    assert r.status_code == 303 and r.headers["location"] == "/admin/jobs"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith(auth.COOKIE + "="))
    attrs = {a.strip().split("=")[0].lower(): a.strip() for a in cookie.split(";")}
    assert "httponly" in attrs and attrs["samesite"].lower() == "samesite=lax"
    assert attrs["max-age"] == f"Max-Age={settings.security.session_max_age_s}" and attrs["path"] == "Path=/admin"
    assert client.get("/admin/jobs").status_code == 200
    # an off-site "next" is ignored
    client.cookies.clear()
    r = _login(client, "auditor", next_url="//evil.example/admin/")
    assert r.headers["location"] == "/admin/"


def test_tampered_expired_and_revoked_sessions_end(client, db, monkeypatch, settings):
    _signed_in(client, "operator")
    good = client.cookies.get(auth.COOKIE)
    payload, sig = good.rsplit(".", 1)
    client.cookies.clear()
    client.cookies.set(auth.COOKIE, payload + "." + ("0" if sig[0] != "0" else "1") + sig[1:])
    assert client.get("/admin/", follow_redirects=False).status_code == 303
    client.cookies.clear()
    client.cookies.set(auth.COOKIE, good)
    assert client.get("/admin/").status_code == 200
    now = auth.time.time()
    monkeypatch.setattr(auth.time, "time", lambda: now + settings.security.session_max_age_s + 5)
    assert client.get("/admin/", follow_redirects=False).status_code == 303
    monkeypatch.undo()
    assert client.get("/admin/").status_code == 200
    db.execute(text("UPDATE api_tokens SET revoked_at = now() WHERE role = 'operator'"))
    assert client.get("/admin/", follow_redirects=False).status_code == 303


def test_sign_out_needs_csrf_and_ends_the_session(client):
    csrf = _signed_in(client, "operator")
    assert client.post("/admin/logout", data={}).status_code == 403
    assert client.get("/admin/").status_code == 200  # still signed in
    r = client.post("/admin/logout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and auth.COOKIE not in client.cookies
    assert client.get("/admin/", follow_redirects=False).status_code == 303
    assert client.get("/admin/fragments/overview").status_code == 401


# ----------------------------------------------------------------------------- overview


def test_overview_shows_counts_sla_jobs_versions_charts_and_banner(client, db):
    _seed(db, _secret(client))
    _signed_in(client, "operator")
    page = client.get("/admin/").text
    assert 'data-status="awaiting_approval">2<' in page and 'data-status="queued">2<' in page and 'data-status="failed">1<' in page
    assert "1 overdue" in page and "of 4 open" in page
    levels = re.findall(r'data-level="(\w+)">(-?[\d.]+)<', page)
    assert [(lvl, round(float(d))) for lvl, d in levels] == [("red", -1), ("red", 2), ("amber", 7), ("green", 20)]
    assert "1 failed job(s), 1 failed request(s)" in page
    assert ">42<" in page and "1.5e-05" in page  # live progress of the running job
    assert re.search(r"digits</a></td><td>v2</td><td>live</td>\s*<td>0\.9300</td>", page)
    assert page.count("<svg") == 2 and "information bound" in page
    ys = re.findall(r'data-y="([^"]+)"', page)
    assert [float(y) for y in ys] == [2e-7, 3e-7, 0.91, 0.93]
    frag = client.get("/admin/fragments/overview")
    assert "Jobs running" in frag.text and "<html" not in frag.text and frag.headers["cache-control"] == "no-store"


def test_overview_without_data_and_banner_absent(client):
    _signed_in(client, "auditor")
    page = client.get("/admin/").text
    assert "No open requests." in page and "No job running." in page and "failed job(s)" not in page


# ----------------------------------------------------------------------------- requests


def test_requests_filters_and_search(client, db):
    m, reqs = _seed(db, _secret(client))
    _signed_in(client, "operator")
    page = client.get("/admin/requests?status=awaiting_approval").text
    assert page.count('name="ids"') == 2
    found = client.get("/admin/requests?subject_id=person-2").text
    assert str(reqs[2].id) in found and str(reqs[0].id) not in found
    by_model = client.get("/admin/requests?model=faces").text
    assert str(reqs[4].id) in by_model and str(reqs[0].id) not in by_model
    due = (utcnow() + timedelta(days=6)).date().isoformat()
    soon = client.get(f"/admin/requests?due_before={due}").text
    assert {str(r.id) for r in reqs if str(r.id) in soon} == {str(reqs[1].id), str(reqs[2].id), str(reqs[3].id)}
    assert client.get("/admin/requests?status=bogus").status_code == 422
    assert client.get("/admin/requests?due_before=tomorrow").status_code == 422
    assert client.get("/admin/requests?model=nope").status_code == 404


def test_a_held_request_is_marked_with_its_reason(client, db):
    """Issue 14: a class request the scheduler holds stays queued; the list marks it, the page says why."""
    m, reqs = _seed(db, _secret(client))
    reason = "held: class 1: forgetting this class would leave fewer than two classes: retire the model"
    reqs[4].status, reqs[4].error = "queued", reason
    db.flush()
    _signed_in(client, "operator")
    listed = client.get("/admin/requests?model=faces").text
    assert 'class="pill red" title="' + reason + '">held</span>' in listed and listed.count(">held</span>") == 1
    assert reason in client.get(f"/admin/requests/{reqs[4].id}").text


def test_due_before_filter_reaches_past_the_first_page(client, db):
    m, _ = _seed(db, _secret(client))
    now = utcnow()
    old = []
    for i in range(260):  # newest first: the 260 far-off requests fill the service's first page
        key = subject_key(_secret(client), f"bulk-{i}")
        due = now + (timedelta(days=1) if i < 3 else timedelta(days=40))
        r = DeletionRequest(id=uuid.uuid4(), subject_id=f"bulk-{i}", subject_key=key, model_id=m.id, status="queued",
                            open_key=f"{key}:{m.id}", created_at=now - timedelta(days=3 if i < 3 else 0, seconds=i), due_at=due)
        db.add(r)
        if i < 3:
            old.append(r)
    db.flush()
    _signed_in(client, "operator")
    page = client.get(f"/admin/requests?due_before={(now + timedelta(days=2)).date().isoformat()}&model=digits").text
    assert all(str(r.id) in page for r in old)
    assert page.count("<tr>") == 2 + len(old)  # the two seeded requests due in under 2 days, and the three


def test_request_actions_bulk_deny_cancel_retry_and_timeline(client, db):
    m, reqs = _seed(db, _secret(client))
    csrf = _signed_in(client, "operator")
    # the seeded failed job stops the model's line (issue 19): approval is refused until acknowledged
    assert client.post(f"/admin/requests/{reqs[0].id}/approve", data={"csrf": csrf}).status_code == 409
    failed = db.scalars(select(Job).where(Job.model_id == m.id, Job.status == "failed")).one()
    assert client.post(f"/admin/line-stops/{failed.id}/acknowledge", data={"csrf": csrf, "reason": "seen"},
                       follow_redirects=False).status_code == 303
    r = client.post("/admin/requests/bulk-approve", data={"csrf": csrf, "ids": [str(reqs[0].id), str(reqs[3].id)]},
                    follow_redirects=False)
    assert r.status_code == 303
    assert _status(db, reqs[0]) == "queued" and _status(db, reqs[3]) == "queued"
    shown = client.get(r.headers["location"]).text
    assert "Approved 1 request(s)." in shown and "Not approved: 1" in shown  # reqs[3] was already queued
    assert "Approved 1" not in client.get("/admin/requests").text  # the message shows once
    assert client.post(f"/admin/requests/{reqs[1].id}/deny", data={"csrf": csrf, "reason": "  "}).status_code == 422
    assert _status(db, reqs[1]) == "awaiting_approval"
    r = client.post(f"/admin/requests/{reqs[1].id}/deny", data={"csrf": csrf, "reason": "not our customer"})
    assert r.status_code == 200 and "now denied" in r.text
    db.expire_all()
    assert db.get(DeletionRequest, reqs[1].id).decision_reason == "not our customer"
    assert client.post(f"/admin/requests/{reqs[4].id}/cancel", data={"csrf": csrf}).status_code == 200
    assert _status(db, reqs[4]) == "cancelled"
    assert client.post(f"/admin/requests/{reqs[2].id}/retry", data={"csrf": csrf}).status_code == 200
    assert _status(db, reqs[2]) == "queued"
    detail = client.get(f"/admin/requests/{reqs[0].id}").text
    kinds = re.findall(r"<strong>([\w.]+)</strong>", detail)
    assert kinds[0] == "created" and any("approve" in k for k in kinds[1:])
    assert "token:" in detail and "test-operator" in detail  # who approved
    assert '<dd id="kind">samples</dd>' in detail  # a class subject's request reads "class" (issue 14)
    # buttons follow the status: a queued request can be cancelled, not approved again
    assert "/cancel" in detail and f"/requests/{reqs[0].id}/approve" not in detail
    illegal = client.post(f"/admin/requests/{reqs[0].id}/approve", data={"csrf": csrf})
    assert illegal.status_code == 409 and "queued" in illegal.text
    assert client.post(f"/admin/requests/{uuid.uuid4()}/approve", data={"csrf": csrf}).status_code == 404
    assert client.post(f"/admin/requests/{reqs[0].id}/explode", data={"csrf": csrf}).status_code == 404
    assert client.post("/admin/requests/bulk-approve", data={"csrf": csrf, "ids": ["not-a-uuid"]}).status_code == 422


def test_csrf_refusals_change_nothing(client, db):
    m, reqs = _seed(db, _secret(client))
    _signed_in(client, "operator")
    aliases_before = db.execute(select(AliasEvent)).all()
    posts = [
        (f"/admin/requests/{reqs[0].id}/approve", {}),
        ("/admin/requests/bulk-approve", {"ids": [str(reqs[0].id)]}),
        (f"/admin/requests/{reqs[0].id}/deny", {"reason": "x"}),
        ("/admin/models/digits/promote", {"version": "2"}),
        ("/admin/models/digits/forget-now", {}),
        ("/admin/audit/verify", {}),
    ]
    for url, data in posts:
        for bad in ({}, {"csrf": "wrong"}, {"csrf": ""}):
            r = client.post(url, data={**data, **bad})
            assert r.status_code == 403 and "CSRF" in r.text, url
    assert _status(db, reqs[0]) == "awaiting_approval"
    assert db.execute(select(AliasEvent)).all() == aliases_before
    assert db.execute(select(Job).where(Job.status == "queued")).first() is None
    # a CSRF token from another session does not work either
    other = client.__class__(client.app)
    other.tokens = client.tokens
    stolen = _signed_in(other, "operator")
    assert client.post(f"/admin/requests/{reqs[0].id}/approve", data={"csrf": stolen}).status_code == 403
    assert _status(db, reqs[0]) == "awaiting_approval"


def test_auditor_is_read_only(client, db):
    m, reqs = _seed(db, _secret(client))
    failed_job = db.execute(select(Job).where(Job.status == "failed")).scalar_one()
    csrf = _signed_in(client, "auditor")
    pages = {
        "/admin/requests": ["Approve selected", 'name="ids"'],
        f"/admin/requests/{reqs[0].id}": ["/approve", "/deny", "Reason for denying"],
        "/admin/models/digits": ["Run batch now", "Promote", "/zero", "/train"],
        "/admin/jobs": ["Run batch now"],
        f"/admin/jobs/{failed_job.id}": ["/retry"],
    }
    for url, absent in pages.items():
        html = client.get(url).text
        assert "read-only" in html
        for s in absent:
            assert s not in html, (url, s)
    for url, data in [(f"/admin/requests/{reqs[0].id}/approve", {}), ("/admin/requests/bulk-approve", {"ids": [str(reqs[0].id)]}),
                      (f"/admin/requests/{reqs[0].id}/cancel", {}), ("/admin/models/digits/promote", {"version": "2"}),
                      ("/admin/models/digits/forget-now", {}), (f"/admin/jobs/{failed_job.id}/retry", {}),
                      ("/admin/models/digits/zero", {"confirm": "digits"}), ("/admin/models/digits/train", {})]:
        r = client.post(url, data={"csrf": csrf, **data})
        assert r.status_code == 403 and "read-only" in r.text, url
    assert _status(db, reqs[0]) == "awaiting_approval"
    db.expire_all()
    assert db.get(Job, failed_job.id).status == "failed"
    assert db.execute(select(func.count()).select_from(Job)).scalar_one() == 2
    # reading is allowed: auditors verify the chain
    assert "Chain verified" in client.post("/admin/audit/verify", data={"csrf": csrf}).text


# ----------------------------------------------------------------------------- jobs


def test_jobs_list_detail_progress_fragment_and_retry(client, db):
    m, _ = _seed(db, _secret(client))
    csrf = _signed_in(client, "operator")
    jobs = client.get("/admin/jobs").text
    assert "forget" in jobs and "train" in jobs and "it 42, residual 1.5e-05" in jobs
    only_failed = client.get("/admin/jobs?status=failed").text
    assert "train" in only_failed and "forget" not in only_failed.split('id="jobs"')[1]
    assert client.get("/admin/jobs?status=bogus").status_code == 422
    frag = client.get("/admin/fragments/jobs?status=running&model=digits").text
    assert "<html" not in frag and "it 42" in frag and ">train<" not in frag
    assert 'data-refresh="/admin/fragments/jobs?status=failed&amp;model="' in only_failed
    running = db.execute(select(Job).where(Job.status == "running")).scalar_one()
    detail = client.get(f"/admin/jobs/{running.id}").text
    assert 'data-refresh="/admin/fragments/jobs/' in detail
    steps = {name: state for state, name in re.findall(r'data-state="(\w+)"><span>(\w+)</span>', detail)}
    assert steps == {"collect": "done", "solve": "current", "evaluate": "pending", "publish": "pending"}
    # the worker writes progress; the fragment shows it
    running.progress = {"step": "solve", "iteration": 77, "residual": 3.25e-9}
    db.flush()
    frag = client.get(f"/admin/fragments/jobs/{running.id}").text
    assert '<td id="iteration">77</td>' in frag and "3.25e-09" in frag and "<html" not in frag and "data-final" not in frag
    failed = db.execute(select(Job).where(Job.status == "failed")).scalar_one()
    detail = client.get(f"/admin/jobs/{failed.id}").text
    assert "boom: out of memory" in detail and "Retry" in detail and "data-final" in detail
    assert re.search(r'data-state="failed"><span>solve', detail)
    assert "collect_s" in detail and "0.25" in detail
    r = client.post(f"/admin/jobs/{failed.id}/retry", data={"csrf": csrf})
    assert r.status_code == 409  # the model already has an active job (the running one)
    running.status, running.active_key = "succeeded", None
    db.flush()
    r = client.post(f"/admin/jobs/{failed.id}/retry", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    db.expire_all()
    assert db.get(Job, failed.id).status == "queued"
    assert client.get(f"/admin/jobs/{uuid.uuid4()}").status_code == 404
    assert client.get("/admin/jobs/not-a-uuid").status_code == 422


def _user_samples(db, model, secret, subject):
    chunk = SampleChunk(model_id=model.id, uri="chunks/x", sha256="c" * 64, n_rows=2)
    db.add(chunk)
    db.flush()
    db.add_all([Sample(model_id=model.id, subject_key=subject_key(secret, subject), split="user", label=0, chunk_id=chunk.id, row=i)
                for i in range(2)])
    db.flush()


def test_run_batch_now_from_the_jobs_page(client, db):
    m, reqs = _seed(db, _secret(client))
    faces = db.execute(select(Model).where(Model.name == "faces")).scalar_one()
    _user_samples(db, faces, _secret(client), "person-4")
    csrf = _signed_in(client, "operator")
    page = client.get("/admin/jobs").text
    assert "Run batch now: faces" in page and "Run batch now: digits" in page
    r = client.post("/admin/models/faces/forget-now", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/admin/jobs/")
    job_id = uuid.UUID(r.headers["location"].rsplit("/", 1)[1])
    db.expire_all()
    job = db.get(Job, job_id)
    assert job.kind == "forget" and job.status == "queued" and job.config["request_ids"] == [str(reqs[4].id)]
    assert _status(db, reqs[4]) == "processing"
    shown = client.get(r.headers["location"]).text
    assert "Batch started for faces: 1 request(s)." in shown
    # digits has a running job already: 409 naming it, nothing new
    again = client.post("/admin/models/digits/forget-now", data={"csrf": csrf})
    assert again.status_code == 409 and "already has an active" in again.text


# ----------------------------------------------------------------------------- models, subjects, audit


def test_model_page_aliases_lineage_promote_and_zero(client, db):
    m, _ = _seed(db, _secret(client))
    csrf = _signed_in(client, "operator")
    page = client.get("/admin/models/digits").text
    assert "latest → v2" in page and 'class="revoked" id="v1"' in page and "Run batch now" in page
    assert re.search(r'id="lineage">.*v2.*←.*v1 \(revoked\)', page)
    assert client.post("/admin/models/digits/promote", data={"csrf": csrf, "version": "1"}).status_code == 409  # revoked
    assert client.post("/admin/models/digits/promote", data={"csrf": csrf, "version": "x"}).status_code == 422
    r = client.post("/admin/models/digits/promote", data={"csrf": csrf, "version": "2"}, follow_redirects=False)
    assert r.status_code == 303
    page = client.get("/admin/models/digits").text
    assert "production → v2" in page
    history = page.split('id="alias-history"')[1]
    assert re.search(r"<td>production</td><td>–</td><td>v2</td><td>token:\d+:test-operator</td>", history)
    frag = client.get("/admin/fragments/models/digits").text
    assert "production → v2" in frag and "<html" not in frag
    # zero needs the model name typed in
    assert client.post("/admin/models/digits/zero", data={"csrf": csrf, "confirm": "oops"}).status_code == 422
    assert db.execute(select(Job).where(Job.kind == "zero")).first() is None
    assert client.get("/admin/models/nope").status_code == 404
    assert "digits" in client.get("/admin/models").text


def test_subject_receipt_lookup(client, db):
    m, reqs = _seed(db, _secret(client))
    _user_samples(db, m, _secret(client), "person-0")
    _signed_in(client, "auditor")
    rec = client.get("/admin/subjects?subject_id=person-0").text
    assert str(reqs[0].id)[:8] in rec and re.search(r">digits</a></td><td>2</td>", rec)
    none = client.get("/admin/subjects?subject_id=nobody").text
    assert "No model holds or held this subject." in none
    assert client.get("/admin/subjects?subject_id=" + "x" * 300).status_code == 422


def test_audit_pages_and_verification_names_the_broken_link(client, db):
    _seed(db, _secret(client))
    for i in range(120):
        append_event(db, actor="test", kind="test.filler", payload={"i": i})
    db.flush()
    csrf = _signed_in(client, "auditor")
    first = client.get("/admin/audit").text
    assert "test.seed" in first and first.count("<tr><td>") == 100 and "Next page" in first
    nxt = re.search(r'href="(/admin/audit\?[^"]*since=\d+)"', first).group(1).replace("&amp;", "&")
    second = client.get(nxt).text
    assert second.count("<tr><td>") == 21 and "First page" in second
    assert client.get("/admin/audit?kind=test.seed").text.count("<tr><td>") == 1
    ok = client.post("/admin/audit/verify", data={"csrf": csrf}).text
    assert re.search(r"Chain verified: 121 events", ok)
    seq = db.execute(select(AuditEvent.seq).where(AuditEvent.kind == "test.filler").order_by(AuditEvent.seq).offset(10)).scalars().first()
    db.execute(text("UPDATE audit_events SET payload = '{\"i\": 999}' WHERE seq = :s"), {"s": seq})
    bad = client.post("/admin/audit/verify", data={"csrf": csrf}).text
    assert f"Chain broken at event {seq}" in bad
    assert client.get("/admin/audit?since=-1").status_code == 422


def test_pages_have_landmarks_headings_and_labels(client, db):
    m, reqs = _seed(db, _secret(client))
    _signed_in(client, "operator")
    for url in ["/admin/", "/admin/requests", f"/admin/requests/{reqs[0].id}", "/admin/jobs", "/admin/models",
                "/admin/models/digits", "/admin/subjects?subject_id=person-0", "/admin/audit"]:
        html = client.get(url).text
        assert html.count("<main") == 1 and "<h1>" in html and 'aria-current="page"' in html, url
        for tag in re.findall(r"<(?:input|select)\b[^>]*>", html):
            if 'type="hidden"' in tag:
                continue
            ident = re.search(r'id="([^"]+)"', tag)
            assert "aria-label=" in tag or (ident and f'for="{ident.group(1)}"' in html), (url, tag)
        assert "<table" not in html or '<th scope="col">' in html


def test_the_menu_is_the_registered_pages_in_order(client):
    from service.admin.views import PAGES

    _signed_in(client, "auditor")
    menu = re.search(r'<nav aria-label="Main">(.*?)</nav>', client.get("/admin/audit").text, re.S).group(1)
    shown = re.findall(r'<a href="/admin([^"]*)"[^>]*>([^<]+)</a>', menu)
    assert shown == [page.NAV for page in PAGES if page.NAV]
    assert ("/audit", "Audit") in shown and ("/", "Overview") in shown


def test_security_headers_forbid_framing_and_foreign_scripts(client):
    for r in (client.get("/admin/login"), client.get("/admin/static/admin.js")):
        assert r.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert "script-src 'self'" in r.headers["content-security-policy"] and r.headers["referrer-policy"] == "same-origin"
    _signed_in(client, "operator")
    html = client.get("/admin/").text
    assert "<script>" not in html and "javascript:" not in html and not re.search(r"<[^>]+\son\w+=", html)


@pytest.mark.parametrize("status", [s.value for s in RequestStatus])
def test_every_button_shown_is_a_legal_transition(client, db, status):
    """The request page offers an action exactly when ``deletion_request.TRANSITIONS`` allows it
    from the request's status (it used to offer approve and deny on ``received``)."""
    from service.deletion_request.service import TRANSITIONS

    secret = _secret(client)
    m = Model(name="digits", architecture="mlp", architecture_config={}, input_shape=[4], num_classes=3, linearize="all", method_config={})
    db.add(m)
    db.flush()
    now = utcnow()
    key = subject_key(secret, "person")
    r = DeletionRequest(id=uuid.uuid4(), subject_id="person", subject_key=key, model_id=m.id, status=status,
                        open_key=f"{key}:{m.id}" if status in {s.value for s in OPEN_REQUEST_STATUSES} else None,
                        created_at=now, due_at=now + timedelta(days=3), attempts=0)
    db.add(r)
    db.flush()
    _signed_in(client, "operator")
    page = client.get(f"/admin/requests/{r.id}").text
    shown = set(re.findall(rf'action="/admin/requests/{r.id}/(\w+)"', page))
    legal = {a for a, (allowed, _, _) in TRANSITIONS.items() if RequestStatus(status) in allowed}
    assert shown == legal, (status, shown, legal)
    # the list page's bulk approval offers a request's checkbox only where approve is legal
    listed = client.get("/admin/requests").text
    assert str(r.id) in listed
    assert (f'name="ids" value="{r.id}"' in listed) == ("approve" in legal), (status, legal)


def test_bound_charts_of_an_epsilon_delta_model_show_epsilon_spent(client, db):
    """certified_removal releases state (ε, δ), not a KL: the charts plot ε_spent (issue 15)."""
    m = Model(name="head", architecture="mlp", architecture_config={}, input_shape=[4], num_classes=3, linearize="all",
              method="certified_removal", family="linear_head", method_config={})
    db.add(m)
    db.flush()
    for number, spent in ((1, 1e-9), (2, 0.25), (3, 0.5)):
        db.add(ModelVersion(model_id=m.id, number=number, sha256=f"{number}" * 64, size_bytes=10, metrics={"eval_accuracy": 0.9},
                            bound={"kl_nats": "nan", "epsilon_spent": spent, "delta": 1e-5, "epsilon_budget": 1.0,
                                   "guarantee": "certified", "statement": "per release"}))
    db.flush()
    _signed_in(client, "operator")
    for page in (client.get("/admin/").text, client.get("/admin/models/head").text):
        assert "ε spent per version (δ=1e-05, budget ε=1.0; per release)" in page
        assert [float(y) for y in re.findall(r'data-y="([^"]+)"', page)][:3] == [1e-9, 0.25, 0.5]
