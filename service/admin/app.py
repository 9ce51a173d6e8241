"""The admin dashboard: its own FastAPI app mounted at /admin (DESIGN §1, §4, §5).

Views call the same services as the JSON API. Sign-in takes a token of role operator, auditor
or admin; auditors see everything read-only. Every form carries the session's CSRF token.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select

from service.admin import auth
from service.admin.charts import line_chart
from service.audit.router import list_events
from service.audit.service import verify_chain
from service.core.config import Settings
from service.core.errors import ProblemError
from service.core.security import hash_token
from service.deletion_request import service as requests_service
from service.job import service as job_service
from service.model_registry import service as registry
from service.models import (
    OPEN_REQUEST_STATUSES,
    ApiToken,
    AuditEvent,
    DeletionRequest,
    Job,
    Model,
    ModelVersion,
    RequestStatus,
)
from service.subject.service import receipt

HERE = Path(__file__).resolve().parent


class Forbidden(Exception):
    pass


def create_admin_app(settings: Settings) -> FastAPI:
    admin = FastAPI(title="Lethe admin", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    admin.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    secret = settings.security.secret_key
    max_age = settings.security.session_max_age_s

    def state(request: Request):
        return request.app.state.parent.state

    def who(request: Request) -> auth.AdminSession | None:
        return auth.current(request, state(request).session_factory, secret, max_age)

    def render(request: Request, name: str, s: auth.AdminSession | None, status: int = 200, **ctx) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"me": s, "now": datetime.now(UTC), "prefix": "/admin", **ctx}, status_code=status)

    def need(request: Request) -> auth.AdminSession | RedirectResponse:
        s = who(request)
        if s is None:
            return RedirectResponse("/admin/login", status_code=303)
        return s

    async def check_post(request: Request, act: bool = True) -> tuple[auth.AdminSession, dict]:
        s = who(request)
        if s is None:
            raise Forbidden("sign in first")
        form = dict(await request.form())
        if not form.get("csrf") or form.get("csrf") != s.csrf:
            raise Forbidden("missing or wrong CSRF token")
        if act and not s.can_act:
            raise Forbidden(f"role {s.role.value} is read-only here")
        return s, form

    @admin.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden):
        return render(request, "error.html", who(request), status=403, message=str(exc))

    @admin.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError):
        return render(request, "error.html", who(request), status=exc.status, message=exc.detail)

    # ------------------------------------------------------------------ sign-in
    @admin.get("/login", response_class=HTMLResponse)
    def login_form(request: Request):
        return render(request, "login.html", None)

    @admin.post("/login")
    def login(request: Request, token: str = Form(...)):
        with state(request).session_factory() as db:
            row = db.execute(select(ApiToken).where(ApiToken.token_hash == hash_token(token.strip()))).scalar_one_or_none()
        if row is None or row.revoked_at is not None:
            return render(request, "login.html", None, status=401, error="Unknown or revoked token.")
        if auth.Role(row.role) not in auth.DASHBOARD_ROLES:
            return render(request, "login.html", None, status=403, error=f"The {row.role} role cannot use the dashboard (operator, auditor or admin only).")
        resp = RedirectResponse("/admin/", status_code=303)
        resp.set_cookie(auth.COOKIE, auth.encode(secret, auth.new_session(row)), max_age=max_age, httponly=True, samesite="lax", path="/admin")
        return resp

    @admin.post("/logout")
    async def logout(request: Request):
        await check_post(request, act=False)
        resp = RedirectResponse("/admin/login", status_code=303)
        resp.delete_cookie(auth.COOKIE, path="/admin")
        return resp

    # ------------------------------------------------------------------ overview
    def overview_data(db) -> dict:
        by_status = dict(db.execute(select(DeletionRequest.status, func.count()).group_by(DeletionRequest.status)).all())
        open_reqs = db.execute(
            select(DeletionRequest).where(DeletionRequest.status.in_([s.value for s in OPEN_REQUEST_STATUSES])).order_by(DeletionRequest.due_at).limit(20)
        ).scalars().all()
        now = datetime.now(UTC)
        sla = []
        overdue = 0
        for r in open_reqs:
            due = r.due_at if r.due_at.tzinfo else r.due_at.replace(tzinfo=UTC)
            days = (due - now).total_seconds() / 86400
            overdue += days < 0
            sla.append({"id": r.id, "status": r.status, "days": days, "level": "red" if days < 3 else "amber" if days < 10 else "green"})
        overdue_total = db.execute(
            select(func.count()).select_from(DeletionRequest).where(
                DeletionRequest.status.in_([s.value for s in OPEN_REQUEST_STATUSES]), DeletionRequest.due_at < now)
        ).scalar_one()
        running = db.execute(select(Job).where(Job.status.in_(["queued", "running"])).order_by(Job.created_at)).scalars().all()
        failed_jobs = db.execute(select(func.count()).select_from(Job).where(Job.status == "failed")).scalar_one()
        models = db.execute(select(Model).order_by(Model.name)).scalars().all()
        names = {m.id: m.name for m in models}
        latest, charts = [], []
        for m in models:
            versions = db.execute(select(ModelVersion).where(ModelVersion.model_id == m.id).order_by(ModelVersion.number)).scalars().all()
            if versions:
                latest.append({"model": m.name, "v": versions[-1]})
            kl = [(v.number, float(v.bound.get("kl_nats", 0) or 0)) for v in versions if isinstance(v.bound.get("kl_nats", 0), (int, float))]
            acc = [(v.number, float(v.metrics["eval_accuracy"])) for v in versions if isinstance((v.metrics or {}).get("eval_accuracy"), (int, float))]
            if versions:
                charts.append({
                    "model": m.name,
                    "kl": line_chart([(x, y) for x, y in kl if math.isfinite(y)], title=f"{m.name}: information bound per version", y_label="kl_nats"),
                    "acc": line_chart(acc, title=f"{m.name}: eval accuracy per version", y_label="accuracy"),
                })
        return {"by_status": by_status, "sla": sla, "overdue": overdue_total, "running": running, "names": names,
                "failed_jobs": failed_jobs, "failed_requests": by_status.get("failed", 0), "latest": latest, "charts": charts,
                "statuses": [s.value for s in RequestStatus]}

    @admin.get("/", response_class=HTMLResponse)
    def overview(request: Request):
        s = need(request)
        if isinstance(s, Response):
            return s
        with state(request).session_factory() as db:
            return render(request, "overview.html", s, **overview_data(db))

    @admin.get("/fragments/overview", response_class=HTMLResponse)
    def overview_fragment(request: Request):
        s = who(request)
        if s is None:
            return HTMLResponse("", status_code=401)
        with state(request).session_factory() as db:
            return render(request, "_live.html", s, **overview_data(db))

    # ------------------------------------------------------------------ requests
    @admin.get("/requests", response_class=HTMLResponse)
    def requests_page(request: Request, status: str | None = None, model: str | None = None, subject_id: str | None = None,
                      due_before: str | None = None, cursor: str | None = None):
        s = need(request)
        if isinstance(s, Response):
            return s
        with state(request).session_factory() as db:
            statuses = [RequestStatus(status)] if status else None
            page = requests_service.list_requests(db, secret=secret, statuses=statuses, model=model or None,
                                                  subject_id=subject_id or None, cursor=cursor or None, limit=50)
            items = page.items
            if due_before:
                limit_at = datetime.fromisoformat(due_before).replace(tzinfo=UTC)
                items = [r for r in items if r.due_at <= limit_at]
            models = list(db.execute(select(Model.name).order_by(Model.name)).scalars())
        return render(request, "requests.html", s, items=items, next_cursor=page.next_cursor, models=models,
                      statuses=[x.value for x in RequestStatus], f={"status": status or "", "model": model or "", "subject_id": subject_id or "", "due_before": due_before or ""})

    @admin.post("/requests/bulk-approve")
    async def bulk_approve(request: Request):
        s, _ = await check_post(request)
        form = await request.form()
        ids = form.getlist("ids")
        with state(request).session_factory.begin() as db:
            for rid in ids:
                requests_service.transition(db, uuid.UUID(str(rid)), "approve", actor=s.actor)
        return RedirectResponse("/admin/requests", status_code=303)

    @admin.post("/requests/{rid}/{action}")
    async def request_action(request: Request, rid: uuid.UUID, action: str):
        s, form = await check_post(request)
        if action not in ("approve", "deny", "cancel", "retry"):
            raise Forbidden(f"unknown action {action}")
        reason = (form.get("reason") or "").strip() or None
        if action == "deny" and not reason:
            return render(request, "error.html", s, status=422, message="Denying needs a reason.")
        with state(request).session_factory.begin() as db:
            requests_service.transition(db, rid, action, actor=s.actor, reason=reason)
        return RedirectResponse(f"/admin/requests/{rid}", status_code=303)

    @admin.get("/requests/{rid}", response_class=HTMLResponse)
    def request_detail(request: Request, rid: uuid.UUID):
        s = need(request)
        if isinstance(s, Response):
            return s
        with state(request).session_factory() as db:
            r = requests_service.get(db, rid)
            events = db.execute(select(AuditEvent).where(AuditEvent.subject_key == r.subject_key).order_by(AuditEvent.seq)).scalars().all()
            events = [e for e in events if e.payload.get("request_id") in (None, str(rid))]
        timeline = [("created", r.created_at, f"status {r.status}")] + [(e.kind, e.at, e.actor) for e in events]
        if r.completed_at:
            timeline.append(("completed", r.completed_at, f"clean version {r.clean_version}"))
        return render(request, "request_detail.html", s, r=r, timeline=sorted(timeline, key=lambda t: t[1]))

    # ------------------------------------------------------------------ jobs
    @admin.get("/jobs", response_class=HTMLResponse)
    def jobs_page(request: Request, status: str | None = None):
        s = need(request)
        if isinstance(s, Response):
            return s
        with state(request).session_factory() as db:
            jobs = job_service.list_jobs(db, status=status or None, limit=100)
            names = dict(db.execute(select(Model.id, Model.name)).all())
        return render(request, "jobs.html", s, jobs=jobs, names=names, job_status=status or "")

    @admin.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_detail(request: Request, job_id: uuid.UUID):
        s = need(request)
        if isinstance(s, Response):
            return s
        with state(request).session_factory() as db:
            job = job_service.get_job(db, job_id)
            name = db.get(Model, job.model_id).name
        return render(request, "job_detail.html", s, job=job, model=name)

    @admin.post("/jobs/{job_id}/retry")
    async def job_retry(request: Request, job_id: uuid.UUID):
        s, _ = await check_post(request)
        with state(request).session_factory.begin() as db:
            job_service.retry_job(db, state(request).settings, job_id, s.actor)
        return RedirectResponse(f"/admin/jobs/{job_id}", status_code=303)

    # ------------------------------------------------------------------ models
    @admin.get("/models", response_class=HTMLResponse)
    def models_page(request: Request):
        s = need(request)
        if isinstance(s, Response):
            return s
        with state(request).session_factory() as db:
            models = [registry.to_read(db, m) for m in registry.list_models(db, after=None, limit=500)]
        return render(request, "models.html", s, models=models)

    @admin.get("/models/{name}", response_class=HTMLResponse)
    def model_detail(request: Request, name: str):
        s = need(request)
        if isinstance(s, Response):
            return s
        with state(request).session_factory() as db:
            model = registry.get_model(db, name)
            versions = [registry.manifest(db, model, v) for v in registry.list_versions(db, model, before=None, limit=200)]
            aliases = registry.aliases(db, model)
            active = job_service.active_job(db, model.id)
        return render(request, "model_detail.html", s, model=model, versions=versions, aliases=aliases, active=active)

    @admin.post("/models/{name}/forget-now")
    async def model_forget_now(request: Request, name: str):
        s, _ = await check_post(request)
        with state(request).session_factory.begin() as db:
            job = job_service.forget_now(db, state(request).settings, registry.get_model(db, name), s.actor)
            job_id = job.id
        return RedirectResponse(f"/admin/jobs/{job_id}", status_code=303)

    @admin.post("/models/{name}/promote")
    async def model_promote(request: Request, name: str):
        s, form = await check_post(request)
        with state(request).session_factory.begin() as db:
            model = registry.get_model(db, name)
            version = registry.resolve_version(db, model, str(form.get("version", "")))
            registry.move_alias(db, model, "production", version, s.actor)
        return RedirectResponse(f"/admin/models/{name}", status_code=303)

    @admin.get("/subjects", response_class=HTMLResponse)
    def subjects_page(request: Request, subject_id: str | None = None):
        s = need(request)
        if isinstance(s, Response):
            return s
        rec = None
        if subject_id:
            with state(request).session_factory() as db:
                rec = receipt(db, secret, subject_id)
        return render(request, "subjects.html", s, rec=rec, subject_id=subject_id or "")

    # ------------------------------------------------------------------ audit
    @admin.get("/audit", response_class=HTMLResponse)
    def audit_page(request: Request, since: int = 0):
        s = need(request)
        if isinstance(s, Response):
            return s
        with state(request).session_factory() as db:
            page = list_events(db, since=since, kind=None, key=None, limit=100)
        return render(request, "audit.html", s, page=page, verification=None)

    @admin.post("/audit/verify", response_class=HTMLResponse)
    async def audit_verify(request: Request):
        s, _ = await check_post(request, act=False)
        with state(request).session_factory() as db:
            result = verify_chain(db)
            page = list_events(db, since=0, kind=None, key=None, limit=100)
        return render(request, "audit.html", s, page=page, verification=result)

    return admin
